"""The privileged teacher judge, its perception, the degradations and the bench file.

Real episodes are generated in-test with the scripted expert (Lift and PickColor);
perception is fitted and the teacher calibrated on one set of episodes and tested
on another, so nothing depends on artifacts/.
"""
from __future__ import annotations

import numpy as np
import pytest

from agent.collect import run_episode
from agent.scripted import ScriptedExpert
from envs.vocab import instruction_id
from worldmodel.judge import MAX_SCORES
from worldmodel.judge.bench import (
    SPAN,
    bench_clip,
    cut_windows,
    label_clips,
    load_bench,
    make_clip,
    prime,
    source_episode,
    write_bench,
)
from worldmodel.judge.degrade import DEGRADATIONS, EXPECTED, HELD_OUT, degrade
from worldmodel.judge.perception import Perception, pixel_accuracy
from worldmodel.judge.teacher import TABLE_Z, ClipError, Replay, Teacher, replay_progress

LIFT, PICK = "roboalign/Lift-v0", "roboalign/PickColor-v0"
IF, MS, AOC, TC, CR, PA = range(6)


def _episode(env, env_id, seed, split, instruction=None):
    opts = {"instruction": instruction} if instruction else None
    r = run_episode(env, ScriptedExpert(), seed, record=True, options=opts)
    assert r.success, f"scripted expert failed {env_id} seed {seed}"
    return source_episode(r.episode, env_id, f"{env_id}:{seed}", split, r.success,
                          instruction_id(r.instruction))


@pytest.fixture(scope="module")
def data(make_env, one_torch_thread):
    lift, pick = make_env(LIFT), make_env(PICK)
    fit = [_episode(lift, LIFT, 0, "train"), _episode(pick, PICK, 0, "train", "lift the red cube"),
           _episode(pick, PICK, 1, "train", "lift the green cube")]
    test = {"lift": _episode(lift, LIFT, 5, "test"), "pick": _episode(pick, PICK, 6, "test", "lift the red cube")}
    frames = np.concatenate([e["frames"] for e in fit])
    seg = np.concatenate([e["seg"] for e in fit])
    perception = Perception.fit(frames, seg)
    teacher = Teacher(perception)
    rng = np.random.default_rng(0)
    calib = [make_clip(e, s) for e in fit for s in cut_windows(e, 6, rng)]
    for c in calib:
        prime(teacher, c)
    teacher.calibrate(calib)
    return {"teacher": teacher, "perception": perception, "test": test}


def _final_clip(ep):
    """The window that ends at the episode's success."""
    return make_clip(ep, len(ep["actions"]) - SPAN)


def _score(teacher, clip):
    if "record" in clip:
        prime(teacher, clip)
    return teacher.score_clip(clip)


def test_perception_accuracy_and_readout(data):
    ep = data["test"]["pick"]
    acc = pixel_accuracy(data["perception"], ep["frames"], ep["seg"])
    assert acc["overall"] > 0.95 and acc["red"] > 0.9 and acc["green"] > 0.9, acc
    out = data["perception"].read(ep["frames"][:5])
    assert out["red"]["centroid"].shape == (5, 2) and out["gripper"]["point"].shape == (5, 2)
    assert np.all(out["red"]["conf"] > 0.5) and np.all(out["red"]["blobs"] == 1)


def test_perception_save_load(data, tmp_path):
    data["perception"].save(tmp_path / "p.npz")
    q = Perception.load(tmp_path / "p.npz")
    f = data["test"]["lift"]["frames"][:3]
    assert np.array_equal(q.classify(f)[0], data["perception"].classify(f)[0])


