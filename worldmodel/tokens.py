"""Tokenize training windows once, up front, for dynamics training.

Each window of :class:`worldmodel.data.RolloutWindows` becomes::

    ctx      (Nc,)     context tokens of the window's first frame
    prev0    (Nd,)     dynamics tokens of the first frame (under that context)
    tokens   (T, Nd)   dynamics tokens of frames 1..T (under that context)
    actions  (T, A)    grouped actions
    proprio  (T + 1, 4) the robot's proprio at frames 0..T (when the rollout files record it;
                       models with proprio tokens quantize it themselves)

Dynamics tokens depend on the context they are encoded under, so they are
computed per window, not per frame. The result is cached on disk keyed by the
tokenizer checkpoint's hash and the window settings.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from worldmodel.data import RolloutWindows


def file_hash(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 (first 16 hex chars) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


@torch.no_grad()
def tokenize_windows(tokenizer, windows: RolloutWindows, batch_size: int = 64, progress: bool = True) -> dict:
    """All windows -> dict of stacked tensors (see module docstring)."""
    tokenizer.eval()
    out = {"ctx": [], "prev0": [], "tokens": [], "actions": [], "proprio": []}
    loader = DataLoader(windows, batch_size=batch_size, shuffle=False, num_workers=0)
    for item in tqdm(loader, desc="tokenize", disable=not progress, unit="batch"):
        frames = item["frames"].float() / 255.0                       # (B, T+1, 3, H, W)
        b, t1 = frames.shape[:2]
        first = frames[:, 0]
        ctx = tokenizer.encode_context(first)
        rest = frames.flatten(0, 1)
        ctx_rep = ctx[:, None].expand(b, t1, ctx.shape[-1]).reshape(b * t1, -1)
        first_rep = first[:, None].expand(b, t1, *first.shape[1:]).flatten(0, 1)
        dyn = tokenizer.encode_dynamics(rest, ctx_rep, first_rep).view(b, t1, -1)
        out["ctx"].append(ctx)
        out["prev0"].append(dyn[:, 0])
        out["tokens"].append(dyn[:, 1:])
        out["actions"].append(item["actions"])
        if "proprio" in item:
            out["proprio"].append(item["proprio"])
    return {k: torch.cat(v) for k, v in out.items() if v}


#: Bumped when the cached dict gains fields (2: ``proprio``), so an older cache is not reused.
CACHE_VERSION = 2


def cached_tokens(tokenizer, tokenizer_hash: str, paths: list, window: int, action_repeat: int,
                  stride: int, cache_dir: str | os.PathLike, progress: bool = True) -> dict:
    """:func:`tokenize_windows` over ``paths``, cached under ``cache_dir`` (atomic write)."""
    key = hashlib.sha256(repr((tokenizer_hash, sorted(str(p) for p in paths),
                               [file_hash(p) for p in sorted(paths)], window, action_repeat,
                               stride, CACHE_VERSION)).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"tokens_{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    windows = RolloutWindows(paths, window=window, action_repeat=action_repeat, stride=stride)
    data = tokenize_windows(tokenizer, windows, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return data


class TokenWindows(Dataset):
    """Items of a tokenized-window dict (from :func:`tokenize_windows`)."""

    def __init__(self, data: dict):
        self.data = data

    def __len__(self) -> int:
        return len(self.data["ctx"])

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.data.items()}
