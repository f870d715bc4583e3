"""Train the dual-branch FSQ tokenizer (worldmodel/tokenizer.py) on rollout frames.

    python experiments/train_tokenizer.py [tokenizer=tiny|quick|default|full] [data.train=[...]] [data.val=[...]]
    torchrun --nproc_per_node 2 experiments/train_tokenizer.py tokenizer=tiny ...

Writes ``out_dir/last.pt`` (kind "tokenizer"), ``metrics.jsonl`` and ``eval.png`` (rows:
context frame, its context-token reconstruction, future frame, its dynamics-token
reconstruction). Re-running the same command resumes; a finished run returns at once.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import asdict
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import default_collate
from torchmetrics.functional.image import peak_signal_noise_ratio

from experiments.common import ROOT, resolve, setup_torch
from worldmodel.data import FramePairs
from worldmodel.evaluate import region_mask
from worldmodel.tokenizer import KIND, DualFSQTokenizer, TokenizerConfig
from worldmodel.training import cleanup_distributed, load_checkpoint, setup_distributed, train, unwrap

TRAIN_KEYS = ("steps", "batch_size", "lr", "warmup", "weight_decay", "grad_clip", "amp")


def data_files(patterns, split: str) -> list[str]:
    """Expand rollout files/globs (relative to the repository root), with a clear error."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    files = sorted({f for p in patterns for f in glob.glob(str(resolve(p)))})
    if not files:
        raise FileNotFoundError(
            f"no {split} rollout files match {patterns}; collect them with e.g. "
            f"`python experiments/collect.py env=lift agent=noisy episodes=100 split={split}` "
            f"(one per env: lift, pick_color, stack) or pass data.{split}=[paths]")
    return files


def _rel(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def batch_stream(ds: FramePairs, batch_size: int, seed: int, rank: int):
    """``make_batches(start)``: batch ``s`` depends only on (seed, rank, s) -> exact resume."""
    def batches(start: int):
        step = start
        while True:
            rng = np.random.default_rng([seed, rank, step])
            yield default_collate([ds[int(i)] for i in rng.integers(0, len(ds), batch_size)])
            step += 1
    return batches


def loss_fn(model, batch):
    weights = None
    if "mask" in batch:   # region_weight > 0: object + gripper pixels weigh more
        rw = float(unwrap(model).config.region_weight)
        weights = tuple(1.0 + rw * region_mask(batch[k], 2).float() for k in ("context_mask", "mask"))
    out = model(batch["context"], batch["frame"], weights)
    metrics = {k: out[k] for k in ("ctx_mse", "ctx_l1", "dyn_mse", "dyn_l1")}
    metrics.update(ctx_psnr=-10 * torch.log10(out["ctx_mse"]), dyn_psnr=-10 * torch.log10(out["dyn_mse"]))
    return out["loss"], metrics


def region_psnr(pred: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, dilate: int = 2) -> torch.Tensor:
    """Per-image PSNR over object + gripper pixels (segmentation label > 0, dilated by
    ``dilate`` px): ``(B, 3, H, W)`` x2, labels ``(B, H, W)`` -> ``(B',)`` for images with any."""
    mask = region_mask(labels, dilate).float()[:, None]
    n = mask.sum((1, 2, 3)) * 3
    mse = ((pred - target) ** 2 * mask).sum((1, 2, 3)) / n.clamp(min=1)
    return -10 * torch.log10(mse[n > 0].clamp(min=1e-10))


@torch.no_grad()
def evaluate(tok: DualFSQTokenizer, pairs: list[dict], batch_size: int = 64, png: Path | None = None) -> dict:
    """Held-out PSNR (whole frame, object/gripper region) of both branches and code usage,
    through the public verbs the world model uses. ``copy_*``: the context reconstruction
    scored against the future frame (what the dynamics tokens must beat)."""
    scores, ctx_all, dyn_all = {}, [], []
    for i in range(0, len(pairs), batch_size):
        b = default_collate(pairs[i:i + batch_size])
        ctx, frame = b["context"], b["frame"]
        ctx_tokens = tok.encode_context(ctx)
        dyn_tokens = tok.encode_dynamics(frame, ctx_tokens, ctx)
        ctx_rec, dyn_rec = tok.decode_context(ctx_tokens), tok.decode(dyn_tokens, ctx_tokens, ctx)
        ctx_all.append(ctx_tokens), dyn_all.append(dyn_tokens)
        for name, pred, target, labels in (("ctx", ctx_rec, ctx, b["context_mask"]),
                                           ("dyn", dyn_rec, frame, b["mask"]),
                                           ("copy", ctx_rec, frame, b["mask"])):
            psnr = peak_signal_noise_ratio(pred, target, data_range=1.0, dim=(1, 2, 3), reduction="none")
            scores.setdefault(f"{name}_psnr", []).append(psnr)
            scores.setdefault(f"{name}_region_psnr", []).append(region_psnr(pred, target, labels))
        if png is not None and i == 0:
            save_grid(png, [ctx, ctx_rec, frame, dyn_rec], n=8)
    metrics = {k: torch.cat(v).mean().item() for k, v in scores.items()}
    metrics["ctx_code_usage"] = tok.code_usage(torch.cat(ctx_all), "ctx")
    metrics["dyn_code_usage"] = tok.code_usage(torch.cat(dyn_all), "dyn")
    return metrics


def save_grid(path: Path, rows: list[torch.Tensor], n: int = 8, scale: int = 2) -> None:
    """Rows of ``(B, 3, H, W)`` frames in [0, 1] -> one PNG (first ``n`` of each row)."""
    grid = torch.cat([torch.cat(list(r[:n].float().clamp(0, 1)), dim=2) for r in rows], dim=1)
    img = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST).save(path)


