"""The student-comparison benchmark's pair bookkeeping (benchmarks/student_ranking.py)."""
import numpy as np
import pytest

from benchmarks.student_ranking import (from_rollouts, gap_accuracy, generation_pairs, pair_accuracy,
                                        paired_difference, tc_checks)


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
