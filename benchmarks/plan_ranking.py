"""Plan ranking: does the planning objective order the action prior's candidates as the true simulator does?

    python benchmarks/plan_ranking.py                       # the main job's models (run.json), Lift val seeds
    python benchmarks/plan_ranking.py --cache PATH          # re-score a saved cache (no simulation)
    python benchmarks/plan_ranking.py --cache PATH --worldmodel WM --out NEW
                                                            # re-imagine its candidates with another world model
    python benchmarks/plan_ranking.py --cache PATH --score-actions --out NEW
                                                            # the student also reads each candidate's actions

The MPC picks one of the prior's candidate plans by the objective of its imagined clip
(world model + student, ``agent.objective.plan_objective``). 'Closed loop diagnosis' found that
even the TRUE clips scored by the student (oracle-S) pick no better than chance. This
measures that choice directly, on many more decisions than a closed-loop run has:

1. states: the prior agent (``agent.prior.PriorAgent``, one sample, 8 steps per chunk) runs
   episodes on VALIDATION seeds; every ``--every`` control steps its simulator state and
   observation are kept;
2. per state, ``--samples`` prior candidates (the MPC's first-iteration proposals), each
   - *value*: oracle-P's privileged shaped return of the candidate in the true simulator
     (``agent.oracle.OracleP``; the objective with which the same planner solves Lift),
   - *true clip*: the candidate's real future rendered at 64 px (``OracleS.render_clip``),
     scored by the student and by the privileged teacher,
   - *imagined clip*: the world model's rollout of it (``WorldModelMPC.imagine``, SWR),
     scored by the student;
3. per view and per objective term: the within-state pairwise accuracy against the value
   (pairs whose values differ by more than ``--tol``; 0.5 = chance), the mean Spearman, and
   the pick regret ``(v_best - v_pick) / (v_best - v_mean)`` averaged over states
   (0 = always the best candidate, 1 = a random pick on average).

A linear re-weighting of the 9 objective terms (6 dimensions + 3 shaping outputs) is fitted
on half of the states (least squares on within-state centred values) and evaluated on the
other half: the ceiling of any objective-weight change for that view.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.report import write_section  # noqa: E402
from experiments.common import resolve, setup_torch  # noqa: E402

TERMS = ("IF", "MS", "AOC", "TC", "CR", "PA", "target_rise", "-grip_dist", "progress")
VIEWS = ("teacher_true", "student_true", "teacher_imagined", "student_imagined")


def features(out: dict, teacher: bool = False) -> np.ndarray:
    """The objective terms ``(N, 9)`` (:data:`TERMS`) from a score output (dims normalized
    to [0, 1]; ``grip_dist`` negated so that larger is better for every term)."""
    if teacher:
        from worldmodel.judge import MAX_SCORES

        dims = np.asarray(out["scores"], np.float64) / np.asarray(MAX_SCORES, np.float64)
    else:
        dims = np.asarray(out["dims"], np.float64)
    sh = np.asarray(out["shaping"], np.float64)
    return np.concatenate([dims, sh[:, :1], -sh[:, 1:2], sh[:, 2:3]], 1)


def student_features(reward, clips, ids, actions=None) -> np.ndarray:
    """The student's objective terms ``(N, 9)`` of clips ``(N, T+1, ...)``; given the
    candidates' control ``actions (N, T*stride, 4)`` the student also reads them
    (``--score-actions``, as ``mpc.score_actions``)."""
    import torch

    extra = {} if actions is None else {"actions": torch.as_tensor(np.clip(actions, -1.0, 1.0), dtype=torch.float32)}
    with torch.no_grad():
        out = reward.score(clips, ids, **extra)
    return features({k: v.numpy() for k, v in out.items()})


def upgrade_cache(c: dict) -> dict:
    """A cache made before the ``progress`` term (8 terms per view): progress = 0 there."""
    for view in VIEWS:
        if c[view].shape[-1] == len(TERMS) - 1:
            c[view] = np.concatenate([c[view], np.zeros((*c[view].shape[:-1], 1))], -1)
    if len(c["weights"]) == len(TERMS) - 1:
        c["weights"] = np.append(c["weights"], 0.0)
    return c


def objective_weights(weights: dict) -> np.ndarray:
    """``agent.mpc`` objective weights as a vector over :data:`TERMS` (``features @ w`` is
    :func:`agent.objective.plan_objective`)."""
    from agent.objective import DIM_KEYS

    return np.array([weights[k] for k in (*DIM_KEYS, "target_rise", "grip_dist", "progress")], float)


# ----------------------------------------------------------------------------- metrics
def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def ranking_metrics(values: np.ndarray, scores: np.ndarray, tol: float) -> dict:
    """``values``, ``scores``: ``(S, N)`` per state and candidate. Pairwise accuracy over
    pairs with ``|dv| > tol`` (score ties count half), mean Spearman over states whose
    values vary, mean pick regret over states whose values vary by more than ``tol``."""
    right = total = 0.0
    rho, regret = [], []
    for v, s in zip(values, scores):
        dv, ds = v[:, None] - v[None, :], s[:, None] - s[None, :]
        mask = np.triu(np.abs(dv) > tol, 1)
        total += mask.sum()
        right += ((np.sign(dv) == np.sign(ds)) & (ds != 0))[mask].sum() + 0.5 * (ds == 0)[mask].sum()
        if np.ptp(v) > tol:
            r = _spearman(v, s)
            if not np.isnan(r):
                rho.append(r)
            best = s == s.max()       # ties at the top: the expected value of a random pick among them
            regret.append((v.max() - v[best].mean()) / (v.max() - v.mean()))
    return {"pairs": int(total), "pair_acc": right / max(total, 1), "spearman": float(np.mean(rho)) if rho else float("nan"),
            "regret": float(np.mean(regret)) if regret else float("nan"), "states": len(regret)}


def budget_regret(values: np.ndarray, futures: np.ndarray, score, n: int, k: int, tol: float,
                  rng: np.random.Generator, reps: int = 50) -> float:
    """Mean pick regret (as :func:`ranking_metrics`, against all ``N`` candidates of a state)
    when the planner sees only ``n`` of the ``N`` candidates, each through the mean of ``k``
    of its ``K`` imagined futures (both drawn at random, ``reps`` times per state):
    ``futures`` ``(S, N, K, F)``, ``score`` maps ``(n, F)`` features to ``(n,)`` scores.
    At a fixed imagination budget ``n * k`` this asks whether more draws per candidate beat
    more candidates."""
    n_cands, n_fut = futures.shape[1:3]
    out = []
    for v, f in zip(values, futures):
        spread = v.max() - v.mean()
        if np.ptp(v) <= tol:
            continue
        r = 0.0
        for _ in range(reps):
            idx, fut = rng.choice(n_cands, n, replace=False), rng.choice(n_fut, k, replace=False)
            sc = score(f[idx][:, fut].mean(1))
            r += (v.max() - v[idx[sc == sc.max()]].mean()) / spread
        out.append(r / reps)
    return float(np.mean(out)) if out else float("nan")


def _per_state(values: np.ndarray, scores: np.ndarray, tol: float) -> np.ndarray:
    """``(S, 3)``: right pairs, counted pairs and pick regret (NaN where the values spread
    by at most ``tol``) per state, as :func:`ranking_metrics` counts them."""
    out = np.full((len(values), 3), np.nan)
    for i, (v, s) in enumerate(zip(values, scores)):
        dv, ds = v[:, None] - v[None, :], s[:, None] - s[None, :]
        mask = np.triu(np.abs(dv) > tol, 1)
        out[i, 0] = ((np.sign(dv) == np.sign(ds)) & (ds != 0))[mask].sum() + 0.5 * (ds == 0)[mask].sum()
        out[i, 1] = mask.sum()
        if np.ptp(v) > tol:
            best = s == s.max()
            out[i, 2] = (v.max() - v[best].mean()) / (v.max() - v.mean())
    return out


def paired_difference(values: np.ndarray, a: np.ndarray, b: np.ndarray, tol: float, key: str,
                      rng: np.random.Generator, reps: int = 1000) -> tuple[float, float, float]:
    """``metric(b) - metric(a)`` (``key``: ``pair_acc`` or ``regret`` of :func:`ranking_metrics`)
    on the same states and candidates, with a 95% bootstrap interval over states (resampled
    together for both, i.e. paired)."""
    if key not in ("pair_acc", "regret"):
        raise ValueError(f"key must be pair_acc or regret, got {key!r}")
    sa, sb = _per_state(values, a, tol), _per_state(values, b, tol)

    def metric(st, idx):
        if key == "pair_acc":
            return st[idx, 0].sum() / max(st[idx, 1].sum(), 1)
        return np.nanmean(st[idx, 2]) if np.isfinite(st[idx, 2]).any() else np.nan

    every = np.arange(len(values))
    diff = metric(sb, every) - metric(sa, every)
    boot = []
    for _ in range(reps):
        i = rng.integers(0, len(values), len(values))
        boot.append(metric(sb, i) - metric(sa, i))
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return float(diff), float(lo), float(hi)


def _later_stage(imagined: np.ndarray, true: np.ndarray) -> np.ndarray:
    """1.0 where the teacher's IF reading (stage 0-3: nothing, reached, grasped, done) of an
    imagined clip ``(..., 9)`` is later than that of the true clip ``(..., 9)`` (broadcast)."""
    return (np.rint(imagined[..., 0] * 3) > np.rint(true[..., 0] * 3)).astype(float)


def top_pick_optimism(c: dict, scores: np.ndarray) -> tuple[float, float]:
    """(rate over states at which the top-scored candidate's imagined clip shows a later task
    stage than its true clip, the same rate over all candidates): the teacher's IF reading of
    ``teacher_imagined`` vs ``teacher_true`` (stage 0-3). A planner taking the argmax of many
    imagined futures selects for false lifts; the first number is what it sees."""
    over = _later_stage(c["teacher_imagined"], c["teacher_true"])
    return _at_top(over, scores), float(over.mean())


def _false_stage(c: dict) -> np.ndarray:
    """``(S, N, K)``: 1 where a draw of a candidate's imagined future shows a later task stage
    (the teacher's IF reading, 0-3) than the candidate's true clip."""
    return _later_stage(c["teacher_futures"], c["teacher_true"][:, :, None])


def pessimism_rows(c: dict, tol: float, ks=(1, 2, 4), lams=(0.0, 0.5, 1.0, 2.0)) -> list[str]:
    """A table: for the MPC objective over ``k`` draws aggregated as mean - l x spread
    (:func:`agent.objective.aggregate_futures`) and as the minimum, the pairwise accuracy, pick
    regret and false-stage rate at the top pick (:func:`_false_stage`)."""
    from agent.objective import aggregate_futures

    obj = c["student_futures"] @ c["weights"]          # (S, N, K)
    false = _false_stage(c)
    n_fut = obj.shape[2]
    rows = ["| draws k | aggregate | pairwise accuracy | pick regret | false stage at the top pick |",
            "|---|---|---|---|---|"]
    for k in (k for k in ks if k <= n_fut):
        aggs = [(f"mean - {lam:g} x spread" if lam else "mean", lambda o, lam=lam: aggregate_futures(o, lam))
                for lam in (lams if k > 1 else (0.0,))]
        aggs += [("min", lambda o: o.min(1))] if k > 2 else []
        for name, agg in aggs:
            sc = np.stack([agg(o[:, :k]) for o in obj])
            m = ranking_metrics(c["value"], sc, tol)
            top = np.mean([false[i][sc[i] == sc[i].max()][:, :k].mean() for i in range(len(sc))])
            rows.append(f"| {k} | {name} | {m['pair_acc']:.3f} | {m['regret']:.2f} | {top:.2f} |")
    return rows


def _proprio_lift(c: dict) -> np.ndarray:
    """``(S, N)``: 1.0 where a candidate's imagined proprio reads a lift at its last frame."""
    from worldmodel.judge.proprio import proprio_lifted

    return proprio_lifted(c["proprio_imagined"], c["candidates"][..., -1, 3]).astype(float)


def _false_proprio_lift(c: dict) -> np.ndarray:
    """``(S, N)``: 1.0 where the imagined proprio reads a lift and the teacher reads the true clip below 3."""
    return _proprio_lift(c) * (np.rint(c["teacher_true"][..., 0] * 3) < 3)


def proprio_rows(c: dict, tol: float, weights=(1.0, 10.0)) -> list[str]:
    """A table: the proprio-read lift alone and added (x each of ``weights``) to the MPC objective
    on ``student_imagined``: pairwise accuracy, pick regret, false proprio lift and the teacher's
    later stage at the top pick."""
    lift, false = _proprio_lift(c), _false_proprio_lift(c)
    later = _later_stage(c["teacher_imagined"], c["teacher_true"])
    base = c["student_imagined"] @ c["weights"]
    rows = ["| objective | pairwise accuracy | pick regret | false lift at the top pick | "
            "teacher later stage at the top pick |", "|---|---|---|---|---|"]
    for name, sc in [("MPC objective", base), ("proprio lift alone", lift),
                     *((f"MPC objective + {w:g} x proprio lift", base + w * lift) for w in weights)]:
        m = ranking_metrics(c["value"], sc, tol)
        rows.append(f"| {name} | {m['pair_acc']:.3f} | {m['regret']:.2f} | {_at_top(false, sc):.2f} | "
                    f"{_at_top(later, sc):.2f} |")
    return rows


def _at_top(x: np.ndarray, scores: np.ndarray) -> float:
    """Mean over states of ``x`` (S, N) at the top-scored candidates (ties averaged)."""
    return float(np.mean([x[i][scores[i] == scores[i].max()].mean() for i in range(len(scores))]))


def fit_weights(values: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """Least-squares weights ``(F,)`` of within-state centred features ``(S, N, F)`` on
    centred values ``(S, N)`` (a ranking only needs the differences within a state)."""
    x = (feats - feats.mean(1, keepdims=True)).reshape(-1, feats.shape[-1])
    y = (values - values.mean(1, keepdims=True)).reshape(-1)
    return np.linalg.lstsq(x, y, rcond=None)[0]


# ----------------------------------------------------------------------------- data
def collect_states(env_id: str, agent, episodes: int, every: int, seed_start: int) -> list[dict]:
    """(sim state, observation) every ``every`` control steps of ``agent``'s episodes on val
    seeds (the prior agent, or the MPC itself: the states its own choices lead to)."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers roboalign/*)
    from envs.splits import split_seeds

    env, states = gym.make(env_id), []
    try:
        for seed in split_seeds("val", episodes, seed_start):
            agent.reset(seed=seed)
            obs, info = env.reset(seed=seed)
            for t in range(env.spec.max_episode_steps or 10**6):
                if t % every == 0:
                    states.append({"seed": seed, "t": t, "state": env.unwrapped.get_sim_state(),
                                   "image": obs["image"].copy(), "proprio": obs["proprio"].copy(),
                                   "instruction": int(obs["instruction"])})
                obs, _, terminated, truncated, info = env.step(agent.act(obs))
                if terminated or truncated:
                    break
    finally:
        env.close()
    return states


def state_agent(kind: str, mpc, planner: dict, iterations: int | None):
    """The agent whose episodes give the states: ``prior`` (the action prior alone, one
    sample, 8 steps per chunk) or ``mpc`` (the measured world model + student + prior as
    the closed loop's ``mpc_prior``: the planner config with ``samples`` of its own and
    ``iterations`` if given, the cache's objective weights)."""
    from agent.mpc import WorldModelMPC
    from agent.prior import PriorAgent

    if kind == "prior":
        return PriorAgent(mpc.prior, execute=8)
    conf = {**planner, **({"iterations": iterations} if iterations else {})}
    return WorldModelMPC(mpc.world_model, mpc.reward, planner=conf, prior=mpc.prior, weights=mpc.weights,
                         keep_imagined=False, name="mpc_prior")


def measure(run: dict, env_id: str, args) -> dict:
    """Simulate, render, imagine and score every candidate; returns the cache arrays."""
    import gymnasium as gym
    import torch
    from omegaconf import OmegaConf
    from tqdm import tqdm

    from agent.mpc import WorldModelMPC
    from agent.oracle import OracleP, OracleS
    from worldmodel.judge.teacher import Teacher

    st = run["stages"]
    prior_path = str(resolve(Path(st["prior"]) / "prior.pt"))
    conf = Path(__file__).resolve().parents[1] / "experiments" / "conf" / "planner" / f"{args.planner}.yaml"
    planner_conf = OmegaConf.to_container(OmegaConf.load(conf))
    planner = {**planner_conf, "samples": args.samples, "elites": min(planner_conf.get("elites", 1), args.samples)}
    student = str(resolve(args.student)) if args.student else str(resolve(Path(st["student"]) / "student.pt"))
    mpc = WorldModelMPC(world_model_path(run, args.worldmodel), student, planner=planner, prior=prior_path,
                        weights={"progress": args.progress}, score_actions=args.score_actions)
    mpc.reset(seed=args.seed)
    t0 = time.perf_counter()
    states = collect_states(env_id, state_agent(args.states, mpc, planner_conf, args.iterations), args.episodes,
                            args.every, args.seed_start)
    print(f"{len(states)} states from {args.episodes} {args.states}-agent episodes ({time.perf_counter() - t0:.0f} s)")
    oracle_p, oracle_s = OracleP(planner=planner), OracleS(mpc.reward, planner=planner)
    teacher = Teacher.load(resolve(Path(st["bench"]) / "teacher.json"))
    env = gym.make(env_id)
    oracle_p.attach_privileged_env(env)
    oracle_s.attach_privileged_env(env)
    gen = torch.Generator().manual_seed(args.seed)
    cache = {k: [] for k in ("value", *VIEWS, "student_futures", "teacher_futures", "seed", "t", "instruction", "clips_true",
                             "clips_imagined", "image", "candidates", "state", "proprio")}
    secs = {"simulate": 0.0, "render": 0.0, "imagine": 0.0, "student": 0.0, "teacher": 0.0}
    try:
        for s in tqdm(states, desc="states"):
            instr = s["instruction"]
            with torch.no_grad():
                cands = np.clip(mpc.prior.sample(s["image"], s["proprio"], instr, args.samples, gen), -1.0, 1.0)
            ta = time.perf_counter()
            value = oracle_p.score_candidates(s["state"], cands)[0]
            tb = time.perf_counter()
            true = np.stack([oracle_s.render_clip(s["state"], c) for c in cands])
            tc = time.perf_counter()
            with torch.no_grad():
                imagined = (mpc.imagine(s["image"], cands, s["proprio"]).permute(0, 1, 3, 4, 2) * 255).round().byte().numpy()
            if mpc.world_model.reads_proprio:
                cache.setdefault("proprio_imagined", []).append(mpc.scorer.last_proprio)
            td = time.perf_counter()
            ids = torch.full((len(cands),), instr, dtype=torch.long)
            acts = cands if args.score_actions else None
            f_true = student_features(mpc.reward, true, ids, acts)
            f_imag = student_features(mpc.reward, imagined, ids, acts)
            f_fut, more = [f_imag], None
            with torch.no_grad():
                if args.futures > 1:     # more draws of the same candidates' futures (mpc.futures)
                    reps = np.repeat(cands, args.futures - 1, 0)
                    more = mpc.imagine(s["image"], reps, s["proprio"])
                    ids_more = torch.full((len(more),), instr, dtype=torch.long)
                    f_more = student_features(mpc.reward, more, ids_more, reps if args.score_actions else None)
                    f_fut += list(f_more.reshape(len(cands), args.futures - 1, -1).transpose(1, 0, 2))
                    more = (more.permute(0, 1, 3, 4, 2) * 255).round().byte().numpy()
            te = time.perf_counter()
            clips = [{"frames": c, "instruction": instr, "start_state": s["state"], "actions": a.astype(np.float32),
                      "stride": planner.get("repeat", 2), "env_id": env_id} for c, a in zip(true, cands)]
            f_teacher = features(teacher.score_clips(clips), teacher=True)
            for clip, frames in zip(clips, imagined):   # same start and actions: the replay is cached
                clip["frames"] = frames
            f_teacher_imag = features(teacher.score_clips(clips), teacher=True)
            t_fut = [f_teacher_imag]
            if more is not None:     # the teacher on every draw: which draws imagined a false stage
                rep = [{**clips[i // (args.futures - 1)], "frames": fr} for i, fr in enumerate(more)]
                f_more = features(teacher.score_clips(rep), teacher=True)
                t_fut += list(f_more.reshape(len(cands), args.futures - 1, -1).transpose(1, 0, 2))
            tf = time.perf_counter()
            for k, v in zip(secs, (tb - ta, tc - tb, td - tc, te - td, tf - te)):
                secs[k] += v
            for k, v in (("value", value), ("teacher_true", f_teacher), ("student_true", f_true),
                         ("teacher_imagined", f_teacher_imag),
                         ("student_imagined", f_imag), ("student_futures", np.stack(f_fut, 1)),
                         ("teacher_futures", np.stack(t_fut, 1)),
                         ("seed", s["seed"]), ("t", s["t"]), ("instruction", instr),
                         ("clips_true", true), ("clips_imagined", imagined), ("image", s["image"]),
                         ("candidates", cands.astype(np.float32)), ("state", s["state"]),
                         ("proprio", np.asarray(s["proprio"], np.float32))):
                cache[k].append(v)
    finally:
        env.close()
        oracle_p.close()
        oracle_s.close()
    out = {k: np.asarray(v) for k, v in cache.items()}
    out["seconds"] = np.array([secs[k] for k in secs])
    out["weights"] = objective_weights(mpc.weights)
    out["states_from"] = np.array(args.states)
    out["score_actions"] = np.array(bool(args.score_actions))
    return out


def world_model_reads_proprio(path: str) -> bool:
    """Whether the world-model checkpoint at ``path`` has proprio tokens (needs the start proprio)."""
    from worldmodel.training import load_checkpoint

    return bool(load_checkpoint(path, kind="worldmodel")["config"]["dynamics"].get("proprio_bins"))


def world_model_path(run: dict, override: str | None) -> str:
    """The world model that imagines: ``--worldmodel PATH`` or the run's aligned stage."""
    if not override:
        return str(resolve(Path(run["stages"]["aligned"]) / "worldmodel.pt"))
    p = resolve(override)
    if not p.exists():
        raise SystemExit(f"--worldmodel {override}: no such world-model checkpoint ({p})")
    return str(p)


def run_student(run_json: str) -> str:
    """The student checkpoint of a main-job run (``run.json``'s student stage)."""
    path = resolve(run_json)
    if not path.exists():
        raise SystemExit(f"{path} not found: pass --student, or --run naming the main job's stages")
    return str(resolve(Path(json.loads(path.read_text())["stages"]["student"]) / "student.pt"))


def reimagine(c: dict, run: dict, args) -> None:
    """Re-imagine a cache's candidates with another world model (``--worldmodel``) and
    re-score the imagined views (student, teacher, ``--futures`` draws); the states,
    candidates, values and true clips stay those of the cache, so the views compare paired."""
    import torch
    from tqdm import tqdm

    from agent.mpc import WorldModelMPC
    from worldmodel.judge.teacher import Teacher

    missing = {"image", "candidates", "state"} - set(c)
    if world_model_reads_proprio(world_model_path(run, args.worldmodel)) and "proprio" not in c:
        missing.add("proprio")
    if missing:
        raise SystemExit(f"this cache holds no {sorted(missing)} (made before they were saved): "
                         "re-run without --cache to make one that can be re-imagined")
    st = run["stages"]
    mpc = WorldModelMPC(world_model_path(run, args.worldmodel), str(resolve(Path(st["student"]) / "student.pt")))
    mpc.reset(seed=args.seed)
    teacher = Teacher.load(resolve(Path(st["bench"]) / "teacher.json"))
    stride, env_id = mpc.world_model.action_repeat, args.env
    views = {k: [] for k in ("clips_imagined", "student_imagined", "teacher_imagined", "student_futures")}
    if mpc.world_model.reads_proprio:
        views["proprio_imagined"] = []
    secs = np.zeros(3)
    props = c["proprio"] if "proprio" in c else [None] * len(c["image"])
    for image, cands, state, instr, prop in tqdm(list(zip(c["image"], c["candidates"], c["state"], c["instruction"],
                                                          props)), desc="re-imagine"):
        instr = int(instr)
        ta = time.perf_counter()
        with torch.no_grad():
            clips = mpc.imagine(image, np.repeat(cands, args.futures, 0), prop)
        if "proprio_imagined" in views:    # the first draw's imagined proprio (N, T + 1, 4)
            views["proprio_imagined"].append(mpc.scorer.last_proprio.reshape(len(cands), args.futures, -1, 4)[:, 0])
        tb = time.perf_counter()
        ids = torch.full((len(clips),), instr, dtype=torch.long)
        f = student_features(mpc.reward, clips, ids, np.repeat(cands, args.futures, 0) if scored_actions(c) else None)
        f = f.reshape(len(cands), args.futures, -1)
        tc = time.perf_counter()
        first = (clips.reshape(len(cands), args.futures, *clips.shape[1:])[:, 0].permute(0, 1, 3, 4, 2)
                 * 255).round().byte().numpy()
        f_teacher = features(teacher.score_clips([
            {"frames": fr, "instruction": instr, "start_state": state, "actions": a, "stride": stride,
             "env_id": env_id} for fr, a in zip(first, cands)]), teacher=True)
        secs += (tb - ta, tc - tb, time.perf_counter() - tc)
        for k, v in (("clips_imagined", first), ("student_imagined", f[:, 0]), ("teacher_imagined", f_teacher),
                     ("student_futures", f)):
            views[k].append(v)
    c.update({k: np.asarray(v) for k, v in views.items()})
    if "proprio_imagined" not in views:
        c.pop("proprio_imagined", None)
    c.pop("teacher_futures", None)     # the teacher read the cache's own world model's draws, not these
    c["seconds"] = np.concatenate([c["seconds"][:2], secs]) if "seconds" in c else np.concatenate([[0, 0], secs])


def save_cache(c: dict, path: str) -> None:
    """Write the cache arrays atomically (temp file + rename)."""
    out = resolve(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.npz")
    np.savez_compressed(tmp, **c)
    tmp.replace(out)
    print(f"cache: {out}")


def scored_actions(c: dict) -> bool:
    """Whether a cache's student views read the candidates' actions (``--score-actions``)."""
    return bool(c.get("score_actions", False))


def rescore(c: dict, student: str, score_actions: bool = False) -> None:
    """Replace the student views of a cache by another student's scores of the cached clips
    (``score_actions``: the student also reads each candidate's actions)."""
    import torch

    from worldmodel.judge.student import StudentReward

    if "clips_true" not in c:
        raise SystemExit("this cache holds no clips (made before clips were saved): re-run without --cache")
    if score_actions and "candidates" not in c:
        raise SystemExit("--score-actions: this cache holds no candidate actions (made before they were saved): "
                         "re-run without --cache")
    reward = StudentReward.from_checkpoint(resolve(student))
    if score_actions and reward.act_proj is None:
        raise SystemExit(f"--score-actions: the student {student} does not read actions (student.model.actions off)")
    for kind in ("true", "imagined"):
        clips = c[f"clips_{kind}"]
        n_s, n_c = clips.shape[:2]
        ids = torch.as_tensor(np.repeat(c["instruction"], n_c), dtype=torch.long)
        acts = c["candidates"].reshape(n_s * n_c, *c["candidates"].shape[2:]) if score_actions else None
        c[f"student_{kind}"] = student_features(reward, clips.reshape(n_s * n_c, *clips.shape[2:]), ids,
                                                acts).reshape(n_s, n_c, -1)
    c["score_actions"] = np.array(bool(score_actions))
    c.pop("student_futures", None)    # scores of clips the cache does not keep: another student's are unknown


# ----------------------------------------------------------------------------- report
def compare(caches: list[tuple[str, dict]], tol: float, seed: int, reps: int = 1000) -> str:
    """The imagined views of caches made on the SAME states and candidates (``--cache ...
    --worldmodel``) side by side: pairwise accuracy and pick regret of the planning
    objectives, and each cache's difference from the first with a paired bootstrap interval."""
    (base_label, base), others = caches[0], caches[1:]
    for label, c in others:
        if c["value"].shape != base["value"].shape or not np.array_equal(c["value"], base["value"]):
            raise SystemExit(f"--compare: {label} was not made on {base_label}'s states and candidates "
                             "(make it with --cache <that cache> --worldmodel ...)")
    values, w = base["value"], base["weights"]
    early = base["t"] < 16
    rng = np.random.default_rng(seed)
    objectives = (("MPC objective (default weights)", lambda f: f @ w), ("progress", lambda f: f[..., 8]),
                  ("-grip_dist", lambda f: f[..., 7]))
    rows = ["| view | objective | " + " | ".join(f"{label}: pairwise / regret" for label, _ in caches)
            + " | " + " | ".join(f"{label} - {base_label}: pairwise [95% CI] / regret [95% CI]" for label, _ in others)
            + " |", "|---|---|" + "---|" * (2 * len(caches) - 1)]
    views = {"student_true": lambda c: c["student_true"], "student_imagined": lambda c: c["student_imagined"],
             "teacher_imagined": lambda c: c["teacher_imagined"]}
    ks = [c["student_futures"].shape[2] if "student_futures" in c else 1 for _, c in caches]
    if min(ks) > 1:   # every cache has several draws per candidate: their mean too (mpc.futures)
        views[f"student_imagined, mean of {min(ks)} futures"] = lambda c: c["student_futures"][:, :, :min(ks)].mean(2)
    for view, of in views.items():
        for name, sc_of in objectives:
            if view == "teacher_imagined" and name == "progress":
                continue      # the teacher's progress is read off its replay of the actions, not the clip
            cells = []
            for _, c in caches:
                m = ranking_metrics(values, sc_of(of(c)), tol)
                cells.append(f"{m['pair_acc']:.3f} / {m['regret']:.2f}")
            for _, c in others:
                a, b = sc_of(of(base)), sc_of(of(c))
                dp = paired_difference(values, a, b, tol, "pair_acc", rng, reps)
                dr = paired_difference(values, a, b, tol, "regret", rng, reps)
                cells.append(f"{dp[0]:+.3f} [{dp[1]:+.3f}, {dp[2]:+.3f}] / {dr[0]:+.2f} [{dr[1]:+.2f}, {dr[2]:+.2f}]")
            rows.append(f"| {view} | {name} | " + " | ".join(cells) + " |")
    phase = ["| view | objective | phase | " + " | ".join(f"{label}: pairwise / regret" for label, _ in caches) + " |",
             "|---|---|---|" + "---|" * len(caches)]
    for view in ("student_imagined", "teacher_imagined"):
        for name, sc_of in objectives[:2] if view == "student_imagined" else objectives[:1]:
            for ph, sel in (("t < 16", early), ("t >= 16", ~early)):
                cells = []
                for _, c in caches:
                    m = ranking_metrics(values[sel], sc_of(c[view])[sel], tol)
                    cells.append(f"{m['pair_acc']:.3f} / {m['regret']:.2f}")
                phase.append(f"| {view} | {name} | {ph} | " + " | ".join(cells) + " |")
    opt = ["| objective (student_imagined) | " + " | ".join(f"{label}: top pick / any candidate" for label, _ in caches)
           + " |", "|---|" + "---|" * len(caches)]
    for name, sc_of in objectives[:2]:
        opt.append(f"| {name} | " + " | ".join("{:.2f} / {:.2f}".format(*top_pick_optimism(c, sc_of(c["student_imagined"])))
                                               for _, c in caches) + " |")
    phase += ["", "False stages at the top: the fraction of states whose top-scored imagined candidate shows a later "
              "task stage (the teacher's IF reading) than its true clip, against the same fraction over all "
              "candidates. The planner acts on the top pick:", "", *opt]
    return (f"{values.shape[0]} states x {values.shape[1]} prior candidates, the same in every column (value = "
            f"oracle-P's shaped return; pairs with |value difference| > {tol:g}); the columns differ in the world "
            f"model that imagines the candidates (`--worldmodel`) or the student that scores the clips "
            f"(`--student`). student_true: the student on the candidates' true clips (no world model). "
            f"Differences: paired bootstrap over states ({reps} resamples). Random pick: regret 1.\n\n"
            + "\n".join(rows) + "\n\nBy phase:\n\n" + "\n".join(phase))


def report(c: dict, tol: float, seed: int) -> str:
    values, w = c["value"], c["weights"]
    n_states, n_cands = values.shape
    rng = np.random.default_rng(seed)
    rows = ["| view | objective | pairs | pairwise accuracy | mean Spearman | pick regret |", "|---|---|---|---|---|---|"]

    def row(view, name, scores):
        m = ranking_metrics(values, scores, tol)
        rows.append(f"| {view} | {name} | {m['pairs']} | {m['pair_acc']:.3f} | {m['spearman']:.3f} | {m['regret']:.2f} |")
        return m

    row("-", "random pick", rng.random(values.shape))
    fitted = {}
    order = rng.permutation(n_states)
    half_a, half_b = order[: n_states // 2], order[n_states // 2:]
    for view in VIEWS:
        f = c[view]
        row(view, "MPC objective (default weights)", f @ w)
        for i, term in enumerate(TERMS):
            if np.ptp(f[..., i]) > 0:
                row(view, term, f[..., i])
        # fit on one half, score the other, both ways: every state is scored by weights it was not fitted on
        scores = np.zeros_like(values)
        for fit, test in ((half_a, half_b), (half_b, half_a)):
            wf = fit_weights(values[fit], f[fit])
            scores[test] = f[test] @ wf
        fitted[view] = fit_weights(values, f)
        row(view, "refitted weights (2-fold over states)", scores)
    wrows = ["| view | " + " | ".join(TERMS) + " |", "|---|" + "---|" * len(TERMS)]
    for view, wf in fitted.items():
        wrows.append(f"| {view} | " + " | ".join(f"{x:+.2f}" for x in wf) + " |")
    # by phase: the first 16 control steps (the approach) vs the rest (grasp and lift)
    early = c["t"] < 16
    prow = ["| view | objective | t < 16: pairwise acc. | regret | t >= 16: pairwise acc. | regret |", "|---|---|---|---|---|---|"]
    for view in VIEWS:
        for name, sc in (("MPC objective", c[view] @ w), ("IF", c[view][..., 0]), ("-grip_dist", c[view][..., 7]),
                         ("progress", c[view][..., 8])):
            a, b = ranking_metrics(values[early], sc[early], tol), ranking_metrics(values[~early], sc[~early], tol)
            prow.append(f"| {view} | {name} | {a['pair_acc']:.3f} | {a['regret']:.2f} | {b['pair_acc']:.3f} | {b['regret']:.2f} |")
    # the judge issue's metric on the planner's own candidates: does the student order a
    # start's clips as the teacher does (the teacher's total as the reference, its ties left out)?
    from worldmodel.judge import MAX_SCORES

    total = np.asarray(MAX_SCORES)     # normalized dims -> the teacher's units
    trows = ["| clips | student vs teacher: pairs | pairwise accuracy | mean Spearman |", "|---|---|---|---|"]
    for kind in ("true", "imagined"):
        m = ranking_metrics(c[f"teacher_{kind}"][..., :6] @ total, c[f"student_{kind}"][..., :6] @ total, 1e-6)
        trows.append(f"| {kind} | {m['pairs']} | {m['pair_acc']:.3f} | {m['spearman']:.3f} |")
    futures = c.get("student_futures")
    frows = []
    if futures is not None and futures.shape[2] > 1:
        frows = ["| imagined futures per candidate (mean objective) | objective | pairwise accuracy | pick regret "
                 "| t < 16: pairwise / regret | t >= 16: pairwise / regret |", "|---|---|---|---|---|---|"]
        ks = sorted({1, *(2 ** i for i in range(1, 8) if 2 ** i < futures.shape[2]), futures.shape[2]})
        objectives = (("MPC objective", lambda f: f @ w), ("progress", lambda f: f[..., 8]))
        for name, sc_of in objectives:
            for k in ks:
                sc = sc_of(futures[:, :, :k].mean(2))
                m = ranking_metrics(values, sc, tol)
                a, b = ranking_metrics(values[early], sc[early], tol), ranking_metrics(values[~early], sc[~early], tol)
                frows.append(f"| {k} | {name} | {m['pair_acc']:.3f} | {m['regret']:.2f} | {a['pair_acc']:.3f} / "
                             f"{a['regret']:.2f} | {b['pair_acc']:.3f} / {b['regret']:.2f} |")
        # the same imagination budget spent on more candidates or on more draws of fewer
        n_cands, n_fut = futures.shape[1:3]
        splits = [(n_cands // k, k) for k in ks if n_cands % k == 0 and k <= n_cands]
        brng = np.random.default_rng(seed)
        frows += ["", f"Pick regret at a fixed imagination budget of {n_cands} imagined clips per state, spent as "
                  "n candidates x k futures (both drawn at random, 50 times per state; regret against the best "
                  "of all candidates):", "",
                  "| objective | " + " | ".join(f"{n} x {k}" for n, k in splits) + " |",
                  "|---|" + "---|" * len(splits)]
        for name, sc_of in objectives:
            frows.append(f"| {name} | " + " | ".join(f"{budget_regret(values, futures, sc_of, n, k, tol, brng):.2f}"
                                                   for n, k in splits) + " |")
    if "teacher_futures" in c and "student_futures" in c and c["teacher_futures"].shape[2] > 1:
        frows += ["", "Pessimism over the draws (`mpc.futures=k +mpc.pessimism=l`: mean - l x spread of a "
                  "candidate's k draws) against the winner's curse. False stage at the top pick: the fraction of "
                  "the picked candidate's draws that the teacher reads at a later task stage than its true clip "
                  "(over all candidates and draws: {:.2f}):".format(_false_stage(c).mean()), "",
                  *pessimism_rows(c, tol)]
    prop_rows = proprio_rows(c, tol) if "proprio_imagined" in c else []
    secs = c.get("seconds")
    timing = ("" if secs is None else "Time (s, all states): " + ", ".join(
        f"{k} {v:.0f}" for k, v in zip(("simulate", "render", "imagine", "student", "teacher"), secs)) + ".")
    spread = np.ptp(values, 1)
    reads = ("; the student reads each candidate's actions with its clip (`--score-actions`)" if scored_actions(c)
             else "")
    return (f"{n_states} states (from the {c.get('states_from', 'prior')} agent's episodes) x {n_cands} prior "
            f"candidates (16 control steps each){reads}; value = oracle-P's shaped "
            f"return; pairs with |value difference| > {tol:g}. States whose candidates' values spread by more "
            f"than {tol:g}: {int((spread > tol).sum())} of {n_states} (median spread {np.median(spread):.2f}).\n\n"
            + "\n".join(rows) + f"\n\nBy phase ({int(early.sum())} states in the first 16 control steps, "
            f"{int((~early).sum())} later):\n\n" + "\n".join(prow) + "\n\nThe student against the teacher on the same candidates (totals in the "
            "teacher's units; teacher ties left out):\n\n" + "\n".join(trows) + "\n\nRefitted weights on all states (least squares on within-state centred values; "
            "the terms as in the objective, grip_dist negated):\n\n" + "\n".join(wrows) + "\n\n"
            + ("The lift read off the imagined proprio (`worldmodel/judge/proprio.py`; a world model with proprio "
               "tokens), alone and added to the MPC objective on the student's imagined view (`mpc.proprio_weight`). "
               "False lift at the top pick: the picked candidate's imagined proprio reads a lift and the teacher "
               "reads its true clip below stage 3 (over all candidates: {:.2f}); teacher later stage: the teacher "
               "reads the picked imagined clip at a later stage than its true clip:\n\n".format(
                   _false_proprio_lift(c).mean()) + "\n".join(prop_rows) + "\n\n" if prop_rows else "")
            + ("student_imagined with k imagined futures per candidate (the world model's token draws; the "
               "objective averaged over the first k, as `mpc.futures=k`):\n\n" + "\n".join(frows) + "\n\n"
               if frows else "") + timing)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="artifacts/closed_loop/lift/run.json", help="a main-job run.json naming the stages")
    ap.add_argument("--env", default="roboalign/Lift-v0")
    ap.add_argument("--episodes", type=int, default=12, help="prior-agent episodes on val seeds")
    ap.add_argument("--every", type=int, default=8, help="keep a state every N control steps")
    ap.add_argument("--samples", type=int, default=16, help="prior candidates per state")
    ap.add_argument("--planner", default="cem", help="experiments/conf/planner/<name>.yaml (horizon, repeat)")
    ap.add_argument("--seed-start", type=int, default=0, help="offset into the val seeds")
    ap.add_argument("--tol", type=float, default=0.5, help="value differences at or below this are ties")
    ap.add_argument("--futures", type=int, default=1, help="imagined futures per candidate scored by the student")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache", default=None, help="npz of an earlier run: re-score only")
    ap.add_argument("--compare", nargs="+", metavar="LABEL=NPZ", default=None,
                    help="caches of the same states and candidates (--cache ... --worldmodel): their imagined "
                         "views side by side, differences from the first paired")
    ap.add_argument("--student", default=None, help="score with this student checkpoint instead of the run's; with "
                                                     "--cache: re-score the cached clips (the re-scored cache goes to --out)")
    ap.add_argument("--states", choices=("prior", "mpc"), default="prior",
                    help="whose episodes give the states: the prior agent's, or the MPC's own (the measured world "
                         "model + student choosing among the prior's samples, as the closed loop's mpc_prior)")
    ap.add_argument("--iterations", type=int, default=None, help="--states mpc: CEM iterations of that MPC "
                                                                    "(default: the planner config's)")
    ap.add_argument("--progress", type=float, default=0.0, help="objective weight of the student's progress term "
                                                                 "(mpc.weights.progress) for the MPC and the report")
    ap.add_argument("--score-actions", action="store_true",
                    help="the student reads each candidate's actions with its clip (mpc.score_actions); with "
                         "--cache: re-score the cached clips that way (the run's student unless --student)")
    ap.add_argument("--worldmodel", default=None,
                    help="a worldmodel.pt to imagine with instead of the run's aligned model; with --cache: "
                         "re-imagine the cached candidates (paired with the cache's other views)")
    ap.add_argument("--out", default="artifacts/benchmarks/plan_ranking.npz")
    ap.add_argument("--title", default="Plan ranking: the objective vs the true simulator (Lift, prior candidates)")
    ap.add_argument("--notes", default="")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.futures < 1:
        raise SystemExit(f"--futures must be >= 1 (imagined futures per candidate), got {args.futures}")
    if args.iterations is not None and (args.states != "mpc" or args.iterations < 1):
        raise SystemExit(f"--iterations {args.iterations}: CEM iterations (>= 1) of the state-collecting MPC; "
                         "it needs --states mpc")
    if args.student and not resolve(args.student).exists():
        raise SystemExit(f"--student {args.student}: no such student checkpoint ({resolve(args.student)})")
    setup_torch(args.threads)
    if args.compare:
        caches = []
        for item in args.compare:
            label, sep, path = item.partition("=")
            if not sep or not resolve(path).exists():
                raise SystemExit(f"--compare {item}: expected LABEL=PATH of an existing cache")
            caches.append((label, upgrade_cache(dict(np.load(resolve(path))))))
        if len(caches) < 2:
            raise SystemExit("--compare needs at least two caches")
        body = compare(caches, args.tol, args.seed) + ("\n\n" + args.notes if args.notes else "")
        print(body)
        if not args.no_write:
            write_section(args.title, body)
        return
    if args.cache:
        if not resolve(args.cache).exists():
            raise SystemExit(f"{resolve(args.cache)} not found: run `python benchmarks/plan_ranking.py` once to make it")
        c = upgrade_cache(dict(np.load(resolve(args.cache))))
        # a plain --cache reports the cache as it was scored; --student or a newly asked --score-actions re-scores it
        rescoring = bool(args.student) or (args.score_actions and not scored_actions(c))
        if rescoring and args.worldmodel:
            raise SystemExit("--student / --score-actions and --worldmodel re-score a cache one way at a time: "
                             "pass one of them")
        if rescoring:
            rescore(c, args.student or run_student(args.run), args.score_actions)
        if args.worldmodel:
            run_path = resolve(args.run)
            if not run_path.exists():
                raise SystemExit(f"{run_path} not found: --worldmodel re-imagines with the run's student and teacher")
            reimagine(c, json.loads(run_path.read_text()), args)
        if rescoring or args.worldmodel:     # a new cache (for --compare); the source stays as it is
            if resolve(args.out) == resolve(args.cache):
                print(f"not saved: --out is the --cache file ({resolve(args.out)}); pass another --out to keep it")
            else:
                save_cache(c, args.out)
    else:
        run_path = resolve(args.run)
        if not run_path.exists():
            raise SystemExit(f"{run_path} not found: run `python experiments/closed_loop.py` first (it names the models)")
        c = measure(json.loads(run_path.read_text()), args.env, args)
        save_cache(c, args.out)
    body = report(c, args.tol, args.seed) + ("\n\n" + args.notes if args.notes else "")
    print(body)
    if not args.no_write:
        write_section(args.title, body)


if __name__ == "__main__":
    main()
