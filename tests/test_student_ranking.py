"""The student-comparison benchmark's pair bookkeeping (benchmarks/student_ranking.py)."""
import numpy as np
import pytest
import torch

from benchmarks.student_ranking import (
    from_rollouts,
    gap_accuracy,
    generation_pairs,
    pair_accuracy,
    paired_difference,
    tc_checks,
)


def _data():
    # two starts; start 0: three temperature samples + two perturbed-action futures, start 1:
    # two temperature samples; a real clip and a degraded one of start 0 are not generations
    source = ["generated"] * 7 + ["real", "degraded"]
    degradation = ["wm_t0.5", "wm_t1", "wm_t1.5", "wm_a0.5", "wm_a1", "wm_t0.5", "wm_t1", "", "shuffle"]
    episode = ["a", "a", "a", "a", "a", "b", "b", "a", "a"]
    start_step = [4, 4, 4, 4, 4, 8, 8, 4, 4]
    return {"source": np.array(source), "degradation": np.array(degradation),
            "episode": np.array(episode), "start_step": np.array(start_step)}


def test_generation_pairs_by_start_and_kind():
    pairs, start, kind = generation_pairs(_data())
    assert len(pairs) == 10 + 1                                   # C(5, 2) + C(2, 2); real/degraded left out
    assert (pairs < 7).all() and (pairs[:, 0] < pairs[:, 1]).all()
    assert len(np.unique(start)) == 2
    assert sorted(np.unique(kind, return_counts=True)[1].tolist()) == [1, 4, 6]   # actions, temperature, mixed
    assert (kind == "actions").sum() == 1 and (kind == "temperature").sum() == 3 + 1


def test_pair_accuracy_leaves_teacher_ties_out_and_counts_predicted_ties_half():
    pairs, start, _ = generation_pairs(_data())
    true = np.array([1.0, 2, 3, 4, 5, 1, 1, 0, 0])               # start 1's pair is a teacher tie
    assert pair_accuracy(true * 3, true, pairs, start)["acc"] == 1.0
    rev = pair_accuracy(-true, true, pairs, start, boot=200)
    assert rev["acc"] == 0.0 and rev["pairs"] == 10 and rev["ci"] == (0.0, 0.0)
    assert pair_accuracy(np.zeros(9), true, pairs, start)["acc"] == 0.5
    d = paired_difference(true, -true, true, pairs, start, boot=200)
    assert d["diff"] == 1.0 and d["ci"] == (1.0, 1.0)


def test_gap_accuracy_splits_pairs_by_the_teachers_gap():
    pairs, _, _ = generation_pairs(_data())
    groups = np.array(["a4", "a4", "a4", "a4", "a4", "b8", "b8"])   # the generations' starts in _data()
    true = np.array([1.0, 1.2, 2.0, 4.0, 4.1, 1, 1])           # start b8's pair is a teacher tie
    # start 0's gaps: 0.2, 0.1 | 1.0, 0.8 | 3.0, 3.1, 2.8, 2.9, 2.0, 2.1
    pred = true.copy()
    pred[1] = 0.0                                              # now below clip 0: flips only pair (0, 1), gap 0.2
    (a1, n1), (a2, n2), (a3, n3) = gap_accuracy(pred, true, groups)
    assert (n1, n2, n3) == (2, 2, 6)
    assert (a1, a2, a3) == (0.5, 1.0, 1.0)
    assert [a for a, _ in gap_accuracy(-true, true, groups)] == [0.0, 0.0, 0.0]
    # the bands cover exactly the non-tied pairs pair_accuracy counts
    assert n1 + n2 + n3 == pair_accuracy(pred, true, pairs, np.zeros(len(pairs)))["pairs"] == 10


def test_tc_checks_name_what_fired_on_the_lower_clip():
    scores = np.zeros((4, 6), np.float32)
    scores[:, 3] = [1.0, 0.5, 0.8, 0.5]                        # TC
    reasons = np.array(["", "TC:order;AOC:track_mismatch:3", "TC:flicker;TC:order", "PA:jump"], dtype=object)
    pairs = np.array([[0, 1], [2, 0], [1, 2], [0, 3]])
    assert tc_checks(reasons, scores, pairs).tolist() == ["order", "flicker+order", "order", ""]


def test_from_rollouts_keeps_the_clips_of_the_named_rollout_files():
    raw = {"episode": np.array(["lift_val_0_16:demo_1", "lift_val_16_32:demo_0", "lift_val_0_16:demo_2"], dtype=object),
           "frames": np.arange(3 * 2).reshape(3, 2), "attrs": {"teacher": "9"}}
    kept = from_rollouts(raw, ["lift_val_0_16"])
    assert kept["episode"].tolist() == ["lift_val_0_16:demo_1", "lift_val_0_16:demo_2"]
    assert kept["frames"].tolist() == [[0, 1], [4, 5]] and kept["attrs"] == {"teacher": "9"}
    assert from_rollouts(raw, None) is raw
    with pytest.raises(ValueError, match="lift_val_16_32"):
        from_rollouts(raw, ["lift_train_0_100"])


