"""The rollout file format: one module that the writer and every reader use.

HDF5 in the robomimic layout::

    data/                       attrs: env_args (JSON: env_name, env_id, env_kwargs,
                                       render_version, ...),
                                       total (steps), format_version
      demo_<i>/                 attrs: num_samples, seed, split, instruction,
                                       instruction_id, success, wrong_object, agent,
                                       post_success (steps recorded after the terminating
                                       success step; 0 unless collected with after_success)
        actions     (N, 4)   float32   [dx, dy, dz, grip]
        states      (N, S)   float64   info["sim_state"] before each action
        rewards     (N,)     float32
        dones       (N,)     uint8     1 at the step that terminated the episode
        obs/<key>   (N, ...)           observation / privileged readout before the action
        next_obs/<key> (N, ...)        the same after the action

Observation keys: ``image`` (N, 64, 64, 3) uint8, ``proprio`` (N, 4),
``instruction`` (N,), ``objects`` (N, 3k), ``segmentation`` (N, 64, 64) uint8 with
labels :data:`envs.robosuite_env.LABELS`, ``eef_pos`` (N, 3), ``gripper_opening``
(N,), ``<colour>_cube_pose`` (N, 7) position + wxyz quaternion.

Files are written to a temporary name and renamed when complete, so a reader
never sees a half-written file. robomimic's own files share the layout; their
7-D OSC_POSE actions and 84x84 ``agentview_image`` are not ours (see
:func:`frames_and_actions`).
"""
from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from envs import RENDER_VERSION

FORMAT_VERSION = 1
_IMAGE_KEYS = ("image", "segmentation")


class RolloutFileError(RuntimeError):
    """A rollout file is missing, unreadable or not in the expected layout."""


def episode_from_steps(first_obs: dict, first_info: dict, steps: list[tuple]) -> dict:
    """Assemble one episode dict from the reset and ``(action, obs, reward, done, info)`` steps.

    Returns ``{"actions", "states", "rewards", "dones", "obs": {...}, "next_obs": {...}}``
    with arrays of length N = len(steps).
    """
    if not steps:
        raise ValueError("an episode needs at least one step")
    readouts = [_readout(first_obs, first_info)] + [_readout(o, i) for _, o, _, _, i in steps]
    keys = readouts[0].keys()
    stacked = {k: np.stack([r[k] for r in readouts]) for k in keys}
    infos = [first_info] + [s[4] for s in steps]
    return {
        "actions": np.stack([np.asarray(s[0], np.float32) for s in steps]),
        "states": np.stack([i["sim_state"] for i in infos[:-1]]),
        "rewards": np.array([s[2] for s in steps], np.float32),
        "dones": np.array([s[3] for s in steps], np.uint8),
        "obs": {k: v[:-1] for k, v in stacked.items()},
        "next_obs": {k: v[1:] for k, v in stacked.items()},
    }


def _readout(obs: dict, info: dict) -> dict:
    out = {k: np.asarray(v) for k, v in obs.items()}
    out["eef_pos"] = np.asarray(info["eef_pos"], np.float32)
    out["gripper_opening"] = np.float32(info["gripper_opening"])
    for colour, pose in info["object_poses"].items():
        out[f"{colour}_cube_pose"] = np.asarray(pose, np.float32)
    if "segmentation" in info:
        out["segmentation"] = info["segmentation"]
    return out


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it to ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def find_rollouts(folder: str | os.PathLike, pattern: str = "*.hdf5") -> list[Path]:
    """The rollout files in ``folder`` matching ``pattern``, sorted. Hidden names are left
    out: they are :func:`atomic_path` temp files, which a killed writer can leave behind."""
    return sorted(p for p in Path(folder).glob(pattern) if not p.name.startswith("."))


