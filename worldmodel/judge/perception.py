"""Perception for the teacher: read cubes and the gripper off a 64x64 RGB frame.

A per-pixel colour classifier **fitted on simulator segmentation masks** of real
frames (labels :data:`envs.robosuite_env.LABELS`: 0 background, 1 red cube,
2 green cube, 3 gripper): a Bayes lookup table over a quantized RGB cube
(``bins`` levels per channel). Per class we count labelled pixels per colour bin,
smooth the 3-D histogram with a Gaussian (so colours never seen in training --
blurry generated frames -- still get a posterior from their neighbours) and store
``P(class | colour bin)``. Classifying a frame is one table lookup per pixel.

Per frame, :meth:`Perception.read` returns (pixel coordinates ``(u, v)``: column,
row, origin top-left):

- per cube colour: ``centroid`` (2,) of its largest connected blob, ``area``
  (pixels of that class), ``blobs`` (connected components of >= ``min_blob`` px),
  ``conf`` in [0, 1] (mean posterior over the blob, times ``min(1, area /
  min_area)``; 0 when the cube is not seen);
- gripper: ``point`` (2,) the finger-tip point (median column of the lowest
  gripper rows, 90th-percentile row), ``area``, ``conf``.

Parameters are saved / loaded as ``.npz`` (atomically). The default fitted file
lives at ``artifacts/judge/default/perception.npz`` and is fitted on demand from the
train rollouts (:func:`default_perception`).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

from envs import RENDER_VERSION
from envs.rollouts import atomic_path, demo_keys, find_rollouts, open_rollouts

N_CLASSES = 4
CLASS_NAMES = ("background", "red", "green", "gripper")
_COLLECT = "collect with `python experiments/collect.py env=lift agent=noisy split=train`"
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "artifacts" / "judge" / "default" / "perception.npz"


class Perception:
    """Colour lookup-table classifier plus blob read-out."""

    def __init__(self, table: np.ndarray, bins: int, min_area: float = 12.0, min_blob: int = 3,
                 render_version: int | None = RENDER_VERSION):
        """``render_version``: :data:`envs.RENDER_VERSION` of the frames it was fitted on
        (None: unknown -- a file saved before it was recorded, version <= 2)."""
        table = np.asarray(table, np.float32)
        if table.shape != (bins, bins, bins, N_CLASSES):
            raise ValueError(f"table must be ({bins},)*3 + ({N_CLASSES},), got {table.shape}")
        self.table, self.bins = table, int(bins)
        self.min_area, self.min_blob = float(min_area), int(min_blob)
        self.render_version = None if render_version is None else int(render_version)
        self._label = table.argmax(-1).astype(np.uint8)
        self._post = table.max(-1)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, frames: np.ndarray, seg: np.ndarray, bins: int = 32, sigma: float = 0.5,
            prior_floor: float = 1e-3, **kw) -> "Perception":
        """frames (N, H, W, 3) uint8, seg (N, H, W) labels -> fitted :class:`Perception`."""
        frames, seg = np.asarray(frames), np.asarray(seg)
        if frames.shape[:-1] != seg.shape or frames.shape[-1] != 3:
            raise ValueError(f"frames {frames.shape} and seg {seg.shape} do not match")
        idx = cls._bin_index(frames.reshape(-1, 3), bins)
        counts = np.zeros((N_CLASSES, bins ** 3), np.float64)
        lab = seg.reshape(-1).astype(np.int64)
        np.add.at(counts, (lab, idx), 1.0)
        counts = counts.reshape(N_CLASSES, bins, bins, bins)
        smooth = np.stack([ndimage.gaussian_filter(c, sigma, mode="nearest") for c in counts], -1)
        smooth[..., 0] += prior_floor  # unseen colours: background
        post = smooth / smooth.sum(-1, keepdims=True)
        return cls(post.astype(np.float32), bins, **kw)

    @staticmethod
    def _bin_index(rgb: np.ndarray, bins: int) -> np.ndarray:
        q = (rgb.astype(np.int64) * bins) // 256
        return (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]

    # ------------------------------------------------------------------ io
    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, table=self.table.astype(np.float16), bins=self.bins,
                                    min_area=self.min_area, min_blob=self.min_blob,
                                    render_version=-1 if self.render_version is None else self.render_version)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Perception":
        with np.load(path) as z:
            version = int(z["render_version"]) if "render_version" in z.files else -1
            return cls(z["table"].astype(np.float32), int(z["bins"]), float(z["min_area"]), int(z["min_blob"]),
                       render_version=None if version < 0 else version)

    # ------------------------------------------------------------------ inference
    def classify(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frames (..., H, W, 3) uint8 -> labels (..., H, W) uint8, posterior (..., H, W)."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 (..., H, W, 3), got {frames.dtype} {frames.shape}")
        q = (frames.astype(np.int32) * self.bins) >> 8
        return self._label[q[..., 0], q[..., 1], q[..., 2]], self._post[q[..., 0], q[..., 1], q[..., 2]]

    def read(self, frames: np.ndarray) -> dict:
        """frames (T, H, W, 3) uint8 -> per-frame read-out, arrays over T:

        ``{colour: {"centroid": (T, 2), "area": (T,), "blobs": (T,), "conf": (T,)}``
        for ``red`` and ``green``, and ``"gripper": {"point": (T, 2), "area": (T,),
        "conf": (T,)}``; ``"labels"`` (T, H, W). Unseen objects get NaN positions.
        """
        frames = np.asarray(frames)
        if frames.ndim != 4:
            raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
        labels, post = self.classify(frames)
        t = len(frames)
        out: dict = {"labels": labels}
        for k, name in ((1, "red"), (2, "green")):
            cen = np.full((t, 2), np.nan)
            area, blobs, conf = np.zeros(t), np.zeros(t, int), np.zeros(t)
            for i in range(t):
                m = labels[i] == k
                area[i] = m.sum()
                if area[i] < self.min_blob:
                    continue
                comp, n = ndimage.label(m)
                sizes = np.bincount(comp.ravel())[1:]
                blobs[i] = int((sizes >= self.min_blob).sum())
                big = comp == (int(sizes.argmax()) + 1)
                rows, cols = np.nonzero(big)
                cen[i] = (cols.mean(), rows.mean())
                conf[i] = float(post[i][big].mean()) * min(1.0, area[i] / self.min_area)
            out[name] = {"centroid": cen, "area": area, "blobs": blobs, "conf": conf}
        pt = np.full((t, 2), np.nan)
        garea, gconf = np.zeros(t), np.zeros(t)
        for i in range(t):
            m = labels[i] == 3
            garea[i] = m.sum()
            if garea[i] < self.min_area:
                continue
            rows, cols = np.nonzero(m)
            v = np.percentile(rows, 90)
            low = rows >= np.percentile(rows, 70)
            pt[i] = (float(np.median(cols[low])), float(v))
            gconf[i] = float(post[i][m].mean()) * min(1.0, garea[i] / (4 * self.min_area))
        out["gripper"] = {"point": pt, "area": garea, "conf": gconf}
        return out


def load_frames_and_seg(paths, max_episodes: int | None = None, every: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """All (every ``every``-th) frames and masks of rollout files: (N, H, W, 3), (N, H, W)."""
    frames, segs = [], []
    for path in paths:
        with open_rollouts(path) as f:
            for key in demo_keys(f)[:max_episodes]:
                g = f["data"][key]
                frames.append(g["obs"]["image"][::every])
                segs.append(g["obs"]["segmentation"][::every])
    return np.concatenate(frames), np.concatenate(segs)


def pixel_accuracy(p: Perception, frames: np.ndarray, seg: np.ndarray) -> dict:
    """Overall and per-class (recall) pixel accuracy of ``p`` against segmentation."""
    lab, _ = p.classify(frames)
    out = {"overall": float((lab == seg).mean())}
    for k, name in enumerate(CLASS_NAMES):
        m = seg == k
        if m.any():
            out[name] = float((lab[m] == k).mean())
            out[f"{name}_precision"] = float((seg[lab == k] == k).mean()) if (lab == k).any() else 0.0
    return out


def default_perception(path: str | os.PathLike | None = None, rollout_paths=None,
                       max_episodes: int = 40, every: int = 2) -> Perception:
    """Load the fitted perception at ``path``; fit it on ``rollout_paths`` (default: the
    train rollouts under ``artifacts/rollouts``) and save it there if it is missing or was
    fitted on frames of another render version (colours differ between versions)."""
    path = Path(path or DEFAULT_PATH)
    stale = None
    if path.exists():
        stale = Perception.load(path)
        if stale.render_version == RENDER_VERSION:
            return stale
    if rollout_paths is None:
        rollout_paths = find_rollouts(Path(__file__).resolve().parents[2] / "artifacts" / "rollouts", "*_train_*.hdf5")
    if stale is not None:
        msg = (f"{path} was fitted on frames of render version {stale.render_version or '<= 2'}, the env "
               f"renders version {RENDER_VERSION} (envs.RENDER_VERSION)")
        if not rollout_paths:
            warnings.warn(f"{msg}; no train rollouts to refit it on, so it is used as it is -- {_COLLECT}",
                          stacklevel=2)
            return stale
        warnings.warn(msg + "; refitting it", stacklevel=2)
    if not rollout_paths:
        raise FileNotFoundError(f"no perception at {path} and no train rollouts to fit one on; {_COLLECT}")
    frames, seg = load_frames_and_seg(rollout_paths, max_episodes=max_episodes, every=every)
    p = Perception.fit(frames, seg)
    p.save(path)
    return p
