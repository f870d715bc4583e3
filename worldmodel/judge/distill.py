"""Distilling the teacher into the student reward, its evaluation, and the online refresh
hook the alignment stage calls every few updates.

**Data** is a plain dict of equal-length arrays (torch tensors; extra numpy columns such
as ``source`` strings ride along)::

    {"frames": uint8 (N, T+1, 64, 64, 3), "instruction": long (N,),
     "scores": float32 (N, 6) in the teacher's units (0..MAX_SCORES[k]),
     "shaping": float32 (N, 3) (NaN = no target), optional "group": long (N,),
     optional "actions": float32 (N, T*stride, 4) control actions}

built by :func:`make_data`, :func:`from_bench` (the benchmark set's arrays) or
:func:`data_from_clips` (judge clip dicts + the teacher's labels).

**Loss**: a dimension-weighted Huber regression on normalized scores (``score / MAX``)
plus the shaping targets (:func:`distill_loss`). **Training**: :func:`distill` runs the
shared resumable loop (:func:`worldmodel.training.train`). **Evaluation**:
:func:`evaluate` (Spearman per dimension and of the total, MAE, pairwise ranking
accuracy within groups). **Online refresh**: :func:`refresh` labels new clips with the
teacher, mixes them with the old data and fine-tunes for a few steps.
"""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from worldmodel.judge import MAX_SCORES, SHORT
from worldmodel.judge.student import KIND, N_DIMS, N_SHAPING, SHAPING, StudentReward
from worldmodel.training import pick_device, train

TENSOR_KEYS = ("frames", "instruction", "scores", "shaping", "group")
#: optional per-clip object tracks (pixels, ``(N, T+1, 3, 2)``) for a ``tracks`` student
TRACK_KEYS = ("x_track", "r_track")


