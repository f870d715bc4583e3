"""The closed loop: run an agent for N episodes in the real simulator and report.

:func:`evaluate` is the importable loop behind ``experiments/closed_loop.py``;
later planners plug in as another :class:`agent.base.Agent`.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from agent.base import Agent
from agent.collect import EpisodeResult, run_episodes
from agent.gap import summarize_gap
from envs.rollouts import atomic_path
from envs.video import write_video

FAILURES = ("none", "missed_grasp", "drop", "wrong_object", "timeout")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a success rate (sensible at 0 and n)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def success_by_instruction(results) -> dict[str, list[int]]:
    """``{instruction: [successes, episodes]}`` of episode results (or their JSON records)."""
    out: dict[str, list[int]] = {}
    for r in results:
        get = r.get if isinstance(r, dict) else lambda k, r=r: getattr(r, k)
        k_n = out.setdefault(str(get("instruction")), [0, 0])
        k_n[0] += bool(get("success"))
        k_n[1] += 1
    return dict(sorted(out.items()))


def summarize(results: list[EpisodeResult]) -> dict:
    """Success rate with its 95% interval, wrong-object rate, failure breakdown, lengths."""
    n = len(results)
    k = sum(r.success for r in results)
    lo, hi = wilson_interval(k, n)
    lengths = np.array([r.length for r in results], float)
    return {
        "episodes": n, "successes": k, "success_rate": k / n if n else 0.0, "success_ci95": [lo, hi],
        "wrong_object_rate": sum(r.wrong_object for r in results) / n if n else 0.0,
        "failures": {f: sum(r.failure == f for r in results) for f in FAILURES},
        "length_mean": float(lengths.mean()) if n else 0.0,
        "length_std": float(lengths.std()) if n else 0.0,
        "act_s_mean": float(np.mean([r.act_s for r in results])) if n else 0.0,
        "success_per_seed": [bool(r.success) for r in results],   # in seed order: paired tests
        "success_by_instruction": success_by_instruction(results),
        "imagination_gap": summarize_gap([r.gap for r in results]),  # None unless measured (agent/gap.py)
    }


def mcnemar(a: list[bool], b: list[bool]) -> dict:
    """Exact McNemar test of two methods' successes on the same seeds (paired).

    ``a_only``/``b_only``: seeds only ``a``/``b`` solved; ``p``: two-sided exact binomial
    p-value of the discordant pairs (1.0 when there are none).
    """
    from scipy.stats import binomtest

    if len(a) != len(b):
        raise ValueError(f"paired test needs the same seeds: {len(a)} vs {len(b)} episodes")
    a_only = sum(x and not y for x, y in zip(a, b))
    b_only = sum(y and not x for x, y in zip(a, b))
    n = a_only + b_only
    p = binomtest(a_only, n, 0.5).pvalue if n else 1.0
    return {"a_only": a_only, "b_only": b_only, "p": float(p)}


def paired_table(main: dict, others: list[dict]) -> str:
    """Markdown: the main method against each other one on the same seeds (McNemar)."""
    rows = [f"| {main['agent']} vs | episodes | only {main['agent']} solved | only other solved | McNemar p |",
            "|---|---|---|---|---|"]
    for o in others:
        if o["seeds"] != main["seeds"]:
            raise ValueError(f"{o['agent']} ran other seeds than {main['agent']}; no paired test")
        t = mcnemar(main["success_per_seed"], o["success_per_seed"])
        rows.append(f"| {o['agent']} | {len(main['seeds'])} | {t['a_only']} | {t['b_only']} | {t['p']:.3f} |")
    return "\n".join(rows)


def evaluate(env_id: str, agent: Agent, seeds: list[int], *, out_dir: str | os.PathLike | None = None,
             videos: int = 0, env_kwargs: dict | None = None, workers: int = 1,
             options: list[dict | None] | None = None, progress: bool = True, resume: bool = True,
             name: str | None = None, identity: dict | None = None, gap: str | None = None) -> dict:
    """Run ``agent`` on ``env_id`` for each seed; return (and save in ``out_dir``) the summary.

    Writes ``episodes.jsonl``, ``summary.json`` and ``results.md`` to ``out_dir`` and an
    MP4 for each of the first ``videos`` episodes (rendered frames with a caption).
    ``workers`` simulator processes run episodes in parallel; ``options`` are per-seed
    reset options (e.g. a fixed instruction). Each finished episode is also written to
    ``out_dir/episodes/seed_<seed>.json`` at once; with ``resume`` those seeds are not
    run again (a long evaluation can be interrupted and continued, or sharded) -- but only
    if ``identity`` (what defines the agent: its config, the models it uses) matches the
    one saved with them in ``out_dir/identity.json``; otherwise they are run afresh.
    ``gap``: a teacher calibration file; agents that log their imagined plans (the MPC)
    then get the imagined-vs-real gap of every executed plan (:mod:`agent.gap`).
    """
    name = name or agent.name
    env_kwargs = {**(env_kwargs or {}), **({"render_mode": "rgb_array"} if videos else {})}
    done = {}
    if out_dir is not None:
        same = _same_identity(Path(out_dir), identity)
        done = _finished(Path(out_dir), seeds) if (resume and same) else {}
    todo = [i for i, s in enumerate(seeds) if s not in done]
    results = dict(done)
    if done:
        print(f"closed loop {env_id} [{name}]: {len(done)} of {len(seeds)} seeds already done in {out_dir}")
    stream = run_episodes(env_id, agent, [seeds[i] for i in todo], workers=workers, env_kwargs=env_kwargs,
                          options=[options[i] for i in todo] if options else None,
                          frames=sum(i < videos for i in todo), gap=gap)
    for res in tqdm(stream, total=len(todo), desc=f"closed loop {env_id} [{name}]",
                    disable=not progress, unit="ep"):
        results[res.seed] = res
        if out_dir is not None:
            if res.frames:
                _write_episode_video(res, Path(out_dir) / "videos" / f"{name}_seed{res.seed}.mp4")
            if res.extras.get("inspect"):
                write_inspection(res, Path(out_dir) / "inspect" / f"{name}_seed{res.seed}")
            _save_episode(Path(out_dir), res)
        res.frames = []
    results = [results[s] for s in seeds]
    summary = {"env_id": env_id, "agent": name, "seeds": list(seeds), **summarize(results)}
    if out_dir is not None:
        _save(Path(out_dir), results, summary)
    return summary


def write_inspection(res: EpisodeResult, stem: Path, values: dict | None = None, stages: dict | None = None
                     ) -> list[Path]:
    """An inspected episode's contact sheet ``<stem>.png`` and, with rerun-sdk, ``<stem>.rrd``
    (``values``, ``stages``: see :func:`agent.inspect.contact_sheet`)."""
    from agent.inspect import write_rrd, write_sheet

    outcome = "SUCCESS" if res.success else f"failed: {res.failure}"
    paths = [write_sheet(res.extras["inspect"], stem.with_suffix(".png"), outcome, values, stages)]
    rrd = write_rrd(res.extras["inspect"], stem.with_suffix(".rrd"))
    return paths + ([rrd] if rrd else [])


def _record(res: EpisodeResult) -> dict:
    return {fl.name: getattr(res, fl.name) for fl in fields(res) if fl.name not in ("frames", "episode", "extras")}


def _save_episode(out: Path, res: EpisodeResult) -> None:
    path = out / "episodes" / f"seed_{res.seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_record(res)))


def _same_identity(out: Path, identity: dict | None) -> bool:
    """Whether ``out`` holds episodes of this very agent; (re)writes ``identity.json``."""
    path = out / "identity.json"
    want = json.loads(json.dumps(identity or {}, sort_keys=True, default=str))
    try:
        same = json.loads(path.read_text()) == want
    except (OSError, ValueError):
        same = not (out / "episodes").exists()
    if not same and (out / "episodes").exists():
        print(f"{out}: saved episodes belong to another agent configuration; running them again")
        for old in (out / "episodes").glob("seed_*.json"):
            old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(want, indent=2, sort_keys=True))
    return same


def _finished(out: Path, seeds: list[int]) -> dict[int, EpisodeResult]:
    """Episodes of ``seeds`` already saved under ``out/episodes`` (unreadable ones are rerun)."""
    done = {}
    for s in seeds:
        path = out / "episodes" / f"seed_{s}.json"
        try:
            done[s] = EpisodeResult(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
    return done


def imagined_track(imagined: list[tuple[int, np.ndarray]], repeat: int, n: int) -> list[tuple[int, np.ndarray]]:
    """For control steps 0..n, the imagined frame of the plan being executed and the step
    that plan was made at. ``imagined``: ``(replan step s, clip (T+1, h, w, 3))`` in step
    order, clip frame j showing step ``s + j * repeat``."""
    out, k = [], -1
    for t in range(n + 1):
        while k + 1 < len(imagined) and imagined[k + 1][0] <= t:
            k += 1
        if k < 0:
            out.append((-1, None))
            continue
        s, clip = imagined[k]
        out.append((s, clip[min((t - s + repeat - 1) // repeat, len(clip) - 1)]))
    return out


def _side_by_side(real: np.ndarray, imagined: np.ndarray | None) -> np.ndarray:
    """``real (H, W, 3)`` | ``imagined (h, w, 3)`` upscaled (nearest) to H x W."""
    h, w = real.shape[:2]
    if imagined is None:
        imagined = np.zeros_like(real)
    else:
        imagined = imagined.repeat(h // imagined.shape[0], 0).repeat(w // imagined.shape[1], 1)
    return np.concatenate([real, imagined[:h, :w]], 1)


def _write_episode_video(res: EpisodeResult, path: Path) -> None:
    n = len(res.frames) - 1
    outcome = "SUCCESS" if res.success else f"failed: {res.failure}"
    frames = res.frames
    captions = [[res.instruction, f"seed {res.seed}  step {t}/{n}" + (f"  {outcome}" if t == n else "")]
                for t in range(n + 1)]
    if res.extras.get("imagined"):
        track = imagined_track(res.extras["imagined"], int(res.extras.get("repeat", 1)), n)
        frames = [_side_by_side(f, im) for f, (_, im) in zip(frames, track)]
        captions = [[c[0] + "   | left: real, right: imagined", c[1] + f"  (plan of step {s})"]
                    for c, (s, _) in zip(captions, track)]
    write_video(frames, path, fps=20, captions=captions)


def results_table(summaries: list[dict]) -> str:
    """A markdown table, one row per (env, agent) summary."""
    rows = ["| env | agent | episodes | success | 95% CI | wrong object | missed grasp | drop | timeout | "
            "length | s / step | imagined != real |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        f = s["failures"]
        rows.append(
            f"| {s['env_id']} | {s['agent']} | {s['episodes']} | {s['success_rate']:.2f} | "
            f"[{s['success_ci95'][0]:.2f}, {s['success_ci95'][1]:.2f}] | {s['wrong_object_rate']:.2f} | "
            f"{f['missed_grasp']} | {f['drop']} | {f['timeout']} | "
            f"{s['length_mean']:.1f} +- {s['length_std']:.1f} | {s.get('act_s_mean', 0.0):.3f} | {_gap_cell(s)} |")
    return "\n".join(rows)


def instruction_table(summaries: list[dict]) -> str | None:
    """Markdown: success per method and instruction, or None when every run had one instruction."""
    instrs = sorted({i for s in summaries for i in s.get("success_by_instruction", {})})
    if len(instrs) < 2:
        return None
    rows = ["| agent | " + " | ".join(instrs) + " |", "|---" * (len(instrs) + 1) + "|"]
    for s in summaries:
        by = s.get("success_by_instruction", {})
        rows.append(f"| {s['agent']} | " + " | ".join(f"{by[i][0]}/{by[i][1]}" if i in by else "-" for i in instrs)
                    + " |")
    return "\n".join(rows)


def _gap_cell(summary: dict) -> str:
    """``disagree (optimistic / pessimistic) of N replans`` or ``-``."""
    g = summary.get("imagination_gap")
    if not g:
        return "-"
    return (f"{g['disagree_rate']:.2f} ({g['optimistic_rate']:.2f} opt / {g['pessimistic_rate']:.2f} pess, "
            f"{g['replans']} plans)")


def _save(out: Path, results: list[EpisodeResult], summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "episodes.jsonl") as tmp:
        with open(tmp, "w") as f:
            for r in results:
                f.write(json.dumps(_record(r)) + "\n")
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(results_table([summary]) + "\n")
