"""What a tokenizer's token layout costs the planner's imagination.

    python benchmarks/imagination_cost.py --tokenizer A/last.pt --tokenizer B/last.pt [--dynamics quick]

For each trained tokenizer, builds a world model with the ``dynamics=<name>`` transformer
(fresh weights: the cost depends on the token layout and model size, not on training)
and times what the MPC does at every replan: a batch of ``--candidates`` imagined rollouts
of ``--frames`` model steps from one shared real start frame (SWR, window from the
config, bf16 autocast as in ``mpc.amp``). Prints median seconds over ``--repeats`` runs
and the peak KV-cache length; nothing else should be running.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.common import setup_torch  # noqa: E402


def time_imagination(tokenizer_path: str, dynamics: str, candidates: int, frames: int, repeats: int,
                     window: int = 6) -> dict:
    """Median wall seconds of one ``rollout`` of ``candidates`` x ``frames`` model steps."""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from worldmodel.tokenizer import DualFSQTokenizer
    from worldmodel.world_model import WorldModel

    with initialize_config_dir(str(ROOT / "experiments" / "conf"), version_base="1.3"):
        dyn = OmegaConf.to_container(compose("train_worldmodel", [f"dynamics={dynamics}"]).dynamics.model)
    tok = DualFSQTokenizer.from_checkpoint(tokenizer_path).eval()
    wm = WorldModel.build(tok, dyn, action_repeat=2, window=window).eval()
    gen = torch.Generator().manual_seed(0)
    start = torch.rand(1, 3, 64, 64, generator=gen)
    actions = torch.rand(candidates, frames, 8, generator=gen) * 2 - 1
    times, peak = [], 0
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = wm.rollout(start, actions, mode="swr", generator=gen)
        if i:   # the first call warms up
            times.append(time.perf_counter() - t0)
        peak = out.peak_cache_len
    c = tok.config
    return {"tokens": f"{c.n_ctx_tokens} ctx + {c.n_dyn_tokens} dyn", "s": statistics.median(times),
            "peak_cache": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", action="append", required=True, help="a tokenizer checkpoint (repeatable)")
    ap.add_argument("--dynamics", default="quick", help="experiments/conf/dynamics preset (the main job's: quick)")
    ap.add_argument("--candidates", type=int, default=64)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    setup_torch()
    print(f"| tokenizer | tokens per frame | {args.candidates} x {args.frames}-frame imagination (s) | peak KV length |")
    print("|---|---|---|---|")
    for path in args.tokenizer:
        r = time_imagination(path, args.dynamics, args.candidates, args.frames, args.repeats)
        print(f"| {Path(path).parent.name} | {r['tokens']} | {r['s']:.3f} | {r['peak_cache']} |")


if __name__ == "__main__":
    main()
