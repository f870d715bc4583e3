"""Open-loop evaluation of the world model on held-out episodes.

All frames are float in [0, 1], ``(B, T, 3, H, W)``. Per predicted step we report
PSNR (capped at 60 dB) and SSIM (torchmetrics) over the whole frame and the mean squared error over
the object + gripper region (simulator segmentation, dilated by 1 px), for the
model and for two references on the same clips: copy-last-frame (the start frame
repeated) and the tokenizer's own reconstruction ceiling (real future frames
encoded and decoded under the same context).
"""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure

import envs
from envs.rollouts import demo_keys, env_args, open_rollouts
from worldmodel.world_model import WorldModel, group_actions


def load_episodes(paths, max_episodes: int | None = None) -> list[dict]:
    """Held-out episodes (up to ``max_episodes`` per file): frames (N+1, H, W, 3) uint8,
    seg (N+1, H, W), actions (N, 4), states (N, S), env_id."""
    out = []
    for path in paths:
        env_id = env_args(path).get("env_id")
        with open_rollouts(path) as f:
            for key in demo_keys(f)[:max_episodes]:
                g = f["data"][key]
                frames = np.concatenate([g["obs"]["image"][()], g["next_obs"]["image"][-1:]])
                seg = np.concatenate([g["obs"]["segmentation"][()], g["next_obs"]["segmentation"][-1:]])
                out.append({"frames": frames, "seg": seg, "actions": g["actions"][()],
                            "states": g["states"][()], "env_id": env_id, "demo": key, "path": str(path)})
    return out


def _to_float(frames: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).float() / 255.0
    return t.movedim(-1, -3)


def region_mask(seg: torch.Tensor, dilate: int = 1) -> torch.Tensor:
    """Object + gripper pixels (labels > 0), dilated: (..., H, W) -> bool (..., H, W)."""
    m = (seg > 0).float()
    shape = m.shape
    m = F.max_pool2d(m.reshape(-1, 1, *shape[-2:]), 2 * dilate + 1, 1, dilate)
    return m.reshape(shape) > 0


SSIM_CHUNK = 256   # frames per SSIM call