class RolloutWriter:
    """Append episodes to an open HDF5 file (use inside :func:`atomic_path`)."""

    def __init__(self, path: str | os.PathLike, env_args: dict):
        self.f = h5py.File(path, "w")
        self.data = self.f.create_group("data")
        self.data.attrs["env_args"] = json.dumps({"render_version": RENDER_VERSION, **env_args})
        self.data.attrs["format_version"] = FORMAT_VERSION
        self.n, self.total = 0, 0

    def add(self, episode: dict, **attrs) -> None:
        g = self.data.create_group(f"demo_{self.n}")
        for key in ("actions", "states", "rewards", "dones"):
            g.create_dataset(key, data=episode[key])
        for group in ("obs", "next_obs"):
            sub = g.create_group(group)
            for key, arr in episode[group].items():
                if key in _IMAGE_KEYS:
                    sub.create_dataset(key, data=arr, compression="gzip", compression_opts=4,
                                       chunks=(min(len(arr), 16), *arr.shape[1:]))
                else:
                    sub.create_dataset(key, data=arr)
        n = len(episode["actions"])
        g.attrs["num_samples"] = n
        for k, v in attrs.items():
            g.attrs[k] = v
        self.n += 1
        self.total += n

    def close(self) -> None:
        self.data.attrs["total"] = self.total
        self.f.close()


def open_rollouts(path: str | os.PathLike) -> h5py.File:
    """Open a rollout file for reading, with a clear error if it is missing or corrupt."""
    path = Path(path)
    if not path.exists():
        raise RolloutFileError(f"rollout file {path} does not exist; create it with "
                               "`python experiments/collect.py env=... agent=... episodes=N`")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise RolloutFileError(f"rollout file {path} is not a readable HDF5 file ({e}); "
                               "delete it and collect again") from None
    if "data" not in f or not any(k.startswith("demo_") for k in f["data"]):
        f.close()
        raise RolloutFileError(f"rollout file {path} has no data/demo_* groups; "
                               "it is not in the robomimic layout")
    _check_render_version(path, f)
    return f


def _check_render_version(path: Path, f: h5py.File) -> None:
    """Warn when our own file's frames were rendered unlike this env renders them now."""
    args = _env_args(f)
    if not str(args.get("env_id", "")).startswith("roboalign/"):
        return  # not ours (e.g. robomimic)
    version = int(args.get("render_version", 1))
    if version != RENDER_VERSION:
        warnings.warn(f"{path}: frames rendered with render version {version}, the env now renders "
                      f"version {RENDER_VERSION} (see envs.RENDER_VERSION); a model trained on them "
                      "sees different frames than the env gives -- collect again", stacklevel=3)


def demo_keys(f: h5py.File) -> list[str]:
    """``demo_*`` group names in numeric order."""
    return sorted((k for k in f["data"] if k.startswith("demo_")), key=lambda k: int(k.split("_")[1]))


def read_episode(path: str | os.PathLike, index: int) -> dict:
    """Episode ``index`` as nested numpy arrays plus its ``attrs``."""
    with open_rollouts(path) as f:
        keys = demo_keys(f)
        if not 0 <= index < len(keys):
            raise IndexError(f"{path} has {len(keys)} episodes; asked for {index}")
        g = f["data"][keys[index]]
        out = {k: g[k][()] for k in ("actions", "states", "rewards", "dones") if k in g}
        for group in ("obs", "next_obs"):
            if group in g:
                out[group] = {k: g[group][k][()] for k in g[group]}
        out["attrs"] = dict(g.attrs)
        return out


def _env_args(f: h5py.File) -> dict:
    return json.loads(f["data"].attrs.get("env_args", "{}"))


def env_args(path: str | os.PathLike) -> dict:
    with open_rollouts(path) as f:
        return _env_args(f)


def frames_and_actions(g: h5py.Group, image_key: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """All ``N + 1`` frames ``(N+1, H, W, 3)`` uint8 and actions ``(N, A)`` of one demo.

    robomimic files: pass ``image_key="agentview_image"``; their actions are 7-D
    OSC_POSE deltas -- ours are ``actions[:, [0, 1, 2, 6]]`` of theirs (position
    deltas and gripper), and their 84x84 frames need resizing to the model's size.
    """
    if image_key not in g["obs"]:
        raise RolloutFileError(f"{g.name} has no obs/{image_key}; available: {sorted(g['obs'])}")
    frames = g["obs"][image_key][()]
    last = g["next_obs"][image_key][-1:] if "next_obs" in g and image_key in g["next_obs"] else frames[-1:]
    return np.concatenate([frames, last]), g["actions"][()]
