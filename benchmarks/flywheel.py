"""Record a finished data-flywheel run (``experiments/flywheel.py``) in docs/research-log.md.

    python experiments/flywheel.py [flywheel.rounds=2] [episodes=20]    # first: the run itself
    python benchmarks/flywheel.py [--env lift] [--command ...] [--notes ...]

Reads ``<run-dir>/flywheel/flywheel.json`` (default run dir ``<artifacts>/closed_loop/<env>``) and writes the per-round
table (success with interval, McNemar vs round 0 on the same seeds, the collected
episodes, the fine-tuned world model's val CE, the imagined-vs-real gap) with the
stage folders of each round.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.report import write_section  # noqa: E402
from experiments.common import resolve  # noqa: E402
from experiments.flywheel import table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="lift")
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--run-dir", default=None, help="the flywheel's out_dir (default: <artifacts>/closed_loop/<env>)")
    ap.add_argument("--title", default=None)
    ap.add_argument("--notes", default="", help="free text appended under the table")
    ap.add_argument("--command", default="python experiments/flywheel.py", help="the command that made the run")
    args = ap.parse_args()
    run_dir = Path(args.run_dir) if args.run_dir else Path(args.artifacts) / "closed_loop" / args.env
    path = resolve(run_dir / "flywheel" / "flywheel.json")
    if not path.exists():
        raise SystemExit(f"{path} not found; run `python experiments/flywheel.py env={args.env}` first")
    run = json.loads(path.read_text())
    fly = run["flywheel"]
    seeds = run["seeds"]
    body = [f"{run['env_id']}, agent `{run['agent']}`, {len(seeds)} held-out test seeds per round "
            f"({seeds[0]}..{seeds[-1]}, the same every round). Each round: {fly['episodes']} episodes of "
            f"{'the agent' if not fly.get('collector') else '`' + fly['collector'] + '`'} "
            f"on train seeds (from {fly['seed_start']}), world-model fine-tuning `{' '.join(fly['worldmodel'])}` on "
            f"all rollouts so far, re-alignment `{' '.join(fly['align']) or '(pipeline.align)'}`.", "",
            table(run["rounds"]), "", "| round | aligned world model |", "|---|---|"]
    body += [f"| {r['round']} | `{Path(r['world_model']).name}` |" for r in run["rounds"]]
    body += ["", f"Wall time {run['wall_s']:.0f} s."]
    if args.notes:
        body += ["", args.notes]
    write_section(args.title or f"Data flywheel: {args.env}", "\n".join(body), command=args.command)


if __name__ == "__main__":
    main()
