"""Student rewards compared on the ranking planning and alignment need -> docs/research-log.md.

    python benchmarks/student_ranking.py --bench PATH/bench.h5 \\
        --student default=artifacts/stages/student-.../student.pt --student ens3=... [--split test]
        --student joined=a/student.pt+b/student.pt+c/student.pt   # students trained apart, as one ensemble

Every student scores the same clips of one bench split (the test split: held-out source
episodes). Reported per student:

- within-start pairwise accuracy on world-model generations (pairs of clips imagined from
  one real start; teacher ties left out; a predicted tie counts half) -- all pairs, and
  split by how the two futures differ: both sampled with the real actions at a temperature
  (``wm_t*``), both imagined from perturbed actions (``wm_a*``, what the planner's candidates
  look like; a bench built with ``bench.wm_action_noise=[...]``), or one of each;
  a 95% bootstrap interval over starts (starts resampled, 2000 draws) for the headline;
- the same pairs by the teacher's gap between the two clips (near-ties vs clear differences),
  by the dimension that decides the pair for the teacher (the largest difference), and, for
  the pairs Temporal Consistency decides, by the TC checks that fired on the lower clip
  (``TC:order`` alone is the teacher's replay-order check, which needs the replay);
- Spearman of the total with the teacher's on all clips and on the generations;
- for an ensemble (``members > 1``), each member alone on the same pairs;
- scoring speed (9-frame 64x64 clips, batch 256, bf16) with 1 and 2 threads.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from benchmarks.report import add_section_args, publish, rel_path  # noqa: E402
from experiments.common import resolve  # noqa: E402
from worldmodel.judge import DIMENSIONS, MAX_SCORES, SHORT  # noqa: E402
from worldmodel.judge.distill import bench_groups, from_bench, mirror, pairwise_accuracy, predict, spearman, subset  # noqa: E402
from worldmodel.judge.student import StudentReward  # noqa: E402

TITLE = "Judge: student rewards compared on within-start ranking"
KINDS = ("all", "temperature", "actions", "mixed")
KEYS = ("frames", "instruction", "scores", "shaping", "split", "source", "degradation", "episode", "start_step",
        "actions")


def generation_pairs(data: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs of world-model generations sharing one start: ``pairs (P, 2)`` row indices,
    ``start (P,)`` their start's group id, ``kind (P,)`` ``temperature`` / ``actions`` /
    ``mixed`` (how the two futures were made)."""
    src = np.asarray(data["source"]).astype(str)
    deg = np.asarray(data["degradation"]).astype(str)
    groups = bench_groups({"episode": data["episode"], "start_step": data["start_step"]})
    gen = np.flatnonzero(src == "generated")
    pairs, start = [], []
    for g in np.unique(groups[gen]):
        idx = gen[groups[gen] == g]
        a, b = np.triu_indices(len(idx), k=1)
        pairs.append(np.stack([idx[a], idx[b]], 1))
        start.append(np.full(len(a), g))
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), int)
    start = np.concatenate(start) if start else np.zeros(0, int)
    temp = np.char.startswith(deg, "wm_t")
    ti, tj = temp[pairs[:, 0]], temp[pairs[:, 1]]
    kind = np.where(ti & tj, "temperature", np.where(~ti & ~tj, "actions", "mixed"))
    return pairs, start, kind


