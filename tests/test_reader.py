"""agent/reader.py: the instructed cube read off (imagined) pixels."""
from __future__ import annotations

import numpy as np
import pytest

from agent.reader import PixelReader, lift_pixels, reader_objective
from envs.robosuite_env import LABELS
from envs.vocab import instruction_id
from worldmodel.judge.perception import Perception

COLOURS_RGB = {"red_cube": (200, 30, 30), "green_cube": (30, 200, 30), "gripper": (30, 60, 220)}


def _scene(red_y: int, green_y: int, grip_xy: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A 64x64 frame and its labels: two 6x6 cubes at x 16 (red) and 44 (green), a gripper block."""
    img = np.full((64, 64, 3), 120, np.uint8)
    seg = np.zeros((64, 64), np.uint8)
    for name, (x, y) in (("red_cube", (16, red_y)), ("green_cube", (44, green_y)), ("gripper", grip_xy)):
        img[y - 3:y + 3, x - 3:x + 3] = COLOURS_RGB[name]
        seg[y - 3:y + 3, x - 3:x + 3] = LABELS[name]
    return img, seg


@pytest.fixture(scope="module")
def reader():
    frames, segs = zip(*[_scene(40, 40, (30, 10)), _scene(30, 40, (16, 22))])
    return PixelReader(Perception.fit(np.stack(frames), np.stack(segs)))


def test_reader_follows_the_named_cube(reader):
    rise = int(np.ceil(lift_pixels())) + 1
    # the red cube rises a full lift with the gripper above it; the green one stays
    clip = np.stack([_scene(40 - k * rise // 4, 40, (16, 34 - k * rise // 4))[0] for k in range(5)])
    red = reader.read(clip[None], instruction_id("lift the red cube"))[0]
    green = reader.read(clip[None], instruction_id("lift the green cube"))[0]
    assert red[0] == pytest.approx(1.0) and red[1] == 0.0 and red[2] < 0.15
    assert green[0] == 0.0 and green[1] == pytest.approx(1.0) and green[2] > 0.3
    assert reader_objective(red[None])[0] > reader_objective(green[None])[0] + 1.5


def test_reader_treats_an_unseen_cube_as_no_rise_and_far(reader):
    clip = np.stack([_scene(40, 40, (30, 10))[0]] * 3)
    clip[1:, :, :32] = 120                                  # the red cube vanishes after the first frame
    r = reader.read(clip[None], instruction_id("lift the red cube"))[0]
    assert r[0] == 0.0 and r[2] == 1.0
    with pytest.raises(ValueError, match="names a colour"):
        reader.read(clip[None], instruction_id("lift the cube on the left"))