def test_perception_records_its_render_version_and_a_stale_default_is_refitted(data, tmp_path, monkeypatch):
    """A perception knows which render version's colours it was fitted on; the default
    one is refitted when the env renders another version."""
    import warnings

    import envs
    from worldmodel.judge import perception as perception_mod

    p = data["perception"]
    assert p.render_version == envs.RENDER_VERSION
    p.save(tmp_path / "p.npz")
    assert Perception.load(tmp_path / "p.npz").render_version == envs.RENDER_VERSION
    old = Perception(p.table, p.bins, render_version=envs.RENDER_VERSION - 1)
    old.save(tmp_path / "default.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the current version is used silently
        assert perception_mod.default_perception(tmp_path / "p.npz").render_version == envs.RENDER_VERSION
    with pytest.warns(UserWarning, match="no train rollouts"):
        kept = perception_mod.default_perception(tmp_path / "default.npz", rollout_paths=[])
    assert kept.render_version == envs.RENDER_VERSION - 1
    ep = data["test"]["lift"]  # stands in for the train rollouts' frames and masks
    monkeypatch.setattr(perception_mod, "load_frames_and_seg", lambda paths, **kw: (ep["frames"], ep["seg"]))
    with pytest.warns(UserWarning, match="refitting"):
        new = perception_mod.default_perception(tmp_path / "default.npz", rollout_paths=[tmp_path / "r.hdf5"])
    assert new.render_version == envs.RENDER_VERSION
    assert Perception.load(tmp_path / "default.npz").render_version == envs.RENDER_VERSION


def test_real_success_clip_scores_full(data):
    for name in ("lift", "pick"):
        out = _score(data["teacher"], _final_clip(data["test"][name]))
        s = out["scores"]
        assert s[IF] == 3 and s[MS] == 2, (name, s, out["reasons"])
        assert out["true_stage"] == (3, 2)
        assert s[2:].sum() >= 4.5, (name, s, out["reasons"])
        assert np.all(s <= np.asarray(MAX_SCORES)) and np.all(s >= 0)
        rise, dist, progress = out["shaping"]
        assert rise > 0.8 and dist < 0.2 and progress > 0.5


def test_replay_progress_is_oracle_p_shaped_reward_per_frame():
    """progress = mean over frames 1..T of [1 - tanh(10 d) + rise / lift_margin (<= 1)
    - 0.5 once another cube was lifted; 2 from the first success on] / 2."""
    m, z0 = 0.04, TABLE_Z + 0.02
    red = np.array([[0.1, 0, z0], [0.0, 0, z0], [0.0, 0, z0 + m / 2], [0.0, 0, z0 + 2 * m], [0.0, 0, z0]])
    eef = np.array([[0.1, 0.1, z0], [0.0, 0, z0 + 0.05], [0.0, 0, z0 + m / 2], [0.0, 0, z0 + 2 * m], [0.3, 0, z0]])
    succ = np.array([False, False, False, True, False])      # success stays credited once reached
    r = Replay(eef=eef, cubes={"red": red}, opening=np.zeros(5), success=succ, half={"red": 0.02})
    per_frame = [1 - np.tanh(0.5), 1.0 + 0.5, 2.0, 2.0]
    assert replay_progress(r, "red", m) == pytest.approx(np.mean(per_frame) / 2)
    green = np.tile([0.2, 0.0, z0], (5, 1))
    green[2, 2] = TABLE_Z + m + 0.01                          # the wrong cube lifted at frame 2 (and kept)
    r2 = Replay(eef=eef, cubes={"red": red, "green": green}, opening=np.zeros(5), success=np.zeros(5, bool),
                half={"red": 0.02, "green": 0.02})
    rise = [0.0, 0.5, 1.0, 0.0]
    reach = [1 - np.tanh(0.5), 1.0, 1.0, 1 - np.tanh(3.0)]
    wrong = [0, 1, 1, 1]
    expect = np.mean([a + b - 0.5 * w for a, b, w in zip(reach, rise, wrong)]) / 2
    assert replay_progress(r2, "red", m) == pytest.approx(expect)
    assert replay_progress(r2, "red", m, wrong_object=False) == pytest.approx(np.mean(np.add(reach, rise)) / 2)


def test_clips_past_the_success(data, make_env):
    """An episode recorded past its success (collect's after_success): its frames after the
    success step count as successful (the cube stays up), and a clip that lifts and goes on
    scores as a full success with the progress of a lift, as its fresh replay says."""
    r = run_episode(make_env(LIFT), ScriptedExpert(), 5, record=True, after_success=8)
    ep = source_episode(r.episode, LIFT, "x", "test", r.success, instruction_id(r.instruction), post_success=8)
    n = len(ep["actions"])
    assert not ep["success"][: n - 8].any() and ep["success"][n - 8:].all()
    clip = make_clip(ep, n - SPAN)                    # the last 4 model frames lie past the success
    primed = _score(data["teacher"], clip)
    assert primed["scores"][IF] == 3 and primed["true_stage"] == (3, 2), primed["reasons"]
    data["teacher"].clear_cache()
    fresh = data["teacher"].score_clip(clip)          # replayed in MuJoCo: the same success flags
    assert np.array_equal(fresh["scores"], primed["scores"])
    assert np.isclose(fresh["shaping"][2], primed["shaping"][2], atol=1e-5) and primed["shaping"][2] > 0.7


def test_replay_matches_recording(data):
    t, clip = data["teacher"], _final_clip(data["test"]["lift"])
    r = t.replay(clip["env_id"], clip["start_state"], clip["actions"] + 0.0, clip["stride"])  # fresh replay
    t.clear_cache()
    r2 = t.replay(clip["env_id"], clip["start_state"], clip["actions"], clip["stride"])
    assert np.allclose(r.eef, clip["record"]["eef"], atol=1e-6)
    assert np.allclose(r2.cubes["red"], clip["record"]["cubes"]["red"], atol=1e-6)


@pytest.mark.parametrize("name", ["freeze", "reverse", "teleport", "shuffle", "flicker"])
def test_degradation_lowers_primary(data, name):
    clip = _final_clip(data["test"]["lift"])
    base = _score(data["teacher"], clip)["scores"]
    dims = {"IF": IF, "MS": MS, "AOC": AOC, "TC": TC, "CR": CR, "PA": PA}
    worse = []
    for seed in range(3):
        d = degrade(clip, name, np.random.default_rng(seed))
        worse.append(_score(data["teacher"], d)["scores"][dims[EXPECTED[name][0]]])
    assert np.mean(worse) < base[dims[EXPECTED[name][0]]], (name, base, worse)


def test_wrong_instruction_gives_if_zero(data):
    clip = _final_clip(data["test"]["pick"])           # lifts the red cube
    wrong = degrade(clip, "wrong_instruction", np.random.default_rng(0))
    assert wrong["instruction"] == instruction_id("lift the green cube")
    out = _score(data["teacher"], wrong)
    assert out["scores"][IF] == 0, out["reasons"]
    assert any(r.startswith("IF:") for r in out["reasons"])


def test_deterministic(data):
    clip = _final_clip(data["test"]["pick"])
    a = _score(data["teacher"], clip)
    data["teacher"].clear_cache()
    b = data["teacher"].score_clip(clip)                # replayed in MuJoCo this time
    assert np.array_equal(a["scores"], b["scores"]) and np.array_equal(a["shaping"][:2], b["shaping"][:2])
    assert np.isclose(a["shaping"][2], b["shaping"][2], atol=1e-5)   # progress: recorded (float32) vs replayed R
    data["teacher"].clear_cache()
    assert np.array_equal(data["teacher"].score_clip(clip)["shaping"], b["shaping"])
    assert a["reasons"] == b["reasons"]
    batch = data["teacher"].score_clips([clip, clip])
    assert batch["scores"].shape == (2, 6) and batch["shaping"].shape == (2, 3) and len(batch["reasons"]) == 2


def test_malformed_clips_raise(data):
    clip = _final_clip(data["test"]["lift"])
    t = data["teacher"]
    with pytest.raises(ClipError, match="frames"):
        t.score_clip({**clip, "frames": clip["frames"][:, :32]})
    with pytest.raises(ClipError, match="actions"):
        t.score_clip({**clip, "actions": clip["actions"][:-1]})
    with pytest.raises(ClipError, match="instruction"):
        t.score_clip({**clip, "instruction": 17})
    with pytest.raises(ClipError, match="env_id"):
        t.score_clip({**clip, "env_id": "roboalign/Nope-v0"})
    with pytest.raises(ClipError, match="lacks"):
        t.score_clip({k: v for k, v in clip.items() if k != "start_state"})
    with pytest.raises(ClipError, match="uint8"):
        t.score_clip({**clip, "frames": clip["frames"].astype(np.float32)})


def test_degradations_change_only_what_they_claim(data):
    clip = _final_clip(data["test"]["pick"])
    partner = _final_clip(data["test"]["lift"])
    partner = {**partner, "env_id": clip["env_id"]}
    rng = np.random.default_rng(0)
    assert set(HELD_OUT) <= set(DEGRADATIONS) and set(EXPECTED) == set(DEGRADATIONS)
    for name in DEGRADATIONS:
        d = degrade(clip, name, rng, partner)
        assert d is not None, name
        same = [k for k in ("instruction", "start_state", "env_id", "stride")
                if not np.array_equal(np.asarray(d[k]), np.asarray(clip[k]))]
        if name == "wrong_instruction":
            assert same == ["instruction"] and np.array_equal(d["frames"], clip["frames"])
        else:
            assert same == [], (name, same)
        if name == "swap_actions":
            assert not np.array_equal(d["actions"], clip["actions"]) and np.array_equal(d["frames"], clip["frames"])
            assert "record" not in d
        else:
            assert np.array_equal(d["actions"], clip["actions"]), name
        if name in ("shuffle", "freeze", "reverse", "truncate"):  # frames reordered / repeated, never new ones
            orig = {f.tobytes() for f in clip["frames"]}
            assert all(f.tobytes() in orig for f in d["frames"]) and not np.array_equal(d["frames"], clip["frames"])
        if name in ("teleport", "vanish"):  # pixels change only near the cube (its mask, dilated / shifted)
            changed = (d["frames"] != clip["frames"]).any(-1)
            assert changed.any() and changed.mean() < 0.05 and not changed[0].any()
        if name == "flicker":
            assert np.array_equal(d["frames"][0], clip["frames"][0]) and not np.array_equal(d["frames"], clip["frames"])
    with pytest.raises(KeyError, match="unknown degradation"):
        degrade(clip, "melt", rng)


def test_bench_roundtrip(data, tmp_path):
    eps = [data["test"]["lift"], data["test"]["pick"]]
    rng = np.random.default_rng(0)
    real = [make_clip(e, s) for e in eps for s in cut_windows(e, 2, rng)]
    rows = label_clips(data["teacher"], real, "real", [""] * len(real))
    rows["split"] = ["train", "test"] * (len(real) // 2) + ["train"] * (len(real) % 2)
    write_bench(tmp_path / "b.h5", rows, {"config": {"x": 1}})
    b = load_bench(tmp_path / "b.h5")
    assert b["frames"].shape == (len(real), 9, 64, 64, 3) and b["scores"].shape == (len(real), 6)
    assert b["shaping"].shape == (len(real), 3) and b["actions"].shape == (len(real), 16, 4)
    assert not np.isnan(b["shaping"]).any()
    bad = label_clips(data["teacher"], [degrade(real[0], "freeze", rng)], "degraded", ["freeze"])
    assert np.isnan(bad["shaping"][:, 2]).all() and not np.isnan(bad["shaping"][:, :2]).any()
    test = load_bench(tmp_path / "b.h5", split="test")
    assert set(test["split"]) == {"test"}
    c = bench_clip(b, 0)
    assert np.array_equal(c["start_state"], real[0]["start_state"])
    data["teacher"].clear_cache()
    assert np.allclose(data["teacher"].score_clip(c)["scores"], b["scores"][0])
    with pytest.raises(KeyError, match="split"):
        load_bench(tmp_path / "b.h5", split="val")


def test_object_tracks_follow_the_clip_and_the_replay_and_belong_to_their_bench(data, tmp_path):
    from worldmodel.judge.bench import build_tracks, load_tracks, tracks_path
    from worldmodel.judge.teacher import TRACK_SLOTS

    t = data["teacher"]
    real = [_final_clip(data["test"]["lift"]), _final_clip(data["test"]["pick"])]
    rev = degrade(real[1], "reverse", np.random.default_rng(0))
    rows = label_clips(t, real + [rev], "real", ["", "", "reverse"])
    rows["split"] = ["train"] * 3
    write_bench(tmp_path / "b.h5", rows)
    t.save(tmp_path / "teacher.json")
    data["perception"].save(tmp_path / "perception.npz")
    with pytest.raises(FileNotFoundError, match="bench_tracks.py"):
        load_tracks(tmp_path / "b.h5")
    assert build_tracks(tmp_path / "b.h5", progress=False) == tracks_path(tmp_path / "b.h5")
    made = tracks_path(tmp_path / "b.h5").stat().st_mtime_ns
    build_tracks(tmp_path / "b.h5", progress=False)                   # finished: returned as it is
    assert tracks_path(tmp_path / "b.h5").stat().st_mtime_ns == made
    tr = load_tracks(tmp_path / "b.h5")
    x, r = tr["x"], tr["r"]
    assert x.shape == r.shape == (3, 9, len(TRACK_SLOTS), 2) and x.dtype == np.float32
    # Lift has no green cube; PickColor has both; the replay always places the gripper
    assert np.isnan(r[0, :, 2]).all() and not np.isnan(r[1]).any() and not np.isnan(r[:, :, 0]).any()
    # a real clip is where its replay is; a reversed clip shows the replay's frames backwards
    err = np.linalg.norm(x[1, :, 0] - r[1, :, 0], axis=-1)
    assert np.nanmax(err) < t.calib["tol_grip_px"], err
    assert np.nanmax(np.linalg.norm(x[2, ::-1] - r[1], axis=-1)) < t.calib["tol_grip_px"]
    fwd, back = (np.nanmax(np.linalg.norm(a[:, 1] - r[2, :, 1], axis=-1)) for a in (x[2], x[2, ::-1]))
    assert fwd > 2 * back and fwd > t.calib["tol_cube_px"], (fwd, back)      # the lifted red cube
    assert np.array_equal(load_tracks(tmp_path / "b.h5", [2])["x"], x[2:], equal_nan=True)
    # tracks of another build of the bench are refused
    write_bench(tmp_path / "b.h5", {k: v[:2] for k, v in rows.items()})
    with pytest.raises(ValueError, match="another version"):
        load_tracks(tmp_path / "b.h5")


def test_perturbed_action_clips_change_only_the_actions_and_drop_the_recorded_replay(data):
    from worldmodel.judge.bench import perturbed_action_clips

    e = data["test"]["lift"]
    real = [make_clip(e, s) for s in cut_windows(e, 2, np.random.default_rng(0))]
    out, names = perturbed_action_clips(real, [0.25, 1.0], np.random.default_rng(1))
    assert names == ["wm_a0.25", "wm_a1"] * len(real) and len(out) == 2 * len(real)
    for i, d in enumerate(out):
        src = real[i // 2]
        assert "record" not in d and "seg" not in d        # the teacher must replay the new actions
        assert np.array_equal(d["frames"], src["frames"]) and np.array_equal(d["start_state"], src["start_state"])
        assert d["actions"].shape == src["actions"].shape and np.abs(d["actions"]).max() <= 1.0
        assert not np.allclose(d["actions"], src["actions"])
        assert (d["episode"], d["start_step"]) == (src["episode"], src["start_step"])   # same group (shared start)
    small = np.abs(out[0]["actions"] - real[0]["actions"]).mean()
    large = np.abs(out[1]["actions"] - real[0]["actions"]).mean()
    assert small < large


def test_opposite_clips_relabel_the_same_frames_and_the_teacher_follows_the_cube(data):
    """``bench.wm_opposite``: a clip under the opposite instruction keeps its frames, actions and
    start; the teacher's instruction following drops for the cube that did not move. Lift clips
    (one instruction) are left out."""
    from worldmodel.judge.bench import opposite_clips

    pick, lift = _final_clip(data["test"]["pick"]), _final_clip(data["test"]["lift"])
    out, names = opposite_clips([pick, lift], ["wm_t1", "wm_t1"])
    assert names == ["wm_t1:opposite"] and len(out) == 1
    d = out[0]
    assert d["instruction"] == instruction_id("lift the green cube") and pick["instruction"] == instruction_id(
        "lift the red cube")
    for k in ("frames", "actions", "start_state"):
        assert np.array_equal(d[k], pick[k])
    own, opp = _score(data["teacher"], pick), _score(data["teacher"], d)
    assert own["true_stage"][0] == 3 and opp["true_stage"][0] == 0       # the red cube was lifted, not the green
    assert own["scores"][IF] > opp["scores"][IF]


@pytest.mark.parametrize("text", ["stack the red cube on the green cube", "stack the green cube on the red cube"])
def test_teacher_stages_a_stack_in_the_instructed_order_only(data, make_env, text):
    """On the replay of a scripted stack (colours swapped onto the other cube sizes), the
    instructed order reaches the top stage and the opposite order counts the wrong cube moved."""
    from worldmodel.judge.bench import opposite_clips

    env_id = "roboalign/Stack-v0"
    env = make_env(env_id)
    r = run_episode(env, ScriptedExpert(), 7, record=True, options={"instruction": text, "swap_colours": True})
    assert r.success
    ep = source_episode(r.episode, env_id, f"{env_id}:7", "test", True, instruction_id(text))
    clip = _final_clip(ep)
    (opp,), _ = opposite_clips([clip], ["real"])
    own_stage, opp_stage = (_score(data["teacher"], c)["true_stage"] for c in (clip, opp))
    assert own_stage[0] == 3 and opp_stage[0] == 0, (own_stage, opp_stage)


def test_bench_shard_key_ignores_the_preset_name():
    """Bench shards are reused across preset names with the same settings, rebuilt when a
    setting changes."""
    from experiments.build_bench import shard_config

    base = {"name": "default", "windows": 8, "wm_starts": 800}
    _, key = shard_config(base, 0, {"a": 1.0}, None)
    assert shard_config({**base, "name": "ranking"}, 0, {"a": 1.0}, None)[1] == key
    assert shard_config({**base, "windows": 4}, 0, {"a": 1.0}, None)[1] != key
    assert shard_config(base, 1, {"a": 1.0}, None)[1] != key
    assert "name" not in shard_config(base, 0, {"a": 1.0}, None)[0]["bench"]


def test_stability_noise_is_static_bounded_and_off_at_zero():
    """benchmarks/teacher_stability's perturbation: one pattern for every frame of a clip
    (no temporal change), within [-k, k], clipped to uint8; k = 0 leaves the clip alone."""
    from benchmarks.teacher_stability import noisy_frames

    rng = np.random.default_rng(0)
    frames = np.repeat(np.array([0, 128, 255], np.uint8)[None, :, None, None], 4, axis=0)
    frames = np.broadcast_to(frames, (4, 3, 8, 3)).copy()          # (T+1, H, W, 3)
    assert noisy_frames(frames, 0, rng) is frames
    out = noisy_frames(frames, 2, rng)
    assert out.dtype == np.uint8 and out.shape == frames.shape
    assert (np.diff(out.astype(int), axis=0) == 0).all()             # static: every frame the same
    d = out.astype(int) - frames
    assert np.abs(d).max() <= 2 and d.any()
    assert out[:, 0].max() <= 2 and out[:, 2].min() >= 253          # clipped at 0 and 255


def test_proprio_reads_the_lift_of_a_real_success_and_not_an_empty_close(data):
    """The proprio rule on recorded proprio: the scripted success's last window ends held
    and raised, its first window is not; the same raised end with the fingers shut on
    nothing (or the gripper commanded open) is no lift."""
    from worldmodel.judge.bench import clip_proprio
    from worldmodel.judge.proprio import proprio_lifted

    for name in ("lift", "pick"):
        ep = data["test"][name]
        end, start = _final_clip(ep), make_clip(ep, 0)
        assert proprio_lifted(clip_proprio(end), end["actions"][-1, 3])
        assert not proprio_lifted(clip_proprio(start), start["actions"][-1, 3])
        empty = clip_proprio(end).copy()
        empty[-1, 3] = 0.001                              # fingers shut on nothing
        assert not proprio_lifted(empty, end["actions"][-1, 3])
        assert not proprio_lifted(clip_proprio(end), -1.0)   # commanded open
    both = np.stack([clip_proprio(_final_clip(data["test"]["lift"])), clip_proprio(make_clip(data["test"]["lift"], 0))])
    assert proprio_lifted(both, np.array([1.0, 1.0])).tolist() == [True, False]
    with pytest.raises(ValueError, match="eef xyz, gripper opening"):
        proprio_lifted(np.zeros((5, 3)), 1.0)
    open_high = clip_proprio(make_clip(data["test"]["lift"], 0))
    assert open_high[-1, 3] > 0.07 and not proprio_lifted(open_high, 1.0)   # open, raised: no hold


def test_relabel_clips_label_the_same_frames_under_a_side_instruction(data, make_env):
    """``bench.wm_relabel``: a PickColor clip labelled under "lift the cube on the left/right"
    keeps its frames, actions and start; the teacher follows the cube on that side at the
    clip's start (the lifted red cube is on exactly one side). Lift clips (one cube) and
    scenes whose cubes are too close along the side axis are left out."""
    from envs.tasks import get_task
    from envs.vocab import SIDE_AXIS
    from worldmodel.judge.bench import relabel_clips

    # seed 7's cubes stand 7.6 cm apart along the side axis; the fixture's seed 6 only 0.7 cm
    pick = _final_clip(_episode(make_env(PICK), PICK, 7, "test", "lift the red cube"))
    lift, close = _final_clip(data["test"]["lift"]), _final_clip(data["test"]["pick"])
    sides = ["lift the cube on the left", "lift the cube on the right"]
    out, names = relabel_clips([pick, lift], ["wm_t1", "wm_t1"], sides)
    assert names == ["wm_t1:relabel"] * 2 and [d["instruction"] for d in out] == [instruction_id(t) for t in sides]
    for d in out:
        for k in ("frames", "actions", "start_state"):
            assert np.array_equal(d[k], pick[k])
    cubes = {c: p[0] for c, p in pick["record"]["cubes"].items()}
    red_side = "left" if cubes["red"][SIDE_AXIS] < cubes["green"][SIDE_AXIS] else "right"
    stage = {t: _score(data["teacher"], d)["true_stage"][0] for t, d in zip(sides, out)}
    assert stage[f"lift the cube on the {red_side}"] == 3 and sum(stage.values()) == 3
    # too close to call: the cubes less than PickSide's side margin apart along the side axis
    gap = np.diff([p[0][SIDE_AXIS] for p in close["record"]["cubes"].values()])[0]
    assert abs(gap) < get_task("PickSide").side_margin
    assert relabel_clips([close], ["wm_t1"], sides) == ([], [])
    # a clip is not relabelled under its own instruction
    assert relabel_clips([pick], ["wm_t1"], ["lift the red cube"]) == ([], [])