def test_mirror_flips_the_image_width_and_the_y_actions_only():
    from worldmodel.judge.distill import mirror

    rng = np.random.default_rng(0)
    hwc = torch.as_tensor(rng.integers(0, 256, (2, 3, 64, 64, 3), dtype=np.uint8))
    chw = hwc.permute(0, 1, 4, 2, 3).float() / 255
    act = torch.as_tensor(rng.normal(size=(2, 6, 4)).astype(np.float32))
    hwc0, act0 = hwc.clone(), act.clone()
    m_hwc, m_act = mirror(hwc, act)
    assert torch.equal(hwc, hwc0) and torch.equal(act, act0)             # inputs untouched
    assert torch.equal(m_hwc[:, :, :, 0], hwc[:, :, :, -1])             # column 0 <- column 63, rows kept
    assert torch.equal(mirror(chw)[0], m_hwc.permute(0, 1, 4, 2, 3).float() / 255)   # both layouts agree
    assert mirror(chw)[1] is None
    assert torch.equal(m_act[..., 1], -act[..., 1])
    assert torch.equal(m_act[..., [0, 2, 3]], act[..., [0, 2, 3]])
    assert torch.equal(mirror(m_hwc, m_act)[0], hwc) and torch.equal(mirror(m_hwc, m_act)[1], act)
    assert not torch.equal(m_hwc, hwc)
    with pytest.raises(ValueError, match="mirror wants clips"):
        mirror(hwc[0])                                                   # one clip, no batch axis


def test_mirror_average_is_the_mean_of_the_clip_and_its_mirror():
    from benchmarks.student_ranking import MirrorAverage
    from worldmodel.judge.distill import mirror
    from worldmodel.judge.student import StudentConfig, StudentReward

    torch.manual_seed(0)
    st = StudentReward(StudentConfig(channels=8, hidden=32, embed=8, actions=True)).eval()
    torch.nn.init.normal_(st.act_proj.weight)                          # zero-initialised: make actions matter
    rng = np.random.default_rng(1)
    frames = torch.as_tensor(rng.integers(0, 256, (3, 4, 64, 64, 3), dtype=np.uint8))
    act = torch.as_tensor(rng.normal(size=(3, 6, 4)).astype(np.float32))   # T = 3 steps, stride 2
    avg = MirrorAverage(st).score(frames, [0, 1, 0], actions=act, amp=False)["total"]
    plain = st.score(frames, [0, 1, 0], actions=act, amp=False)["total"]
    m_frames, m_act = mirror(frames, act)
    mirrored = st.score(m_frames, [0, 1, 0], actions=m_act, amp=False)["total"]
    assert torch.allclose(avg, (plain + mirrored) / 2, atol=1e-6)
    assert not torch.allclose(plain, mirrored, atol=1e-4)              # an untrained net is not mirror-symmetric
    sym = torch.cat([frames[:, :, :, :32], frames[:, :, :, :32].flip(-2)], dim=3)   # a left-right symmetric clip
    still = act.clone()
    still[..., 1] = 0
    assert torch.allclose(MirrorAverage(st).score(sym, 0, actions=still, amp=False)["total"],
                          st.score(sym, 0, actions=still, amp=False)["total"], atol=1e-5)


def test_flip_training_batches_mirror_frames_and_actions_together():
    from worldmodel.judge.distill import _stream, mirror

    rng = np.random.default_rng(2)
    n = 16
    data = {"frames": torch.as_tensor(rng.integers(0, 256, (n, 3, 64, 64, 3), dtype=np.uint8)),
            "instruction": torch.zeros(n, dtype=torch.long), "scores": torch.rand(n, 6),
            "actions": torch.as_tensor(rng.normal(size=(n, 4, 4)).astype(np.float32))}
    stored, stored_actions = data["frames"].clone(), data["actions"].clone()
    plain = next(_stream(data, 32, seed=0, device="cpu"))
    flipped = next(_stream(data, 32, seed=0, device="cpu", flip=True))   # same rows: idx is drawn first
    m_frames, m_act = mirror(plain["frames"], plain["actions"])
    was_mirrored = (flipped["frames"] == m_frames).flatten(1).all(1)
    kept = (flipped["frames"] == plain["frames"]).flatten(1).all(1)
    assert (was_mirrored ^ kept).all() and 0 < was_mirrored.sum() < 32
    assert torch.equal(flipped["actions"][was_mirrored], m_act[was_mirrored])
    assert torch.equal(flipped["actions"][kept], plain["actions"][kept])
    assert torch.equal(flipped["scores"], plain["scores"])                 # labels kept
    assert torch.equal(data["frames"], stored) and torch.equal(data["actions"], stored_actions)   # data not flipped
