"""The lift read off imagined proprioception instead of pixels.

A world model with proprio tokens (``DynamicsConfig.proprio_bins > 0``) imagines the
gripper's opening and the end effector's height with every frame. Closing on a cube stops
the fingers at the cube's width; closing on nothing shuts them (about 1 mm); open they stand
8 cm apart. So a lift is visible without a pixel: the gripper is commanded closed, over the
clip's last two frames its opening stays between half a cube's width and short of open and
has stopped moving (it holds something), and the end effector ends above the task's lift
height. This is grasp evidence a 64x64 third-person view hides behind the
fingers. With one cube (Lift) it reads the lift; with two it says that a cube is held up,
not which.
"""
from __future__ import annotations

import numpy as np

from worldmodel.judge.teacher import TABLE_Z

#: Gripper openings that count as holding (m): from half the 4 cm cube's width to short of
#: open. Shut on nothing the opening is about 0.001 m, closed on a cube 0.04-0.06 m, open 0.08 m.
HOLD_MIN, HOLD_MAX = 0.02, 0.07
#: Largest change of the opening between the last two frames of a hold (m): the fingers stopped.
HOLD_STILL = 0.005


def proprio_lifted(proprio, grip, lift_margin: float = 0.04) -> np.ndarray:
    """Whether each clip ends lifted, from its proprio.

    proprio (..., T + 1, 4) [eef_x, eef_y, eef_z, gripper_opening] (m) per frame; grip (...,)
    the last commanded gripper action (> 0: close); lift_margin: the task's success height of
    the cube centre above the table (``TaskSpec.lift_margin``). Returns a bool array (...,)."""
    p = np.asarray(proprio, np.float64)
    if p.ndim < 2 or p.shape[-2] < 2 or p.shape[-1] != 4:
        raise ValueError(f"proprio must be (..., T + 1, 4) [eef xyz, gripper opening] with T >= 1, got {p.shape}")
    opening = p[..., -2:, 3]
    held = ((opening >= HOLD_MIN) & (opening <= HOLD_MAX)).all(-1) & \
        (np.abs(opening[..., 1] - opening[..., 0]) <= HOLD_STILL)
    return (np.asarray(grip) > 0) & held & (p[..., -1, 2] - TABLE_Z > lift_margin)
