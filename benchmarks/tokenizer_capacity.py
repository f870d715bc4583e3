"""Where does tokenizer fidelity come from: token grid, codebook bits or network width?

    python benchmarks/tokenizer_capacity.py --train A.hdf5 B.hdf5 --val C.hdf5 D.hdf5 \
        --variant base "" --variant ctx16 "tokenizer.model.ctx_grid=16" ...

Trains each variant with ``experiments/train_tokenizer.py tokenizer=quick`` for the
same number of steps on the same rollouts (``artifacts/tokenizer/exp_<name>``; a
finished variant is reused, an interrupted one resumes), then times one training step
of each model on this machine (16 pairs, bf16 autocast, Adam; median of ``--time-steps``
steps, nothing else should be running) and writes the held-out PSNR table to
the research log. Same schedule for all (cosine over ``--steps``), so the columns compare
capacity at equal optimisation budget, not converged quality.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from benchmarks.report import write_section  # noqa: E402
from experiments.common import resolve, setup_torch  # noqa: E402


def variant_cfg(name: str, overrides: list[str], steps: int, train: list[str], val: list[str]):
    with initialize_config_dir(str(ROOT / "experiments" / "conf"), version_base="1.3"):
        return compose("train_tokenizer", [
            "tokenizer=quick", f"tokenizer.train.steps={steps}", f"tokenizer.eval_every={max(1, steps // 3)}",
            f"data.train=[{','.join(train)}]", f"data.val=[{','.join(val)}]",
            f"out_dir=artifacts/tokenizer/exp_{name}", "progress=false", *overrides])


def step_time(cfg, n: int) -> float:
    """Median seconds of one training step (forward, backward, Adam) on 16 random pairs."""
    import torch

    from worldmodel.tokenizer import DualFSQTokenizer, TokenizerConfig

    tcfg = TokenizerConfig.from_dict(OmegaConf.to_container(cfg.tokenizer.model))
    model = DualFSQTokenizer(tcfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.rand(16, 3, 64, 64), torch.rand(16, 3, 64, 64)
    w = (torch.ones(16, 64, 64), torch.ones(16, 64, 64)) if tcfg.region_weight else None
    times = []
    for i in range(n + 3):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x, y, w)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", nargs="+", required=True, help="training rollout files")
    ap.add_argument("--val", nargs="+", required=True, help="held-out rollout files")
    ap.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "OVERRIDES"), required=True,
                    help='a name and its train_tokenizer overrides as one string ("" for the default)')
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--time-steps", type=int, default=10)
    ap.add_argument("--title", default="Tokenizer capacity: grid, codebook, width (equal steps)")
    ap.add_argument("--notes", default="")
    args = ap.parse_args()
    from experiments.train_tokenizer import run

    rows = []
    for name, ov in args.variant:
        cfg = variant_cfg(name, shlex.split(ov), args.steps, args.train, args.val)
        run(cfg)
        evs = [json.loads(line) for line in (resolve(cfg.out_dir) / "metrics.jsonl").open()]
        ev = [e for e in evs if "eval/ctx_psnr" in e][-1]
        setup_torch()   # all cores, as training uses them
        m = cfg.tokenizer.model
        rows.append((name, ov or "(quick preset)", m, ev, step_time(cfg, args.time_steps)))
        print(name, {k: round(v, 2) for k, v in ev.items() if k.startswith("eval/")})
    body = [f"Each variant: `python experiments/train_tokenizer.py tokenizer=quick tokenizer.train.steps={args.steps} "
            f"<overrides> data.train=[...] data.val=[...]` on {', '.join(Path(p).name for p in args.train)}; "
            f"held-out pairs from {', '.join(Path(p).name for p in args.val)}. Step time: one training step on "
            "16 pairs, bf16, median, measured after training on an otherwise idle machine.\n",
            "| variant | overrides | ctx tokens x codes | dyn tokens x codes | ctx PSNR | ctx region | "
            "dyn PSNR | dyn region | ctx code usage | s/step |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, ov, m, ev, st in rows:
        body.append(f"| {name} | `{ov}` | {m.ctx_grid ** 2} x {math.prod(m.ctx_levels)} | "
                    f"{m.dyn_grid ** 2} x {math.prod(m.dyn_levels)} | {ev['eval/ctx_psnr']:.2f} | "
                    f"{ev['eval/ctx_region_psnr']:.2f} | {ev['eval/dyn_psnr']:.2f} | {ev['eval/dyn_region_psnr']:.2f} | "
                    f"{ev['eval/ctx_code_usage']:.3f} | {st:.3f} |")
    if args.notes:
        body += ["", args.notes]
    cmd = "python benchmarks/tokenizer_capacity.py --steps {} --train ... --val ... {}".format(
        args.steps, " ".join(f"--variant {n} {shlex.quote(o)}" for n, o in args.variant))
    write_section(args.title, "\n".join(body), command=cmd)


if __name__ == "__main__":
    main()
