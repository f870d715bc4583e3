"""RoboAlign environments: robosuite tasks registered as gymnasium envs.

``import envs`` registers ``roboalign/Lift-v0``, ``roboalign/PickColor-v0`` and
``roboalign/Stack-v0``; ``gym.make("envs:roboalign/Lift-v0")`` imports this module
itself. Keyword arguments of :class:`envs.robosuite_env.RoboAlignEnv` pass through
``gym.make``.
"""
from __future__ import annotations

import os

# Headless rendering must be chosen before mujoco/robosuite are first imported.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import gymnasium as gym  # noqa: E402

from envs.tasks import TASKS  # noqa: E402

#: Version of what the camera shows; rollout files and the pipeline's collect stages
#: record it, so frames rendered differently are never mixed up or reused.
#: 1: MuJoCo's default geom groups (the robot's green/blue collision geoms drawn over it);
#: 2: robosuite's convention -- collision geoms (group 0) hidden, visual geoms only --
#:    with the gripper painted blue and the arm's small red/green parts grey;
#: 3: as 2, with 4x MSAA on the RGB frames (anti-aliased edges).
RENDER_VERSION = 3

ENV_IDS: dict[str, str] = {f"roboalign/{name}-v0": name for name in TASKS}

for _env_id, _task in ENV_IDS.items():
    if _env_id not in gym.registry:
        gym.register(
            id=_env_id,
            entry_point="envs.robosuite_env:RoboAlignEnv",
            max_episode_steps=TASKS[_task].max_episode_steps,
            kwargs={"task": _task},
        )


def make(env_id: str, **kwargs) -> gym.Env:
    """``gym.make`` with a clear error for an unknown id."""
    if env_id not in ENV_IDS:
        raise gym.error.UnregisteredEnv(f"unknown env id {env_id!r}; registered: {sorted(ENV_IDS)}")
    return gym.make(env_id, **kwargs)