# ----------------------------------------------------------------------------- data
def make_data(frames, instruction, scores, shaping=None, group=None, actions=None, **extra) -> dict:
    """Validated data dict (see the module docstring); ``extra`` columns are kept as numpy."""
    frames = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    if frames.dtype != torch.uint8 or frames.dim() != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (N, T+1, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    n = len(frames)
    data = {"frames": frames,
            "instruction": torch.as_tensor(np.asarray(instruction), dtype=torch.long).reshape(-1),
            "scores": torch.as_tensor(np.asarray(scores, dtype=np.float32)).reshape(n, N_DIMS)}
    if shaping is not None and np.shape(shaping) != (n, N_SHAPING):
        raise ValueError(f"shaping must be ({n}, {N_SHAPING}) ({', '.join(SHAPING)}), got {np.shape(shaping)}; "
                         "a bench built by an older teacher: rebuild it with `python experiments/build_bench.py`")
    data["shaping"] = (torch.full((n, N_SHAPING), float("nan")) if shaping is None
                       else torch.as_tensor(np.asarray(shaping, dtype=np.float32)))
    if group is not None:
        data["group"] = torch.as_tensor(_group_ids(group))
    if actions is not None:
        data["actions"] = torch.as_tensor(np.asarray(actions, dtype=np.float32))
    for k, v in extra.items():
        data[k] = np.asarray(v)
    for k, v in data.items():
        if len(v) != n:
            raise ValueError(f"column {k!r} has {len(v)} rows, frames has {n}")
    return data


def _group_ids(group) -> np.ndarray:
    """Any group labels (ints, strings, tuples-as-strings) -> int64 ids; -1 stays 'no group'."""
    g = np.asarray(group)
    if g.dtype.kind in "iu":
        return g.astype(np.int64)
    _, ids = np.unique(g.astype(str), return_inverse=True)
    return ids.astype(np.int64)


#: bench columns that identify clips sharing one start, if ``episode``/``start_step`` are absent
GROUP_KEYS = ("group", "start_id", "start", "context_id")
#: bench columns the data dict keeps (as numpy) besides the training tensors
BENCH_COLUMNS = ("split", "source", "degradation", "episode", "start_step", "env_id")


def bench_groups(bench: dict, group_key: str | None = None) -> np.ndarray | None:
    """One label per row naming its shared start: ``group_key``'s column, else
    ``"<episode>@<start_step>"`` (the bench's clips cut from one episode at one control
    step: the real clip, its degradations and the world-model generations from it), else
    the first of :data:`GROUP_KEYS` present, else None."""
    if group_key is not None:
        return np.asarray(bench[group_key])
    if "episode" in bench and "start_step" in bench:
        return np.array([f"{e}@{int(s)}" for e, s in zip(bench["episode"], bench["start_step"])])
    key = next((k for k in GROUP_KEYS if k in bench), None)
    return np.asarray(bench[key]) if key is not None else None


def from_bench(bench: dict, group_key: str | None = None) -> dict:
    """The benchmark set's arrays (``worldmodel.judge.bench.load_bench``) -> data dict.

    ``group`` (for pairwise ranking) comes from :func:`bench_groups`; the string columns
    (:data:`BENCH_COLUMNS`) ride along as numpy arrays."""
    extra = {k: bench[k] for k in BENCH_COLUMNS if k in bench}
    return make_data(bench["frames"], bench["instruction"], bench["scores"], bench.get("shaping"),
                     group=bench_groups(bench, group_key), actions=bench.get("actions"), **extra)


def data_from_clips(clips: Sequence[dict], labels: dict) -> dict:
    """Judge clip dicts plus the teacher's ``score_clips`` output -> data dict."""
    lengths = {len(c["frames"]) for c in clips}
    if len(lengths) > 1:
        raise ValueError(f"clips of different lengths {sorted(lengths)}; refresh with one length at a time")
    scores = np.asarray(labels["scores"], dtype=np.float32)
    if scores.shape != (len(clips), N_DIMS):
        raise ValueError(f"label_fn returned scores of shape {scores.shape}, expected ({len(clips)}, {N_DIMS})")
    actions = None
    if all("actions" in c for c in clips) and len({np.shape(c["actions"]) for c in clips}) == 1:
        actions = np.stack([np.asarray(c["actions"], np.float32) for c in clips])
    return make_data(np.stack([np.asarray(c["frames"], dtype=np.uint8) for c in clips]),
                     [int(c["instruction"]) for c in clips], scores, labels.get("shaping"), actions=actions)


_BENCH_CACHE: dict = {}
#: bench columns training and evaluation need (the rest of the file is not read)
BENCH_KEYS = ("frames", "instruction", "scores", "shaping", "actions") + BENCH_COLUMNS


def load_bench_data(path: str | os.PathLike, split: str | None = None) -> dict:
    """A bench file (``worldmodel.judge.bench``) as a data dict, cached per (path, mtime,
    split). Raises ``FileNotFoundError`` naming the command that builds it."""
    from worldmodel.judge.bench import load_bench

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no bench file at {path}; build it with `python experiments/build_bench.py`")
    key = (str(path.resolve()), path.stat().st_mtime_ns, split)
    if key not in _BENCH_CACHE:
        _BENCH_CACHE.clear()
        raw = load_bench(path, split=split)
        _BENCH_CACHE[key] = from_bench({k: v for k, v in raw.items() if k in BENCH_KEYS})
    return _BENCH_CACHE[key]


def n_rows(data: dict) -> int:
    return len(data["frames"])


def subset(data: dict, idx) -> dict:
    """Rows ``idx`` (indices or boolean mask) of every column."""
    idx_np = np.asarray(idx)
    if idx_np.dtype == bool:
        idx_np = np.flatnonzero(idx_np)
    idx_t = torch.as_tensor(idx_np, dtype=torch.long)
    return {k: (v[idx_t] if isinstance(v, torch.Tensor) else np.asarray(v)[idx_np]) for k, v in data.items()}


def concat_data(a: dict | None, b: dict) -> dict:
    """Rows of ``a`` then ``b`` (columns present in both; frame sizes must agree)."""
    if a is None or n_rows(a) == 0:
        return dict(b)
    if a["frames"].shape[1:] != b["frames"].shape[1:]:
        raise ValueError(f"cannot mix clips of shape {tuple(a['frames'].shape[1:])} with "
                         f"{tuple(b['frames'].shape[1:])}")
    out = {}
    for k in set(a) & set(b):
        if k == "group":
            continue
        va, vb = a[k], b[k]
        out[k] = torch.cat([va, vb]) if isinstance(va, torch.Tensor) else np.concatenate([va, vb])
    return out


def split_data(data: dict, split: str) -> dict:
    if "split" not in data:
        raise KeyError("data has no 'split' column")
    return subset(data, data["split"] == split)


# ----------------------------------------------------------------------------- loss
def normalize_scores(scores: torch.Tensor) -> torch.Tensor:
    """Teacher units -> [0, 1] (``score / MAX_SCORES``)."""
    return scores / torch.as_tensor(MAX_SCORES, dtype=scores.dtype, device=scores.device)


def distill_loss(dims: torch.Tensor, shaping: torch.Tensor, target_scores: torch.Tensor,
                 target_shaping: torch.Tensor | None = None, *, dim_weights: Sequence[float] | None = None,
                 shaping_weight: float = 0.5, delta: float = 0.2) -> tuple[torch.Tensor, dict]:
    """Dimension-weighted Huber loss on normalized scores, plus ``shaping_weight`` times a
    Huber loss on the shaping outputs (NaN targets are left out).

    ``dims``: the student's normalized dims ``(B, 6)``; ``target_scores``: teacher units.
    ``loss = sum_k w_k mean_b huber(dims_bk, score_bk / MAX_k) / sum_k w_k + shaping term``.
    Returns ``(loss, metrics)`` with the per-dimension Huber terms (``huber_IF``, ...).
    """
    w = torch.as_tensor(dim_weights if dim_weights is not None else [1.0] * N_DIMS,
                        dtype=torch.float32, device=dims.device)
    if w.shape != (N_DIMS,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"dim_weights must be {N_DIMS} non-negative numbers with a positive sum, got {w.tolist()}")
    target = normalize_scores(target_scores.float().to(dims.device))
    per = F.huber_loss(dims.float(), target, reduction="none", delta=delta).mean(0)        # (6,)
    loss = (per * w).sum() / w.sum()
    metrics = {f"huber_{s}": per[k].detach() for k, s in enumerate(SHORT)}
    if target_shaping is not None and shaping_weight > 0:
        ts = target_shaping.float().to(dims.device)
        mask = ~torch.isnan(ts)
        if mask.any():
            sh = F.huber_loss(shaping.float()[mask], ts[mask], reduction="mean", delta=delta)
            loss = loss + shaping_weight * sh
            metrics["huber_shaping"] = sh.detach()
    return loss, metrics


def track_loss(seen: torch.Tensor, expected: torch.Tensor, has_actions: torch.Tensor, x_track: torch.Tensor,
               r_track: torch.Tensor, delta: float = 0.1, present: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Auxiliary loss of a ``tracks`` student (:meth:`StudentReward.track_heads`): Huber of the
    seen positions against the teacher's perceived ones (``x_track``) and of the expected
    positions against the replay's (``r_track``, only clips whose actions the student saw:
    ``has_actions`` ``(B,)``). Predictions ``(B, T+1, 3, 2)`` in [-1, 1]; targets in pixels
    ``(B, T+1, 3, 2)`` (NaN: left out), mapped by ``p / 32 - 1``. ``present``: the presence
    logits ``(B, 3)`` of a ``track_order`` student, + binary cross-entropy against the objects
    the replay has (``r_track`` not NaN)."""
    metrics, total = {}, seen.new_zeros(())
    for name, pred, target, rows in (("track_seen", seen, x_track, None), ("track_expected", expected, r_track, has_actions)):
        t = target.float().to(pred.device) / 32.0 - 1.0
        mask = ~torch.isnan(t)
        if rows is not None:
            mask &= rows.bool()[:, None, None, None]
        if mask.any():
            term = F.huber_loss(pred.float()[mask], t[mask], delta=delta)
            total = total + term
            metrics[name] = term.detach()
    if present is not None:
        has_object = (~torch.isnan(r_track[:, 0, :, 0])).float().to(present.device)
        term = F.binary_cross_entropy_with_logits(present.float(), has_object)
        total = total + term
        metrics["track_present"] = term.detach()
    return total, metrics


def _pair_loss(pred: torch.Tensor, target: torch.Tensor, tie_tol: float) -> torch.Tensor:
    """Logistic loss ``softplus(-sign(t_i - t_j) * (p_i - p_j))`` over the pairs (row i,
    row i + B/2) of a paired batch, elementwise over any trailing columns; pairs whose
    target difference is <= ``tie_tol`` are left out (0 with a gradient if none is left)."""
    half = len(pred) // 2
    dt, dp = target[:half] - target[half:2 * half], pred[:half] - pred[half:2 * half]
    mask = dt.abs() > tie_tol
    if not mask.any():
        return dp.sum() * 0.0
    return F.softplus(-torch.sign(dt[mask]) * dp[mask]).mean()


def ranking_loss(dims: torch.Tensor, target_scores: torch.Tensor, tie_tol: float = 1e-6) -> torch.Tensor:
    """:func:`_pair_loss` on unweighted totals (teacher units, /10) of a paired batch;
    teacher ties left out."""
    p = (dims.float() * torch.as_tensor(MAX_SCORES, device=dims.device)).sum(1)
    return _pair_loss(p, target_scores.float().to(dims.device).sum(1), tie_tol)


def shaping_ranking_loss(shaping: torch.Tensor, target_shaping: torch.Tensor, tie_tol: float = 0.02) -> torch.Tensor:
    """:func:`_pair_loss` on each shaping output (:data:`SHAPING`; NaN targets left out), averaged:
    within one start the planner orders candidates by these dense terms, so the student
    must get their ORDER right, not only their level. Target differences <= ``tie_tol``
    are left out."""
    return _pair_loss(shaping.float(), target_shaping.float().to(shaping.device), tie_tol)


# ----------------------------------------------------------------------------- metrics
def spearman(a, b) -> float:
    """Spearman rank correlation (scipy if available, else average ranks via torch);
    NaN when either side is constant or has < 3 values."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    try:
        from scipy.stats import spearmanr
    except ImportError:
        ra, rb = _rank(a), _rank(b)
        return float(np.corrcoef(ra, rb)[0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a, b).statistic)


def _rank(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inv = np.unique(x, return_inverse=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / np.bincount(inv))[inv]


def pairwise_accuracy(pred_total, true_total, groups, *, tie_tol: float = 1e-6,
                      return_pairs: bool = False, band: tuple[float, float] | None = None):
    """Fraction of within-group pairs the prediction orders like the teacher.

    Pairs are formed only inside a group (e.g. generations from one shared start); pairs
    the teacher ties (``|true_i - true_j| <= tie_tol``) are left out; a predicted tie
    counts half. Group id ``-1`` means "no group". ``band=(lo, hi)`` counts only pairs whose
    teacher gap is in ``(lo, hi]`` (how accuracy depends on how different the clips are).
    Returns NaN when there are no pairs; with ``return_pairs`` also the number counted.
    """
    p = np.asarray(pred_total, dtype=np.float64).ravel()
    t = np.asarray(true_total, dtype=np.float64).ravel()
    g = _group_ids(groups).ravel()
    if not len(p) == len(t) == len(g):
        raise ValueError(f"lengths differ: pred {len(p)}, true {len(t)}, groups {len(g)}")
    correct, pairs = 0.0, 0
    for gid in np.unique(g):
        if gid == -1:
            continue
        idx = np.flatnonzero(g == gid)
        if len(idx) < 2:
            continue
        dt = t[idx, None] - t[None, idx]
        dp = p[idx, None] - p[None, idx]
        upper = np.triu(np.ones_like(dt, dtype=bool), k=1) & (np.abs(dt) > tie_tol)
        if band is not None:
            upper &= (np.abs(dt) > band[0]) & (np.abs(dt) <= band[1])
        agree = np.sign(dt[upper]) * np.sign(dp[upper])
        correct += float((agree > 0).sum() + 0.5 * (agree == 0).sum())
        pairs += int(upper.sum())
    acc = correct / pairs if pairs else float("nan")
    return (acc, pairs) if return_pairs else acc


@torch.no_grad()
def predict(student: StudentReward, data: dict, *, batch_size: int = 512, amp: bool = True,
            weights: Sequence[float] | None = None, use_actions: bool = True) -> dict[str, np.ndarray]:
    """The student's ``dims``, ``shaping`` and ``total`` on every row (numpy); with the
    data's ``actions`` column unless ``use_actions`` is off."""
    actions = data.get("actions") if use_actions else None
    out = student.score(data["frames"], data["instruction"], actions=actions, batch_size=batch_size, amp=amp,
                        weights=weights)
    return {k: v.float().cpu().numpy() for k, v in out.items()}


def evaluate(student: StudentReward, data: dict, *, batch_size: int = 512, amp: bool = True,
             weights: Sequence[float] | None = None, use_actions: bool = True) -> dict[str, float]:
    """Student vs teacher on ``data``: ``spearman_total``, ``spearman_<DIM>``, ``mae_total``
    and ``mae_<DIM>`` (teacher units), ``mae_norm`` (mean over dims of normalized MAE),
    ``mae_shaping`` (where targets exist), and ``pairwise_acc``/``pairs`` when the data
    has a ``group`` column. ``weights`` weight both totals (default: all 1)."""
    pred = predict(student, data, batch_size=batch_size, amp=amp, weights=weights, use_actions=use_actions)
    true = data["scores"].float().numpy()
    w = np.asarray(weights if weights is not None else [1.0] * N_DIMS, dtype=np.float64)
    maxs = np.asarray(MAX_SCORES)
    pred_scores = pred["dims"] * maxs
    true_total = (true * w).sum(1)
    m = {"n": float(len(true)), "spearman_total": spearman(pred["total"], true_total),
         "mae_total": float(np.abs(pred["total"] - true_total).mean()) if len(true) else float("nan"),
         "mae_norm": float(np.abs(pred["dims"] - true / maxs).mean()) if len(true) else float("nan")}
    for k, s in enumerate(SHORT):
        m[f"spearman_{s}"] = spearman(pred_scores[:, k], true[:, k])
        m[f"mae_{s}"] = float(np.abs(pred_scores[:, k] - true[:, k]).mean()) if len(true) else float("nan")
    ts = data["shaping"].float().numpy()
    mask = ~np.isnan(ts)
    m["mae_shaping"] = float(np.abs(pred["shaping"][mask] - ts[mask]).mean()) if mask.any() else float("nan")
    if "group" in data:
        acc, pairs = pairwise_accuracy(pred["total"], true_total, data["group"].numpy(), return_pairs=True)
        m["pairwise_acc"], m["pairs"] = acc, float(pairs)
    return m


# ----------------------------------------------------------------------------- training
def mirror(frames: torch.Tensor, actions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Clips mirrored left-right: ``frames`` uint8 ``(B, T+1, 64, 64, 3)`` (or float
    ``(B, T+1, 3, 64, 64)``) flipped along the image width, and their ``actions (B, L, 4)``
    with y negated (the camera looks along x, so a mirror image is the y-mirrored scene).
    Returns new tensors; the inputs are left as they are."""
    if frames.dim() != 5 or 3 not in (frames.shape[-1], frames.shape[2]):
        raise ValueError(f"mirror wants clips (B, T+1, H, W, 3) or (B, T+1, 3, H, W), got {tuple(frames.shape)}")
    out = frames.flip(-2 if frames.shape[-1] == 3 else -1)
    if actions is None:
        return out, None
    act = actions.clone()
    act[..., 1] *= -1
    return out, act


def _stream(data: dict, batch_size: int, seed: int, device, new_index: np.ndarray | None = None,
            new_fraction: float = 0.0, flip: bool = False, pairs: bool = False,
            row_weights: np.ndarray | None = None):
    """Random batches (with replacement), reproducible from ``seed``; with ``new_index``
    a ``new_fraction`` of every batch is drawn from those rows; ``flip``: mirror half the
    clips left-right (labels kept: stages, realism and the shaping targets do not depend
    on the side; a regulariser for small benches). ``pairs``: the second half of every
    batch holds, row by row, a random partner of the first half from the same ``group``
    (for the within-start ranking loss). ``row_weights``: sampling weight per row."""
    g = torch.Generator().manual_seed(seed)
    n = n_rows(data)
    if pairs:
        if "group" not in data:
            raise ValueError("rank_weight > 0 needs a 'group' column (clips sharing one start)")
        grp = data["group"].numpy()
        order = np.argsort(grp, kind="stable")
        uniq, first, count = np.unique(grp[order], return_index=True, return_counts=True)
        pos = np.searchsorted(uniq, grp)
        order_t, first_t, count_t = (torch.as_tensor(order), torch.as_tensor(first[pos]),
                                     torch.as_tensor(count[pos]))
    row_w = torch.as_tensor(row_weights, dtype=torch.float64) if row_weights is not None else None
    k_new = 0
    if new_index is not None and len(new_index) and new_fraction > 0:
        new_t = torch.as_tensor(new_index, dtype=torch.long)
        k_new = min(batch_size, max(1, round(batch_size * new_fraction)))
    while True:
        if pairs:
            anchor = torch.randint(n, (batch_size // 2,), generator=g)
            off = (torch.rand(len(anchor), generator=g) * count_t[anchor]).long()
            idx = torch.cat([anchor, order_t[first_t[anchor] + off]])
        elif row_weights is not None:
            idx = torch.multinomial(row_w, batch_size - k_new, replacement=True, generator=g)
        else:
            idx = torch.randint(n, (batch_size - k_new,), generator=g)
        if k_new and not pairs:
            idx = torch.cat([idx, new_t[torch.randint(len(new_t), (k_new,), generator=g)]])
        batch = {k: data[k][idx] for k in ("frames", "instruction", "scores", "shaping", "actions", *TRACK_KEYS)
                 if k in data}
        if flip:
            m = torch.rand(len(idx), generator=g) < 0.5
            frames, actions = mirror(batch["frames"][m], batch["actions"][m] if "actions" in batch else None)
            batch["frames"][m] = frames
            if actions is not None:
                batch["actions"][m] = actions
            for k in TRACK_KEYS:                    # mirrored clips: no track targets
                if k in batch:
                    batch[k][m] = float("nan")
        yield {k: v.to(device) for k, v in batch.items()}


def _rng_guard():
    """train() reseeds torch's global RNG; keep the caller's stream (e.g. alignment's sampler)."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    return torch.random.fork_rng(devices=devices)


def distill(student: StudentReward, data: dict, val_data: dict | None = None, *, steps: int = 2000,
            batch_size: int = 64, lr: float = 2e-3, weight_decay: float = 1e-4,
            dim_weights: Sequence[float] | None = None, shaping_weight: float = 0.5,
            huber_delta: float = 0.2, out_dir=None, config: dict | None = None,
            eval_every: int = 500, ckpt_every: int = 500, log_every: int = 50, warmup: int = 50,
            amp: bool = True, seed: int = 0, progress: bool = True,
            new_index: np.ndarray | None = None, new_fraction: float = 0.0,
            eval_batch_size: int = 512, flip: bool = False, rank_weight: float = 0.0,
            source_weights: dict | None = None, shaping_rank_weight: float = 0.0,
            track_weight: float = 1.0) -> tuple[StudentReward, dict]:
    """Train ``student`` to regress the teacher's labels in ``data``; returns
    ``(student, metrics)`` where metrics are :func:`evaluate` on ``val_data`` (if given).

    Runs :func:`worldmodel.training.train` (AdamW, warmup + cosine, bf16 autocast): with
    ``out_dir`` it writes ``out_dir/last.pt`` (a ``student_reward`` checkpoint that
    :meth:`StudentReward.from_checkpoint` reads) and ``metrics.jsonl`` and resumes from
    them; without, it trains in a temporary directory. ``config`` (JSON-plain) is stored
    with the checkpoint and must match on resume. ``new_index``/``new_fraction``: draw
    that fraction of each batch from those rows (the refresh hook's mixing). The caller's
    torch RNG state is preserved. ``flip``: left-right mirror augmentation (see ``_stream``).
    ``rank_weight``: add a logistic pairwise ranking loss on the total over pairs of clips
    from one shared start (``group``; teacher ties left out), the ranking alignment and
    planning rely on; ``shaping_rank_weight``: the same on each shaping output
    (:func:`shaping_ranking_loss`). ``source_weights``: sampling weight per ``source`` value (e.g.
    ``{"generated": 2.0}``; others 1). ``track_weight``: weight of :func:`track_loss` for a
    ``config.tracks`` student (``data`` then needs the :data:`TRACK_KEYS` columns).
    """
    if n_rows(data) == 0:
        raise ValueError("no training rows")
    use_tracks = student.config.tracks and track_weight > 0
    if use_tracks and not all(k in data for k in TRACK_KEYS):
        raise ValueError("a tracks student trains on the teacher's object tracks: add the bench's tracks "
                         "(worldmodel.judge.bench.load_tracks; build them with `python experiments/bench_tracks.py "
                         "<bench.h5>`) as columns x_track, r_track, or set track_weight=0")
    device = pick_device()
    train_cfg = {"steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                 "dim_weights": list(dim_weights) if dim_weights is not None else None,
                 "shaping_weight": shaping_weight, "huber_delta": huber_delta, "seed": seed, "flip": flip,
                 **({"rank_weight": rank_weight} if rank_weight else {}),
                 **({"shaping_rank_weight": shaping_rank_weight} if shaping_rank_weight else {}),
                 **({"source_weights": dict(source_weights)} if source_weights else {}),
                 **({"track_weight": track_weight} if use_tracks else {})}
    row_weights = None
    if source_weights:
        if "source" not in data:
            raise ValueError("source_weights needs a 'source' column")
        src = np.asarray(data["source"]).astype(str)
        row_weights = np.array([float(source_weights.get(x, 1.0)) for x in src])
    full_config = {**student.config_dict(), "train": train_cfg, **(config or {})}

    def member_loss(dims, shaping, batch):
        loss, m = distill_loss(dims, shaping, batch["scores"], batch["shaping"], dim_weights=dim_weights,
                               shaping_weight=shaping_weight, delta=huber_delta)
        if rank_weight:
            rl = ranking_loss(dims, batch["scores"])
            loss, m["rank"] = loss + rank_weight * rl, rl.detach()
        if shaping_rank_weight:
            sl = shaping_ranking_loss(shaping, batch["shaping"])
            loss, m["rank_shaping"] = loss + shaping_rank_weight * sl, sl.detach()
        return loss, m

    def loss_fn(net, batch):
        # an ensemble's members are each fitted to the labels (mean of their losses), not
        # their mean output: that keeps them independent estimates
        out = net(batch["frames"], batch["instruction"], batch.get("actions"), members=True, tracks=use_tracks)
        per = [member_loss(d, s, batch) for d, s in zip(out[0], out[1])]
        if use_tracks:
            for k, (seen, expected, has, *present) in enumerate(zip(*out[2:])):
                tl, tm = track_loss(seen, expected, has, batch["x_track"], batch["r_track"],
                                    present=present[0] if present else None)
                per[k] = (per[k][0] + track_weight * tl, {**per[k][1], **tm})
        loss = torch.stack([p[0] for p in per]).mean()
        return loss, {k: torch.stack([p[1][k] for p in per]).mean() for k in per[0][1] if all(k in p[1] for p in per)}

    eval_fn = None
    if val_data is not None and n_rows(val_data):
        eval_fn = lambda m: evaluate(m, val_data, batch_size=eval_batch_size, amp=amp)  # noqa: E731

    with contextlib.ExitStack() as stack:
        stack.enter_context(_rng_guard())
        stack.enter_context(torch.enable_grad())      # callers may sit inside torch.no_grad()
        if out_dir is None:
            out_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="student-"))
        student = train(student, lambda start: _stream(data, batch_size, 7919 * start + seed, device,
                                                       new_index, new_fraction, flip, rank_weight > 0 or shaping_rank_weight > 0,
                                                       row_weights),
                        loss_fn, steps=steps, lr=lr, out_dir=out_dir, kind=KIND, config=full_config,
                        eval_fn=eval_fn, eval_every=eval_every, ckpt_every=ckpt_every,
                        log_every=log_every, weight_decay=weight_decay, warmup=warmup, amp=amp,
                        progress=progress)
    metrics = evaluate(student, val_data, batch_size=eval_batch_size, amp=amp) if eval_fn is not None else {}
    return student, metrics


# ----------------------------------------------------------------------------- online refresh
def _gap(student: StudentReward, data: dict, amp: bool) -> dict[str, float]:
    m = evaluate(student, data, amp=amp)
    return {k: m[k] for k in ("mae_norm", "mae_total", "spearman_total", "mae_shaping")}


def refresh(student: StudentReward, label_fn: Callable[[list[dict]], dict], new_clips: Sequence[dict],
            old_data: dict | None, *, steps: int = 30, batch_size: int = 32, lr: float = 5e-4,
            new_fraction: float = 0.5, max_rows: int | None = 20_000,
            dim_weights: Sequence[float] | None = None, shaping_weight: float = 0.5,
            huber_delta: float = 0.2, warmup: int = 3, amp: bool = True, seed: int = 0,
            progress: bool = False) -> tuple[StudentReward, dict, dict]:
    """Online distillation step for the alignment loop (against reward hacking).

    Labels ``new_clips`` (judge clip dicts) with ``label_fn`` (the teacher's
    ``score_clips``), appends them to ``old_data`` (a data dict, the ``data`` returned by
    the previous call, a bench file path -- its train split, loaded once and cached --
    or None), dropping the oldest rows beyond
    ``max_rows``) and fine-tunes ``student`` in place for ``steps`` steps with
    ``new_fraction`` of every batch drawn from the new clips. Returns
    ``(student, data, metrics)``: the combined data to pass to the next call, and the
    student-teacher gap on the new clips before and after (``before/mae_norm``,
    ``after/mae_norm``, ``*/mae_total``, ``*/spearman_total``, ``*/mae_shaping``) plus
    timings. The caller's torch RNG state is untouched; the student is left in eval mode.
    """
    if not len(new_clips):
        raise ValueError("refresh needs at least one new clip")
    if isinstance(old_data, (str, os.PathLike)):
        old_data = load_bench_data(old_data, split="train")
    t0 = time.time()
    labels = label_fn(list(new_clips))
    t_label = time.time() - t0
    new = data_from_clips(new_clips, labels)
    before = _gap(student, new, amp)
    data = concat_data(old_data, new)
    if max_rows is not None and n_rows(data) > max_rows:
        data = subset(data, np.arange(n_rows(data) - max_rows, n_rows(data)))
    n_new = n_rows(new)
    new_index = np.arange(n_rows(data) - n_new, n_rows(data))
    t1 = time.time()
    student, _ = distill(student, data, None, steps=steps, batch_size=batch_size, lr=lr,
                         weight_decay=0.0, dim_weights=dim_weights, shaping_weight=shaping_weight,
                         huber_delta=huber_delta, warmup=min(warmup, max(1, steps // 2)), amp=amp, seed=seed,
                         progress=progress, new_index=new_index, new_fraction=new_fraction,
                         ckpt_every=steps, log_every=max(1, steps), eval_every=steps)
    t_train = time.time() - t1
    after = _gap(student, new, amp)
    metrics = {"n_new": n_new, "n_data": n_rows(data), "steps": steps, "label_s": t_label,
               "train_s": t_train, "total_s": time.time() - t0}
    metrics.update({f"before/{k}": v for k, v in before.items()})
    metrics.update({f"after/{k}": v for k, v in after.items()})
    return student, data, metrics


class OnlineRefresher:
    """The refresh hook in the alignment loop's shape: ``hook(clips, teacher_dims=None) -> dict``
    of flat float metrics, carrying the combined data from call to call.

        hook = OnlineRefresher(student, teacher.score_clips, "artifacts/judge/default/bench.h5", steps=30)
        trainer = GRPOTrainer(..., refresh_fn=hook)

    ``old_data``: a data dict, a bench path (its train split) or None. ``kwargs`` go to
    :func:`refresh`. ``teacher_dims`` is ignored (``label_fn`` labels; pass a caching
    ``label_fn`` to avoid labelling twice). ``self.data`` is the current combined data,
    ``self.history`` the metrics of every call.
    """

    def __init__(self, student: StudentReward, label_fn: Callable[[list[dict]], dict], old_data=None, **kwargs):
        self.student, self.label_fn, self.kwargs = student, label_fn, kwargs
        self.data = load_bench_data(old_data, split="train") if isinstance(old_data, (str, os.PathLike)) else old_data
        self.history: list[dict] = []

    def __call__(self, clips: Sequence[dict], teacher_dims=None) -> dict:
        kw = dict(self.kwargs)
        kw.setdefault("seed", len(self.history))
        self.student, self.data, m = refresh(self.student, self.label_fn, clips, self.data, **kw)
        self.history.append(m)
        return m


def finite(x: float) -> float | None:
    """JSON-friendly: NaN/inf -> None."""
    return float(x) if x is not None and math.isfinite(x) else None
