"""Counterfactual outcomes: at the states an agent visits, many candidate plans and what each really does.

A recorded episode shows one action sequence per state, so anything fitted on it learns how
outcomes differ BETWEEN states (early vs late, near vs far), not which of several plans from
ONE state lifts the cube -- the choice a planner makes. Here, every ``every`` control steps
of ``agent``'s episodes, the action prior proposes ``samples`` plans for the observation
(the MPC's first-iteration candidates), and each is replayed in a copy of the simulator
from the exact simulator state (:meth:`agent.oracle.OracleP.env_rewards`, no rendering):

    image      (S, H, W, 3) uint8        the observation the plans start from
    actions    (S, N, steps, 4) float32  the prior's candidates, clipped to [-1, 1]
    rewards    (S, N, steps) float32     the env's reward after each control step of each
    values     (S, N, steps) float32     oracle-P's privileged value of each step (reach + rise of
                                         the instructed cube, 2 from the first success on; its sum
                                         is the score that ``oracle_p_prior`` picks by)
    seed, t    (S,) int64                where the state came from

Public verbs: :func:`counterfactuals` (one process), :func:`collect_counterfactuals`
(split over worker processes, written atomically to an ``.npz``), :func:`load_counterfactuals`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

KEYS = ("image", "actions", "rewards", "values", "seed", "t")
LABELS = {"rewards": 1.0, "values": 2.0}   # a candidate's label per step -> its value at success


def counterfactuals(env_id: str, agent, prior, seeds, *, every: int = 8, samples: int = 32,
                    seed: int = 0, progress: bool = True) -> dict:
    """Counterfactual candidates at ``agent``'s states on ``seeds`` (see the module docstring).
    ``prior``: a checkpoint path or an object with ``sample(image, proprio, instruction, n,
    generator) -> (n, steps, 4)`` (an :class:`agent.prior.ActionPrior`)."""
    import gymnasium as gym
    import torch
    from tqdm import tqdm

    import envs  # noqa: F401  (registers roboalign/*)
    from agent.oracle import OracleP
    from agent.prior import load_prior

    if every < 1 or samples < 1:
        raise ValueError(f"every and samples must be >= 1, got every={every}, samples={samples}")
    prior = load_prior(prior) if isinstance(prior, (str, os.PathLike)) else prior
    gen = torch.Generator()
    env, oracle = gym.make(env_id), OracleP()
    out = {k: [] for k in KEYS}
    try:
        oracle.attach_privileged_env(env)
        for s in tqdm(list(seeds), desc="counterfactual episodes", disable=not progress):
            agent.reset(seed=int(s))
            gen.manual_seed(int(np.random.default_rng((int(seed), int(s))).integers(2**62)))   # per episode: any split
            obs, _ = env.reset(seed=int(s))
            for t in range(env.spec.max_episode_steps or 10**6):
                if t % every == 0:
                    with torch.no_grad():
                        cands = np.clip(prior.sample(obs["image"], obs["proprio"], obs["instruction"], samples, gen),
                                        -1.0, 1.0).astype(np.float32)
                    state = env.unwrapped.get_sim_state()
                    env_r, values = zip(*(oracle.replay(state, c) for c in cands))
                    out["rewards"].append(np.stack(env_r))
                    out["values"].append(np.stack(values))
                    out["image"].append(obs["image"].copy())
                    out["actions"].append(cands)
                    out["seed"].append(int(s))
                    out["t"].append(t)
                obs, _, terminated, truncated, _ = env.step(agent.act(obs))
                if terminated or truncated:
                    break
    finally:
        env.close()
        oracle.close()
    return {k: np.asarray(v, dtype=np.float32 if k in ("actions", *LABELS) else None) for k, v in out.items()}


def _chunk(args) -> dict:
    """One worker's share (one torch thread: the workers share the cores)."""
    env_id, agent, prior, seeds, kwargs = args
    import torch

    torch.set_num_threads(1)
    return counterfactuals(env_id, agent, prior, seeds, **kwargs)


def collect_counterfactuals(path: str | os.PathLike, env_id: str, agent, prior, seeds, *, workers: int = 1,
                            every: int = 8, samples: int = 32, seed: int = 0, progress: bool = True) -> dict:
    """:func:`counterfactuals` over ``workers`` processes (seeds split between them; the prior's
    samples are seeded per episode, so the split does not change them), concatenated in seed
    order and written atomically to ``path`` (``.npz``). Returns the arrays."""
    from envs.rollouts import atomic_path

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("no seeds to collect counterfactuals on")
    workers = max(1, min(int(workers), len(seeds)))
    parts = [seeds[i::workers] for i in range(workers)]
    jobs = [(env_id, agent, str(prior) if isinstance(prior, (str, os.PathLike)) else prior, part,
             {"every": every, "samples": samples, "seed": seed, "progress": progress and i == 0})
            for i, part in enumerate(parts)]
    if workers == 1:
        results = [_chunk(jobs[0])]
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            results = pool.map(_chunk, jobs)
    data = {k: np.concatenate([r[k] for r in results]) for k in KEYS}
    order = np.lexsort((data["t"], data["seed"]))
    data = {k: v[order] for k, v in data.items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **data)
    return data


def load_counterfactuals(path: str | os.PathLike) -> dict:
    """The arrays of a :func:`collect_counterfactuals` file, with a clear error if it is not one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"counterfactual file {path} not found; make it with "
                                "experiments/collect_counterfactual.py")
    with np.load(path) as z:
        missing = [k for k in KEYS if k not in z.files and k != "values"]
        if missing:
            raise ValueError(f"{path} is not a counterfactual file: it lacks {missing}")
        return {k: z[k] for k in KEYS if k in z.files}   # files before the oracle values lack "values"


def candidate_labels(data: dict, label: str = "rewards") -> tuple[np.ndarray, float]:
    """``(labels (S, N, steps), the label's value at success)`` of a :func:`load_counterfactuals`
    dict: ``"rewards"`` (the env's reward) or ``"values"`` (oracle-P's privileged value)."""
    if label not in LABELS:
        raise ValueError(f"unknown counterfactual label {label!r}; known: {sorted(LABELS)}")
    if label not in data:
        raise ValueError(f"this counterfactual file has no {label!r} (collected before oracle values were "
                         "recorded); collect it again with experiments/collect_counterfactual.py")
    return data[label], LABELS[label]


__all__ = ["counterfactuals", "collect_counterfactuals", "load_counterfactuals", "candidate_labels"]