def _pair_hits(pred: np.ndarray, true: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair the teacher does not tie: 1 if ``pred`` orders it as the teacher, 0.5 for a
    predicted tie, else 0; and the mask of those pairs among ``pairs``."""
    dt = true[pairs[:, 0]] - true[pairs[:, 1]]
    dp = pred[pairs[:, 0]] - pred[pairs[:, 1]]
    keep = np.abs(dt) > 1e-6
    return np.where(dp * dt > 0, 1.0, np.where(dp == 0, 0.5, 0.0))[keep], keep


def _start_bootstrap(values: np.ndarray, start: np.ndarray, boot: int, seed: int) -> tuple[float, float]:
    """95% interval of the mean of per-pair ``values`` with starts resampled (all pairs of a
    start drawn together)."""
    _, inv = np.unique(start, return_inverse=True)
    per, n = np.bincount(inv, values), np.bincount(inv)
    draw = np.random.default_rng(seed).integers(0, len(n), (max(boot, 1), len(n)))
    means = per[draw].sum(1) / np.maximum(n[draw].sum(1), 1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def pair_accuracy(pred: np.ndarray, true: np.ndarray, pairs: np.ndarray, start: np.ndarray,
                  boot: int = 0, seed: int = 0) -> dict:
    """Accuracy on pairs the teacher does not tie (predicted ties count half), the number
    of such pairs, and with ``boot`` a 95% interval from resampling starts."""
    hits, keep = _pair_hits(pred, true, pairs)
    out = {"acc": float(hits.mean()) if keep.any() else float("nan"), "pairs": int(keep.sum())}
    if boot and keep.any():
        out["ci"] = _start_bootstrap(hits, start[keep], boot, seed)
    return out


def paired_difference(pred: np.ndarray, base: np.ndarray, true: np.ndarray, pairs: np.ndarray,
                      start: np.ndarray, boot: int = 2000, seed: int = 0) -> dict:
    """Accuracy of ``pred`` minus that of ``base`` on the same pairs, with a 95% interval
    from resampling starts (both students' pairs of a start drawn together)."""
    hits, keep = _pair_hits(pred, true, pairs)
    diff = hits - _pair_hits(base, true, pairs)[0]
    return {"diff": float(diff.mean()), "ci": _start_bootstrap(diff, start[keep], boot, seed)}


def scoring_speed(student: StudentReward, data: dict, threads: int, batch: int = 256, seconds: float = 3.0) -> float:
    """Clips/s of ``student.score`` (bf16) on ``batch`` clips of ``data`` with ``threads`` torch threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        idx = np.arange(batch) % len(data["frames"])
        frames, instr = data["frames"][idx], data["instruction"][idx]
        student.score(frames, instr, batch_size=batch)                   # warm-up
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            student.score(frames, instr, batch_size=batch)
            done += batch
        return done / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)


def _f(x, nd: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


#: bands of the teacher's gap |total_i - total_j| (of 10) for the accuracy-by-gap table
GAP_BANDS = ((0.0, 0.3), (0.3, 1.1), (1.1, 10.0))


def gap_accuracy(pred: np.ndarray, true: np.ndarray, groups: np.ndarray) -> list[tuple[float, int]]:
    """(accuracy, pairs) per :data:`GAP_BANDS` band of the teacher's gap, over the pairs of
    clips sharing a ``groups`` label (a start; ties left out): ``distill.pairwise_accuracy(band=)``."""
    return [pairwise_accuracy(pred, true, groups, return_pairs=True, band=band) for band in GAP_BANDS]


def dominant_dimension(scores: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Per pair ``(P,)`` the dimension (index into ``DIMENSIONS``) on which the teacher's two
    scores differ most as a share of its range: what mainly decides the pair for the teacher."""
    diff = np.abs(scores[pairs[:, 0]] - scores[pairs[:, 1]]) / np.asarray(MAX_SCORES, np.float64)
    return diff.argmax(1)


def dimension_accuracy(pred: np.ndarray, true: np.ndarray, pairs: np.ndarray, start: np.ndarray,
                       dominant: np.ndarray) -> list[dict]:
    """:func:`pair_accuracy` on the pairs each dimension decides (:func:`dominant_dimension`)."""
    return [pair_accuracy(pred, true, pairs[dominant == k], start[dominant == k]) for k in range(len(DIMENSIONS))]


def tc_checks(reasons: np.ndarray, scores: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Per pair ``(P,)`` the Temporal Consistency checks (``TC:<check>`` reasons, e.g.
    ``order``, ``flicker``, ``blobs``, ``frozen``) that fired on the clip with the lower TC
    score, joined by ``+`` (``""`` when none did): which check made the teacher tell the two apart."""
    tc = DIMENSIONS.index("temporal_consistency")
    lower = np.where(scores[pairs[:, 0], tc] <= scores[pairs[:, 1], tc], pairs[:, 0], pairs[:, 1])
    return np.array(["+".join(sorted(r[3:] for r in str(reasons[i]).split(";") if r.startswith("TC:")))
                     for i in lower], dtype=object)


class MixedEnsemble:
    """Students of different architectures (e.g. with and without track heads) as one
    ensemble for this benchmark: ``score`` averages their outputs, as
    :meth:`StudentReward.from_members` does for students of one architecture."""

    def __init__(self, students: list[StudentReward]):
        self.students = students
        self.config = SimpleNamespace(members=len(students))

    def score(self, *args, **kw) -> dict:
        outs = [st.score(*args, **kw) for st in self.students]
        return {k: torch.stack([o[k].float() for o in outs]).mean(0) for k in outs[0]}

    def n_params(self) -> int:
        return sum(st.n_params() for st in self.students)

    def members_as_students(self) -> list[StudentReward]:
        return list(self.students)


class MirrorAverage:
    """A student scored on each clip and on its left-right mirror (:func:`mirror`), the two
    outputs averaged: test-time augmentation for students trained with ``flip``."""

    def __init__(self, student):
        self.student = student
        self.config = SimpleNamespace(members=student.config.members)

    def score(self, frames, instruction, *, actions=None, **kw) -> dict:
        frames_t = torch.as_tensor(frames)
        actions_t = torch.as_tensor(actions) if actions is not None else None
        mirrored, mirrored_actions = mirror(frames_t, actions_t)
        outs = [self.student.score(frames_t, instruction, actions=actions_t, **kw),
                self.student.score(mirrored, instruction, actions=mirrored_actions, **kw)]
        return {k: (outs[0][k].float() + outs[1][k].float()) / 2 for k in outs[0]}

    def n_params(self) -> int:
        return self.student.n_params()

    def members_as_students(self) -> list:
        return [MirrorAverage(m) for m in self.student.members_as_students()]


def load_student(paths: list[Path]) -> StudentReward | MixedEnsemble:
    """One checkpoint, or several one-member students joined as one ensemble
    (:meth:`StudentReward.from_members`; students of different architectures: a
    :class:`MixedEnsemble`)."""
    if len(paths) == 1:
        return StudentReward.from_checkpoint(paths[0])
    nets = [StudentReward.from_checkpoint(p) for p in paths]
    if all(n.config == nets[0].config for n in nets):
        return StudentReward.from_members(nets)
    return MixedEnsemble(nets)


def from_rollouts(raw: dict, rollouts: list[str] | None) -> dict:
    """The rows of ``raw`` (a loaded bench split) whose source episode comes from one of the
    ``rollouts`` files (file stems, e.g. ``lift_noisy_val_0_16``); all rows for None."""
    if not rollouts:
        return raw
    stems = np.array([e.split(":")[0] for e in np.asarray(raw["episode"]).astype(str)])
    keep = np.isin(stems, rollouts)
    if not keep.any():
        raise ValueError(f"no clip of this split comes from {rollouts}; its rollout files are "
                         f"{sorted(set(stems))}")
    rows = subset({k: v for k, v in raw.items() if k != "attrs"}, keep)
    return {**rows, **({"attrs": raw["attrs"]} if "attrs" in raw else {})}


def compare(bench: Path, students: list[tuple[str, list[Path], bool]], split: str = "test", boot: int = 2000,
            speed: bool = True, rollouts: list[str] | None = None) -> tuple[str, dict]:
    """The markdown body and the numbers of every student (see the module docstring); a
    student ``(name, paths, mirrored)`` is one checkpoint or several joined as one ensemble
    (:func:`load_student`), with ``mirrored`` scored by :class:`MirrorAverage`;
    ``rollouts``: only clips from these rollout files (:func:`from_rollouts`)."""
    from worldmodel.judge.bench import load_bench

    raw = from_rollouts(load_bench(bench, split=split), rollouts)
    data = from_bench({k: v for k, v in raw.items() if k in KEYS})
    reasons = raw["reasons"]
    del raw
    true = data["scores"].numpy().sum(1)
    gen = np.asarray(data["source"]).astype(str) == "generated"
    pairs, start, kind = generation_pairs(data)
    gen_start = bench_groups({"episode": data["episode"], "start_step": data["start_step"]})[gen]
    subsets = {k: (pairs, start) if k == "all" else (pairs[kind == k], start[kind == k]) for k in KINDS}
    n_kind = {k: len(subsets[k][0]) for k in KINDS}
    dominant = dominant_dimension(data["scores"].numpy().astype(np.float64), pairs)
    tc_decided = dominant == DIMENSIONS.index("temporal_consistency")
    checks = tc_checks(reasons, data["scores"].numpy(), pairs[tc_decided])
    names, counts = np.unique(checks, return_counts=True)
    check_groups = [str(c) for c, n in sorted(zip(names, counts), key=lambda t: -t[1]) if n >= 20 and c]
    tc_pairs, tc_start = pairs[tc_decided], start[tc_decided]
    head = ("| student | members | parameters | " + " | ".join(f"pairs: {k}" for k in KINDS)
            + " | 95% interval (all) | Spearman total (all clips) | Spearman total (generations) |"
            + (" clips/s, 1 thread | clips/s, 2 threads |" if speed else "")
            + " vs the first: difference, 95% interval |"
            + "\n|" + "---|" * (11 + 2 * speed))
    rows, members_rows, gap_rows, dim_rows, check_rows, out, first = [head], [], [], [], [], {}, None
    for name, paths, mirrored in students:
        st = MirrorAverage(load_student(paths)) if mirrored else load_student(paths)
        pred = predict(st, data)["total"]
        res = {k: pair_accuracy(pred, true, *subsets[k], boot=boot if k == "all" else 0) for k in KINDS}
        res["by_gap"] = gap_accuracy(pred[gen], true[gen], gen_start)
        gap_rows.append(f"| {name} | " + " | ".join(f"{_f(a)} ({n})" for a, n in res["by_gap"]) + " |")
        res["by_dimension"] = dimension_accuracy(pred, true, pairs, start, dominant)
        dim_rows.append(f"| {name} | " + " | ".join(f"{_f(r['acc'])} ({r['pairs']})" for r in res["by_dimension"]) + " |")
        res["by_tc_check"] = {c: pair_accuracy(pred, true, tc_pairs[checks == c], tc_start[checks == c])
                              for c in check_groups}
        check_rows.append(f"| {name} | " + " | ".join(f"{_f(r['acc'])} ({r['pairs']})"
                                                      for r in res["by_tc_check"].values()) + " |")
        res["spearman_all"] = spearman(pred, true)
        res["spearman_gen"] = spearman(pred[gen], true[gen])
        if speed:
            res["speed1"], res["speed2"] = scoring_speed(st, data, 1), scoring_speed(st, data, 2)
        ci = res["all"].get("ci", (float("nan"),) * 2)
        if first is None:
            first, diff = pred, "-"
        else:
            d = paired_difference(pred, first, true, pairs, start, boot)
            diff = f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
        rows.append(f"| {name} | {st.config.members} | {st.n_params():,} | "
                    + " | ".join(f"{_f(res[k]['acc'])} ({res[k]['pairs']})" for k in KINDS)
                    + f" | [{_f(ci[0])}, {_f(ci[1])}] | {_f(res['spearman_all'])} | {_f(res['spearman_gen'])} |"
                    + (f" {res['speed1']:.0f} | {res['speed2']:.0f} |" if speed else "") + f" {diff} |")
        if st.config.members > 1:
            for m, member in enumerate(st.members_as_students()):
                mp = predict(member, data)["total"]
                members_rows.append(f"| {name}, member {m + 1} alone | "
                                    + " | ".join(_f(pair_accuracy(mp, true, *subsets[k])["acc"]) for k in KINDS)
                                    + f" | {_f(spearman(mp, true))} |")
        out[name] = res
    body = [f"Bench `{rel_path(bench)}`, **{split}** split"
            + (f" (clips from {', '.join(f'`{r}`' for r in rollouts)} only)" if rollouts else "")
            + f" ({len(true)} clips, {int(gen.sum())} world-model generations "
            f"from {len(np.unique(start))} starts; pairs per kind: "
            + ", ".join(f"{k} {n_kind[k]}" for k in KINDS) + "). Students:", ""]
    body += [f"- {name}: " + " + ".join(f"`{rel_path(p)}`" for p in paths)
             + (", each clip also scored mirrored, outputs averaged" if mirrored else "")
             for name, paths, mirrored in students]
    body += ["", "Within-start pairwise accuracy on world-model generations (teacher ties left out; pairs in "
             "brackets), by how the two futures differ:", "", *rows]
    body += ["", "The same pairs (all kinds) by the teacher's gap between the two clips (total, of 10):", "",
             "| student | " + " | ".join(f"gap ({lo:g}, {hi:g}]" for lo, hi in GAP_BANDS) + " |",
             "|" + "---|" * (len(GAP_BANDS) + 1), *gap_rows]
    body += ["", "The same pairs by the dimension on which the teacher's two scores differ most (as a share "
             "of its range): what decides the pair for the teacher:", "",
             "| student | " + " | ".join(SHORT) + " |", "|" + "---|" * (len(SHORT) + 1), *dim_rows]
    if check_groups:
        body += ["", "The pairs decided by TC, by the TC checks that fired on the lower-scored clip (the "
                 "bench's `reasons`; groups of >= 20 pairs; `order` = the replay-order check alone):", "",
                 "| student | " + " | ".join(f"`{c}`" for c in check_groups) + " |",
                 "|" + "---|" * (len(check_groups) + 1), *check_rows]
    if members_rows:
        body += ["", "Each ensemble member alone, same pairs:", "",
                 "| student | " + " | ".join(f"pairs: {k}" for k in KINDS) + " | Spearman total (all clips) |",
                 "|" + "---|" * (len(KINDS) + 2), *members_rows]
    return "\n".join(body), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", required=True)
    ap.add_argument("--student", action="append", required=True, metavar="NAME=PATH[+PATH...][@mirror]",
                    help="a student checkpoint to compare (repeatable); PATH+PATH+...: one-member "
                         "students trained apart, scored as one ensemble; @mirror: each clip is also "
                         "scored mirrored left-right and the two outputs averaged")
    ap.add_argument("--split", default="test")
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--rollout", action="append", metavar="STEM",
                    help="only clips whose source episode comes from this rollout file (its stem, e.g. "
                         "lift_noisy_val_0_16; repeatable): one seed range of a bigger split")
    add_section_args(ap, TITLE)
    args = ap.parse_args()
    students = []
    for s in args.student:
        name, sep, path = s.partition("=")
        if not sep or not name or not path:
            ap.error(f"--student wants NAME=PATH, got {s!r}")
        path, _, option = path.partition("@")
        if option not in ("", "mirror"):
            ap.error(f"--student {s!r}: unknown option @{option} (known: @mirror)")
        ps = [resolve(q) for q in path.split("+")]
        for p in ps:
            if not p.exists():
                ap.error(f"student checkpoint {p} does not exist")
        students.append((name, ps, option == "mirror"))
    bench = resolve(args.bench)
    if not bench.exists():
        ap.error(f"bench {bench} does not exist (build one with python experiments/build_bench.py)")
    try:
        body, _ = compare(bench, students, args.split, args.boot, speed=not args.no_speed, rollouts=args.rollout)
    except ValueError as e:
        ap.error(str(e))
    publish(args, body)


if __name__ == "__main__":
    main()
