"""Oracle-P: the MPC planner run in the TRUE simulator with a privileged dense reward.

It answers "can this planner, horizon and sample budget solve the task at all?"
before any learned model is involved. Each replan:

1. read the real env's full simulator state through the **privileged** hook
   (:meth:`OracleP.attach_privileged_env`; ``agent.collect.run_episode`` calls it for
   any agent that has it -- learned agents do not);
2. score every candidate plan by restoring that state in the oracle's own env instance
   (state observations: nothing is rendered) and stepping the candidate's control
   actions, summing a privileged dense reward (``objective``: reach + rise of the
   instructed cube, or robosuite's own shaped reward);
   a candidate that reaches success is credited the success reward for its remaining
   steps (and stops simulating);
3. execute the chosen plan's first ``execute`` control steps, then replan, warm-started
   from the shifted plan.

The oracle never reads ``info`` and never renders; its observations are ignored except
as a clock. It is picklable (the simulator env is rebuilt lazily in each process).
"""
from __future__ import annotations

import os

import numpy as np

from agent.base import Agent
from agent.objective import objective_weights, plan_objective
from agent.planner import make_planner, shift_actions

OBJECTIVES = ("robosuite", "shaped")


class OracleP(Agent):
    """``OracleP(planner={...}, execute=2, objective="shaped", discount=1.0)``.

    ``objective``: ``"shaped"`` (default) = per step reach ``1 - tanh(10 d)`` + the
    instructed cube's rise / success height (clipped to [0, 1]) - 0.5 once a wrong cube
    was lifted, 2 on success; ``"robosuite"`` = the env's reward (robosuite's shaped
    reward). robosuite's grasp flag can be earned by pressing a tilted cube into the
    table, where the robosuite objective gets stuck; the rise term pays for lifting.
    """

    name = "oracle_p"

    def __init__(self, planner: dict | None = None, execute: int | None = None, objective: str = "shaped",
                 discount: float = 1.0, seed: int = 0, prior=None):
        planner = dict(planner or {"name": "cem"})
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; known: {OBJECTIVES}")
        self.planner_cfg = planner
        self.planner = make_planner(planner)
        self.execute = int(execute or planner.get("execute", 2))
        if not 1 <= self.execute <= self.planner.param.steps:
            raise ValueError(f"execute must be in [1, {self.planner.param.steps}], got {self.execute}")
        self.objective, self.discount, self.base_seed = objective, float(discount), int(seed)
        self.name = f"oracle_p_{self.planner.name}"
        self._real = None        # the attached real env (privileged)
        self._sim = None         # the oracle's own simulator (state observations, no rendering)
        self._prior_src = prior  # an agent.prior.ActionPrior / checkpoint: proposes the first iteration
        self._prior = None if isinstance(prior, (str, os.PathLike)) else prior
        self.reset()

    # ------------------------------------------------------------------ privileged hook
    def attach_privileged_env(self, env) -> None:
        """PRIVILEGED: give the oracle the real env whose state it may read. Only oracles
        have this method; ``run_episode`` calls it before each episode."""
        self._real = env.unwrapped
        if self._sim is not None and self._sim.task != self._real.task:
            self._sim.close()
            self._sim = None

    def _privileged_state(self) -> np.ndarray:
        """PRIVILEGED: the real env's full simulator state (``get_sim_state``)."""
        if self._real is None:
            raise RuntimeError("OracleP needs the real env: call attach_privileged_env(env) first "
                               "(agent.collect.run_episode does this for you)")
        return self._real.get_sim_state()

    def _simulator(self):
        if self._sim is None:
            from envs.robosuite_env import RoboAlignEnv

            self._sim = RoboAlignEnv(task=self._real.task, obs_mode="state",
                                     control_freq=self._real.control_freq)
        return self._sim

    # ------------------------------------------------------------------ Agent API
    def reset(self, seed: int | None = None) -> None:
        import torch

        key = (self.base_seed,) if seed is None else (self.base_seed, seed)
        self._rng = np.random.default_rng(key)
        # the prior's samples: a stream of their own (the planner's draws stay what they were without a prior)
        self._gen = torch.Generator().manual_seed(int(np.random.default_rng((*key, 1)).integers(2**62)))
        self._plan, self._t, self._steps = None, 0, 0
        self.log: list[dict] = []           # one entry per replan

    def act(self, obs: dict) -> np.ndarray:
        if self._plan is None or self._t >= self.execute:
            self._replan(obs)
        action = self._plan[self._t]
        self._t += 1
        self._steps += 1
        return action.astype(np.float32)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_real"] = state["_sim"] = None
        if isinstance(self._prior_src, (str, os.PathLike)):
            state["_prior"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__dict__.setdefault("_steps", len(self.__dict__.get("log", ())) * self.execute)

    # ------------------------------------------------------------------ planning
    def _proposals(self, obs: dict) -> np.ndarray | None:
        """First-iteration candidates ``(samples, steps, 4)``: the action prior's samples
        (given ``prior``), or None for Gaussian ones."""
        if self._prior_src is None:
            return None
        if self._prior is None:
            from agent.prior import load_prior

            self._prior = load_prior(self._prior_src)
        return self._prior.sample(obs["image"], obs["proprio"], obs["instruction"], self.planner.samples, self._gen)

    def _replan(self, obs: dict) -> None:
        start = self._privileged_state()
        warm = None if self._plan is None else shift_actions(self._plan, self._t)
        sim_steps = [0]

        def score(cands: np.ndarray) -> np.ndarray:
            out, n = self.score_candidates(start, cands)
            sim_steps[0] += n
            return out

        res = self.planner.plan(score, warm_start=warm, rng=self._rng, proposals=self._proposals(obs))
        self._plan, self._t = res.actions, 0
        self.log.append({"plan_s": res.seconds, "score": res.score, "best_score": res.best_score,
                         "sim_steps": sim_steps[0], "evaluations": res.evaluations})

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
        from envs.vocab import target_colour

        return sim._body_pos(sim._cubes[target_colour(sim._instruction)])

    def _shaped(self, sim, info, start) -> float:
        if info["success"]:
            return 2.0
        cube = self._target_pos(sim)
        reach = 1 - np.tanh(10.0 * np.linalg.norm(info["eef_pos"] - cube))
        rise = np.clip((cube[2] - start[2]) / sim.task.lift_margin, 0.0, 1.0)
        return float(reach + rise - 0.5 * info["wrong_object"])

    def planning_time_per_step(self) -> float:
        """Planning seconds per executed control step so far (this episode)."""
        return sum(e["plan_s"] for e in self.log) / max(self._steps, 1)

    def episode_log(self) -> dict:
        """This episode's extras for the closed loop: the per-replan ``log`` and ``plan_s_per_step``."""
        return {"log": list(self.log), "plan_s_per_step": self.planning_time_per_step()}

    def close(self) -> None:
        if self._sim is not None:
            self._sim.close()
            self._sim = None


class OracleS(OracleP):
    """Oracle-S: the same planner in the TRUE simulator, scored like the world-model MPC.

    Every candidate is simulated from the real state (privileged, as for oracle-P) and
    RENDERED (one 64x64 frame per ``repeat`` control steps, the real start frame first);
    the clips are scored by the student reward with the MPC's objective
    (:func:`agent.objective.plan_objective`, ``weights``). Perfect dynamics, learned reward:
    next to oracle-P (perfect dynamics, privileged reward) and the MPC (learned both), it
    says which learned part costs success. Given ``prior``, the learned action prior
    proposes the first iteration (as in the MPC). Rendering every candidate is slow --
    run it on fewer seeds.
    """

    name = "oracle_s"

    def __init__(self, reward, planner: dict | None = None, execute: int | None = None,
                 weights: dict | None = None, seed: int = 0, threads: int | None = None, prior=None):
        super().__init__(planner=planner, execute=execute, seed=seed, prior=prior)
        self.weights = objective_weights(weights)
        self._reward_src, self.threads = reward, threads
        self._reward = None if isinstance(reward, (str, os.PathLike)) else reward
        self.name = f"oracle_s_{self.planner.name}"

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        import torch

        self._gen = torch.Generator().manual_seed(int(self._rng.integers(2**62)))

    @property
    def reward(self):
        if self._reward is None:
            from worldmodel.judge.student import StudentReward

            self._reward = StudentReward.from_checkpoint(self._reward_src)
        return self._reward

    def __getstate__(self):
        state = super().__getstate__()
        if isinstance(self._reward_src, (str, os.PathLike)):
            state["_reward"] = None
        return state

    def _simulator(self):
        if self._sim is None:
            from envs.robosuite_env import RoboAlignEnv

            self._sim = RoboAlignEnv(task=self._real.task, obs_mode="state", render_mode="rgb_array",
                                     render_size=self._real.image_size, control_freq=self._real.control_freq)
        return self._sim

    def act(self, obs: dict) -> np.ndarray:
        self._instruction = int(obs["instruction"])     # the reward is told the instruction
        return super().act(obs)

    def render_clip(self, state: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The real future of ``actions`` from ``state``: ``(steps / repeat + 1, H, W, 3)`` uint8."""
        sim, repeat = self._simulator(), self.planner.param.repeat
        sim.reset_to(state)
        frames = [sim.render()]
        for t, a in enumerate(actions):
            sim.step(a)
            if (t + 1) % repeat == 0:
                frames.append(sim.render())
        return np.stack(frames)

    def score_candidates(self, state: np.ndarray, cands: np.ndarray) -> tuple[np.ndarray, int]:
        import torch

        if self.threads:
            torch.set_num_threads(int(self.threads))
        clips = np.stack([self.render_clip(state, seq) for seq in cands])
        frames = torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float().div(255.0)
        instr = torch.full((len(cands),), self._instruction, dtype=torch.long)
        with torch.no_grad():
            out = self.reward.score(frames, instr)
        return plan_objective(out, self.weights).numpy().astype(np.float64), int(cands.shape[0] * cands.shape[1])


__all__ = ["OracleP", "OracleS", "OBJECTIVES"]
