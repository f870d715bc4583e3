"""Shared fixtures: simulator envs are expensive (1-4 s each), so the suite keeps one
per (env id, kwargs) for the whole session and every test starts from a reset."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the project is installed editable; this is a fallback
    sys.path.insert(0, str(ROOT))

import envs  # noqa: E402  (sets MUJOCO_GL=egl before any renderer exists)
from envs.robosuite_env import LABELS  # noqa: E402

LIFT, PICK, STACK = "roboalign/Lift-v0", "roboalign/PickColor-v0", "roboalign/Stack-v0"
CONF_DIR = str(ROOT / "experiments" / "conf")


@pytest.fixture(scope="session")
def make_env():
    """``make_env(env_id, **kwargs)``: a cached env, shared by every test of the session.

    Defaults to ``segmentation=True`` (image observations), so the same env serves
    the camera / segmentation checks. Tests must reset before use.
    """
    cache: dict = {}

    def _make(env_id: str, **kwargs):
        kwargs.setdefault("segmentation", kwargs.get("obs_mode", "image") == "image")
        key = (env_id, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = envs.make(env_id, **kwargs)
        return cache[key]

    yield _make
    for env in cache.values():
        env.close()


@pytest.fixture(scope="module")
def lift_env(make_env):
    return make_env(LIFT)


@pytest.fixture(scope="module")
def pick_env(make_env):
    return make_env(PICK)


@pytest.fixture(scope="module")
def stack_env(make_env):
    return make_env(STACK)


def set_cube(env, colour: str, xyz=None, dz: float = 0.0, quat=None) -> np.ndarray:
    """Teleport ``colour``'s cube (free joint) to ``xyz`` (or raise it by ``dz``), at rest."""
    u = env.unwrapped
    joint = u._cubes[colour].joints[0]
    q = np.array(u.sim.data.get_joint_qpos(joint), dtype=float)
    if xyz is not None:
        q[:3] = xyz
    q[2] += dz
    if quat is not None:
        q[3:] = quat
    u.sim.data.set_joint_qpos(joint, q)
    u.sim.data.set_joint_qvel(joint, np.zeros(6))
    u.sim.forward()
    return q


def label_mask(env, colour: str, size: int = 64) -> np.ndarray:
    return env.unwrapped._segment(size) == LABELS[f"{colour}_cube"]


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread: on a shared 2-core machine two threads next to another busy
    process run ~7x slower (OpenMP oversubscription), one thread never does."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
