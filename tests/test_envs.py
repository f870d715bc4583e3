"""The gymnasium envs: API conformance, determinism, exact replay, camera, errors, success."""
from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from scipy import ndimage

import envs
from agent.scripted import ScriptedExpert
from envs.robosuite_env import LABELS
from envs.vocab import INSTRUCTIONS, instruction_id
from tests.conftest import LIFT, PICK, STACK, label_mask, set_cube

ALL_IDS = sorted(envs.ENV_IDS)


def _unexpected(caught) -> list[str]:
    """Warnings other than gymnasium's note about unbounded (inf) Box limits."""
    return [str(w.message) for w in caught if "infinity" not in str(w.message)]


# ----------------------------------------------------------------------------- API checkers
@pytest.mark.parametrize("env_id", ALL_IDS)
def test_gymnasium_check_env(make_env, env_id):
    from gymnasium.utils.env_checker import check_env

    env = make_env(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=False)
    # e.g. "Not able to test alternative render modes" would mean the render check was skipped
    assert _unexpected(caught) == []


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_sb3_check_env_state_mode(make_env, env_id):
    from stable_baselines3.common.env_checker import check_env

    env = make_env(env_id, obs_mode="state")
    assert isinstance(env.observation_space, gym.spaces.Box)
    n_obj = len(env.unwrapped.task.colours)
    assert env.observation_space.shape == (4 + 6 * n_obj + len(INSTRUCTIONS),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env, warn=True)
    obs, _ = env.reset(seed=3)
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)


