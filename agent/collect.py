"""Run agents in the simulator and collect their rollouts to HDF5.

Collection runs whole episodes in several simulator processes (a spawn-context
process pool: each worker owns one env and one agent, episodes vary in length
so episode-level parallelism keeps every core busy) and streams them, in seed
order, into one file written atomically (see :mod:`envs.rollouts`).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

import envs
from agent.base import Agent, RandomAgent
from agent.scripted import NoisyExpert, ScriptedExpert
from envs.rollouts import RolloutWriter, atomic_path, episode_from_steps
from envs.splits import split_of, split_seeds

AGENTS = {"scripted": ScriptedExpert, "noisy": NoisyExpert, "random": RandomAgent}


def make_agent(name: str, **kwargs) -> Agent:
    """An agent by name (:data:`AGENTS`), with a clear error for an unknown one."""
    if name not in AGENTS:
        raise KeyError(f"unknown agent {name!r}; known: {sorted(AGENTS)}")
    return AGENTS[name](**kwargs)


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    wrong_object: bool
    length: int
    instruction: str
    failure: str                      # "none", "missed_grasp", "drop", "wrong_object", "timeout"
    act_s: float = 0.0                # mean wall seconds per agent.act call (planning time per step)
    frames: list = field(default_factory=list, repr=False)   # (H, W, 3) uint8 per step, if recorded
    episode: dict | None = field(default=None, repr=False)   # rollout arrays, if recorded
    extras: dict = field(default_factory=dict, repr=False)   # the agent's episode_log(), if it has one
    gap: dict = field(default_factory=dict)   # imagined-vs-real gap counts (agent/gap.py), if measured


def run_episode(env, agent: Agent, seed: int, *, record: bool = False, frames: bool = False,
                options: dict | None = None, gap: str | None = None, after_success: int = 0) -> EpisodeResult:
    """One episode; the agent sees observations only. ``record`` keeps the rollout arrays,
    ``frames`` keeps ``env.render()`` (or the observation image) per step. ``gap``: a
    teacher calibration file; for an agent that logs its imagined plans (the MPC) the
    imagined-vs-real gap of every executed plan is measured after the episode
    (:mod:`agent.gap`).

    ``after_success`` (data collection): once the episode succeeds, keep acting and
    recording up to this many more steps (or until the time limit), so the models see what
    follows a lift -- a planner imagines 16-step plans, and a plan that succeeds mid-way
    goes on. The result (success, length, failure) is that of the terminating step; the
    recorded episode's ``dones`` is 1 there only and ``post_success`` counts the steps after."""
    attach = getattr(agent, "attach_privileged_env", None)  # PRIVILEGED: oracles only (agent/oracle.py)
    if attach is not None:
        attach(env)
    agent.reset(seed=seed)
    obs, info = env.reset(seed=seed, options=options)
    first_obs, first_info, steps = obs, info, []
    log = getattr(agent, "episode_log", None)    # e.g. the MPC agent's imagined futures
    states = [info["sim_state"]] if gap and callable(log) else None
    rendered = [_frame(env, obs)] if frames else []
    target_rise, lifted_ever = 0.0, False
    start = _target_z(info)
    act_s = 0.0
    while True:
        t0 = time.perf_counter()
        action = np.asarray(agent.act(obs), np.float32)
        act_s += time.perf_counter() - t0
        obs, reward, terminated, truncated, info = env.step(action)
        if record:
            steps.append((action, obs, reward, terminated, info))
        else:
            steps.append(None)
        if frames:
            rendered.append(_frame(env, obs))
        if states is not None:
            states.append(info["sim_state"])
        target_rise = max(target_rise, _target_z(info) - start)
        lifted_ever |= target_rise > 0.02
        if terminated or truncated:
            break
    failure, end_info, length = _failure(info, target_rise), info, len(steps)
    post = 0
    if record and after_success > 0 and terminated and info["success"] and not truncated:
        while post < after_success:
            action = np.asarray(agent.act(obs), np.float32)
            obs, reward, _, truncated, info = env.step(action)
            steps.append((action, obs, reward, False, info))
            post += 1
            if truncated:
                break
    info = end_info
    wanted = frames or states is not None or getattr(agent, "inspecting", False)
    elog = log() if callable(log) and wanted else {}
    gap_counts = {}
    if states is not None:
        from agent.gap import imagination_gap, load_teacher

        gap_counts = imagination_gap(load_teacher(gap), env.spec.id,
                                     int(first_obs["instruction"]), states, elog.get("imagined", []),
                                     elog.get("plans", []), int(elog.get("repeat", 1)))
    return EpisodeResult(
        seed=seed, success=bool(info["success"]), wrong_object=bool(info["wrong_object"]),
        length=length, instruction=info["instruction"], failure=failure, act_s=act_s / length,
        frames=rendered, extras=elog if frames else {k: elog[k] for k in ("inspect",) if k in elog},
        episode={**episode_from_steps(first_obs, first_info, steps), "post_success": post} if record else None,
        gap=gap_counts,
    )


