"""The world-model MPC agent: plan in imagination, act in the real simulator.

The :class:`agent.choose.PlanningAgent` with a :class:`WorldModelScorer`. Each replan
(every ``execute`` control steps):

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
(:attr:`WorldModelScorer.imagined`, :attr:`WorldModelScorer.last_imagined`) and a per-replan
timing log (:attr:`agent.choose.PlanningAgent.log`). Given checkpoint paths it loads them lazily, so
it pickles cheaply into worker processes.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from agent.base import Lazy
from agent.choose import GaussianProposer, PlanningAgent, Scorer
from agent.inspect import PlanRecorder, to_uint8
from agent.objective import aggregate_futures, objective_weights, plan_objective
from agent.planner import make_planner
from worldmodel.training import autocast


def load_world_model(path):
    """A :class:`worldmodel.world_model.WorldModel` from its checkpoint (imported on first use)."""
    from worldmodel.world_model import WorldModel

    return WorldModel.from_checkpoint(path)


def load_reward(path):
    """A student reward (:class:`worldmodel.judge.student.StudentReward`) from its checkpoint."""
    from worldmodel.judge.student import StudentReward

    return StudentReward.from_checkpoint(path)


class WorldModelScorer(Scorer):
    """Scores candidate plans in imagination: the world model imagines every candidate's
    future from the latest real frame in ONE batched rollout (``futures=k``: each candidate
    ``k`` times), the real start frame is prepended, the reward model scores the clips and
    :func:`agent.objective.plan_objective` (``weights``) makes one number of each, averaged
    over the ``k`` draws (``pessimism``: minus that many standard deviations).

    It keeps the imagined future of every chosen plan (:attr:`imagined`, :attr:`last_imagined`)
    and the chosen plans (:attr:`plans`) for videos and the imagined-vs-real gap."""

    name = "worldmodel"

    def __init__(self, world_model, reward, weights: dict | None = None, rollout_mode: str = "swr",
                 window: int | None = None, temperature: float = 1.0, top_k: int | None = None,
                 keep_imagined: bool = True, amp: bool = True, score_actions: bool = False, futures: int = 1,
                 pessimism: float = 0.0, repeat: int | None = None, inspect: dict | None = None,
                 reader=None, reader_weight: float = 0.0, proprio_weight: float = 0.0):
        self.weights = objective_weights(weights)
        # optional (a world model with proprio tokens): plus this weight where the imagined
        # proprio ends in a held, raised cube (worldmodel/judge/proprio.py)
        if float(proprio_weight) < 0:
            raise ValueError(f"proprio_weight must be >= 0, got {proprio_weight}")
        self.proprio_weight = float(proprio_weight)
        # optional: the instructed cube read off the imagined pixels (agent/reader.py), added to
        # the objective with this weight
        self.reader, self.reader_weight = None, float(reader_weight)
        if reader_weight:
            if reader is None:
                raise ValueError("reader_weight > 0 needs a reader (a perception.npz path or PixelReader)")
            from agent.reader import PixelReader

            self.reader = reader if isinstance(reader, PixelReader) else PixelReader(reader)
        # opt-in per-replan record of candidates, scores and imagined futures (agent/inspect.py)
        self.recorder = PlanRecorder(**inspect) if inspect else None
        self._wm, self._reward = Lazy(world_model, load_world_model), Lazy(reward, load_reward)
        self.rollout_mode, self.window = rollout_mode, window
        self.temperature, self.top_k = float(temperature), top_k
        self.keep_imagined = bool(keep_imagined)
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
        self.repeat = repeat     # the planner's control steps per model step (checked against the model)
        self.reset()

    # ------------------------------------------------------------------ lazy models
    world_model = property(lambda self: self._wm.get())
    reward = property(lambda self: self._reward.get())

    # ------------------------------------------------------------------ Scorer API
    def reset(self) -> None:
        if self.recorder is not None:
            self.recorder.reset()
        self.imagined: list[tuple[int, np.ndarray]] = []   # (control step, (T+1, 64, 64, 3) uint8)
        self.plans: list[np.ndarray] = []  # the chosen plan (horizon * repeat, 4) of each imagined entry
        self.last_imagined: np.ndarray | None = None
        self.last_proprio: np.ndarray | None = None

    def objective(self, out: dict) -> torch.Tensor:
        """Scalar objective (B,) from the reward's ``score`` output (:func:`agent.objective.plan_objective`)."""
        return plan_objective(out, self.weights)

    def imagine(self, image: np.ndarray, actions: np.ndarray, gen: torch.Generator | None = None,
                proprio: np.ndarray | None = None) -> torch.Tensor:
        """Imagined clips ``(N, horizon + 1, 3, H, W)`` (real start frame first) of control
        action sequences ``(N, horizon * repeat, 4)`` from a real frame ``(H, W, 3)`` uint8
        (and its proprio ``(4,)``, which a world model with proprio tokens reads)."""
        from worldmodel.world_model import group_actions

        wm = self.world_model
        n = len(actions)
        start = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0)
        acts = group_actions(torch.as_tensor(actions, dtype=torch.float32), wm.action_repeat)
        # one shared start frame: the world model encodes and prefills it once for all N
        device = next(wm.parameters()).device
        with autocast(device, self.amp):
            # a model without proprio tokens ignores a given proprio; one with them needs it (rollout says so)
            prop = torch.as_tensor(np.asarray(proprio, np.float32))[None].to(device) \
                if wm.reads_proprio and proprio is not None else None
            roll = wm.rollout(start[None].to(device), acts.to(device), mode=self.rollout_mode, window=self.window,
                              temperature=self.temperature, top_k=self.top_k,
                              generator=self._gen if gen is None else gen, proprio=prop)
        start = start.to(roll.frames.device)
        # the imagined proprio (N, horizon + 1, 4), real start first (None without proprio tokens)
        self.last_proprio = None if roll.proprio is None else torch.cat(
            [prop.float().cpu().expand(n, 1, 4), roll.proprio.cpu()], 1).numpy()
        return torch.cat([start[None, None].expand(n, 1, *start.shape), roll.frames.clamp(0, 1)], 1)

    def begin(self, obs: dict, gen: torch.Generator, step: int) -> None:
        if self.repeat is not None and self.repeat != self.world_model.action_repeat:
            raise ValueError(f"planner repeat {self.repeat} != world model action_repeat "
                             f"{self.world_model.action_repeat}")
        self._image, self._instruction, self._gen, self._step = obs["image"], int(obs["instruction"]), gen, step
        if self.proprio_weight and not self.world_model.reads_proprio:
            raise ValueError("proprio_weight > 0 needs a world model with proprio tokens "
                             "(dynamics.model.proprio_bins > 0)")
        self._proprio = obs["proprio"] if self.world_model.reads_proprio else None   # read only if used
        self._timing = {"wm_s": 0.0, "reward_s": 0.0}
        self._best = {"score": -np.inf, "actions": None, "clip": None}
        if self.recorder is not None:
            self.recorder.begin(step, obs["image"])

    def score(self, cands: np.ndarray) -> np.ndarray:
        k = self.futures
        reps = np.repeat(cands, k, 0)      # each candidate's k draws side by side
        ta = time.perf_counter()
        clips = self.imagine(self._image, reps, proprio=self._proprio)
        tb = time.perf_counter()
        instr = torch.full((len(reps),), self._instruction, dtype=torch.long)
        with torch.no_grad():
            extra = {"actions": torch.as_tensor(np.clip(reps, -1.0, 1.0), dtype=torch.float32)} \
                if self.score_actions else {}
            out = self.reward.score(clips, instr, **extra)
            obj = self.objective(out).numpy().astype(np.float64)
        if self.reader is not None:
            from agent.reader import reader_objective

            obj = obj + self.reader_weight * reader_objective(self.reader.read(to_uint8(clips), self._instruction))
        if self.proprio_weight:
            from worldmodel.judge.proprio import proprio_lifted

            obj = obj + self.proprio_weight * proprio_lifted(self.last_proprio, reps[:, -1, 3])
        obj = aggregate_futures(obj.reshape(len(cands), k), self.pessimism)
        if self.recorder is not None:      # per candidate: dimensions averaged over its draws, its first draw's clip
            mean = lambda x: None if x is None else torch.as_tensor(x).float().reshape(len(cands), k, -1).mean(1)  # noqa: E731
            self.recorder.add(cands, obj, mean(out["dims"]), mean(out.get("shaping")), clips[::k])
        self._timing["wm_s"] += tb - ta
        self._timing["reward_s"] += time.perf_counter() - tb
        i = int(np.argmax(obj))
        if obj[i] > self._best["score"]:
            self._best.update(score=float(obj[i]), actions=cands[i].copy(), clip=clips[i * k])
        return obj

    def end(self, actions: np.ndarray) -> dict:
        clip = self._best["clip"]
        if clip is None or not np.allclose(self._best["actions"], actions):
            ta = time.perf_counter()
            clip = self.imagine(self._image, actions[None], proprio=self._proprio)[0]   # the chosen plan's own future
            self._timing["wm_s"] += time.perf_counter() - ta
        imagined = to_uint8(clip)
        self.last_imagined = imagined
        if self.recorder is not None:
            self.recorder.end(actions, imagined)
        if self.keep_imagined:
            self.imagined.append((self._step, imagined))
            self.plans.append(np.clip(actions, -1.0, 1.0).astype(np.float32))
        return dict(self._timing)

    def episode_log(self) -> dict:
        """The imagined future of every executed plan ``[(control step, (T+1, 64, 64, 3) uint8)]``,
        those plans' actions ``[(horizon * repeat, 4)]`` (clipped as executed) and the model's
        ``repeat`` (control steps per imagined frame)."""
        repeat = self._wm.obj.action_repeat if self._wm.obj is not None else self.repeat
        extra = self.recorder.episode_log() if self.recorder is not None else {}
        return {"imagined": list(self.imagined), "plans": list(self.plans), "repeat": int(repeat), **extra}


