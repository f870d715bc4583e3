"""World-model benchmarks -> docs/research-log.md (tokenizer reconstruction + open-loop evaluation).

    python benchmarks/world_model_quality.py [--name quick]

Reads the trained tokenizer's last eval (``artifacts/tokenizer/<name>/metrics.jsonl``) and
runs ``experiments/eval_worldmodel.py name=<name>`` on the held-out (val-split) rollouts.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from hydra import compose, initialize_config_dir  # noqa: E402

from benchmarks.report import write_section  # noqa: E402
from experiments.common import resolve  # noqa: E402
from experiments.eval_worldmodel import run as eval_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="quick")
    ap.add_argument("--tokenizer-dir", default=None,
                    help="trained tokenizer folder (default artifacts/tokenizer/<name>; e.g. a pipeline stage)")
    ap.add_argument("--notes", default="", help="text appended to the open-loop section")
    ap.add_argument("overrides", nargs="*", help="eval_worldmodel overrides, e.g. worldmodel_ckpt=...")
    args = ap.parse_args()
    tok_dir = resolve(args.tokenizer_dir) if args.tokenizer_dir else resolve("artifacts/tokenizer") / args.name
    rows = [json.loads(line) for line in (tok_dir / "metrics.jsonl").open()]
    ev = [r for r in rows if "eval/ctx_psnr" in r][-1]
    source = (f"Command: `python experiments/train_tokenizer.py tokenizer={args.name}`" if not args.tokenizer_dir
              else f"Tokenizer folder `{args.tokenizer_dir}`")
    met = "met" if ev["eval/ctx_psnr"] >= 30 and ev["eval/dyn_psnr"] >= 30 else "NOT met"
    tok = (f"Tokenizer `{args.name}` after {ev['step']} steps, held-out (val-split) frame pairs:\n\n"
           "| branch | PSNR whole frame | PSNR object+gripper region | code usage |\n|---|---|---|---|\n"
           f"| context | {ev['eval/ctx_psnr']:.2f} | {ev['eval/ctx_region_psnr']:.2f} | "
           f"{ev['eval/ctx_code_usage']:.3f} |\n"
           f"| dynamics (+ context) | {ev['eval/dyn_psnr']:.2f} | {ev['eval/dyn_region_psnr']:.2f} | "
           f"{ev['eval/dyn_code_usage']:.3f} |\n"
           f"| copy context frame (reference) | {ev['eval/copy_psnr']:.2f} | {ev['eval/copy_region_psnr']:.2f} | |\n\n"
           f"{source}. Target (default preset): PSNR >= 30 dB over the whole frame -- {met}.")
    write_section(f"Tokenizer reconstruction ({args.name})", tok,
                  command=(f"python experiments/train_tokenizer.py tokenizer={args.name}" if not args.tokenizer_dir
                           else f"python benchmarks/world_model_quality.py --name {args.name} --tokenizer-dir {args.tokenizer_dir}"))
    with initialize_config_dir(str(ROOT / "experiments" / "conf"), version_base="1.3"):
        cfg = compose("eval_worldmodel", [f"name={args.name}", *args.overrides])
    eval_run(cfg)
    table = (resolve(cfg.out_dir) / "results.md").read_text()
    write_section(f"World model open loop ({args.name})",
                  f"World model `{cfg.worldmodel_ckpt}`, "
                  f"evaluated on held-out val-split episodes; plots and a side-by-side video in "
                  f"`{cfg.out_dir}`.\n\n" + table + (f"\n\n{args.notes}" if args.notes else ""),
                  command=" ".join(["python benchmarks/world_model_quality.py --name", args.name,
                                    *([f"--tokenizer-dir {args.tokenizer_dir}"] if args.tokenizer_dir else []),
                                    *args.overrides]))


if __name__ == "__main__":
    main()
