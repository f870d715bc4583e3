"""Results that regenerate: per-seed outcome files under ``results/`` and the current table.

Every main-job run (``experiments/closed_loop.py``) writes ``outcomes.json`` next to its
``run.json``: for each method and held-out seed the success, failure kind, episode length
and planning time, with the run's command, machine, date, commit and stage keys. Those
files are small; a reported run's file is committed under ``results/``, and the table at
the top of ``BENCHMARKS.md`` (and the README's copy of it) is regenerated from them on any
clone, paired tests included:

    python -m experiments.results add artifacts/closed_loop/lift/outcomes.json   # copy a run in
    python -m experiments.results                                                # rewrite the tables
    python -m experiments.results --check                                        # fail if they are stale

Runs are shown one by one and never pooled: results differ across machine types even with
the same stage keys, so methods are compared only within one run (same seeds, same machine).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path

from agent.evaluate import mcnemar, wilson_interval
from envs.rollouts import atomic_path
from experiments.common import ROOT, command_line, git_commit, machine

RESULTS_DIR = ROOT / "results"
#: Files whose generated block the tables replace, between these two markers, and whether a
#: page shows only the newest run of each task (the README) or every recorded run.
PAGES = ((ROOT / "BENCHMARKS.md", False), (ROOT / "README.md", True))
BEGIN, END = "<!-- results:begin (python -m experiments.results) -->", "<!-- results:end -->"
#: Fields of a seed's outcome (one row per method and seed).
OUTCOME_FIELDS = ("seed", "success", "failure", "wrong_object", "length", "plan_s_per_step", "instruction")
FORMAT = 1


def outcome_record(report: dict, episodes: dict[str, list[dict]], command: str | None = None) -> dict:
    """A run's outcome file from the main job's ``report`` (``closed_loop.run``) and each
    method's episode records (``{method: [EpisodeResult fields as a dict, ...]}``, seed order)."""
    def stage_name(d) -> str:
        return Path(d).name            # <stage>-<key[:12]>: the stage key, as the cache names it

    stages = {k: [stage_name(d) for d in v] if isinstance(v, list) else stage_name(v)
              for k, v in report.get("stages", {}).items()}
    methods = {}
    for s in report["summaries"]:
        rows = episodes[s["agent"]]
        methods[s["agent"]] = [{"seed": int(r["seed"]), "success": bool(r["success"]), "failure": r["failure"],
                                "wrong_object": bool(r["wrong_object"]), "length": int(r["length"]),
                                "plan_s_per_step": round(float(r.get("act_s", 0.0)), 4),
                                "instruction": r["instruction"]} for r in rows]
    return {"format": FORMAT, "env_id": report["env_id"], "preset": report.get("preset"),
            "episodes": report["episodes"], "seeds": list(report["seeds"]),
            "main": report["summaries"][0]["agent"], "methods": methods, "stages": stages,
            "wall_s": round(float(report["wall_s"]), 1), "build_s": round(float(report["build_s"]), 1),
            "command": command or command_line(),
            "machine": machine(), "commit": git_commit(),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def write_outcomes(out: Path, report: dict | None = None, **override) -> Path:
    """Write ``<out>/outcomes.json`` for the main-job run in ``out`` (its ``run.json``, or
    ``report``, and each method's per-seed episode files ``<method>/episodes/seed_<s>.json``,
    which shards of one evaluation share without clashing); ``override`` replaces fields
    of the record (e.g. the ``commit`` of an older run being recorded later)."""
    out = Path(out)
    report = report or json.loads((out / "run.json").read_text())
    episodes = {s["agent"]: [json.loads((out / s["agent"] / "episodes" / f"seed_{seed}.json").read_text())
                             for seed in report["seeds"]] for s in report["summaries"]}
    rec = check_record({**outcome_record(report, episodes), **override}, str(out))
    path = out / "outcomes.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(rec, indent=1) + "\n")
    return path


def check_record(rec: dict, where: str = "outcome file") -> dict:
    """``rec`` if it is a well-formed outcome file, else a ValueError saying what is wrong."""
    missing = {"format", "env_id", "seeds", "main", "methods", "stages", "command", "machine", "commit",
               "date", "wall_s"} - set(rec)
    if missing:
        raise ValueError(f"{where}: not an outcome file (missing {sorted(missing)}); write one with "
                         f"python experiments/closed_loop.py (it leaves outcomes.json next to run.json)")
    if rec["format"] != FORMAT:
        raise ValueError(f"{where}: outcome format {rec['format']}, this code reads {FORMAT}")
    for method, rows in rec["methods"].items():
        if [r["seed"] for r in rows] != rec["seeds"]:
            raise ValueError(f"{where}: {method}'s seeds differ from the run's; a paired test needs the same seeds")
        bad = [f for f in OUTCOME_FIELDS if any(f not in r for r in rows)]
        if bad:
            raise ValueError(f"{where}: {method}'s rows lack {bad}")
    if rec["main"] not in rec["methods"]:
        raise ValueError(f"{where}: the main method {rec['main']!r} has no rows")
    return rec


def load_records(folder: Path = RESULTS_DIR) -> list[tuple[str, dict]]:
    """``[(file name, outcome record)]`` of every ``*.json`` in ``folder``, newest run first."""
    out = [(p.name, check_record(json.loads(p.read_text()), str(p))) for p in sorted(folder.glob("*.json"))]
    return sorted(out, key=lambda x: (x[1]["date"], x[0]), reverse=True)


def run_table(rec: dict) -> str:
    """Markdown for one run: per method the successes with the 95% Wilson interval, wrong-object
    rate, mean length, planning seconds per control step, and the exact McNemar test against the
    run's main method on the same seeds."""
    main = [r["success"] for r in rec["methods"][rec["main"]]]
    rows = [f"| method | success | 95% CI | wrong object | mean length | planning s/step | "
            f"vs {rec['main']}: only {rec['main']} / only this | McNemar p |", "|---|---|---|---|---|---|---|---|"]
    for method, eps in rec["methods"].items():
        n, k = len(eps), sum(r["success"] for r in eps)
        lo, hi = wilson_interval(k, n)
        wrong = sum(r["wrong_object"] for r in eps)
        length = sum(r["length"] for r in eps) / max(n, 1)
        plan = sum(r["plan_s_per_step"] for r in eps) / max(n, 1)
        if method == rec["main"]:
            paired = "| | "
        else:
            t = mcnemar(main, [r["success"] for r in eps])
            paired = f"| {t['a_only']} / {t['b_only']} | {t['p']:.3f} "
        rows.append(f"| {method} | {k}/{n} | [{lo:.2f}, {hi:.2f}] | {wrong} | {length:.1f} | {plan:.3f} {paired}|")
    return "\n".join(rows)


def newest_per_task(records: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The newest run of each env (``records`` newest first)."""
    seen: set = set()
    return [(n, r) for n, r in records if not (r["env_id"] in seen or seen.add(r["env_id"]))]


def render(records: list[tuple[str, dict]]) -> str:
    """The generated block: one section per run, newest first."""
    if not records:
        return "No recorded runs yet: run `python experiments/closed_loop.py`, then " \
               "`python -m experiments.results add artifacts/closed_loop/<env>/outcomes.json`."
    parts = ["Each run is its own table (same held-out seeds for every method, one machine); "
             "`results/<file>` holds its per-seed outcomes and stage keys."]
    for name, rec in records:
        env = rec["env_id"].split("/")[-1]
        parts.append(
            f"#### {env}: {len(rec['seeds'])} held-out test seeds ({rec['date']}, `results/{name}`)\n\n"
            f"{run_table(rec)}\n\n"
            f"- command: `{rec['command']}` (preset {rec.get('preset') or 'default'})\n"
            f"- machine: {rec['machine']}; commit `{rec['commit']}`\n"
            f"- wall time {rec['wall_s'] / 60:.1f} min, of which building missing stages "
            f"{rec.get('build_s', 0.0) / 60:.1f} min" + (f"\n- note: {rec['note']}" if rec.get("note") else ""))
    return "\n\n".join(parts)


def replace_block(text: str, block: str, where: str) -> str:
    """``text`` with the part between :data:`BEGIN` and :data:`END` replaced by ``block``."""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{where} has no generated-results block; add the two lines\n{BEGIN}\n{END}")
    return pattern.sub(lambda _: f"{BEGIN}\n{block}\n{END}", text)


def write_pages(records: list[tuple[str, dict]], pages=PAGES, check: bool = False) -> list[Path]:
    """Rewrite the generated block of each ``(page, newest run per task only)`` (atomically);
    with ``check``, write nothing and return the pages whose block is stale."""
    stale = []
    for page, newest in pages:
        text = page.read_text()
        new = replace_block(text, render(newest_per_task(records) if newest else records), str(page))
        if new != text:
            stale.append(page)
            if not check:
                with atomic_path(page) as tmp:
                    tmp.write_text(new)
    return stale


def add(path: Path, name: str | None = None, folder: Path = RESULTS_DIR) -> Path:
    """Copy a run's ``outcomes.json`` into ``folder`` as ``<date>_<env>_<commit>.json`` (or ``name``)."""
    rec = check_record(json.loads(Path(path).read_text()), str(path))
    env = rec["env_id"].split("/")[-1].split("-")[0].lower()
    name = name or f"{rec['date'][:10]}_{env}_{rec.get('preset') or 'default'}_{rec['commit'].split('+')[0]}.json"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / name
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(rec, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", nargs="?", choices=("write", "add"), default="write")
    ap.add_argument("path", nargs="?", help="add: a run's outcomes.json")
    ap.add_argument("--name", help="add: the file name under results/")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page's table is stale")
    args = ap.parse_args(argv)
    if args.action == "add":
        if not args.path:
            ap.error("add needs the path of a run's outcomes.json")
        print(f"added {add(Path(args.path), args.name)}")
    stale = write_pages(load_records(), check=args.check)
    if args.check:
        print("\n".join(f"stale: {p.name}" for p in stale) or "results tables are current")
        return 1 if stale else 0
    print(f"rewrote the results table in {', '.join(p.name for p, _ in PAGES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
