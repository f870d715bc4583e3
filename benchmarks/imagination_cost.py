"""What a tokenizer's token layout costs: training steps, peak memory and the planner's imagination.

    python benchmarks/imagination_cost.py --tokenizer A/last.pt --tokenizer B/last.pt [--dynamics quick] [--write]

For each trained tokenizer, builds a world model with the ``dynamics=<name>`` transformer
(fresh weights: the cost depends on the token layout and model size, not on training)
and measures, each layout in a fresh process (so its peak memory is its own):

- one training step of the tokenizer (16 pairs) and of the transformer (``batch`` windows
  of 8 model steps, next-token cross-entropy), forward + backward + AdamW, bf16 autocast;
- what the MPC does at every replan: a batch of ``--candidates`` imagined rollouts of
  ``--frames`` model steps from one shared real start frame (SWR, window 6,
  bf16 autocast as in ``mpc.amp``), with the time split into re-encoding (the start frame
  and every SWR boundary), the transformer (prefill + one pass per frame) and decoding;
  and the same imagination in one segment (window = ``--frames``: no SWR boundary);
- the peak KV-cache length and the process's peak resident memory.

Prints a table; ``--write`` also writes it to the research log. Nothing else should be running.
"""
from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import resource
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.report import command_line, write_section  # noqa: E402
from experiments.common import setup_torch  # noqa: E402


