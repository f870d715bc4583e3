"""Oracles: the planner run in the TRUE simulator, scored with privileged access.

They answer "can this planner, horizon and sample budget solve the task at all?" and
"which learned part costs success?" before and beside the learned models. Both are the
:class:`agent.choose.PlanningAgent` with a scorer that reads the real env's full simulator
state through the **privileged** hook (``attach_privileged_env``; ``agent.collect.run_episode``
calls it for any agent that has it -- learned agents do not):

- :class:`SimulatorScorer` (oracle-P): each candidate is stepped from that state in the
  oracle's own env instance (state observations: nothing is rendered), summing a privileged
  dense reward (``objective``: reach + rise of the instructed cube, or robosuite's own shaped
  reward); a candidate that reaches success is credited the success reward for its remaining
  steps (and stops simulating);
- :class:`RenderedStudentScorer` (oracle-S): each candidate is stepped and RENDERED, and the
  clips are scored by the student with the MPC's objective -- perfect dynamics, learned reward.

The oracles never read ``info`` and their observations serve as a clock (and, with a prior,
its input). They are picklable (the simulator env is rebuilt lazily in each process).
"""
from __future__ import annotations

import numpy as np

from agent.base import Lazy
from agent.choose import GaussianProposer, PlanningAgent, Scorer
from agent.mpc import load_reward
from agent.objective import objective_weights, plan_objective
from agent.planner import make_planner

OBJECTIVES = ("robosuite", "shaped")


class SimulatorScorer(Scorer):
    """Oracle-P's scorer: ``objective`` ``"shaped"`` (default) = per step reach ``1 - tanh(10 d)``
    + the instructed cube's rise / success height (clipped to [0, 1]) - 0.5 once a wrong cube
    was lifted, 2 on success; ``"robosuite"`` = the env's reward (robosuite's shaped
    reward). robosuite's grasp flag can be earned by pressing a tilted cube into the
    table, where the robosuite objective gets stuck; the rise term pays for lifting."""

    name = "simulator"

    def __init__(self, objective: str = "shaped", discount: float = 1.0):
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; known: {OBJECTIVES}")
        self.objective, self.discount = objective, float(discount)
        self._real = None        # the attached real env (privileged)
        self._sim = None         # the oracle's own simulator (state observations, no rendering)

    # ------------------------------------------------------------------ privileged hook
    def attach_privileged_env(self, env) -> None:
        """PRIVILEGED: the real env whose state the scorer may read."""
        self._real = env.unwrapped
        if self._sim is not None and self._sim.task != self._real.task:
            self._sim.close()
            self._sim = None

    def _privileged_state(self) -> np.ndarray:
        """PRIVILEGED: the real env's full simulator state (``get_sim_state``)."""
        if self._real is None:
            raise RuntimeError("an oracle needs the real env: call attach_privileged_env(env) first "
                               "(agent.collect.run_episode does this for you)")
        return self._real.get_sim_state()

    def _simulator(self):
        if self._sim is None:
            from envs.robosuite_env import RoboAlignEnv

            self._sim = RoboAlignEnv(task=self._real.task, obs_mode="state",
                                     control_freq=self._real.control_freq)
        return self._sim

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_real"] = state["_sim"] = None
        return state

    # ------------------------------------------------------------------ Scorer API
    def begin(self, obs: dict, gen, step: int) -> None:
        self._start, self._sim_steps = self._privileged_state(), 0

    def score(self, cands: np.ndarray) -> np.ndarray:
        out, n = self.score_candidates(self._start, cands)
        self._sim_steps += n
        return out

    def end(self, actions: np.ndarray) -> dict:
        return {"sim_steps": self._sim_steps}

    def score_candidates(self, state: np.ndarray, cands: np.ndarray) -> tuple[np.ndarray, int]:
        """(score per candidate ``(N,)``, control steps simulated) of candidate plans
        ``(N, steps, 4)`` from ``state``."""
        out, total = np.empty(len(cands)), 0
        for i, seq in enumerate(cands):
            out[i], n = self.rollout_return(state, seq)
            total += n
        return out, total

    def rollout_return(self, state: np.ndarray, actions: np.ndarray) -> tuple[float, int]:
        """(discounted return of ``actions`` from ``state`` in the oracle's simulator,
        control steps simulated)."""
        sim = self._simulator()
        sim.reset_to(state)
        start = self._target_pos(sim) if self.objective == "shaped" else None
        total, disc = 0.0, 1.0
        for t, a in enumerate(actions):
            _, r, success, _, info = sim.step(a)
            if self.objective == "shaped":
                r = self._shaped(sim, info, start)
            if success:  # terminal: credit the success reward for the remaining steps
                total += disc * r * sum(self.discount ** k for k in range(len(actions) - t))
                return total, t + 1
            total += disc * r
            disc *= self.discount
        return total, len(actions)

    # "shaped": distance to the instructed cube + grasp + how far it rose (privileged)
    @staticmethod
    def _target_pos(sim) -> np.ndarray:
        return sim._body_pos(sim._cubes[sim._target])

    def _shaped(self, sim, info, start) -> float:
        if info["success"]:
            return 2.0
        cube = self._target_pos(sim)
        reach = 1 - np.tanh(10.0 * np.linalg.norm(info["eef_pos"] - cube))
        rise = np.clip((cube[2] - start[2]) / sim.task.lift_margin, 0.0, 1.0)
        return float(reach + rise - 0.5 * info["wrong_object"])

    def close(self) -> None:
        if self._sim is not None:
            self._sim.close()
            self._sim = None


