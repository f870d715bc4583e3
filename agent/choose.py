"""One propose-and-choose agent: every planning method is a proposer, a scorer and a rule.

Every ``execute`` control steps the :class:`PlanningAgent` replans:

1. a :class:`Proposer` draws candidate plans for the current observation (the learned
   action prior's samples) or leaves the first iteration to the planner's Gaussian
   (:class:`GaussianProposer`);
2. given a :class:`Scorer`, the sampling planner (:mod:`agent.planner`, CEM or MPPI)
   optimizes its score over candidates -- the world model + student
   (:class:`agent.mpc.WorldModelScorer`), the true simulator with the privileged value
   (:class:`agent.oracle.SimulatorScorer`) or with the student on rendered clips
   (:class:`agent.oracle.RenderedStudentScorer`) -- and the planner's ``pick`` (``best``,
   ``mean``, ``sample``: a softmax draw) says which candidate is executed;
3. without a scorer, the ``pick`` rule chooses among the proposals as drawn: ``first`` (the
   prior alone) or ``random`` (a uniform pick: the proposals without any judgement);
4. the chosen plan's first ``execute`` control steps are executed (clipped to [-1, 1]).

Methods are configurations of this one agent: ``mpc``/``mpc_prior`` (world-model scorer,
Gaussian or prior proposals), ``oracle_p``/``oracle_p_prior`` (simulator scorer),
``oracle_s``/``oracle_s_prior`` (rendered-student scorer), ``prior``/``prior_random`` (no
scorer). Randomness: the planner draws from ``default_rng((seed_base, episode seed))``; the
torch generator of the prior's samples and the world model's token draws is seeded from
the planner's stream, or from a stream of its own (``separate_stream``: the planner's
draws are then those of the same agent without a prior).
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod

import numpy as np
import torch

from agent.base import Agent
from agent.planner import make_planner, shift_actions

#: How a plan is chosen without a scorer, from the proposals as drawn.
UNSCORED_PICKS = ("first", "random")


class Proposer(ABC):
    """Draws candidate plans ``(n, steps, 4)`` control actions for an observation, or
    ``None`` to leave the first iteration to the planner's Gaussian."""

    name = "proposer"

    @abstractmethod
    def propose(self, obs: dict, n: int, gen: torch.Generator) -> np.ndarray | None:
        ...


class GaussianProposer(Proposer):
    """No learned proposals: the planner samples around its warm start."""

    name = "gaussian"

    def propose(self, obs: dict, n: int, gen: torch.Generator) -> None:
        return None


class Scorer(ABC):
    """Scores candidate plans from the state a replan starts in.

    ``begin(obs, gen)`` is called once per replan before any ``score(candidates (N, steps, 4))
    -> (N,)`` (higher is better); ``end(actions)`` after the choice, with the chosen plan.
    A scorer with ``attach_privileged_env`` reads the real simulator (oracles only)."""

    name = "scorer"

    def reset(self) -> None:  # noqa: B027 (an optional hook, not abstract)
        """A new episode."""

    @abstractmethod
    def begin(self, obs: dict, gen: torch.Generator, step: int) -> None:
        ...

    @abstractmethod
    def score(self, candidates: np.ndarray) -> np.ndarray:
        ...

    def end(self, actions: np.ndarray) -> dict:
        """After the choice: this replan's log entries (timings, counts)."""
        return {}

    def episode_log(self) -> dict:
        """What the scorer adds to the agent's episode log."""
        return {}


class RandomScorer(Scorer):
    """Uniform random scores from the agent's generator: the same proposals, planner
    iterations and warm start as a scored method, with no judgement -- the baseline that
    isolates what a scorer (e.g. the world model's imagination) adds."""

    name = "random"

    def begin(self, obs: dict, gen: torch.Generator, step: int) -> None:
        self._gen = gen

    def score(self, candidates: np.ndarray) -> np.ndarray:
        return torch.rand(len(candidates), generator=self._gen, dtype=torch.float64).numpy()


