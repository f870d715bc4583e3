"""How stable is the teacher's within-start ranking under imperceptible pixel noise? -> docs/research-log.md.

    python benchmarks/teacher_stability.py --bench PATH/bench.h5 [--split test] [--noise 1 2 4]

The student is judged on how often it orders two world-model generations from one start
as the teacher does (``benchmarks/student_ranking.py``). This asks how much of that ordering
is a property of the clips a pixel-reading model could learn, and how much hangs on pixel
detail: the teacher re-scores every generation of the split

- unchanged (must reproduce the stored labels exactly: the teacher is deterministic), and
- with a uniform integer noise pattern in ``[-k, k]`` added to every pixel value (k of
  255; invisible at k <= 4), the same pattern in every frame of a clip (static: no
  temporal change, which the teacher rightly reads as flicker),

and the noisy teacher's totals are scored like a student: within-start pairwise agreement
with the stored labels (stored ties left out, a noisy tie counts half), overall, by how the
two futures differ and by the stored gap. A pixel-reading student cannot be expected to
beat the teacher's own agreement with itself under noise it cannot see.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.report import add_section_args, publish, rel_path  # noqa: E402
from benchmarks.student_ranking import GAP_BANDS, KINDS, gap_accuracy, generation_pairs, pair_accuracy  # noqa: E402
from experiments.common import resolve  # noqa: E402
from worldmodel.judge.distill import bench_groups  # noqa: E402

TITLE = "Judge: the teacher's own within-start ranking under pixel noise"


def noisy_frames(frames: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 clip frames ``(T+1, H, W, 3)`` plus one uniform integer noise pattern in ``[-k, k]``
    per pixel value, the same in every frame (clipped). Static, so it adds no temporal
    change: independent per-frame noise would be a (small) flicker degradation, which the
    teacher's temporal-consistency check is meant to see, and would unfreeze frozen frames."""
    if k <= 0:
        return frames
    noise = rng.integers(-k, k + 1, (1, *frames.shape[1:]), dtype=np.int16)
    return np.clip(frames.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def stability(bench: Path, split: str = "test", noise=(1, 2, 4), seed: int = 0, max_starts: int | None = None,
              boot: int = 2000) -> tuple[str, dict]:
    """The markdown body and the numbers (see the module docstring)."""
    from worldmodel.judge.bench import bench_clip, load_bench
    from worldmodel.judge.teacher import Teacher

    teacher_path = bench.parent / "teacher.json"
    if not teacher_path.exists():
        raise FileNotFoundError(f"{teacher_path} is missing: the bench's calibrated teacher is saved next to it "
                                "by python experiments/build_bench.py")
    teacher = Teacher.load(teacher_path)
    raw = load_bench(bench, split=split)
    gen = np.flatnonzero(np.asarray(raw["source"]).astype(str) == "generated")
    groups = bench_groups({"episode": raw["episode"], "start_step": raw["start_step"]})
    if max_starts:
        keep = np.unique(groups[gen])[:max_starts]
        gen = gen[np.isin(groups[gen], keep)]
    data = {k: np.asarray(v)[gen] for k, v in raw.items() if k != "attrs"}
    del raw
    stored = data["scores"].astype(np.float32).sum(1)   # as benchmarks/student_ranking.py sums them
    pairs, start, kind = generation_pairs(data)
    subsets = {k: (pairs, start) if k == "all" else (pairs[kind == k], start[kind == k]) for k in KINDS}
    gen_start = groups[gen]
    rng = np.random.default_rng(seed)
    rows, out = [], {}
    t0 = time.time()
    for k in (0, *noise):
        clips = [bench_clip(data, i) for i in range(len(gen))]
        for c in clips:
            c["frames"] = noisy_frames(c["frames"], k, rng)
        total = teacher.score_clips(clips)["scores"].astype(np.float32).sum(1)
        res = {kd: pair_accuracy(total, stored, *subsets[kd], boot=boot if kd == "all" else 0) for kd in KINDS}
        res["by_gap"] = gap_accuracy(total, stored, gen_start)
        res["max_abs_diff"] = float(np.abs(total - stored).max())
        res["changed"] = float((np.abs(total - stored) > 1e-6).mean())
        out[k] = res
        ci = res["all"].get("ci", (float("nan"),) * 2)
        rows.append(f"| {k} | {res['changed']:.3f} | {res['max_abs_diff']:.2f} | "
                    + " | ".join(f"{res[kd]['acc']:.3f} ({res[kd]['pairs']})" for kd in KINDS)
                    + f" | [{ci[0]:.3f}, {ci[1]:.3f}] | "
                    + " | ".join(f"{a:.3f} ({n})" for a, n in res["by_gap"]) + " |")
    seconds = time.time() - t0
    head = ("| noise k (of 255) | clips whose total changed | largest change of a total | "
            + " | ".join(f"agreement: {kd} pairs" for kd in KINDS) + " | 95% interval (all) | "
            + " | ".join(f"gap ({lo:g}, {hi:g}]" for lo, hi in GAP_BANDS) + " |")
    body = [f"Bench `{rel_path(bench)}`, **{split}** split: {len(gen)} world-model generations from "
            f"{len(np.unique(start))} starts, re-scored by the bench's own teacher (`teacher.json`) "
            f"{1 + len(noise)} times ({seconds:.0f} s). Agreement = within-start pairwise accuracy of the "
            "re-scored totals against the stored labels (stored ties left out); k = 0 is the unchanged clips.",
            "", head, "|" + "---|" * (4 + len(KINDS) + len(GAP_BANDS)), *rows]
    return "\n".join(body), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--noise", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--max-starts", type=int, default=None, help="only the first N starts (quick look)")
    ap.add_argument("--seed", type=int, default=0)
    add_section_args(ap, TITLE)
    args = ap.parse_args()
    bench = resolve(args.bench)
    if not bench.exists():
        ap.error(f"bench {bench} does not exist (build one with python experiments/build_bench.py)")
    body, _ = stability(bench, args.split, args.noise, args.seed, args.max_starts)
    publish(args, body)


if __name__ == "__main__":
    main()