class RenderedStudentScorer(SimulatorScorer):
    """Oracle-S's scorer: every candidate is simulated from the real state (privileged) and
    RENDERED (one 64x64 frame per ``repeat`` control steps, the real start frame first); the
    clips are scored by the student reward with the MPC's objective
    (:func:`agent.objective.plan_objective`, ``weights``). Rendering every candidate is slow."""

    name = "rendered_student"

    def __init__(self, reward, weights: dict | None = None, repeat: int = 2):
        super().__init__()
        self.weights = objective_weights(weights)
        self.repeat = int(repeat)
        self._reward = Lazy(reward, load_reward)

    reward = property(lambda self: self._reward.get())

    def _simulator(self):
        if self._sim is None:
            from envs.robosuite_env import RoboAlignEnv

            self._sim = RoboAlignEnv(task=self._real.task, obs_mode="state", render_mode="rgb_array",
                                     render_size=self._real.image_size, control_freq=self._real.control_freq)
        return self._sim

    def begin(self, obs: dict, gen, step: int) -> None:
        super().begin(obs, gen, step)
        self._instruction = int(obs["instruction"])     # the reward is told the instruction

    def render_clip(self, state: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The real future of ``actions`` from ``state``: ``(steps / repeat + 1, H, W, 3)`` uint8."""
        sim = self._simulator()
        sim.reset_to(state)
        frames = [sim.render()]
        for t, a in enumerate(actions):
            sim.step(a)
            if (t + 1) % self.repeat == 0:
                frames.append(sim.render())
        return np.stack(frames)

    def score_candidates(self, state: np.ndarray, cands: np.ndarray) -> tuple[np.ndarray, int]:
        import torch

        clips = np.stack([self.render_clip(state, seq) for seq in cands])
        frames = torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float().div(255.0)
        instr = torch.full((len(cands),), self._instruction, dtype=torch.long)
        with torch.no_grad():
            out = self.reward.score(frames, instr)
        return plan_objective(out, self.weights).numpy().astype(np.float64), int(cands.shape[0] * cands.shape[1])


class OracleP(PlanningAgent):
    """``OracleP(planner={...}, execute=2, objective="shaped", discount=1.0, prior=None)``: the
    :class:`agent.choose.PlanningAgent` with a :class:`SimulatorScorer`; given ``prior`` (an
    :class:`agent.prior.ActionPrior` or its checkpoint) the prior proposes the first
    iteration (``oracle_p_prior``: how well any choice among its samples can do -- the
    ceiling of the world model + student's choice). The prior's generator has a stream of
    its own, so with and without a prior the planner draws the same numbers."""

    name = "oracle_p"

    def __init__(self, planner: dict | None = None, execute: int | None = None, objective: str = "shaped",
                 discount: float = 1.0, seed: int = 0, prior=None, threads: int | None = None,
                 scorer: SimulatorScorer | None = None, separate_stream: bool = True):
        from agent.prior import PriorProposer

        planner = dict(planner or {"name": "cem"})
        scorer = scorer or SimulatorScorer(objective, discount)
        super().__init__(GaussianProposer() if prior is None else PriorProposer(prior), scorer, planner=planner,
                         execute=execute, seed=seed, threads=threads, separate_stream=separate_stream,
                         name=f"{type(self).name}_{planner.get('name', 'cem')}")

    def attach_privileged_env(self, env) -> None:
        """PRIVILEGED: give the oracle the real env whose state it may read. Only oracles
        have this method; ``run_episode`` calls it before each episode."""
        self.scorer.attach_privileged_env(env)

    # the scorer's views, for benchmarks and tests
    _real = property(lambda self: self.scorer._real)
    _sim = property(lambda self: self.scorer._sim)

    def score_candidates(self, state: np.ndarray, cands: np.ndarray) -> tuple[np.ndarray, int]:
        return self.scorer.score_candidates(state, cands)


class OracleS(OracleP):
    """Oracle-S: the same planner in the TRUE simulator, scored like the world-model MPC
    (:class:`RenderedStudentScorer`: perfect dynamics, learned reward). Next to oracle-P
    (perfect dynamics, privileged reward) and the MPC (learned both), it says which learned
    part costs success. Given ``prior``, the learned action prior proposes the first iteration
    (as in the MPC). Rendering every candidate is slow -- run it on fewer seeds."""

    name = "oracle_s"

    def __init__(self, reward, planner: dict | None = None, execute: int | None = None,
                 weights: dict | None = None, seed: int = 0, threads: int | None = None, prior=None):
        planner = dict(planner or {"name": "cem"})
        scorer = RenderedStudentScorer(reward, weights, repeat=make_planner(planner).param.repeat)
        super().__init__(planner=planner, execute=execute, seed=seed, prior=prior, threads=threads,
                         scorer=scorer, separate_stream=False)

    reward = property(lambda self: self.scorer.reward)

    def render_clip(self, state: np.ndarray, actions: np.ndarray) -> np.ndarray:
        return self.scorer.render_clip(state, actions)


__all__ = ["OracleP", "OracleS", "SimulatorScorer", "RenderedStudentScorer", "OBJECTIVES"]
