"""Shared training infrastructure: device, bf16 autocast, torchrun/DDP set-up,
self-describing atomic checkpoints, a flat JSONL logger and one resumable loop.

Every training script (tokenizer, dynamics, judge, ...) builds its model and data
and hands them to :func:`train`::

    model = train(model, make_batches, loss_fn, steps=2000, lr=3e-4,
                  out_dir="artifacts/tokenizer/quick", kind="tokenizer", config=cfg_dict)

Re-running the same command resumes from ``out_dir/last.pt`` (or returns at once
if that run already finished); a checkpoint of another kind or config is refused
with an error that says what differs.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import nn
from tqdm import tqdm

FORMAT_VERSION = 1
# Which command creates a checkpoint of each kind (for "missing file" errors).
TRAIN_COMMANDS = {
    "tokenizer": "python experiments/train_tokenizer.py",
    "dynamics": "python experiments/train_worldmodel.py",
    "worldmodel": "python experiments/train_worldmodel.py",
    "student_reward": "python experiments/distill_reward.py",
}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, of another kind or of another config."""


# ----------------------------------------------------------------------------- device
def pick_device() -> torch.device:
    """CUDA if available, else CPU (never hard-coded)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device | str, enabled: bool = True) -> AbstractContextManager:
    """bf16 autocast on CPU and GPU alike; ``enabled=False`` runs in fp32."""
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    is_main: bool = True


def setup_distributed() -> DistInfo:
    """Join the process group when launched by torchrun (``RANK``/``WORLD_SIZE`` set):
    gloo on CPU, nccl on GPU. Otherwise a single process on :func:`pick_device`."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo(device=pick_device())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device, is_main=rank == 0)


def cleanup_distributed() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ----------------------------------------------------------------------------- checkpoints
def _plain(config: dict | None) -> dict:
    """A JSON-plain copy (tuples -> lists), so stored and current configs compare equal."""
    return json.loads(json.dumps(config or {}, default=str))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def config_diff(stored: dict, current: dict) -> list[str]:
    """``"key: checkpoint X, now Y"`` for every (dotted) key that differs."""
    a, b = _flatten(_plain(stored)), _flatten(_plain(current))
    missing = object()
    return [f"{k}: checkpoint {a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]


def save_checkpoint(path: str | os.PathLike, *, kind: str, config: dict, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, step: int,
                    metrics: dict | None = None, extra: dict | None = None) -> Path:
    """Write a self-describing checkpoint atomically (temporary file, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION, "kind": kind, "config": _plain(config),
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step), "metrics": dict(metrics or {}), "extra": dict(extra or {}),
        "versions": {"torch": str(torch.__version__), "python": platform.python_version()},
        "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | os.PathLike, *, kind: str | None = None,
                    config: dict | None = None, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; check its kind and config.

    Raises :class:`CheckpointError` with what to do for a missing or corrupt file, a
    checkpoint of another kind, or one trained with a different config.
    """
    path = Path(path)
    if not path.exists():
        how = TRAIN_COMMANDS.get(kind or "", "the matching experiments/train_*.py script")
        raise CheckpointError(f"checkpoint {path} does not exist; create it with `{how}` "
                              "(or point to an existing out_dir)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, foreign pickle...
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint "
                              f"({type(e).__name__}: {str(e)[:200]}); delete it and train again") from None
    if not isinstance(ckpt, dict) or "kind" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path} is a torch file but not a RoboAlign checkpoint "
                              "(no 'kind'/'model' entries)")
    if kind is not None and ckpt["kind"] != kind:
        raise CheckpointError(f"{path}: this is a {ckpt['kind']!r} checkpoint, expected {kind!r}")
    if config is not None:
        diff = config_diff(ckpt["config"], config)
        if diff:
            raise CheckpointError(
                f"{path} was trained with a different config:\n  " + "\n  ".join(diff)
                + "\nuse a new out_dir for this config, or the checkpoint's config to resume it")
    return ckpt


def load_model(path: str | os.PathLike, *, kind: str, config_cls, build, config=None,
               map_location="cpu") -> nn.Module:
    """Rebuild a model from a checkpoint whose ``config["model"]`` is a ``config_cls``
    dataclass dict (a standalone ``save`` or the training loop's ``last.pt``).

    ``build(config_cls instance) -> model``; if ``config`` is given it must match the
    stored one. Returns the model on ``map_location`` in eval mode.
    """
    ckpt = load_checkpoint(path, kind=kind, map_location=map_location)
    stored = ckpt["config"].get("model")
    if stored is None:
        raise CheckpointError(f"{path} is a {kind} checkpoint without config['model']")
    if config is not None and (diff := config_diff(stored, asdict(config))):
        raise CheckpointError(f"{path} holds a {kind} of another config:\n  " + "\n  ".join(diff))
    model = build(config_cls.from_dict(stored))
    model.load_state_dict(ckpt["model"])
    return model.to(map_location).eval()


