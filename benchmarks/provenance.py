"""Which instruction labelled which data: collected rollouts, action-prior rows, bench rows and
student rows, per instruction of the vocabulary.

    python -m benchmarks.provenance --run artifacts/closed_loop/pick_color/run.json
    python -m benchmarks.provenance --collect DIR [DIR ...] --prior DIR --bench DIR --student DIR

"Zero-shot" is checkable here: an instruction nobody demonstrated has no rollouts and no prior
rows (a play prior, ``prior.model.instruction_input=false``, reads no instruction at all: its rows
count as pooled); it reaches the student only through bench rows the teacher labelled under it
(``bench.wm_relabel``). Counts come from the artifacts themselves (rollout attributes, the
stages' recorded configs, the bench rows), not from the configs that should have made them.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.report import add_section_args, publish, rel_path

POOLED = "pooled (no instruction input)"


def rollout_counts(collect_dirs) -> dict[str, Counter]:
    """``{"train": Counter(instruction id -> episodes), "val": ...}`` over the collect stages'
    rollout files, and ``"prior"``: the successful train episodes (what a prior with
    ``only_success`` trains on)."""
    from envs.rollouts import demo_keys, find_rollouts, open_rollouts

    out = {"train": Counter(), "val": Counter(), "train_success": Counter()}
    for d in collect_dirs:
        for path in find_rollouts(Path(d)):
            split = "val" if "_val_" in path.name else "train"
            with open_rollouts(path) as f:
                for key in demo_keys(f):
                    attrs = f["data"][key].attrs
                    out[split][int(attrs["instruction_id"])] += 1
                    if split == "train" and bool(attrs["success"]):
                        out["train_success"][int(attrs["instruction_id"])] += 1
    return out


def prior_rows(prior_dir, rollouts: dict[str, Counter]) -> dict:
    """Training episodes of a built prior stage per instruction id (``POOLED`` for a play prior),
    from its recorded config."""
    manifest = Path(prior_dir) / "stage.json"
    if not manifest.exists():
        raise SystemExit(f"{prior_dir} is not a finished prior stage (no stage.json): build it first")
    cfg = json.loads(manifest.read_text())["config"]["prior"]
    counts = rollouts["train_success"] if cfg["train"].get("only_success", True) else rollouts["train"]
    if not cfg["model"].get("instruction_input", True):
        return {POOLED: sum(counts.values())}
    return dict(counts)


def bench_rows(bench_path, splits=("train",)) -> dict[str, Counter]:
    """Bench rows per kind (real, degraded, generated, relabelled: generations labelled under
    another instruction) and instruction id, in ``splits``."""
    from worldmodel.judge.bench import load_bench

    b = load_bench(bench_path, keys=("instruction", "source", "degradation", "split"))
    out: dict[str, Counter] = {}
    keep = np.isin(np.asarray(b["split"]).astype(str), list(splits))
    for i in np.flatnonzero(keep):
        deg, src = str(b["degradation"][i]), str(b["source"][i])
        kind = "relabelled" if deg.endswith((":relabel", ":opposite")) else src
        out.setdefault(kind, Counter())[int(b["instruction"][i])] += 1
    return out


def student_splits(student_dir) -> tuple[str, ...]:
    """The bench splits a built student stage trained on (its recorded metrics; default train)."""
    path = Path(student_dir) / "metrics.json"
    return tuple(json.loads(path.read_text()).get("train_splits", ["train"])) if path.exists() else ("train",)


def table(rollouts: dict, priors: dict[str, dict], bench: dict[str, Counter] | None,
          student: dict[str, Counter] | None) -> str:
    """The provenance table: one row per instruction of the vocabulary (plus pooled prior rows)."""
    from envs.vocab import INSTRUCTIONS

    kinds = sorted(bench) if bench else []
    head = (["instruction", "rollouts train", "rollouts val"] + [f"prior rows `{n}`" for n in priors]
            + [f"bench rows: {k}" for k in kinds] + (["student train rows"] if student is not None else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, text in [*enumerate(INSTRUCTIONS), (POOLED, POOLED)]:
        cells = [text, str(rollouts["train"].get(idx, 0)) if idx != POOLED else "-",
                 str(rollouts["val"].get(idx, 0)) if idx != POOLED else "-"]
        cells += [str(p.get(idx, 0)) for p in priors.values()]
        cells += [str(bench[k].get(idx, 0)) if idx != POOLED else "-" for k in kinds]
        if student is not None:
            cells.append(str(sum(c.get(idx, 0) for c in student.values())) if idx != POOLED else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="a main-job run.json naming the stages")
    ap.add_argument("--collect", nargs="*", default=None, help="collect stage folders (default: the run's)")
    ap.add_argument("--prior", action="append", default=None, help="prior stage folders (default: the run's prior "
                                                                    "and play_prior)")
    ap.add_argument("--bench", default=None, help="a bench stage folder (default: the run's)")
    ap.add_argument("--student", default=None, help="a student stage folder (default: the run's)")
    add_section_args(ap, "Provenance: which instruction labelled which data")
    args = ap.parse_args(argv)
    st = json.loads(Path(args.run).read_text())["stages"] if args.run else {}
    collect = args.collect or st.get("collect") or []
    if not collect:
        raise SystemExit("no collect stages: pass --run RUN.json or --collect DIR [DIR ...]")
    priors = args.prior or [st[k] for k in ("prior", "play_prior") if k in st]
    bench_dir, student_dir = args.bench or st.get("bench"), args.student or st.get("student")
    rollouts = rollout_counts(collect)
    prior = {Path(p).name: prior_rows(p, rollouts) for p in priors}
    bench = bench_rows(Path(bench_dir) / "bench.h5", ("train", "val", "test")) if bench_dir else None
    student = bench_rows(Path(bench_dir) / "bench.h5", student_splits(student_dir)) if bench_dir and student_dir \
        else None
    body = (f"Collect stages {', '.join(f'`{Path(d).name}`' for d in collect)}"
            + (f"; bench `{rel_path(bench_dir)}` (all splits)" if bench_dir else "")
            + (f"; student `{Path(student_dir).name}` (the bench rows of its training splits)" if student else "")
            + ". Prior rows: the train episodes a prior stage trained on (successful ones with `only_success`); "
              "relabelled bench rows are generations the teacher labelled under another instruction "
              "(`bench.wm_opposite`, `bench.wm_relabel`).\n\n" + table(rollouts, prior, bench, student))
    publish(args, body)
    return body


if __name__ == "__main__":
    main()