def _median_s(fn, repeats: int, warmup: int = 1) -> float:
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _timed(obj, name: str, totals: collections.Counter, key: str) -> None:
    """Wrap ``obj.name`` so that its wall time accumulates in ``totals[key]``."""
    fn = getattr(obj, name)

    def wrapper(*a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        totals[key] += time.perf_counter() - t0
        return out
    setattr(obj, name, wrapper)


def measure(tokenizer_path: str, dynamics: str, candidates: int, frames: int, repeats: int,
            batch: int = 32, window: int = 6, threads: int | None = None) -> dict:
    """Training-step and imagination timings of one tokenizer's layout (see the module docstring)."""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from worldmodel.tokenizer import DualFSQTokenizer
    from worldmodel.world_model import WorldModel

    setup_torch(threads)
    with initialize_config_dir(str(ROOT / "experiments" / "conf"), version_base="1.3"):
        dyn_cfg = OmegaConf.to_container(compose("train_worldmodel", [f"dynamics={dynamics}"]).dynamics.model)
    tok = DualFSQTokenizer.from_checkpoint(tokenizer_path)
    wm = WorldModel.build(tok, dyn_cfg, action_repeat=2, window=window)
    c, gen = tok.config, torch.Generator().manual_seed(0)
    amp = torch.autocast("cpu", dtype=torch.bfloat16)

    # training steps (fresh optimizers; weights change, which does not change the cost)
    tok.train()
    opt = torch.optim.AdamW(tok.parameters(), lr=1e-5)
    x, y = torch.rand(16, 3, 64, 64, generator=gen), torch.rand(16, 3, 64, 64, generator=gen)
    w = (torch.ones(16, 64, 64), torch.ones(16, 64, 64)) if c.region_weight else None

    def tok_step():
        with amp:
            loss = tok(x, y, w)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    tok_s = _median_s(tok_step, repeats, warmup=2)

    dm, t = wm.dynamics.train(), 8
    dopt = torch.optim.AdamW(dm.parameters(), lr=1e-5)
    ctx = torch.randint(0, c.ctx_codebook_size, (batch, c.n_ctx_tokens), generator=gen)
    prev0 = torch.randint(0, c.dyn_codebook_size, (batch, c.n_dyn_tokens), generator=gen)
    toks = torch.randint(0, c.dyn_codebook_size, (batch, t, c.n_dyn_tokens), generator=gen)
    acts = torch.rand(batch, t, dm.cfg.action_dim, generator=gen) * 2 - 1

    def dyn_step():
        with amp:
            loss = dm.loss(ctx, prev0, acts, toks)[0]
        dopt.zero_grad(set_to_none=True)
        loss.backward()
        dopt.step()
    dyn_s = _median_s(dyn_step, repeats, warmup=2)

    # imagination, as at every MPC replan
    wm.eval()
    split = collections.Counter()
    _timed(wm, "encode", split, "encode")
    _timed(wm, "decode", split, "decode")
    _timed(wm.dynamics, "start", split, "transformer")
    _timed(wm.dynamics, "step", split, "transformer")
    start = torch.rand(1, 3, 64, 64, generator=gen)
    actions = torch.rand(candidates, frames, dm.cfg.action_dim, generator=gen) * 2 - 1
    peak = []

    def imagine(w=window):
        with amp:
            peak.append(wm.rollout(start, actions, mode="swr", window=w, generator=gen).peak_cache_len)
    imagine()     # warm-up, not counted in the split
    split.clear()
    im_s = _median_s(imagine, repeats, warmup=0)
    split, peak_cache = {k: v / repeats for k, v in split.items()}, max(peak)
    one_segment_s = _median_s(lambda: imagine(frames), repeats, warmup=1)   # no SWR boundary
    return {"layout": f"{c.n_ctx_tokens} ctx + {c.n_dyn_tokens} dyn", "tokenizer_step_s": tok_s,
            "dynamics_step_s": dyn_s, "imagine_s": im_s, "frames_per_s": candidates * frames / im_s,
            "one_segment_s": one_segment_s,
            "split": split, "peak_cache": peak_cache,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


def _child(q, kwargs):
    q.put(measure(**kwargs))


def measure_isolated(**kwargs) -> dict:
    """:func:`measure` in a fresh process, so that the peak memory is this layout's alone."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, kwargs))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", action="append", required=True, help="a tokenizer checkpoint (repeatable)")
    ap.add_argument("--dynamics", default="quick", help="experiments/conf/dynamics preset (the main job's: quick)")
    ap.add_argument("--candidates", type=int, default=64)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32, help="training windows per transformer step")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--write", action="store_true", help="write the table to the research log")
    ap.add_argument("--title", default="World model: training and imagination cost per token layout")
    ap.add_argument("--notes", default="", help="a reading appended under the table")
    args = ap.parse_args()
    n, f = args.candidates, args.frames
    lines = [f"| tokenizer | tokens per frame | tokenizer step s (16 pairs) | transformer step s ({args.batch} x 8) | "
             f"{n} x {f}-frame imagination s (SWR, W = 6) | imagined frames/s | encode / transformer / decode s | "
             f"peak KV length | {n} x {f} in one segment (W = {f}) s | peak memory GB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    print(lines[0], lines[1], sep="\n")
    for path in args.tokenizer:
        r = measure_isolated(tokenizer_path=path, dynamics=args.dynamics, candidates=n, frames=f,
                             repeats=args.repeats, batch=args.batch, threads=args.threads)
        s = r["split"]
        lines.append(f"| {Path(path).parent.name} | {r['layout']} | {r['tokenizer_step_s']:.3f} | "
                     f"{r['dynamics_step_s']:.3f} | {r['imagine_s']:.3f} | {r['frames_per_s']:.0f} | "
                     f"{s['encode']:.3f} / {s['transformer']:.3f} / {s['decode']:.3f} | {r['peak_cache']} | "
                     f"{r['one_segment_s']:.3f} | {r['peak_rss_gb']:.2f} |")
        print(lines[-1], flush=True)
    if args.write:
        body = (f"Fresh `dynamics={args.dynamics}` transformer on each tokenizer (the cost depends on the token layout "
                f"and model size, not on the weights); bf16 autocast; torch threads = {setup_torch(args.threads)}; "
                f"medians of {args.repeats} runs; each layout in its own process (peak memory = that process's "
                "peak resident set). Imagination = one MPC replan: "
                f"{n} candidates x {f} model steps from one shared start frame, SWR with W = 6 (one boundary at "
                f"step 6: re-encode {n} frames, prefill {n} contexts), and the same in one segment (W = {f}, "
                "no boundary; the transformer was trained on 8-step windows).\n\n"
                + "\n".join(lines) + (f"\n\n{args.notes}" if args.notes else ""))
        write_section(args.title, body, command=command_line())


if __name__ == "__main__":
    main()
