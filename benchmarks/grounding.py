"""Does the student read the instruction from the pixels? The same imagined clip judged under
its instruction and under the opposite one (the other cube, the other stacking order).

On the held-out generations of a bench built with ``bench.wm_opposite=true`` (each generation
labelled by the teacher under both instructions) -- and, for instructions no rollout was collected
under, with ``bench.wm_relabel=[...]`` (each generation labelled under, e.g., "lift the cube on the
left" and "... on the right": zero-shot labels) -- for every clip where the teacher's replay
in the true simulator says the two instructions are followed to different stages (one cube
approached or lifted, the other not): does the student's instruction-following score (IF)
rank the two instructions the same way? Reported next to the teacher reading the same
imagined pixels (what the frames show, whatever the replay did), so that a world model that
imagines the wrong cube moving is told apart from a student that reads the instruction id.

    python -m benchmarks.grounding --bench BENCH.h5 --student STUDENT.pt [--student OTHER.pt ...]
"""
from __future__ import annotations

import argparse

import numpy as np

from benchmarks.report import add_section_args, publish, rel_path

SUFFIX = ":opposite"
RELABEL = ":relabel"


def opposite_pairs(bench: dict) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(own, opposite)`` of the generated clips that the bench also labelled
    under the opposite instruction (same episode, start, degradation and actions)."""
    deg = np.asarray(bench["degradation"], dtype=object)
    src = np.asarray(bench["source"], dtype=object)

    def key(i: int, name: str) -> tuple:
        return (bench["episode"][i], int(bench["start_step"][i]), name, bench["actions"][i].tobytes())

    own = {key(i, d): i for i, d in enumerate(deg) if src[i] == "generated" and not d.endswith(SUFFIX)}
    pairs = [(own[key(j, d[:-len(SUFFIX)])], j) for j, d in enumerate(deg)
             if src[j] == "generated" and d.endswith(SUFFIX) and key(j, d[:-len(SUFFIX)]) in own]
    if not pairs:
        raise ValueError("the bench has no generations labelled under the opposite instruction; build it with "
                         "bench.wm_opposite=true (two-instruction tasks only)")
    a = np.array(pairs, np.int64)
    return a[:, 0], a[:, 1]


def relabel_pairs(bench: dict) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(a, b)`` of generated clips labelled under two opposite listed instructions
    (``bench.wm_relabel``: the same generation, e.g. under "... on the left" and "... on the
    right"); each pair once, ``a`` the lower instruction id. Empty arrays when there are none."""
    from envs.vocab import opposite_instruction

    deg = np.asarray(bench["degradation"], dtype=object)
    src = np.asarray(bench["source"], dtype=object)
    groups: dict = {}
    for i, d in enumerate(deg):
        if src[i] == "generated" and d.endswith(RELABEL):
            key = (bench["episode"][i], int(bench["start_step"][i]), d, bench["actions"][i].tobytes())
            groups.setdefault(key, {})[int(bench["instruction"][i])] = i
    pairs = [(rows[a], rows[opposite_instruction(a)]) for rows in groups.values() for a in sorted(rows)
             if opposite_instruction(a) in rows and a < opposite_instruction(a)]
    a = np.array(pairs, np.int64).reshape(-1, 2)
    return a[:, 0], a[:, 1]


def agreed(a_own, a_opp, b_own, b_opp, margin: float = 0.0) -> np.ndarray:
    """Per pair that ``b`` (the reference) orders at all (|difference| > ``margin``): whether
    ``a`` orders it the same way (bool; for paired tests between judges)."""
    db, da = np.asarray(b_own) - np.asarray(b_opp), np.asarray(a_own) - np.asarray(a_opp)
    m = np.abs(db) > margin
    return np.sign(da[m]) == np.sign(db[m])


def agreement(a_own, a_opp, b_own, b_opp, margin: float = 0.0) -> tuple[float, int]:
    """How often ``a`` and ``b`` order the two instructions the same way, over the pairs that
    ``b`` (the reference) orders at all (|difference| > ``margin``); and how many those are."""
    same = agreed(a_own, a_opp, b_own, b_opp, margin)
    return (float(same.mean()) if same.size else float("nan")), int(same.size)