# ----------------------------------------------------------------------------- logging
class JsonlLogger:
    """Appends one flat JSON object per call: ``{"step": 100, "train/loss": 0.1, ...}``."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, step: int, **metrics) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "time": round(time.time(), 3)}
        row.update({k: _scalar(v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()


def _scalar(v):
    if isinstance(v, torch.Tensor):
        return v.detach().float().item() if v.numel() == 1 else v.detach().float().tolist()
    return float(v) if hasattr(v, "item") else v


# ----------------------------------------------------------------------------- the loop
def cosine_with_warmup(steps: int, warmup: int) -> Callable[[int], float]:
    """LR multiplier: linear warmup to 1, then cosine decay to 0.1 at ``steps``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def train(model: nn.Module, make_batches: Callable[[int], Iterator], loss_fn: Callable, *,
          steps: int, lr: float, out_dir: str | os.PathLike, kind: str, config: dict,
          eval_fn: Callable[[nn.Module], dict] | None = None, eval_every: int = 500,
          ckpt_every: int = 500, log_every: int = 50, weight_decay: float = 0.0,
          grad_clip: float | None = 1.0, warmup: int = 100, amp: bool = True,
          progress: bool = True, dist: DistInfo | None = None) -> nn.Module:
    """Train ``model`` for ``steps`` optimizer steps; resumable; returns the (unwrapped) model.

    - ``make_batches(start_step)``: an iterator (infinite is fine) whose first batch is
      the one for ``start_step``. Before calling it the loop seeds torch's global RNG
      from (rank, start_step), so ranks draw different data; for bit-exact resume make
      the stream a function of the step (e.g. a generator seeded per step).
    - ``loss_fn(model, batch) -> (loss, metrics)``: ``model`` may be DDP-wrapped, so call
      ``model(...)`` (its forward), not other methods, for gradients to be synchronised.
    - ``eval_fn(model) -> metrics``: main rank only, every ``eval_every`` steps and at the end.

    AdamW, linear warmup then cosine decay, bf16 autocast (``amp``), gradient clipping.
    ``out_dir/last.pt`` every ``ckpt_every`` steps and at the end, ``out_dir/metrics.jsonl``
    every ``log_every`` steps (``train/*`` means over the interval, ``eval/*``).
    """
    dist = dist or DistInfo(device=pick_device())
    out_dir = Path(out_dir)
    ckpt_path, logger = out_dir / "last.pt", JsonlLogger(out_dir / "metrics.jsonl", enabled=dist.is_main)
    model = model.to(dist.device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(steps, warmup))
    start, metrics = 0, {}
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, kind=kind, config=config, map_location=dist.device)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["extra"]["scheduler"])
        start, metrics = ckpt["step"], ckpt["metrics"]
        if start >= steps:
            return model.eval()
    net = model
    if dist.world_size > 1:
        # 1x1-conv weight grads come back channels-last on CPU: strides differ only on
        # size-1 dims, which DDP reports as a (harmless) layout mismatch every step
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
            find_unused_parameters=False)

    def checkpoint(step: int) -> None:
        if dist.is_main:
            save_checkpoint(ckpt_path, kind=kind, config=config, model=model, optimizer=opt,
                            step=step, metrics=metrics, extra={"scheduler": sched.state_dict()})

    torch.manual_seed(1_000_003 * dist.rank + start)
    batches = iter(make_batches(start))
    sums, count, t0 = defaultdict(float), 0, time.time()
    bar = tqdm(total=steps, initial=start, disable=not (progress and dist.is_main), desc=kind,
               dynamic_ncols=True, file=sys.stdout)
    for step in range(start + 1, steps + 1):
        net.train()
        with autocast(dist.device, enabled=amp):
            loss, step_metrics = loss_fn(net, next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            sums["grad_norm"] += float(nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
        opt.step()
        sched.step()
        sums["loss"] += float(loss.detach())
        for k, v in step_metrics.items():
            sums[k] += _scalar(v)
        count += 1
        bar.update(1)
        if step % log_every == 0 or step == steps:
            row = {f"train/{k}": v / count for k, v in sums.items()}
            row.update({"train/lr": sched.get_last_lr()[0], "train/step_s": (time.time() - t0) / count})
            logger.log(step, **row)
            bar.set_postfix(loss=f"{row['train/loss']:.4f}")
            sums, count, t0 = defaultdict(float), 0, time.time()
        if eval_fn is not None and (step % eval_every == 0 or step == steps):
            t_eval = time.time()
            if dist.is_main:
                model.eval()
                with torch.no_grad(), autocast(dist.device, enabled=amp):
                    metrics = {f"eval/{k}": _scalar(v) for k, v in eval_fn(model).items()}
                logger.log(step, **metrics)
            if dist.world_size > 1:
                torch_dist.barrier()
            t0 += time.time() - t_eval   # train/step_s excludes evaluation
        if step % ckpt_every == 0 or step == steps:
            checkpoint(step)
    bar.close()
    model.eval()
    return model
