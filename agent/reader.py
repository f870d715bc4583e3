"""Read the instructed cube off imagined frames: an objective term that knows which cube the
instruction names, from pixels only.

The student reads the instruction through a learned embedding; on imagined PickColor clips it
does not tell which cube moves (docs/research-log.md, 'Play prior on PickColor'). This reader
takes the other route: the colour lookup table of the teacher's perception
(:class:`worldmodel.judge.perception.Perception`, fitted on training segmentation; it reads
pixels, never the simulator) labels every pixel of every imagined frame, and the instruction's
spec names the colour to look at. Vectorized over all clips (a cube is the mean of its
colour's pixels, the gripper point its mean column and lowest row), so it costs little next
to the imagination. Per clip (frame 0 is the real start frame):

- ``named_rise``: how far the named cube's centroid rose above its start, in units of the
  pixel rise of a lift (the task's lift margin at the table centre), clipped to [0, 1];
- ``other_rise``: the same for the other cube (lifting it is the wrong object);
- ``named_dist``: the gripper's distance to the named cube at the last frame / image size.

A cube or gripper the perception does not see counts as no rise and the largest distance.
:func:`reader_objective` makes one term of them: ``named_rise - other_rise - named_dist``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from agent.base import Lazy
from envs.robosuite_env import LABELS
from envs.vocab import COLOURS, instruction_spec


@lru_cache(maxsize=None)
def lift_pixels(lift_margin: float = 0.04) -> float:
    """The pixel rise of a cube lifted by ``lift_margin`` metres at the table centre, in the
    64x64 camera (the teacher's projection)."""
    from worldmodel.judge.teacher import TABLE_Z, project

    p = np.array([[0.0, 0.0, TABLE_Z + 0.025]])
    return float(abs(project(p + [0.0, 0.0, lift_margin])[0][0, 1] - project(p)[0][0, 1]))


class PixelReader:
    """``PixelReader(perception)``: ``perception`` a fitted :class:`Perception` or the path of
    its ``perception.npz`` (loaded lazily, so the reader pickles cheaply)."""

    def __init__(self, perception):
        from worldmodel.judge.perception import Perception

        self._perception = Lazy(perception, Perception.load)

    perception = property(lambda self: self._perception.get())

    def read(self, clips: np.ndarray, instruction: int) -> np.ndarray:
        """``(N, 3)`` [named_rise, other_rise, named_dist] of uint8 clips ``(N, T+1, H, W, 3)``
        under ``instruction`` (an id of a colour-selecting instruction)."""
        spec = instruction_spec(int(instruction))
        named = spec.target.colour
        if named is None:
            raise ValueError(f"the pixel reader needs an instruction that names a colour, got {spec.text!r}")
        other = next(c for c in COLOURS if c != named)
        clips = np.asarray(clips)
        n, t, h, w = clips.shape[:4]
        labels = self.perception.classify(clips)[0]                     # (N, T+1, H, W)
        rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]

        def centroid(mask: np.ndarray) -> np.ndarray:
            """(N, T+1, 2) mean (x, y) of the masked pixels; NaN below the perception's smallest blob."""
            area = mask.sum((-2, -1))
            with np.errstate(invalid="ignore", divide="ignore"):
                xy = np.stack([(mask * cols).sum((-2, -1)) / area, (mask * rows).sum((-2, -1)) / area], -1)
            xy[area < self.perception.min_blob] = np.nan
            return xy

        scale = lift_pixels()

        def rise(colour: str) -> np.ndarray:
            y = centroid(labels == LABELS[f"{colour}_cube"])[..., 1]
            up = np.nan_to_num(y[:, :1] - y[:, 1:], nan=0.0).max(1)     # image y grows downward
            return np.clip(up / scale, 0.0, 1.0)

        last = labels[:, -1]
        cube = centroid(last[:, None] == LABELS[f"{named}_cube"])[:, 0]
        grip = last == LABELS["gripper"]
        low = np.where(grip.any(-1), np.arange(h)[None, :], -1).max(1)  # the gripper's lowest row: its finger tips
        gx = centroid(grip[:, None])[:, 0, 0]
        gy = np.where(low >= 0, low, np.nan)
        dist = np.nan_to_num(np.hypot(cube[:, 0] - gx, cube[:, 1] - gy) / w, nan=1.0)
        return np.stack([rise(named), rise(other), np.clip(dist, 0.0, 1.0)], 1)


def reader_objective(read: np.ndarray) -> np.ndarray:
    """``(N,)`` the reader's term: the named cube's rise, minus the other cube's, minus the
    gripper's final distance to the named cube."""
    return read[:, 0] - read[:, 1] - read[:, 2]


__all__ = ["PixelReader", "reader_objective", "lift_pixels"]