def _frame(env, obs) -> np.ndarray:
    img = env.render() if env.render_mode == "rgb_array" else None
    return img if img is not None else obs["image"]


def _target_z(info: dict) -> float:
    return float(info["object_poses"][info["target"]][2])


def _failure(info: dict, target_rise: float) -> str:
    if info["success"]:
        return "none"
    if info["wrong_object"]:
        return "wrong_object"
    if target_rise < 0.01:
        return "missed_grasp"
    if target_rise > 0.02:
        return "drop"
    return "timeout"


# ---------------------------------------------------------------------- parallel episodes
_WORKER: dict = {}


def _init_worker(env_id: str, env_kwargs: dict, agent: Agent, record: bool, gap: str | None = None,
                 after_success: int = 0) -> None:
    _WORKER.update(env=envs.make(env_id, **env_kwargs), agent=agent, record=record, gap=gap,
                   after_success=after_success)


def _init_pool_worker(threads: int, env_id: str, env_kwargs: dict, agent: bytes, record: bool,
                      gap: str | None = None, after_success: int = 0) -> None:
    """A spawned worker: share the cores (no oversubscription), unpickle the agent, and keep
    any start-up error for :func:`_work` to raise (a failing pool initializer is retried forever)."""
    import torch

    torch.set_num_threads(threads)
    try:
        _init_worker(env_id, env_kwargs, pickle.loads(agent), record, gap, after_success)
    except Exception as e:
        _WORKER["error"] = e


def _work(task: tuple[int, dict | None, bool]) -> EpisodeResult:
    if "error" in _WORKER:
        raise RuntimeError(f"the episode worker failed to start: {_WORKER['error']!r}") from _WORKER["error"]
    seed, options, frames = task
    return run_episode(_WORKER["env"], _WORKER["agent"], seed, record=_WORKER["record"],
                       frames=frames, options=options, gap=_WORKER.get("gap"),
                       after_success=_WORKER.get("after_success", 0))