class WorldModelMPC(PlanningAgent):
    """``WorldModelMPC(world_model, reward, planner={...}, weights={...}, ...)``: the
    :class:`agent.choose.PlanningAgent` with a :class:`WorldModelScorer` and, given ``prior``
    (an :class:`agent.prior.ActionPrior` or its checkpoint), the prior's proposals.

    ``world_model``: a :class:`worldmodel.world_model.WorldModel` or a checkpoint path;
    ``reward``: an object with ``score(frames (B, T+1, 3, 64, 64) float [0, 1],
    instruction (B,) long) -> {"dims": (B, 6), "shaping": (B, 3), "total": (B,)}`` or a
    student checkpoint path (``score_actions=True``: ``score`` also gets each candidate's
    control actions ``(B, T*repeat, 4)`` as ``actions=``); the other options are
    :class:`WorldModelScorer`'s (missing weights take :data:`agent.objective.DEFAULT_WEIGHTS`;
    ``inspect={"top_k": 4, "random": 2}`` records every replan: :mod:`agent.inspect`).
    """

    name = "mpc"

    def __init__(self, world_model, reward, planner: dict | None = None, execute: int | None = None,
                 weights: dict | None = None, rollout_mode: str = "swr", window: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
                 threads: int | None = None, keep_imagined: bool = True, name: str | None = None,
                 amp: bool = True, prior=None, score_actions: bool = False, futures: int = 1,
                 pessimism: float = 0.0, inspect: dict | None = None, reader=None, reader_weight: float = 0.0,
                 proprio_weight: float = 0.0):
        from agent.prior import PriorProposer

        planner = dict(planner or {"name": "cem"})
        scorer = WorldModelScorer(world_model, reward, weights=weights, rollout_mode=rollout_mode, window=window,
                                  temperature=temperature, top_k=top_k, keep_imagined=keep_imagined, amp=amp,
                                  score_actions=score_actions, futures=futures, pessimism=pessimism,
                                  repeat=make_planner(planner).param.repeat, inspect=inspect, reader=reader,
                                  reader_weight=reader_weight, proprio_weight=proprio_weight)
        proposer = GaussianProposer() if prior is None else PriorProposer(prior)
        super().__init__(proposer, scorer, planner=planner, execute=execute, seed=seed, threads=threads,
                         name=name or f"mpc_{planner.get('name', 'cem')}")

    # the scorer's views, for videos, tests and benchmarks
    weights = property(lambda self: self.scorer.weights)
    world_model = property(lambda self: self.scorer.world_model)
    reward = property(lambda self: self.scorer.reward)
    imagined = property(lambda self: self.scorer.imagined)
    plans = property(lambda self: self.scorer.plans)
    last_imagined = property(lambda self: self.scorer.last_imagined)
    amp = property(lambda self: self.scorer.amp)
    futures = property(lambda self: self.scorer.futures)
    pessimism = property(lambda self: self.scorer.pessimism)
    score_actions = property(lambda self: self.scorer.score_actions)
    inspecting = property(lambda self: self.scorer.recorder is not None)

    @property
    def prior(self):
        """The learned action prior proposing candidates (``None``: Gaussian proposals only)."""
        return getattr(self.proposer, "prior", None)

    def imagine(self, image: np.ndarray, actions: np.ndarray, proprio: np.ndarray | None = None) -> torch.Tensor:
        """:meth:`WorldModelScorer.imagine` with this agent's generator."""
        return self.scorer.imagine(image, actions, self._gen, proprio)


__all__ = ["WorldModelMPC", "WorldModelScorer"]
