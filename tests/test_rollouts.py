"""Rollout files: HDF5 round trip, exact state replay, parallel collection, seed splits,
clear errors for bad files, atomic writing."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

import envs.rollouts as rollouts
from agent.collect import collect
from envs.robosuite_env import LABELS
from envs.rollouts import RolloutFileError, frames_and_actions, open_rollouts, read_episode
from envs.splits import SPLITS, check_disjoint, split_of, split_seeds
from envs.vocab import INSTRUCTIONS, instruction_id
from tests.conftest import LIFT, PICK

OBS_KEYS = {"image", "proprio", "instruction", "objects", "segmentation", "eef_pos", "gripper_opening",
            "red_cube_pose", "green_cube_pose"}


@pytest.fixture(scope="module")
def pick_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rollouts") / "r.hdf5"
    summary = collect(PICK, "noisy", 2, path, split="val", workers=1, progress=False)
    assert summary["episodes"] == 2 and summary["path"] == str(path)
    return path, summary


def test_collect_summary(pick_file):
    path, summary = pick_file
    assert path.exists()
    eps = [read_episode(path, i) for i in range(2)]
    assert summary["steps"] == sum(len(e["actions"]) for e in eps)
    assert summary["success_rate"] == pytest.approx(np.mean([bool(e["attrs"]["success"]) for e in eps]))
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.hdf5"]  # no temporary left


def test_hdf5_round_trip_layout(pick_file, pick_env):
    path, _ = pick_file
    state_size = len(pick_env.reset(seed=0)[1]["sim_state"])
    with open_rollouts(path) as f:
        assert rollouts.demo_keys(f) == ["demo_0", "demo_1"]
        env_args = json.loads(f["data"].attrs["env_args"])
        assert env_args["env_id"] == PICK and env_args["env_name"] == "PickColor"
        assert env_args["split"] == "val" and env_args["agent"] == "noisy"
        assert f["data"].attrs["format_version"] == rollouts.FORMAT_VERSION
        total = int(f["data"].attrs["total"])
    assert rollouts.env_args(path)["env_id"] == PICK

    seeds, lengths = [], []
    for i in range(2):
        ep = read_episode(path, i)
        n = len(ep["actions"])
        lengths.append(n)
        assert 0 < n <= 100
        assert ep["actions"].shape == (n, 4) and ep["actions"].dtype == np.float32
        assert np.all(np.abs(ep["actions"]) <= 1.0)
        assert ep["states"].shape == (n, state_size) and ep["states"].dtype == np.float64
        assert ep["rewards"].shape == (n,) and ep["dones"].shape == (n,)
        assert set(ep["obs"]) == OBS_KEYS and set(ep["next_obs"]) == OBS_KEYS
        obs = ep["obs"]
        assert obs["image"].shape == (n, 64, 64, 3) and obs["image"].dtype == np.uint8
        assert obs["segmentation"].shape == (n, 64, 64) and obs["segmentation"].dtype == np.uint8
        assert set(np.unique(obs["segmentation"])) <= set(LABELS.values())
        first = set(np.unique(obs["segmentation"][0]))
        assert {LABELS["red_cube"], LABELS["green_cube"]} <= first
        assert obs["red_cube_pose"].shape == (n, 7) and obs["green_cube_pose"].shape == (n, 7)
        np.testing.assert_allclose(np.linalg.norm(obs["red_cube_pose"][:, 3:], axis=1), 1.0, atol=1e-4)
        assert obs["proprio"].shape == (n, 4) and obs["objects"].shape == (n, 6)
        assert obs["eef_pos"].shape == (n, 3) and obs["gripper_opening"].shape == (n,)
        for key in OBS_KEYS:
            assert ep["next_obs"][key].shape == obs[key].shape, key
            # next_obs is obs shifted by one step
            assert np.array_equal(ep["next_obs"][key][:-1], obs[key][1:]), key

        attrs = ep["attrs"]
        seeds.append(int(attrs["seed"]))
        assert split_of(int(attrs["seed"])) == "val" and attrs["split"] == "val"
        assert attrs["num_samples"] == n and attrs["agent"] == "noisy"
        assert attrs["instruction"] in INSTRUCTIONS[:2]
        assert attrs["instruction_id"] == instruction_id(attrs["instruction"])
        assert np.all(obs["instruction"] == attrs["instruction_id"])
        # an episode ends at success or at the time limit
        assert bool(attrs["success"]) == bool(ep["dones"][-1])
        assert ep["dones"][:-1].sum() == 0
        assert bool(attrs["success"]) or n == 100
        assert attrs["failure"] in ("none", "missed_grasp", "drop", "wrong_object", "timeout")
        assert (attrs["failure"] == "none") == bool(attrs["success"])
    assert seeds == split_seeds("val", 2)
    assert total == sum(lengths)


def test_stored_states_replay_exactly(pick_file, pick_env):
    path, _ = pick_file
    ep = read_episode(path, 0)
    k = min(8, len(ep["actions"]))
    pick_env.reset(seed=0)  # unrelated state first: reset_to must not depend on it
    obs, info = pick_env.unwrapped.reset_to(ep["states"][0])
    assert np.array_equal(obs["image"], ep["obs"]["image"][0])
    assert np.array_equal(info["segmentation"], ep["obs"]["segmentation"][0])
    assert info["instruction"] == ep["attrs"]["instruction"]
    for t in range(k):
        obs, reward, _, _, info = pick_env.step(ep["actions"][t])
        assert np.array_equal(obs["image"], ep["next_obs"]["image"][t]), t
        assert np.float32(reward) == ep["rewards"][t]
        if t + 1 < len(ep["states"]):
            assert np.array_equal(info["sim_state"], ep["states"][t + 1]), t


def test_frames_and_actions(pick_file):
    path, _ = pick_file
    ep = read_episode(path, 1)
    n = len(ep["actions"])
    with open_rollouts(path) as f:
        frames, actions = frames_and_actions(f["data/demo_1"])
        with pytest.raises(RolloutFileError, match="agentview_image"):
            frames_and_actions(f["data/demo_1"], image_key="agentview_image")
    assert frames.shape == (n + 1, 64, 64, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames[:n], ep["obs"]["image"])
    assert np.array_equal(frames[n], ep["next_obs"]["image"][-1])
    assert np.array_equal(actions, ep["actions"])


def test_read_episode_index_out_of_range(pick_file):
    path, _ = pick_file
    with pytest.raises(IndexError):
        read_episode(path, 2)


def test_parallel_collect_keeps_seed_order(tmp_path):
    path = tmp_path / "lift.hdf5"
    summary = collect(LIFT, "scripted", 2, path, split="train", start=5, workers=2, progress=False)
    assert summary["workers"] == 2
    seeds = [int(read_episode(path, i)["attrs"]["seed"]) for i in range(2)]
    assert seeds == split_seeds("train", 2, start=5) == [5, 6]
    for i in range(2):
        ep = read_episode(path, i)
        assert ep["attrs"]["split"] == "train" and bool(ep["attrs"]["success"])
        assert set(ep["obs"]) == OBS_KEYS - {"green_cube_pose"}
        assert ep["obs"]["objects"].shape[1] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lift.hdf5"]


def test_after_success_records_past_the_success_and_keeps_the_result(tmp_path):
    """after_success: the episode's result (success, length) is that of the terminating step;
    the recording goes on for N more steps, with ``dones`` 1 at the success step only."""
    import envs
    from agent.collect import make_agent, run_episode

    env = envs.make(LIFT)
    try:
        plain = run_episode(env, make_agent("scripted"), 3, record=True)
        more = run_episode(env, make_agent("scripted"), 3, record=True, after_success=5)
    finally:
        env.close()
    assert plain.success and more.success and more.length == plain.length
    n = plain.length
    assert len(more.episode["actions"]) == n + 5 and more.episode["post_success"] == 5
    assert plain.episode["post_success"] == 0
    assert np.array_equal(more.episode["actions"][:n], plain.episode["actions"])
    assert more.episode["dones"][n - 1] == 1 and more.episode["dones"].sum() == 1
    path = tmp_path / "lift.hdf5"
    collect(LIFT, "scripted", 1, path, split="train", start=3, workers=1, progress=False, after_success=5)
    ep = read_episode(path, 0)
    assert int(ep["attrs"]["post_success"]) == 5 and len(ep["actions"]) == n + 5 and bool(ep["attrs"]["success"])


# ----------------------------------------------------------------------------- splits
def test_split_ranges_are_disjoint():
    names = sorted(SPLITS)
    assert names == ["test", "train", "val"]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ra, rb = SPLITS[a], SPLITS[b]
            assert ra.step == rb.step == 1
            assert ra.stop <= rb.start or rb.stop <= ra.start, (a, b)
    for name in names:
        seeds = split_seeds(name, 5, start=len(SPLITS[name]) - 5)
        assert [split_of(s) for s in seeds] == [name] * 5
    assert split_seeds("val", 3) == [1_000_000, 1_000_001, 1_000_002]
    assert split_seeds("test", 2, start=10) == [2_000_010, 2_000_011]


def test_split_errors():
    n = len(SPLITS["val"])
    assert len(split_seeds("val", n)) == n
    with pytest.raises(ValueError):
        split_seeds("val", n + 1)
    with pytest.raises(ValueError):
        split_seeds("val", 2, start=n - 1)
    with pytest.raises(ValueError):
        split_seeds("train", -1)
    with pytest.raises(KeyError, match="holdout"):
        split_seeds("holdout", 1)
    with pytest.raises(ValueError):
        split_of(1_500_000)  # between val and test
    check_disjoint({"train": [0, 5], "val": [1_000_000], "test": [2_000_000]})
    with pytest.raises(ValueError, match="test"):
        check_disjoint({"train": [0], "test": [2_000_000, 3]})
    with pytest.raises(ValueError):
        check_disjoint({"val": [2_000_001]})


def test_collect_rejects_bad_arguments(tmp_path):
    with pytest.raises(KeyError):
        collect("roboalign/Nope-v0", "scripted", 1, tmp_path / "x.hdf5", progress=False)
    with pytest.raises(KeyError):
        collect(LIFT, "scripted", 1, tmp_path / "x.hdf5", split="holdout", progress=False)
    with pytest.raises(ValueError):
        collect(LIFT, "scripted", len(SPLITS["val"]) + 1, tmp_path / "x.hdf5", split="val", progress=False)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- bad files
def test_missing_file_error_says_how_to_collect(tmp_path):
    with pytest.raises(RolloutFileError, match="collect"):
        read_episode(tmp_path / "nope.hdf5", 0)
    with pytest.raises(RolloutFileError, match="collect"):
        open_rollouts(tmp_path / "nope.hdf5")


def test_corrupt_file_error(tmp_path):
    path = tmp_path / "x.hdf5"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(RolloutFileError):
        read_episode(path, 0)
    empty = tmp_path / "empty.hdf5"
    empty.write_bytes(b"")
    with pytest.raises(RolloutFileError):
        open_rollouts(empty)


def test_hdf5_without_demos_error(tmp_path):
    no_data = tmp_path / "a.hdf5"
    with h5py.File(no_data, "w") as f:
        f.create_group("other")
    with pytest.raises(RolloutFileError, match="demo_"):
        read_episode(no_data, 0)
    no_demos = tmp_path / "b.hdf5"
    with h5py.File(no_demos, "w") as f:
        f.create_group("data").create_group("mask")
    with pytest.raises(RolloutFileError, match="demo_"):
        open_rollouts(no_demos)


def test_render_version_is_recorded_and_an_old_one_warns(pick_file, tmp_path):
    import warnings

    import envs

    path, _ = pick_file
    assert rollouts.env_args(path)["render_version"] == envs.RENDER_VERSION
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_rollouts(path).close()  # current version: silent
    old = tmp_path / "old.hdf5"
    with h5py.File(path) as src, h5py.File(old, "w") as dst:
        src.copy("data", dst)
        args = json.loads(dst["data"].attrs["env_args"])
        del args["render_version"]  # files from before the version was recorded
        dst["data"].attrs["env_args"] = json.dumps(args)
    with pytest.warns(UserWarning, match="render version 1"):
        open_rollouts(old).close()


def test_episode_from_steps_needs_a_step():
    with pytest.raises(ValueError):
        rollouts.episode_from_steps({}, {}, [])


# ----------------------------------------------------------------------------- atomic writing
def test_failed_collection_leaves_no_file(tmp_path, monkeypatch):
    calls = []
    original = rollouts.RolloutWriter.add

    def flaky_add(self, episode, **attrs):
        calls.append(attrs["seed"])
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return original(self, episode, **attrs)

    monkeypatch.setattr(rollouts.RolloutWriter, "add", flaky_add)
    out = tmp_path / "sub" / "r.hdf5"
    with pytest.raises(RuntimeError, match="disk on fire"):
        collect(LIFT, "scripted", 2, out, workers=1, progress=False)
    assert calls == split_seeds("train", 2)
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir()] if out.parent.exists() else []
    assert leftovers == [], leftovers
    assert not any(".tmp" in name for name in os.listdir(tmp_path))


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(ZeroDivisionError):
        with rollouts.atomic_path(target) as tmp:
            tmp.write_text("new")
            raise ZeroDivisionError
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    with rollouts.atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_find_rollouts_skips_a_killed_writers_temp_file(tmp_path):
    """A SIGKILLed collector leaves atomic_path's hidden temp file beside the finished
    file; readers of a stage folder must list only the finished one."""
    (tmp_path / "lift_noisy_train_0_100.hdf5").write_bytes(b"x")
    (tmp_path / "lift_noisy_val_0_16.hdf5").write_bytes(b"x")
    with rollouts.atomic_path(tmp_path / "lift_noisy_train_0_100.hdf5") as tmp:
        tmp.write_bytes(b"partial")
        names = [p.name for p in rollouts.find_rollouts(tmp_path)]
        assert names == ["lift_noisy_train_0_100.hdf5", "lift_noisy_val_0_16.hdf5"]
        assert [p.name for p in rollouts.find_rollouts(tmp_path, "*_train_*.hdf5")] == ["lift_noisy_train_0_100.hdf5"]
