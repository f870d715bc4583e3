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
    state      (S, D) float32            the observation's state parts (``envs.robosuite_env.state_vector``
                                         of proprio, cube centres and instruction): what a chooser
                                         with perfect perception would see

Public verbs: :func:`counterfactuals` (one process), :func:`collect_counterfactuals`
(split over worker processes, written atomically to an ``.npz``), :func:`load_counterfactuals`,
:func:`add_states` (adds ``state`` to a file collected before it was recorded).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

KEYS = ("image", "actions", "rewards", "values", "seed", "t", "state")
LATER = ("values", "state")                  # keys that files collected before they were recorded lack
LABELS = {"rewards": 1.0, "values": 2.0, "success": 1.0}   # a candidate's label per step -> its value at success


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
    from envs.robosuite_env import state_vector

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
                    out["state"].append(state_vector(obs["proprio"], obs["objects"], obs["instruction"]))
                obs, _, terminated, truncated, _ = env.step(agent.act(obs))
                if terminated or truncated:
                    break
    finally:
        env.close()
        oracle.close()
    return {k: np.asarray(v, dtype=np.float32 if k in ("actions", "state", *LABELS) else None) for k, v in out.items()}


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
        missing = [k for k in KEYS if k not in z.files and k not in LATER]
        if missing:
            raise ValueError(f"{path} is not a counterfactual file: it lacks {missing}")
        return {k: z[k] for k in KEYS if k in z.files}


def add_states(path: str | os.PathLike, env_id: str, agent, *, progress: bool = True) -> dict:
    """Add ``state`` to a counterfactual file collected before it was recorded: ``agent`` (the
    one the file's states came from, e.g. ``PriorAgent(prior, execute=2, samples=32,
    pick="random")``) is run again on the file's seeds, which retraces its episodes exactly (its
    picks are seeded per episode; the candidates' replays never touched the episode's env), and
    the observation at each recorded step is read. Every retraced frame must equal the recorded
    image, else a clear error (a different agent or prior). Rewritten atomically; returns the arrays."""
    import gymnasium as gym
    from tqdm import tqdm

    import envs  # noqa: F401  (registers roboalign/*)
    from envs.robosuite_env import state_vector
    from envs.rollouts import atomic_path

    path = Path(path)
    data = load_counterfactuals(path)
    env = gym.make(env_id)
    try:
        rows = []
        for s in tqdm(np.unique(data["seed"]), desc="retrace episodes", disable=not progress):
            want = {int(t): i for i, t in zip(np.flatnonzero(data["seed"] == s), data["t"][data["seed"] == s])}
            agent.reset(seed=int(s))
            obs, _ = env.reset(seed=int(s))
            for t in range(max(want) + 1):
                if t in want:
                    if not np.array_equal(obs["image"], data["image"][want[t]]):
                        raise ValueError(f"{path}: seed {s} step {t} does not retrace the recorded frame; "
                                         "give the agent (and prior) that collected this file")
                    rows.append((want[t], state_vector(obs["proprio"], obs["objects"], obs["instruction"])))
                obs, *_ = env.step(agent.act(obs))
    finally:
        env.close()
    states = np.zeros((len(data["seed"]), len(rows[0][1])), np.float32)
    for i, v in rows:
        states[i] = v
    data["state"] = states
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **data)
    return data


def candidate_labels(data: dict, label: str = "rewards") -> tuple[np.ndarray, float]:
    """``(labels (S, N, steps), the label's value at success)`` of a :func:`load_counterfactuals`
    dict: ``"rewards"`` (the env's reward), ``"values"`` (oracle-P's privileged value) or
    ``"success"`` (1 from the step the candidate reaches success on, else 0: the env's reward
    without its shaping)."""
    if label not in LABELS:
        raise ValueError(f"unknown counterfactual label {label!r}; known: {sorted(LABELS)}")
    if label == "success":
        return (np.asarray(data["rewards"]) >= LABELS["rewards"] - 1e-6).astype(np.float32), LABELS[label]
    if label not in data:
        raise ValueError(f"this counterfactual file has no {label!r} (collected before oracle values were "
                         "recorded); collect it again with experiments/collect_counterfactual.py")
    return data[label], LABELS[label]


__all__ = ["counterfactuals", "collect_counterfactuals", "load_counterfactuals", "add_states", "candidate_labels"]