def run_episodes(env_id: str, agent: Agent, seeds: list[int], *, workers: int = 1, record: bool = False,
                 env_kwargs: dict | None = None, options: list[dict | None] | None = None,
                 frames: int = 0, gap: str | None = None, after_success: int = 0):
    """Yield an :class:`EpisodeResult` per seed, in seed order, from ``workers`` processes.

    Each worker (spawned, so no GL context is inherited) owns one env and a copy of
    ``agent``; episodes are the unit of work since their lengths differ. ``options``
    are per-seed reset options; the first ``frames`` episodes keep rendered frames;
    ``gap`` (a teacher file) measures the imagined-vs-real gap, ``after_success`` records
    steps past success (see :func:`run_episode`).
    """
    tasks = [(s, o, i < frames) for i, (s, o) in enumerate(zip(seeds, options or [None] * len(seeds)))]
    if workers <= 1 or len(tasks) <= 1:
        _init_worker(env_id, dict(env_kwargs or {}), agent, record, gap, after_success)
        try:
            yield from map(_work, tasks)
        finally:
            _WORKER.pop("env").close()
        return
    n = min(workers, len(tasks))
    # the agent travels as plain pickle bytes: multiprocessing's own pickler would pass any
    # torch tensor in it (e.g. a torch.Generator's state) as a shared-memory file descriptor,
    # which fails in spawned workers ("unable to resize file")
    pool = mp.get_context("spawn").Pool(n, _init_pool_worker, (max(1, (os.cpu_count() or 1) // n), env_id,
                                                                dict(env_kwargs or {}), pickle.dumps(agent), record,
                                                                gap, after_success))
    try:
        yield from pool.imap(_work, tasks)
    finally:
        _terminate(pool)


def _terminate(pool, timeout: float = 30.0) -> None:
    """``pool.terminate()``, bounded: CPython's can deadlock when its task-feeding thread is
    blocked on the queue as the workers die (seen once in the suite after a worker failed to
    start); then the workers are killed outright and the stuck daemon thread is left behind."""
    import threading

    t = threading.Thread(target=pool.terminate, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for proc in list(getattr(pool, "_pool", [])):
            proc.kill()


def collect(env_id: str, agent: str | Agent, episodes: int, out: str | os.PathLike, *, split: str = "train",
            start: int = 0, workers: int | None = None, agent_kwargs: dict | None = None,
            env_kwargs: dict | None = None, progress: bool = True, after_success: int = 0) -> dict:
    """Collect ``episodes`` episodes of ``agent`` (a registry name, or an :class:`Agent`
    such as the MPC planner: the data flywheel) on ``env_id`` with seeds from ``split``;
    ``after_success``: steps recorded past each success (:func:`run_episode`).

    Writes ``out`` atomically and returns a summary dict (episodes, steps, success
    rate, steps/s). Seeds are ``split_seeds(split, episodes, start)``.
    """
    if env_id not in envs.ENV_IDS:
        raise KeyError(f"unknown env id {env_id!r}; registered: {sorted(envs.ENV_IDS)}")
    seeds = split_seeds(split, episodes, start)
    assert all(split_of(s) == split for s in seeds)
    workers = max(1, min(workers or os.cpu_count() or 1, episodes))
    env_kwargs, agent_kwargs = dict(env_kwargs or {}), dict(agent_kwargs or {})
    actor = make_agent(agent, **agent_kwargs) if isinstance(agent, str) else agent
    agent = agent if isinstance(agent, str) else actor.name
    env_args = {"env_id": env_id, "env_name": envs.ENV_IDS[env_id], "env_kwargs": env_kwargs,
                "agent": agent, "agent_kwargs": agent_kwargs, "split": split}
    results = run_episodes(env_id, actor, seeds, workers=workers, record=True,
                           env_kwargs={**env_kwargs, "segmentation": True}, after_success=int(after_success))
    t0, steps, successes = time.time(), 0, 0
    with atomic_path(out) as tmp:
        writer = RolloutWriter(tmp, env_args)
        try:
            for res in tqdm(results, total=len(seeds), desc=f"collect {env_id} [{agent}]",
                            disable=not progress, unit="ep"):
                writer.add(res.episode, seed=res.seed, split=split, instruction=res.instruction,
                           instruction_id=int(res.episode["obs"]["instruction"][0]),
                           success=res.success, wrong_object=res.wrong_object, agent=agent,
                           failure=res.failure, post_success=int(res.episode["post_success"]))
                steps += res.length
                successes += res.success
        finally:
            writer.close()
            results.close()
    elapsed = time.time() - t0
    return {"path": str(Path(out)), "episodes": episodes, "steps": steps, "workers": workers,
            "success_rate": successes / max(episodes, 1), "seconds": elapsed,
            "steps_per_s": steps / max(elapsed, 1e-9)}