def test_gym_make_with_module_prefix_in_fresh_process(tmp_path):
    code = (
        "import sys, gymnasium as gym\n"
        "assert 'envs' not in sys.modules\n"
        "env = gym.make('envs:roboalign/Lift-v0')\n"
        "obs, info = env.reset(seed=0)\n"
        "assert 'envs' in sys.modules\n"
        "assert obs['image'].shape == (64, 64, 3) and obs['image'].dtype.name == 'uint8'\n"
        "assert env.spec.max_episode_steps == 100, env.spec.max_episode_steps\n"
        "env.close()\n"
        "print('OK', env.spec.id)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK roboalign/Lift-v0" in proc.stdout


def test_registry_and_spaces(lift_env, pick_env):
    assert set(envs.ENV_IDS) == {LIFT, PICK, STACK, "roboalign/PickSide-v0"}
    for env_id in envs.ENV_IDS:
        assert env_id in gym.registry
    assert gym.registry[STACK].max_episode_steps == 200
    assert lift_env.action_space == gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    assert set(lift_env.observation_space.spaces) == {"image", "proprio", "instruction", "objects"}
    assert lift_env.observation_space["objects"].shape == (3,)
    assert pick_env.observation_space["objects"].shape == (6,)
    obs, info = pick_env.reset(seed=0)
    assert pick_env.observation_space.contains(obs)
    for key in ("success", "wrong_object", "instruction", "sim_state", "eef_pos", "gripper_opening",
                "object_poses", "segmentation"):
        assert key in info
    assert set(info["object_poses"]) == {"red", "green"}
    assert info["segmentation"].shape == (64, 64) and info["segmentation"].dtype == np.uint8
    # objects are the cube centres in colour order (red, green), as in info["object_poses"]
    np.testing.assert_allclose(obs["objects"][:3], info["object_poses"]["red"][:3], atol=1e-6)
    np.testing.assert_allclose(obs["objects"][3:], info["object_poses"]["green"][:3], atol=1e-6)
    np.testing.assert_allclose(obs["proprio"][:3], info["eef_pos"], atol=1e-6)


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("env_id", [LIFT, PICK])
def test_seeded_reset_is_deterministic(make_env, env_id):
    env = make_env(env_id)
    o1, i1 = env.reset(seed=123)
    env.step(env.action_space.sample())  # disturb the sim between the two resets
    o2, i2 = env.reset(seed=123)
    assert o1["image"].tobytes() == o2["image"].tobytes()
    assert np.array_equal(o1["objects"], o2["objects"])
    assert np.array_equal(o1["proprio"], o2["proprio"])
    assert o1["instruction"] == o2["instruction"]
    assert np.array_equal(i1["sim_state"], i2["sim_state"])

    o3, _ = env.reset(seed=124)
    assert not np.allclose(o1["objects"], o3["objects"], atol=1e-3)
    assert not np.array_equal(o1["image"], o3["image"])


def test_placement_within_range(lift_env):
    h = lift_env.unwrapped.task.placement_half_range
    xy = np.array([lift_env.reset(seed=s)[0]["objects"][:2] for s in range(12)])
    assert np.all(np.abs(xy) <= h + 1e-3)
    assert xy.std(axis=0).min() > h / 4  # actually spread over the range


def test_pick_color_instruction_and_swap_are_randomized(pick_env):
    instr, swapped = set(), set()
    for s in range(12):
        obs, _ = pick_env.reset(seed=s)
        instr.add(int(obs["instruction"]))
        swapped.add(pick_env.unwrapped._swapped)
    assert instr == {instruction_id("lift the red cube"), instruction_id("lift the green cube")}
    assert swapped == {False, True}


# ----------------------------------------------------------------------------- exact replay
def _scripted_rollout(env, seed, n_steps=15, options=None):
    agent = ScriptedExpert()
    agent.reset(seed=seed)
    obs, info = env.reset(seed=seed, options=options)
    s0, images, actions = info["sim_state"].copy(), [obs["image"].copy()], []
    for _ in range(n_steps):
        a = agent.act(obs)
        obs, _, terminated, truncated, info = env.step(a)
        assert not (terminated or truncated)
        actions.append(np.asarray(a).copy())
        images.append(obs["image"].copy())
    return s0, images, actions, info["sim_state"].copy()


def _replay(env, s0, actions, fresh_seed=None):
    """Replay ``actions`` from ``s0``; ``fresh_seed``: do an unrelated seeded reset first."""
    if fresh_seed is not None:
        env.reset(seed=fresh_seed)
    obs, info = env.reset(options={"sim_state": s0})
    assert np.array_equal(info["sim_state"], s0)
    images = [obs["image"].copy()]
    for a in actions:
        obs, _, _, _, info = env.step(a)
        images.append(obs["image"].copy())
    return images, info["sim_state"].copy()


def _assert_same_frames(images, replayed):
    assert len(images) == len(replayed)
    bad = [t for t, (a, b) in enumerate(zip(images, replayed)) if not np.array_equal(a, b)]
    assert bad == [], f"frames differ at steps {bad}"


def test_replay_from_sim_state_is_bit_exact_lift(lift_env):
    s0, images, actions, s_end = _scripted_rollout(lift_env, seed=7)
    # the arm must actually have moved (and the gripper opened) for this to test anything
    assert not np.array_equal(images[0], images[-1])
    assert not np.allclose(s0[1:-5], s_end[1:-5])
    replayed, s_end2 = _replay(lift_env, s0, actions, fresh_seed=1)
    _assert_same_frames(images, replayed)
    assert np.array_equal(s_end, s_end2)


def test_replay_restores_colour_swap_pick_color(pick_env):
    s0, images, actions, s_end = _scripted_rollout(pick_env, seed=11, options={"swap_colours": True})
    assert pick_env.unwrapped._swapped and s0[-3] == 1.0
    assert not np.array_equal(images[0], images[-1])
    # the env is left un-swapped with another instruction before restoring s0
    _, info = pick_env.reset(seed=12, options={"swap_colours": False, "instruction": "lift the red cube"})
    assert not pick_env.unwrapped._swapped
    obs, info = pick_env.reset(options={"sim_state": s0})
    assert pick_env.unwrapped._swapped
    assert pick_env.unwrapped._cubes["red"] is pick_env.unwrapped._rs.cubeB
    assert obs["instruction"] == int(s0[-2])
    replayed, s_end2 = _replay(pick_env, s0, actions)
    _assert_same_frames(images, replayed)
    assert np.array_equal(s_end, s_end2)


def test_replay_right_after_the_recorded_steps_is_bit_exact(lift_env):
    """The brief's replay: record, then immediately reset(options={"sim_state": s0})."""
    s0, images, actions, s_end = _scripted_rollout(lift_env, seed=8)
    replayed, s_end2 = _replay(lift_env, s0, actions)
    _assert_same_frames(images, replayed)
    assert np.array_equal(s_end, s_end2)


def test_replay_from_a_mid_episode_state_is_bit_exact(lift_env):
    """States recorded mid-episode (gripper closing) replay exactly too."""
    s0, images, actions, s_end = _scripted_rollout(lift_env, seed=9, n_steps=40)
    obs, info = lift_env.reset(options={"sim_state": s0})
    for a in actions[:25]:
        obs, _, _, _, info = lift_env.step(a)
    mid = info["sim_state"].copy()
    replayed, s_end2 = _replay(lift_env, mid, actions[25:], fresh_seed=3)
    _assert_same_frames(images[25:], replayed)
    assert np.array_equal(s_end, s_end2)


def test_reset_to_method_matches_reset_option(pick_env):
    _, info = pick_env.reset(seed=5)
    s = info["sim_state"].copy()
    pick_env.reset(seed=6)
    obs_a, info_a = pick_env.unwrapped.reset_to(s)
    img_a = obs_a["image"].copy()
    pick_env.reset(seed=6)
    obs_b, info_b = pick_env.reset(options={"sim_state": s})
    assert np.array_equal(img_a, obs_b["image"])
    assert np.array_equal(info_a["sim_state"], info_b["sim_state"])
    assert info_b["instruction"] == info["instruction"]


# ----------------------------------------------------------------------------- camera
def test_lift_cube_visible_over_placement_range(lift_env):
    env = lift_env
    env.reset(seed=0)
    h = env.unwrapped.task.placement_half_range
    z_rest = set_cube(env, "red")[2]
    report = []
    for x in (-h, 0.0, h):
        for y in (-h, 0.0, h):
            set_cube(env, "red", xyz=(x, y, z_rest), quat=(1, 0, 0, 0))
            low = label_mask(env, "red")
            set_cube(env, "red", xyz=(x, y, z_rest + 0.08), quat=(1, 0, 0, 0))
            high = label_mask(env, "red")
            rise = np.nonzero(low)[0].mean() - np.nonzero(high)[0].mean() if high.any() and low.any() else -1
            report.append(((x, y), int(low.sum()), int(high.sum()), float(rise)))
    bad = [r for r in report if r[1] < 36 or r[2] < 36 or r[3] < 5]
    assert bad == [], f"(xy, px at rest, px raised 8 cm, centroid rise in px): {bad}"


@pytest.mark.parametrize("env_id", [PICK, STACK])
def test_both_cubes_visible_after_reset(make_env, env_id):
    env = make_env(env_id)
    counts = []
    for seed in range(4):
        _, info = env.reset(seed=seed)
        seg = info["segmentation"]
        assert set(np.unique(seg)) <= set(LABELS.values())
        counts.append({c: int((seg == LABELS[f"{c}_cube"]).sum()) for c in ("red", "green")})
        # info["segmentation"] is the same render as _segment()
        assert np.array_equal(seg, env.unwrapped._segment(64))
    assert all(min(c.values()) >= 36 for c in counts), counts


def test_segmentation_labels_match_image_colours(pick_env):
    for swap in (False, True):
        obs, info = pick_env.reset(seed=2, options={"swap_colours": swap})
        img, seg = obs["image"].astype(int), info["segmentation"]
        red = img[seg == LABELS["red_cube"]].mean(axis=0)
        green = img[seg == LABELS["green_cube"]].mean(axis=0)
        assert red[0] > red[1] + 20, (swap, red)
        assert green[1] > green[0] + 20, (swap, green)


def test_only_the_cubes_are_red_or_green_and_the_gripper_is_blue(make_env):
    """Collision geoms are not drawn (they painted the arm green) and the gripper has
    its own colour, so a colour-keyed learner cannot mistake the robot for a cube."""
    from envs.robosuite_env import GRIPPER_RGBA

    for env_id in ("roboalign/PickColor-v0", "roboalign/Stack-v0"):
        env = make_env(env_id)
        obs, info = env.reset(seed=3)
        act = np.array([0.0, 0.0, -0.6, 0.0], np.float32)
        for t in range(12):  # descend: the hand fills the upper image
            obs, _, _, _, info = env.step(act)
            img, seg = obs["image"].astype(int), info["segmentation"]
            r, g, b = img[..., 0], img[..., 1], img[..., 2]
            cubes = (seg == LABELS["red_cube"]) | (seg == LABELS["green_cube"])
            cubes = ndimage.binary_dilation(cubes, np.ones((3, 3), bool))  # anti-aliased edge pixels are part cube
            vivid = ((r > g + 30) & (r > b + 30)) | ((g > r + 30) & (g > b + 30))
            assert (vivid & ~cubes).sum() <= 2, (env_id, t, int((vivid & ~cubes).sum()))
        hand = img[seg == LABELS["gripper"]]
        assert len(hand) > 20
        assert np.argmax(hand.mean(0)) == int(np.argmax(GRIPPER_RGBA[:3])), hand.mean(0)
        assert env.unwrapped._scene_option.geomgroup[0] == 0


def test_rgb_frames_are_antialiased_and_segmentation_stays_exact(make_env):
    """RGB frames have MSAA (edges area-averaged, like a camera's pixels); the
    segmentation render has none, so every label is a real one."""
    import mujoco

    from envs.robosuite_env import CAMERA_NAME, RGB_SAMPLES

    env = make_env("roboalign/Lift-v0")
    obs, info = env.reset(seed=3)
    for _ in range(6):
        obs, _, _, _, info = env.step(np.array([0.3, 0.0, -0.5, 0.0], np.float32))
    u = env.unwrapped
    m = u.sim.model._model
    # Reference: the pixel-area average of a 4x finer render.
    ref = u._render(256).astype(float).reshape(64, 4, 64, 4, 3).mean((1, 3))
    saved = m.vis.quality.offsamples
    m.vis.quality.offsamples = 0
    r = mujoco.Renderer(m, 64, 64)
    try:
        r.update_scene(u.sim.data._data, camera=CAMERA_NAME, scene_option=u._scene_option)
        aliased = r.render().astype(float)
    finally:
        r.close()
        m.vis.quality.offsamples = saved
    frame = obs["image"].astype(float)
    assert RGB_SAMPLES > 1
    err, err_aliased = np.abs(frame - ref).mean(), np.abs(aliased - ref).mean()
    assert err < 0.7 * err_aliased, (err, err_aliased)
    assert set(np.unique(info["segmentation"]).tolist()) <= set(LABELS.values())


# ----------------------------------------------------------------------------- errors
def test_bad_actions_raise(lift_env):
    lift_env.reset(seed=0)
    lift_env.step(np.zeros(4))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        lift_env.step(np.zeros(3))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        lift_env.step(np.zeros((1, 4)))
    with pytest.raises(ValueError):
        lift_env.step(np.array([0.0, np.nan, 0.0, 0.0]))
    with pytest.raises(ValueError):
        lift_env.step(np.array([0.0, 0.0, np.inf, 0.0]))
    # the env is still usable after rejected actions
    _, _, terminated, truncated, _ = lift_env.step(np.zeros(4))
    assert not terminated and not truncated


def test_unknown_env_id_names_registered_ids():
    with pytest.raises(gym.error.Error) as exc:
        envs.make("roboalign/Nope-v0")
    assert isinstance(exc.value, gym.error.UnregisteredEnv)
    for env_id in envs.ENV_IDS:
        assert env_id in str(exc.value)


def test_bad_reset_options_and_states_raise(lift_env, pick_env):
    with pytest.raises(ValueError, match="nope"):
        lift_env.reset(seed=0, options={"nope": 1})
    _, info = lift_env.reset(seed=0)
    s = info["sim_state"]
    with pytest.raises(ValueError, match="sim_state"):
        lift_env.unwrapped.reset_to(s[:-1])
    with pytest.raises(ValueError):
        lift_env.unwrapped.reset_to(np.concatenate([s, [0.0]]))
    with pytest.raises(ValueError):  # a PickColor state does not fit Lift
        lift_env.reset(options={"sim_state": pick_env.reset(seed=0)[1]["sim_state"]})
    with pytest.raises(ValueError):  # Lift has no green cube
        lift_env.reset(seed=0, options={"instruction": "lift the green cube"})
    with pytest.raises(KeyError):
        lift_env.reset(seed=0, options={"instruction": "dance"})
    with pytest.raises(ValueError):
        envs.make(LIFT, obs_mode="pixels")


def test_colour_swap_only_for_two_cube_tasks(lift_env):
    with pytest.raises(ValueError, match="does not swap colours"):
        lift_env.reset(seed=0, options={"swap_colours": True})
    _, info = lift_env.reset(seed=0)  # still usable
    assert info["sim_state"][-3] == 0.0


def _stack(env, top: str, bottom: str) -> None:
    """Place ``top`` resting on ``bottom`` (hand-placed, no robot)."""
    u = env.unwrapped
    half = {c: float(o.size[2]) for c, o in u._cubes.items()}
    base = u._body_pos(u._cubes[bottom])
    set_cube(env, top, xyz=[base[0], base[1], base[2] + half[bottom] + half[top] + 0.001], quat=[1, 0, 0, 0])
    for _ in range(5):                       # let it settle into contact
        u.sim.step()
    u.sim.forward()


def test_stack_draws_both_orders_and_both_size_assignments_reproducibly(stack_env):
    seen = set()
    for seed in range(16):
        _, info = stack_env.reset(seed=seed)
        seen.add((info["instruction"], bool(info["sim_state"][-3])))
        again = stack_env.reset(seed=seed)[1]
        assert np.array_equal(again["sim_state"], info["sim_state"])
    assert seen == {(t, s) for t in ("stack the red cube on the green cube", "stack the green cube on the red cube")
                    for s in (False, True)}


@pytest.mark.parametrize("swap", [False, True])
def test_stack_success_follows_the_instructed_top_cube(stack_env, swap):
    for top, bottom in (("red", "green"), ("green", "red")):
        text = f"stack the {top} cube on the {bottom} cube"
        _, info = stack_env.reset(seed=2, options={"instruction": text, "swap_colours": swap})
        assert info["target"] == top and not info["success"] and not info["wrong_order"]
        _stack(stack_env, top, bottom)
        _, reward, terminated, _, info = stack_env.step(np.array([0, 0, 0, -1.0]))
        assert info["success"] and terminated and not info["wrong_order"] and reward == pytest.approx(1.0)
        _, info = stack_env.reset(seed=2, options={"instruction": text, "swap_colours": swap})
        _stack(stack_env, bottom, top)        # the other order: not a success, and flagged
        _, _, terminated, _, info = stack_env.step(np.array([0, 0, 0, -1.0]))
        assert not info["success"] and not terminated and info["wrong_order"] and info["wrong_object"]


def test_pick_side_keeps_the_cubes_apart_and_names_the_cube_by_its_side(make_env):
    env = make_env("roboalign/PickSide-v0")
    for seed in range(12):
        _, info = env.reset(seed=seed)
        y = {c: p[1] for c, p in info["object_poses"].items()}
        assert abs(y["red"] - y["green"]) >= env.unwrapped.task.side_margin
        left = min(y, key=y.get)
        assert info["target"] == (left if "left" in info["instruction"] else ({"red", "green"} - {left}).pop())
    _, info = env.reset(seed=0, options={"instruction": "lift the cube on the right"})
    other = ({"red", "green"} - {info["target"]}).pop()
    set_cube(env, other, dz=0.10)
    _, _, terminated, _, info = env.step(np.zeros(4))
    assert info["wrong_object"] and not info["success"] and not terminated
    _, info = env.reset(seed=0, options={"instruction": "lift the cube on the right"})
    set_cube(env, info["target"], dz=0.10)
    _, _, terminated, _, info = env.step(np.zeros(4))
    assert info["success"] and terminated


# ----------------------------------------------------------------------------- success
def test_pick_color_success_is_instruction_conditioned(pick_env):
    env = pick_env
    _, info = env.reset(seed=4, options={"instruction": "lift the green cube"})
    assert info["instruction"] == "lift the green cube"
    assert not info["success"] and not info["wrong_object"]
    set_cube(env, "red", dz=0.10)
    _, reward, terminated, _, info = env.step(np.zeros(4))
    assert info["success"] is False and terminated is False
    assert info["wrong_object"] is True
    set_cube(env, "red", dz=-0.10)  # putting it back does not clear wrong_object
    _, _, _, _, info = env.step(np.zeros(4))
    assert info["wrong_object"] is True

    _, info = env.reset(seed=4, options={"instruction": "lift the green cube"})
    assert info["wrong_object"] is False
    set_cube(env, "green", dz=0.10)
    _, reward, terminated, _, info = env.step(np.zeros(4))
    assert info["success"] is True and terminated is True
    assert info["wrong_object"] is False
    assert reward == pytest.approx(2.25)


def test_lift_success_when_cube_raised(lift_env):
    _, info = lift_env.reset(seed=1)
    assert not info["success"]
    set_cube(lift_env, "red", dz=0.10)
    _, _, terminated, truncated, info = lift_env.step(np.zeros(4))
    assert info["success"] and terminated and not truncated


def test_swap_colours_option(pick_env):
    u = pick_env.unwrapped
    area = {}
    for swap in (False, True):
        obs, info = pick_env.reset(seed=3, options={"swap_colours": swap})
        assert u._swapped is swap
        assert info["sim_state"][-3] == float(swap)
        cube_a, cube_b = u._rs.cubeA, u._rs.cubeB  # A small, B large
        assert u._cubes["red"] is (cube_b if swap else cube_a)
        assert u._cubes["green"] is (cube_a if swap else cube_b)
        seg = info["segmentation"]
        area[swap] = {c: int((seg == LABELS[f"{c}_cube"]).sum()) for c in ("red", "green")}
    # same seed -> same placement per colour; swapping makes the red cube the large one
    assert area[True]["red"] > area[False]["red"], area
    assert area[True]["green"] < area[False]["green"], area


# ----------------------------------------------------------------------------- time limit
def test_lift_truncates_at_max_episode_steps(lift_env):
    assert lift_env.spec.max_episode_steps == 100
    lift_env.reset(seed=0)
    for t in range(1, 101):
        _, _, terminated, truncated, info = lift_env.step(np.zeros(4))
        assert terminated is False
        assert truncated is (t == 100), t
    assert not info["success"]


def test_import_envs_sets_headless_rendering_before_mujoco(tmp_path):
    import os

    code = (
        "import envs, mujoco\n"
        "env = envs.make('roboalign/Lift-v0')\n"
        "obs, _ = env.reset(seed=0)\n"
        "assert obs['image'].std() > 0\n"
        "env.close()\n"
        "print('OK')\n"
    )
    child_env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=child_env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]
