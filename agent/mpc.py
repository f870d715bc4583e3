"""The world-model MPC agent: plan in imagination, act in the real simulator.

Each replan (every ``execute`` control steps):

1. the planner (:mod:`agent.planner`, CEM or MPPI) proposes ``N`` candidate plans of
   ``horizon * repeat`` control actions (Gaussian around the warm start, or -- given a
   learned ``prior`` (:mod:`agent.prior`) -- the prior's samples for the current
   observation in the first iteration);
2. the world model imagines all ``N`` futures in ONE batched rollout
   (``WorldModel.rollout``, SWR by default) from the latest real frame
   ``obs["image"]`` (``futures=k``: each candidate ``k`` times, ``N * k`` clips);
3. the real start frame is prepended and the clips ``(N, horizon + 1, 3, 64, 64)`` are
   scored by the reward model (``reward.score(clips, instruction)``, the student);
4. objective = weighted normalized dims (task: IF, MS; realism: AOC, TC, CR, PA as
   plausibility terms) + ``w_rise * target_rise - w_grip * grip_dist + w_progress * progress``,
   averaged over a candidate's ``k`` imagined futures (``pessimism=l``: mean - l * their
   spread, so a candidate is not picked for one lucky imagined draw): :mod:`agent.objective`;
5. the chosen plan's first ``execute`` control steps are executed, then it replans,
   warm-started from the shifted plan.

The agent sees observations only (``image``, ``instruction`` and, for the prior,
``proprio``; never ``info``, never the privileged ``objects``) and calls only public verbs: ``WorldModel.rollout`` and
``reward.score``. For videos it keeps the imagined future of every chosen plan
(:attr:`WorldModelMPC.imagined`, :attr:`WorldModelMPC.last_imagined`) and a per-replan
timing log (:attr:`WorldModelMPC.log`). Given checkpoint paths it loads them lazily, so
it pickles cheaply into worker processes.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from agent.base import Agent
from agent.objective import aggregate_futures, objective_weights, plan_objective
from agent.planner import make_planner, shift_actions
from worldmodel.training import autocast


def _load_world_model(path):
    from worldmodel.world_model import WorldModel

    return WorldModel.from_checkpoint(path)


def _load_reward(path):
    from worldmodel.judge.student import StudentReward

    return StudentReward.from_checkpoint(path)


class WorldModelMPC(Agent):
    """``WorldModelMPC(world_model, reward, planner={...}, weights={...}, ...)``.

    ``world_model``: a :class:`worldmodel.world_model.WorldModel` or a checkpoint path;
    ``reward``: an object with ``score(frames (B, T+1, 3, 64, 64) float [0, 1],
    instruction (B,) long) -> {"dims": (B, 6), "shaping": (B, 3), "total": (B,)}`` or a
    student checkpoint path (``score_actions=True``: ``score`` also gets each candidate's
    control actions ``(B, T*repeat, 4)`` as ``actions=``); ``futures``: imagined clips per
    candidate, their objectives averaged (the world model samples; 1 = one draw); ``pessimism``:
    the objective is the mean minus ``pessimism`` x the standard deviation over the ``futures``
    draws (with ``futures=2`` and 1.0: the worse draw); ``weights``: objective weights by dim short name and
    ``target_rise`` / ``grip_dist`` / ``progress`` (missing keys take :data:`agent.objective.DEFAULT_WEIGHTS`).
    """

    name = "mpc"

    def __init__(self, world_model, reward, planner: dict | None = None, execute: int | None = None,
                 weights: dict | None = None, rollout_mode: str = "swr", window: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
                 threads: int | None = None, keep_imagined: bool = True, name: str | None = None,
                 amp: bool = True, prior=None, score_actions: bool = False, futures: int = 1,
                 pessimism: float = 0.0):
        planner = dict(planner or {"name": "cem"})
        self.planner_cfg = planner
        self.planner = make_planner(planner)
        self.execute = int(execute or planner.get("execute", 2))
        if not 1 <= self.execute <= self.planner.param.steps:
            raise ValueError(f"execute must be in [1, {self.planner.param.steps}], got {self.execute}")
        self.weights = objective_weights(weights)
        self._wm_src, self._reward_src = world_model, reward
        self._wm = None if isinstance(world_model, (str, os.PathLike)) else world_model
        self._reward = None if isinstance(reward, (str, os.PathLike)) else reward
        self.rollout_mode, self.window = rollout_mode, window
        self.temperature, self.top_k = float(temperature), top_k
        self.base_seed, self.threads, self.keep_imagined = int(seed), threads, bool(keep_imagined)
        self.amp = bool(amp)   # bf16 autocast for imagination (~1.5x faster on CPU)
        # the reward also reads each candidate's control actions (an action-aware student:
        # ``score(..., actions=)``); False: it judges the imagined video alone
        self.score_actions = bool(score_actions)
        # imagined futures per candidate: the world model samples its tokens, so one imagined
        # clip is one draw; the objective is the mean over ``futures`` draws (1: one draw)
        if int(futures) < 1:
            raise ValueError(f"futures must be >= 1 (imagined futures per candidate), got {futures}")
        self.futures = int(futures)
        # a lower confidence bound over the draws: the argmax of many one-draw objectives picks
        # the draws that imagined a lift that the actions do not make (winner's curse)
        if float(pessimism) < 0 or (float(pessimism) > 0 and self.futures < 2):
            raise ValueError(f"pessimism must be >= 0 and needs futures >= 2 (a spread over draws), "
                             f"got pessimism={pessimism}, futures={futures}")
        self.pessimism = float(pessimism)
        self._prior_src = prior  # an agent.prior.ActionPrior / checkpoint: proposes the first iteration
        self._prior = None if isinstance(prior, (str, os.PathLike)) else prior
        self.name = name or f"mpc_{self.planner.name}"
        self.reset()

    # ------------------------------------------------------------------ lazy models
    @property
    def world_model(self):
        if self._wm is None:
            self._wm = _load_world_model(self._wm_src)
        return self._wm

    @property
    def reward(self):
        if self._reward is None:
            self._reward = _load_reward(self._reward_src)
        return self._reward

    @property
    def prior(self):
        """The learned action prior proposing candidates (``None``: Gaussian proposals only)."""
        if self._prior is None and self._prior_src is not None:
            from agent.prior import load_prior

            self._prior = load_prior(self._prior_src)
        return self._prior

    def __getstate__(self):
        state = dict(self.__dict__)
        if isinstance(self._prior_src, (str, os.PathLike)):
            state["_prior"] = None
        if isinstance(self._wm_src, (str, os.PathLike)):
            state["_wm"] = None
        if isinstance(self._reward_src, (str, os.PathLike)):
            state["_reward"] = None
        return state

    # ------------------------------------------------------------------ Agent API
    def reset(self, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(self.base_seed if seed is None else (self.base_seed, seed))
        self._gen = torch.Generator().manual_seed(int(self._rng.integers(2**62)))
        self._plan, self._t, self._step = None, 0, 0
        self.log: list[dict] = []          # per replan: step, plan_s, wm_s, reward_s, score, ...
        self.imagined: list[tuple[int, np.ndarray]] = []   # (control step, (T+1, 64, 64, 3) uint8)
        self.plans: list[np.ndarray] = []  # the chosen plan (horizon * repeat, 4) of each imagined entry
        self.last_imagined: np.ndarray | None = None

    def act(self, obs: dict) -> np.ndarray:
        if self.threads:
            torch.set_num_threads(int(self.threads))
        if self._plan is None or self._t >= self.execute:
            self._replan(obs)
        action = self._plan[self._t]
        self._t += 1
        self._step += 1
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------------ planning
    def objective(self, out: dict) -> torch.Tensor:
        """Scalar objective (B,) from the reward's ``score`` output (:func:`agent.objective.plan_objective`)."""
        return plan_objective(out, self.weights)

    def imagine(self, image: np.ndarray, actions: np.ndarray) -> torch.Tensor:
        """Imagined clips ``(N, horizon + 1, 3, H, W)`` (real start frame first) of control
        action sequences ``(N, horizon * repeat, 4)`` from a real frame ``(H, W, 3)`` uint8."""
        from worldmodel.world_model import group_actions

        wm = self.world_model
        n = len(actions)
        start = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0)
        acts = group_actions(torch.as_tensor(actions, dtype=torch.float32), wm.action_repeat)
        # one shared start frame: the world model encodes and prefills it once for all N
        device = next(wm.parameters()).device
        with autocast(device, self.amp):
            roll = wm.rollout(start[None].to(device), acts.to(device), mode=self.rollout_mode, window=self.window,
                              temperature=self.temperature, top_k=self.top_k, generator=self._gen)
        start = start.to(roll.frames.device)
        clips = torch.cat([start[None, None].expand(n, 1, *start.shape), roll.frames.clamp(0, 1)], 1)
        return clips

    def _replan(self, obs: dict) -> None:
        image, instruction = obs["image"], int(obs["instruction"])
        if self.planner.param.repeat != self.world_model.action_repeat:
            raise ValueError(f"planner repeat {self.planner.param.repeat} != world model action_repeat "
                             f"{self.world_model.action_repeat}")
        t0 = time.perf_counter()
        warm = None if self._plan is None else shift_actions(self._plan, self._t)
        timing = {"wm_s": 0.0, "reward_s": 0.0}
        best = {"score": -np.inf, "actions": None, "clip": None}

        def score(cands: np.ndarray) -> np.ndarray:
            k = self.futures
            reps = np.repeat(cands, k, 0)      # each candidate's k draws side by side
            ta = time.perf_counter()
            clips = self.imagine(image, reps)
            tb = time.perf_counter()
            instr = torch.full((len(reps),), instruction, dtype=torch.long)
            with torch.no_grad():
                extra = {"actions": torch.as_tensor(np.clip(reps, -1.0, 1.0), dtype=torch.float32)} \
                    if self.score_actions else {}
                obj = self.objective(self.reward.score(clips, instr, **extra)).numpy().astype(np.float64)
            obj = aggregate_futures(obj.reshape(len(cands), k), self.pessimism)
            timing["wm_s"] += tb - ta
            timing["reward_s"] += time.perf_counter() - tb
            i = int(np.argmax(obj))
            if obj[i] > best["score"]:
                best.update(score=float(obj[i]), actions=cands[i].copy(), clip=clips[i * k])
            return obj

        with torch.no_grad():
            proposals = None
            if self.prior is not None:
                tp = time.perf_counter()
                proposals = self.prior.sample(image, obs["proprio"], instruction, self.planner.samples, self._gen)
                timing["prior_s"] = time.perf_counter() - tp
            res = self.planner.plan(score, warm_start=warm, rng=self._rng, proposals=proposals)
            clip = best["clip"]
            if clip is None or not np.allclose(best["actions"], res.actions):
                ta = time.perf_counter()
                clip = self.imagine(image, res.actions[None])[0]     # the chosen plan's own future
                timing["wm_s"] += time.perf_counter() - ta
        self._plan, self._t = res.actions, 0
        imagined = (clip.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        self.last_imagined = imagined
        if self.keep_imagined:
            self.imagined.append((self._step, imagined))
            self.plans.append(np.clip(res.actions, -1.0, 1.0).astype(np.float32))
        self.log.append({"step": self._step, "plan_s": time.perf_counter() - t0, **timing,
                         "score": res.score, "best_score": res.best_score, "evaluations": res.evaluations})

    def episode_log(self) -> dict:
        """What the closed loop keeps of an episode: the imagined future of every executed
        plan ``[(control step, (T+1, 64, 64, 3) uint8)]``, those plans' actions
        ``[(horizon * repeat, 4)]`` (clipped as executed), the model's ``repeat`` (control
        steps per imagined frame) and the per-replan timing log."""
        repeat = self._wm.action_repeat if self._wm is not None else self.planner.param.repeat
        return {"imagined": list(self.imagined), "plans": list(self.plans), "repeat": int(repeat),
                "replans": list(self.log), "plan_s_per_step": self.planning_time_per_step()}

    def planning_time_per_step(self) -> float:
        """Planning seconds per executed control step so far (this episode)."""
        return sum(e["plan_s"] for e in self.log) / max(self._step, 1)


__all__ = ["WorldModelMPC"]