def run(cfg: DictConfig) -> dict:
    """Train (or resume) the tokenizer; returns the final held-out metrics (main process)."""
    dist = setup_distributed()
    setup_torch(cfg.threads or max(1, (os.cpu_count() or 1) // dist.world_size))
    tcfg = TokenizerConfig.from_dict(OmegaConf.to_container(cfg.tokenizer.model))
    train_files, val_files = data_files(cfg.data.train, "train"), data_files(cfg.data.val, "val")
    hp = cfg.tokenizer.train
    config = {"model": asdict(tcfg), "train": {k: hp[k] for k in TRAIN_KEYS},
              "data": {"train": [_rel(f) for f in train_files], "max_gap": cfg.data.max_gap, "seed": cfg.seed}}
    out_dir = resolve(cfg.out_dir)
    if (out_dir / "last.pt").exists():   # finished already? then skip loading data at all
        ckpt = load_checkpoint(out_dir / "last.pt", kind=KIND, config=config)
        if ckpt["step"] >= hp.steps:
            print(f"{out_dir / 'last.pt'} is already trained ({ckpt['step']} steps)")
            return ckpt["metrics"]
    torch.manual_seed(cfg.seed)
    model = DualFSQTokenizer(tcfg)
    train_ds = FramePairs(train_files, max_gap=cfg.data.max_gap, masks=tcfg.region_weight > 0)
    val_ds = FramePairs(val_files, max_gap=cfg.data.max_gap, masks=True) if dist.is_main else None
    val_pairs = ([val_ds[int(i)] for i in np.random.default_rng(12345).choice(
        len(val_ds), min(cfg.data.val_pairs, len(val_ds)), replace=False)] if val_ds else [])
    per_rank = max(1, hp.batch_size // dist.world_size)
    train(model, batch_stream(train_ds, per_rank, cfg.seed, dist.rank), loss_fn,
          steps=hp.steps, lr=hp.lr, out_dir=out_dir, kind=KIND, config=config,
          eval_fn=lambda m: evaluate(m, val_pairs, png=out_dir / "eval.png"),
          eval_every=cfg.tokenizer.eval_every, ckpt_every=cfg.tokenizer.ckpt_every,
          log_every=cfg.tokenizer.log_every, weight_decay=hp.weight_decay, grad_clip=hp.grad_clip,
          warmup=hp.warmup, amp=hp.amp, progress=cfg.progress, dist=dist)
    if not dist.is_main:
        return {}
    metrics = load_checkpoint(out_dir / "last.pt", kind=KIND)["metrics"]
    print(json.dumps(metrics, indent=2))
    print(f"tokenizer in {out_dir / 'last.pt'}; metrics in {out_dir / 'metrics.jsonl'}")
    return metrics


@hydra.main(config_path="conf", config_name="train_tokenizer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main()
