"""Record a finished main-job run (``experiments/closed_loop.py``) in docs/research-log.md.

    python experiments/closed_loop.py [preset=...] [env=...]      # first: the run itself
    python benchmarks/main_job.py [--env lift] [--artifacts artifacts] [--title ...]

Reads ``<artifacts>/closed_loop/<env>/run.json`` and the ``stage.json`` of every stage
it used, and writes the results table (all methods, same seeds), the wall time and each
stage's build time. Stage times are those of the run that built the stage (a reused
stage costs nothing in a later run).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.evaluate import instruction_table, mcnemar, paired_table, results_table, success_by_instruction  # noqa: E402
from benchmarks.report import write_section  # noqa: E402
from experiments.common import resolve  # noqa: E402


def stage_rows(stages: dict) -> list[str]:
    rows = ["| stage | folder | built | build time (s) |", "|---|---|---|---|"]
    for name, dirs in stages.items():
        for d in dirs if isinstance(dirs, list) else [dirs]:
            m = json.loads((Path(d) / "stage.json").read_text())
            rows.append(f"| {name} | `{Path(d).name}` | {m.get('finished_at', '?')} | {m.get('wall_s', 0):.0f} |")
    return rows


def against_table(sums: list[dict], other: list[dict], label: str) -> str:
    """Markdown: each method of this run against the same method of another run (same
    seeds, e.g. other models), exact McNemar on the per-seed outcomes."""
    theirs = {x["agent"]: x for x in other}
    rows = [f"| method | episodes | success here | success in {label} | only here | only in {label} | McNemar p |",
            "|---|---|---|---|---|---|---|"]
    for x in sums:
        o = theirs.get(x["agent"])
        if o is None or o.get("seeds") != x.get("seeds") or "success_per_seed" not in o:
            continue
        t = mcnemar(x["success_per_seed"], o["success_per_seed"])
        rows.append(f"| {x['agent']} | {len(x['seeds'])} | {sum(x['success_per_seed'])} | "
                    f"{sum(o['success_per_seed'])} | {t['a_only']} | {t['b_only']} | {t['p']:.3f} |")
    if len(rows) == 2:
        raise SystemExit(f"no method of this run ran on the same seeds in {label}")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="lift")
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--run-dir", default=None, help="the run's out_dir (default: <artifacts>/closed_loop/<env>)")
    ap.add_argument("--title", default=None)
    ap.add_argument("--notes", default="", help="free text appended under the table")
    ap.add_argument("--command", default=None, help="the closed-loop command that made the run "
                    "(default: the preset's plain command)")
    ap.add_argument("--against", nargs=2, action="append", default=[], metavar=("RUN_DIR", "LABEL"),
                    help="another run on the same seeds: pair each shared method (McNemar)")
    args = ap.parse_args()
    path = resolve(args.run_dir or Path(args.artifacts) / "closed_loop" / args.env) / "run.json"
    if not path.exists():
        raise SystemExit(f"{path} not found; run `python experiments/closed_loop.py env={args.env}` first")
    run = json.loads(path.read_text())
    preset = run.get("preset") or "default"
    body = [f"{run['env_id']}, {run['episodes']} held-out test seeds ({run['seeds'][0]}..{run['seeds'][-1]}), "
            f"every method on the same seeds.", "", results_table(run["summaries"]), ""]
    sums = run["summaries"]
    for x in sums:   # runs recorded before summaries had it: from the episode records
        if "success_by_instruction" not in x and (path.parent / x["agent"] / "episodes.jsonl").exists():
            recs = [json.loads(line) for line in (path.parent / x["agent"] / "episodes.jsonl").open()]
            x["success_by_instruction"] = success_by_instruction([r for r in recs if r["seed"] in set(x["seeds"])])
    if (table := instruction_table(sums)) is not None:
        body += ["Success by instruction:", "", table, ""]
    if len(sums) > 1 and all("success_per_seed" in x for x in sums):
        body += ["Paired on the same seeds (exact McNemar test):", "", paired_table(sums[0], sums[1:]), ""]
    for other_dir, label in args.against:
        other = json.loads((resolve(other_dir) / "run.json").read_text())["summaries"]
        body += [f"Against {label} (`{other_dir}`), same seeds:", "", against_table(sums, other, label), ""]
    body += [f"Wall time of this run: {run['wall_s']:.0f} s, of which {run['build_s']:.0f} s building or "
             f"reusing artifacts. Stages used:", "", *stage_rows(run.get("stages", {}))]
    if args.notes:
        body += ["", args.notes]
    write_section(args.title or f"Main job: {args.env} ({preset} preset)", "\n".join(body),
                  command=args.command or f"python experiments/closed_loop.py preset={preset} env={args.env}")


if __name__ == "__main__":
    main()