def ssim_frames(pred: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """pred, real (N, 3, H, W) in [0, 1] -> (N,) SSIM per frame, in chunks: torchmetrics'
    SSIM holds ~a dozen padded copies of its input (thousands of frames at once ran a
    24 GB machine out of memory)."""
    return torch.cat([structural_similarity_index_measure(pred[i:i + SSIM_CHUNK], real[i:i + SSIM_CHUNK],
                                                          data_range=1.0, reduction="none")
                      for i in range(0, len(pred), SSIM_CHUNK)])


def frame_metrics(pred: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> dict:
    """pred, real (B, T, 3, H, W); mask (B, T, H, W) -> per-step means (T,) of
    ``psnr``, ``ssim``, ``mse`` (whole frame), ``region_mse`` and ``region_psnr``."""
    b, t = pred.shape[:2]
    p, r = pred.flatten(0, 1).float().clamp(0, 1), real.flatten(0, 1).float()
    # PSNR per image from its MSE, capped at 60 dB (identical frames would give inf)
    sq = ((p - r) ** 2).mean(1)                                          # (BT, H, W)
    mse = sq.mean((1, 2))
    psnr = 10 * torch.log10(1.0 / mse.clamp(min=1e-6))
    ssim = ssim_frames(p, r)
    m = mask.flatten(0, 1).float()
    region = (sq * m).sum((1, 2)) / m.sum((1, 2)).clamp(min=1)
    per = {"psnr": psnr, "ssim": ssim, "mse": mse, "region_mse": region,
           "region_psnr": 10 * torch.log10(1.0 / region.clamp(min=1e-6))}
    return {k: v.view(b, t).mean(0) for k, v in per.items()}


def clips(episodes: list[dict], horizon: int, repeat: int, every: int) -> list[tuple]:
    """(episode index, start control step) for every clip of ``horizon`` model steps."""
    span = horizon * repeat
    return [(i, s) for i, ep in enumerate(episodes) for s in range(0, len(ep["actions"]) - span + 1, every)]


def _clip_batch(episodes, items, horizon, repeat):
    span = horizon * repeat
    start = torch.stack([_to_float(episodes[i]["frames"][s]) for i, s in items])
    real = torch.stack([_to_float(episodes[i]["frames"][s + repeat:s + span + 1:repeat]) for i, s in items])
    seg = torch.stack([torch.from_numpy(episodes[i]["seg"][s + repeat:s + span + 1:repeat]) for i, s in items])
    acts = torch.stack([torch.from_numpy(episodes[i]["actions"][s:s + span]).float() for i, s in items])
    return start, real, seg, group_actions(acts, repeat)


@torch.no_grad()
def open_loop(wm: WorldModel, episodes: list[dict], horizon: int = 8, every: int = 8, mode: str = "swr",
              temperature: float = 0.0, batch_size: int = 32, seed: int = 0) -> dict:
    """Per-step metrics of model / copy-last-frame / tokenizer ceiling over all clips.

    Returns ``{"model": {metric: (T,) list}, "copy_last": ..., "recon": ..., "clips": n,
    "seconds_per_clip": s, "examples": (start, real, pred) of the first batch}``.
    """
    repeat = wm.action_repeat
    items = clips(episodes, horizon, repeat, every)
    if not items:
        raise ValueError(f"no held-out episode is long enough for {horizon} x {repeat} control steps")
    sums = {k: defaultdict(lambda: 0.0) for k in ("model", "copy_last", "recon")}
    g = torch.Generator().manual_seed(seed)
    t_model, examples, peak = 0.0, None, 0
    for i in range(0, len(items), batch_size):
        start, real, seg, acts = _clip_batch(episodes, items[i:i + batch_size], horizon, repeat)
        mask = region_mask(seg)
        t0 = time.perf_counter()
        roll = wm.rollout(start, acts, mode=mode, temperature=temperature, generator=g)
        t_model += time.perf_counter() - t0
        pred, peak = roll.frames, max(peak, roll.peak_cache_len)
        ctx = wm.tokenizer.encode_context(start)
        b = start.shape[0]
        ctx_rep = ctx[:, None].expand(b, horizon, ctx.shape[-1]).reshape(b * horizon, -1)
        start_rep = start[:, None].expand(b, horizon, *start.shape[1:]).flatten(0, 1)
        recon = wm.tokenizer.decode(wm.tokenizer.encode_dynamics(real.flatten(0, 1), ctx_rep, start_rep),
                                    ctx_rep, start_rep)
        outs = {"model": pred, "copy_last": start[:, None].expand_as(real),
                "recon": recon.view_as(real)}
        for name, frames in outs.items():
            for k, v in frame_metrics(frames, real, mask).items():
                sums[name][k] = sums[name][k] + v * b
        if examples is None:
            examples = (start, real, pred)
    n = len(items)
    result = {name: {k: (v / n).tolist() for k, v in d.items()} for name, d in sums.items()}
    result.update(clips=n, seconds_per_clip=t_model / n, peak_cache_len=peak, examples=examples)
    return result


@torch.no_grad()
def action_conditioning(wm: WorldModel, episodes: list[dict], n_alt: int = 4, horizon: int = 8,
                        every: int = 24, max_starts: int = 16, seed: int = 0) -> dict:
    """Same start frames, ``n_alt`` different action sequences, each also executed in the
    simulator from the recorded state. If predictions follow the actions, each
    prediction matches its own real outcome better than the other sequences' outcomes.

    Returns matched vs mismatched PSNR / region MSE, averaged over starts and steps.
    """
    repeat, span = wm.action_repeat, horizon * wm.action_repeat
    rng = np.random.default_rng(seed)
    items = clips(episodes, horizon, repeat, every)[:max_starts]
    env_cache, matched, mismatched, m_reg, mm_reg = {}, [], [], [], []
    for i, s in items:
        ep = episodes[i]
        env = env_cache.get(ep["env_id"]) or env_cache.setdefault(ep["env_id"], envs.make(ep["env_id"], segmentation=True))
        # alternative sequences: constant pushes in random directions, gripper kept as recorded
        seqs = []
        for _ in range(n_alt):
            d = rng.normal(size=3)
            d = 0.8 * d / np.linalg.norm(d)
            a = np.repeat(np.concatenate([d, [ep["actions"][s, 3]]])[None], span, 0).astype(np.float32)
            seqs.append(a)
        reals, segs = [], []
        for a in seqs:
            obs, _ = env.reset(options={"sim_state": ep["states"][s]})
            frames, masks = [], []
            for k in range(span):
                obs, _, _, _, info = env.step(a[k])
                if (k + 1) % repeat == 0:
                    frames.append(obs["image"])
                    masks.append(info["segmentation"])
            reals.append(_to_float(np.stack(frames)))
            segs.append(torch.from_numpy(np.stack(masks)))
        start = _to_float(ep["frames"][s])[None].expand(n_alt, -1, -1, -1)
        acts = group_actions(torch.from_numpy(np.stack(seqs)), repeat)
        pred = wm.rollout(start, acts, temperature=0.0).frames                 # (n_alt, T, 3, H, W)
        real, seg = torch.stack(reals), torch.stack(segs)
        for j in range(n_alt):
            for k in range(n_alt):
                mask = region_mask(torch.maximum(seg[k], seg[j]))[None]
                m = frame_metrics(pred[j:j + 1], real[k:k + 1], mask)
                (matched if j == k else mismatched).append(float(m["psnr"].mean()))
                (m_reg if j == k else mm_reg).append(float(m["region_mse"].mean()))
    for env in env_cache.values():
        env.close()
    return {"starts": len(items), "alternatives": n_alt,
            "psnr_matched": float(np.mean(matched)), "psnr_mismatched": float(np.mean(mismatched)),
            "region_mse_matched": float(np.mean(m_reg)), "region_mse_mismatched": float(np.mean(mm_reg)),
            "matched_better_rate": float(np.mean([a > b for a, b in zip(
                np.repeat(matched, n_alt - 1), mismatched)]))}