def measure(bench: dict, own: np.ndarray, opp: np.ndarray, student) -> dict:
    """Student vs replay and vs the teacher's reading of the imagined pixels, on the IF dimension;
    ``agreed``: per pair the replay orders, whether the student agrees (for paired tests)."""
    frames = bench["frames"][own]
    s_own = student.score(frames, bench["instruction"][own].tolist())["dims"][:, 0].float().numpy()
    s_opp = student.score(frames, bench["instruction"][opp].tolist())["dims"][:, 0].float().numpy()
    r_own, r_opp = bench["true_stage"][own, 0], bench["true_stage"][opp, 0]
    x_own, x_opp = bench["scores"][own, 0], bench["scores"][opp, 0]
    vs_replay, n_replay = agreement(s_own, s_opp, r_own, r_opp)
    vs_pixels, n_pixels = agreement(s_own, s_opp, x_own, x_opp)
    return {"vs_replay": vs_replay, "n_replay": n_replay, "vs_pixels": vs_pixels, "n_pixels": n_pixels,
            "spread": float(np.mean(np.abs(s_own - s_opp)) * 3.0), "agreed": agreed(s_own, s_opp, r_own, r_opp)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", required=True, help="a bench.h5 built with bench.wm_opposite=true and/or "
                                                   "bench.wm_relabel=[...]")
    ap.add_argument("--student", action="append", required=True, help="student checkpoint(s) to compare")
    ap.add_argument("--split", default="test")
    add_section_args(ap, "Judge: does the student read the instruction from the pixels? (opposite instructions)")
    args = ap.parse_args()
    from agent.evaluate import mcnemar
    from worldmodel.judge.bench import load_bench
    from worldmodel.judge.student import StudentReward

    bench = load_bench(args.bench, split=args.split)
    families = []
    try:
        families.append(("own vs opposite (collected instructions)", *opposite_pairs(bench)))
    except ValueError:
        pass
    a, b = relabel_pairs(bench)
    if len(a):
        families.append(("relabelled, opposite pairs (instructions nobody was collected under)", a, b))
    if not families:
        raise SystemExit(f"{args.bench} has no generation labelled under two opposite instructions: build it with "
                         "bench.wm_opposite=true or bench.wm_relabel=[...]")
    students = {path: StudentReward.from_checkpoint(path) for path in args.student}
    rows = []
    for name, own, opp in families:
        teacher_px, n_px = agreement(bench["scores"][own, 0], bench["scores"][opp, 0],
                                     bench["true_stage"][own, 0], bench["true_stage"][opp, 0])
        rows.append(f"| the teacher reading the imagined pixels | {name} | {len(own)} | {teacher_px:.3f} (n = {n_px}) "
                    f"| 1 | {np.mean(np.abs(bench['scores'][own, 0] - bench['scores'][opp, 0])):.2f} | - |")
        first = None
        for path, student in students.items():
            r = measure(bench, own, opp, student)
            if first is None:
                first, paired = r["agreed"], "-"
            else:        # against the first student, on the same pairs: exact McNemar
                t = mcnemar(list(r["agreed"]), list(first))
                paired = f"{t['a_only']} vs {t['b_only']}, p = {t['p']:.2g}"
            rows.append(f"| student `{rel_path(path)}` | {name} | {len(own)} | {r['vs_replay']:.3f} (n = "
                        f"{r['n_replay']}) | {r['vs_pixels']:.3f} (n = {r['n_pixels']}) | {r['spread']:.2f} | {paired} |")
    body = (f"Bench `{rel_path(args.bench)}`, split {args.split}: imagined clips, each judged under two opposite "
            "instructions. Which-cube agreement: over the clips where the reference orders the "
            "two instructions' IF (0-3) differently, how often the judge orders them the same way. Reference: the "
            "teacher on the replay of the same actions (first column) or the teacher reading the same imagined "
            "pixels (second). Spread: mean |IF(own) - IF(opposite)| in IF points (0-3); a judge that ignored the "
            "instruction would have 0. Paired: the pairs only this student / only the first student orders as the "
            "replay does, exact McNemar.\n\n"
            "| judge | instructions | pairs | agrees with the replay | agrees with the teacher on the pixels | "
            "spread | paired vs the first student |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    publish(args, body)


if __name__ == "__main__":
    main()