class PlanningAgent(Agent):
    """``PlanningAgent(proposer, scorer=None, planner={...}, execute=2, pick=...)``.

    ``planner``: a :mod:`agent.planner` config (needed with a scorer; without one only its
    ``samples`` is read, the number of proposals); ``pick`` without a scorer: ``first`` or
    ``random`` among the proposals (with a scorer the planner's own ``pick`` decides);
    ``separate_stream``: see the module docstring. Models load lazily, so it pickles cheaply
    into worker processes."""

    name = "planning"

    def __init__(self, proposer: Proposer, scorer: Scorer | None = None, planner: dict | None = None,
                 execute: int | None = None, pick: str = "first", seed: int = 0, threads: int | None = None,
                 name: str | None = None, separate_stream: bool = False, samples: int | None = None):
        planner = dict(planner or {"name": "cem"})
        self.proposer, self.scorer = proposer, scorer
        self.planner_cfg = planner
        self.planner = make_planner(planner) if scorer is not None else None
        self.samples = int(samples or planner.get("samples", 1)) if scorer is None else self.planner.samples
        self.execute = int(execute or planner.get("execute", 2))
        if scorer is not None and not 1 <= self.execute <= self.planner.param.steps:
            raise ValueError(f"execute must be in [1, {self.planner.param.steps}], got {self.execute}")
        if scorer is None and pick not in UNSCORED_PICKS:
            raise ValueError(f"pick must be one of {UNSCORED_PICKS} without a scorer, got {pick!r}")
        self.pick, self.base_seed, self.threads = pick, int(seed), threads
        self.separate_stream = bool(separate_stream)
        self.name = name or type(self).name
        self.reset()

    # ------------------------------------------------------------------ Agent API
    def reset(self, seed: int | None = None) -> None:
        key = (self.base_seed,) if seed is None else (self.base_seed, seed)
        self._rng = np.random.default_rng(key)
        stream = np.random.default_rng((*key, 1)) if self.separate_stream else self._rng
        self._gen = torch.Generator().manual_seed(int(stream.integers(2**62)))
        self._plan, self._t, self._step = None, 0, 0
        self.log: list[dict] = []          # one entry per replan: timings, scores
        if self.scorer is not None:
            self.scorer.reset()

    def act(self, obs: dict) -> np.ndarray:
        if self.threads:
            torch.set_num_threads(int(self.threads))
        if self._plan is None or self._t >= min(self.execute, len(self._plan)):
            self._replan(obs)
        action = self._plan[self._t]
        self._t += 1
        self._step += 1
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------------ planning
    def _replan(self, obs: dict) -> None:
        t0 = time.perf_counter()
        warm = None if self._plan is None else shift_actions(self._plan, self._t)
        entry: dict = {"step": self._step}
        with torch.no_grad():
            tp = time.perf_counter()
            proposals = self.proposer.propose(obs, self.samples, self._gen)
            if proposals is not None:
                entry["prior_s"] = time.perf_counter() - tp
            if self.scorer is None:
                i = 0 if self.pick == "first" else int(self._rng.integers(len(proposals)))
                self._plan, self._t = proposals[i], 0
                self.log.append({**entry, "plan_s": time.perf_counter() - t0, "chosen": i})
                return
            self.scorer.begin(obs, self._gen, self._step)
            res = self.planner.plan(self.scorer.score, warm_start=warm, rng=self._rng, proposals=proposals)
            entry.update(self.scorer.end(res.actions))
        self._plan, self._t = res.actions, 0
        self.log.append({**entry, "plan_s": time.perf_counter() - t0, "score": res.score,
                         "best_score": res.best_score, "evaluations": res.evaluations})

    def planning_time_per_step(self) -> float:
        """Planning seconds per executed control step so far (this episode)."""
        return sum(e["plan_s"] for e in self.log) / max(self._step, 1)

    def episode_log(self) -> dict:
        """This episode's extras for the closed loop: the per-replan log, planning seconds per
        control step and whatever the scorer keeps (the world model's imagined futures)."""
        extra = self.scorer.episode_log() if self.scorer is not None else {}
        return {"replans": list(self.log), "plan_s_per_step": self.planning_time_per_step(), **extra}

    def close(self) -> None:
        close = getattr(self.scorer, "close", None)
        if close is not None:
            close()


__all__ = ["Proposer", "GaussianProposer", "Scorer", "RandomScorer", "PlanningAgent", "UNSCORED_PICKS"]
