"""Student reward benchmarks -> docs/research-log.md (section "Judge: student reward").

    python benchmarks/judge_student.py [--bench artifacts/judge/default/bench.h5]
                                       [--student artifacts/student/default/student.pt]
                                       [--teacher-clips 24] [--threads 1]

- fidelity on the held-out test split: Spearman of the student with the teacher's total
  and per dimension, MAE, overall and per source (real / degraded / generated);
- ranking: pairwise accuracy within one shared start (bench rows with the same
  ``episode`` and ``start_step``; teacher ties left out, a predicted tie counts half)
  on world-model generations only (the headline, target >= 85%), on generations plus
  the real clip of that start, and on everything cut from that start;
- speed: student clips/s on 9-frame 64x64 clips in batches on this CPU (bf16 and fp32),
  and the teacher's clips/s on the same clips (a fresh teacher: replays not cached).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from benchmarks.report import rel_path, write_section  # noqa: E402
from experiments.common import resolve  # noqa: E402
from worldmodel.judge import SHORT  # noqa: E402
from worldmodel.judge.distill import bench_groups, evaluate, from_bench, n_rows, pairwise_accuracy, predict, subset  # noqa: E402
from worldmodel.judge.student import StudentReward  # noqa: E402

TITLE = "Judge: student reward"
MARGIN_BANDS = ((0.0, 0.3), (0.3, 0.6), (0.6, 1.1), (1.1, 10.0))   # teacher total gaps of a pair
KEYS = ("frames", "instruction", "scores", "shaping", "split", "source", "degradation", "episode", "start_step",
        "actions", "start_state", "state_len", "env_id")


def _f(x, nd=3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def fidelity_table(student, data) -> tuple[str, dict]:
    rows = [("all", data)]
    src = np.asarray(data["source"]).astype(str)
    rows += [(s, subset(data, src == s)) for s in ("real", "degraded", "generated") if (src == s).any()]
    head = ("| clips | n | Spearman total | " + " | ".join(f"Spearman {s}" for s in SHORT)
            + " | MAE total (/10) | MAE shaping |\n|" + "---|" * 11 + "\n")
    lines, out = [], {}
    for name, d in rows:
        m = evaluate(student, d)
        out[name] = m
        lines.append(f"| {name} | {int(m['n'])} | {_f(m['spearman_total'])} | "
                     + " | ".join(_f(m[f"spearman_{s}"]) for s in SHORT)
                     + f" | {_f(m['mae_total'], 2)} | {_f(m['mae_shaping'], 3)} |")
    return head + "\n".join(lines), out


def ranking_table(student, data) -> tuple[str, dict]:
    pred = predict(student, data)["total"]
    true = data["scores"].numpy().sum(1)
    src = np.asarray(data["source"]).astype(str)
    groups = bench_groups({"episode": data["episode"], "start_step": data["start_step"]})
    sets = {"world-model generations from one start": src == "generated",
            "generations + the real clip of that start": (src == "generated") | (src == "real"),
            "everything from one start (real, degraded, generated)": np.ones(len(src), bool)}
    lines = ["| pairs within one shared start | starts | pairs (teacher ties left out) | student accuracy |",
             "|---|---|---|---|"]
    out = {}
    base = np.unique(groups, return_inverse=True)[1]
    for name, mask in sets.items():
        ids = np.where(mask, base, -1)
        counts = np.bincount(ids[ids >= 0], minlength=base.max() + 1) if mask.any() else np.zeros(1, int)
        has = np.flatnonzero(counts >= 2)
        acc, pairs = pairwise_accuracy(pred, true, ids, return_pairs=True)
        out[name] = {"acc": acc, "pairs": pairs, "starts": len(has)}
        lines.append(f"| {name} | {len(has)} | {pairs} | {_f(acc)} |")
    gen = np.where(sets["world-model generations from one start"], base, -1)
    lines += ["", "World-model generations by the teacher's gap between the two clips (total, of 10):", "",
              "| teacher gap | pairs | student accuracy |", "|---|---|---|"]
    for lo, hi in MARGIN_BANDS:
        acc, pairs = pairwise_accuracy(pred, true, gen, return_pairs=True, band=(lo, hi))
        out[f"gap ({lo}, {hi}]"] = {"acc": acc, "pairs": pairs}
        lines.append(f"| ({lo:g}, {hi:g}] | {pairs} | {_f(acc)} |")
    return "\n".join(lines), out


def student_speed(student, frames, instruction, batch: int, seconds: float, amp: bool) -> float:
    n = len(frames)
    student.score(frames[:batch], instruction[:batch], amp=amp, batch_size=batch)   # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        i = (done // batch * batch) % max(1, n - batch + 1)
        student.score(frames[i:i + batch], instruction[i:i + batch], amp=amp, batch_size=batch)
        done += batch
    return done / (time.perf_counter() - t0)


def teacher_speed(bench_path: Path, data: dict, n: int) -> tuple[float | None, str]:
    try:
        from worldmodel.judge.bench import bench_clip
        from worldmodel.judge.teacher import Teacher, default_teacher
    except ImportError as e:
        return None, f"teacher not importable ({e})"
    calib = bench_path.parent / "teacher.json"
    teacher = Teacher.load(calib) if calib.exists() else default_teacher()
    clips = [bench_clip(data, i) for i in range(min(n, n_rows(data)))]
    teacher.score_clips(clips[:1])                          # env construction / warm-up
    teacher.clear_cache()
    t0 = time.perf_counter()
    teacher.score_clips(clips)
    dt = time.perf_counter() - t0
    teacher.close()
    return len(clips) / dt, f"{len(clips)} clips in {dt:.1f} s (replays simulated, not cached)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default="artifacts/judge/default/bench.h5")
    ap.add_argument("--student", default="artifacts/student/default/student.pt")
    ap.add_argument("--split", default="test")
    ap.add_argument("--teacher-clips", type=int, default=24)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--notes", default="", help="free text appended to the section")
    ap.add_argument("--title", default=TITLE, help="the research-log section to write (replaced if present)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from worldmodel.judge.bench import load_bench

    bench_path, student_path = resolve(args.bench), resolve(args.student)
    raw = load_bench(bench_path, split=args.split)
    data = from_bench({k: v for k, v in raw.items() if k in KEYS})
    for k in ("actions", "start_state", "state_len", "env_id"):
        data[k] = raw[k]
    del raw
    student = StudentReward.from_checkpoint(student_path)
    ckpt_metrics = torch.load(student_path, map_location="cpu", weights_only=True).get("extra", {})

    fid, fid_m = fidelity_table(student, data)
    print(fid, flush=True)
    rank, rank_m = ranking_table(student, data)
    print(rank, flush=True)

    frames, instr = data["frames"], data["instruction"]
    if len(frames) < args.batch:
        reps = -(-args.batch // len(frames))
        frames, instr = frames.repeat(reps, 1, 1, 1, 1), instr.repeat(reps)
    sp_bf16 = student_speed(student, frames, instr, args.batch, args.seconds, amp=True)
    sp_fp32 = student_speed(student, frames, instr, args.batch, args.seconds, amp=False)
    t_speed, t_note = teacher_speed(bench_path, data, args.teacher_clips) if args.teacher_clips else (None, "skipped")
    print(f"student {sp_bf16:.0f} clips/s bf16, {sp_fp32:.0f} fp32; teacher {t_speed} ({t_note})", flush=True)

    t1 = data["frames"].shape[1]
    head = rank_m["world-model generations from one start"]
    speed = ["| judge | clips/s | note |", "|---|---|---|",
             f"| student, bf16 autocast | {sp_bf16:.0f} | batch {args.batch}, {args.threads} thread(s) |",
             f"| student, fp32 | {sp_fp32:.0f} | batch {args.batch}, {args.threads} thread(s) |"]
    if t_speed:
        speed.append(f"| teacher | {t_speed:.2f} | {t_note} |")
    ratio = f"; the student is {sp_bf16 / t_speed:.0f}x faster than the teacher" if t_speed else ""
    speed_table = "\n".join(speed)
    body = f"""Student `{rel_path(student_path)}`
({student.n_params():,} parameters, {student.config.channels} channels, {student.config.hidden} hidden; trained by
`python experiments/distill_reward.py`) against the teacher's labels on the **{args.split}** split of
`{rel_path(bench_path)}` ({n_rows(data)} clips of {t1} frames; splits are by source
episode, the test split from the held-out `*_val_*` rollout files).

Fidelity (Spearman of student vs teacher; MAE in teacher units):

{fid}

Ranking within one shared start (pairs of clips cut from the same episode at the same
control step; the world-model generations of a start differ by sampling temperature/seed):

{rank}

Target: >= 0.85 on world-model generations -- {'met' if head['pairs'] and head['acc'] >= 0.85 else 'NOT met'}
({head['pairs']} pairs{'; too few pairs to be a result' if head['pairs'] < 30 else ''}).

Speed on this CPU ({t1}-frame 64x64 clips){ratio}:

{speed_table}
"""
    if ckpt_metrics:
        body += f"\nStudent checkpoint extra: `{ckpt_metrics.get('upstream', {})}`.\n"
    if args.notes:
        body += f"\n{args.notes}\n"
    print(body)
    if not args.no_write:
        write_section(args.title, body)


if __name__ == "__main__":
    main()
