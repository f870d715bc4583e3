"""Training windows from rollout files (ours, or robomimic files with the same layout).

A window is ``T + 1`` consecutive frames and the ``T * action_repeat`` control
actions between them, grouped so that one model step spans ``action_repeat``
control steps::

    frames   (T + 1, 3, H, W) uint8      (channels first)
    actions  (T, action_repeat * 4) float32
    rewards  (T,) float32                (the env's reward after each model step's last control
                                          step; only when every file records rewards)
    proprio  (T + 1, 4) float32          (eef xyz, gripper opening at each frame; only when
                                          every file records obs/proprio)
    episode, start  int                  (where the window came from)

Windows never cross episode boundaries; splits are by file (each file comes from
one seed split, see :mod:`envs.splits`), never by frame.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from envs.rollouts import RolloutFileError, demo_keys, frames_and_actions, open_rollouts

ROBOMIMIC_ACTION_DIMS = [0, 1, 2, 6]  # 7-D OSC_POSE (dpos, drot, grip) -> our [dx, dy, dz, grip]


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 -> ``(N, size, size, 3)`` by area interpolation."""
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    t = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="area")
    return t.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


class RolloutWindows(Dataset):
    """Fixed-length windows over every episode of one or more rollout files.

    ``window``: model steps T per item; ``action_repeat``: control steps per model
    step; ``stride``: offset between window starts (in control steps);
    ``image_key``: ``"image"`` for ours, ``"agentview_image"`` for robomimic;
    ``image_size``: frames are resized to this if needed. Episodes are loaded
    into memory once (64x64 frames are small).
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], window: int = 8,
                 action_repeat: int = 2, stride: int = 2, image_key: str = "image", image_size: int = 64):
        if window < 1 or action_repeat < 1 or stride < 1:
            raise ValueError("window, action_repeat and stride must be >= 1")
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        self.window, self.repeat = window, action_repeat
        self.frames: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.rewards: list[np.ndarray] | None = []
        self.proprio: list[np.ndarray] | None = []
        self.index: list[tuple[int, int]] = []
        span = window * action_repeat
        for path in paths:
            with open_rollouts(path) as f:
                for key in demo_keys(f):
                    frames, actions = frames_and_actions(f["data"][key], image_key)
                    actions = self._to_ours(actions, path)
                    ep = len(self.frames)
                    self.frames.append(_resize(frames, image_size))
                    self.actions.append(actions.astype(np.float32))
                    g = f["data"][key]
                    if self.rewards is not None and "rewards" in g:
                        self.rewards.append(g["rewards"][()].astype(np.float32))
                    else:
                        self.rewards = None
                    if self.proprio is not None and "proprio" in g["obs"]:
                        self.proprio.append(frames_and_actions(g, "proprio")[0].astype(np.float32))
                    else:
                        self.proprio = None
                    self.index += [(ep, s) for s in range(0, len(actions) - span + 1, stride)]
        if not self.index:
            raise RolloutFileError(f"no episode in {paths} is long enough for a window of "
                                   f"{window} x {action_repeat} control steps")

    @staticmethod
    def _to_ours(actions: np.ndarray, path) -> np.ndarray:
        if actions.shape[1] == 4:
            return actions
        if actions.shape[1] == 7:  # robomimic OSC_POSE: keep position deltas and gripper
            return actions[:, ROBOMIMIC_ACTION_DIMS]
        raise RolloutFileError(f"{path}: actions have {actions.shape[1]} dims; expected 4 "
                               "([dx, dy, dz, grip]) or robomimic's 7")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        ep, start = self.index[i]
        span = self.window * self.repeat
        frames = self.frames[ep][start:start + span + 1:self.repeat]
        actions = self.actions[ep][start:start + span].reshape(self.window, self.repeat * 4)
        item = {"frames": torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2),
                "actions": torch.from_numpy(actions), "episode": ep, "start": start}
        if self.rewards is not None:
            item["rewards"] = torch.from_numpy(self.rewards[ep][start + self.repeat - 1:start + span:self.repeat].copy())
        if self.proprio is not None:
            item["proprio"] = torch.from_numpy(self.proprio[ep][start:start + span + 1:self.repeat].copy())
        return item


class FramePairs(Dataset):
    """(context frame, future frame ``k`` control steps later in the same episode) pairs
    for the tokenizer, ``k`` uniform in ``[0, max_gap]`` (clipped at the episode's end).

    Item ``i`` is deterministic: frame ``i // (max_gap + 1)`` of the concatenated episodes
    and gap ``i % (max_gap + 1)``, so sampling ``i`` uniformly samples pairs uniformly::

        context, frame  (3, H, W) float32 in [0, 1]
        gap, episode, t int
        context_mask, mask  (H, W) uint8 segmentation labels (0 background, 1 red cube,
                        2 green cube, 3 gripper); only with ``masks=True`` and files that have them

    Episodes are loaded into memory once, as uint8 (``frames``: one ``(N+1, H, W, 3)``
    array per episode, the same layout as :class:`RolloutWindows`).
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], max_gap: int = 16,
                 image_key: str = "image", image_size: int = 64, masks: bool = False):
        if max_gap < 0:
            raise ValueError(f"max_gap must be >= 0, got {max_gap}")
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not paths:
            raise RolloutFileError("FramePairs needs at least one rollout file")
        self.max_gap = max_gap
        self.frames: list[np.ndarray] = []
        self.masks: list[np.ndarray] | None = [] if masks else None
        for path in paths:
            with open_rollouts(path) as f:
                for key in demo_keys(f):
                    g = f["data"][key]
                    self.frames.append(_resize(frames_and_actions(g, image_key)[0], image_size))
                    if self.masks is not None:
                        if "segmentation" not in g["obs"]:
                            raise RolloutFileError(f"{path}:{g.name} has no obs/segmentation; "
                                                   "use masks=False for files without masks")
                        self.masks.append(frames_and_actions(g, "segmentation")[0])
        lengths = np.array([len(f) for f in self.frames])
        self.episode = np.repeat(np.arange(len(lengths)), lengths)
        self.t = np.concatenate([np.arange(n) for n in lengths])
        self.last = lengths[self.episode] - 1

    def __len__(self) -> int:
        return len(self.t) * (self.max_gap + 1)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"pair {i} out of range [0, {len(self)})")
        j, gap = divmod(int(i), self.max_gap + 1)
        ep, t = int(self.episode[j]), int(self.t[j])
        gap = min(gap, int(self.last[j]) - t)
        frames = self.frames[ep]
        item = {"context": _unit(frames[t]), "frame": _unit(frames[t + gap]), "gap": gap,
                "episode": ep, "t": t}
        if self.masks is not None:
            item["context_mask"] = torch.from_numpy(self.masks[ep][t])
            item["mask"] = torch.from_numpy(self.masks[ep][t + gap])
        return item


def _unit(frame: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 in [0, 1]."""
    return torch.from_numpy(frame).permute(2, 0, 1).float().div_(255.0)
