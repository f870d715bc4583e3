"""The imagined-vs-real gap (agent/gap.py): which clips reach the teacher, and how its
verdicts are counted."""
from __future__ import annotations

import numpy as np
import pytest

from agent.gap import imagination_gap, summarize_gap


class StubTeacher:
    """Returns the given shown stages (IF) and true stages; records the clips it saw."""

    def __init__(self, shown, true, aoc):
        self.shown, self.true, self.aoc, self.clips = shown, true, aoc, []

    def score_clips(self, clips):
        self.clips += list(clips)
        n = len(clips)
        scores = np.zeros((n, 6), np.float32)
        scores[:, 0], scores[:, 2] = self.shown[:n], self.aoc[:n]
        return {"scores": scores, "shaping": np.zeros((n, 3), np.float32), "reasons": [[]] * n,
                "true_stage": np.stack([self.true[:n], np.zeros(n, int)], 1)}


def _episode(replan_steps, horizon=4, repeat=2):
    states = [np.full(5, t, np.float64) for t in range(20)]          # state t = value t
    imagined = [(s, np.full((horizon + 1, 64, 64, 3), s, np.uint8)) for s in replan_steps]
    plans = [np.full((horizon * repeat, 4), s / 100, np.float32) for s in replan_steps]
    return states, imagined, plans


def test_gap_hands_the_teacher_each_executed_plan_from_its_own_start_state():
    states, imagined, plans = _episode([0, 2, 4])
    t = StubTeacher(np.array([1, 2, 0]), np.array([1, 1, 1]), np.array([1.0, 0.5, 0.0]))
    g = imagination_gap(t, "roboalign/Lift-v0", 0, states, imagined, plans, repeat=2)
    assert [int(c["start_state"][0]) for c in t.clips] == [0, 2, 4]     # the state at the replan step
    for clip, (_, frames), plan in zip(t.clips, imagined, plans):
        assert clip["frames"] is frames and np.array_equal(clip["actions"], plan)
        assert clip["stride"] == 2 and clip["env_id"] == "roboalign/Lift-v0" and clip["instruction"] == 0
    conf = g.pop("confusion")
    assert g == {"replans": 3, "disagree": 2, "optimistic": 1, "pessimistic": 1, "aoc_sum": 1.5}
    assert conf[1] == [1, 1, 1, 0] and sum(map(sum, conf)) == 3       # [true][shown]


def test_gap_summary_pools_replans_and_skips_unmeasured_episodes():
    a = {"replans": 3, "disagree": 2, "optimistic": 1, "pessimistic": 1, "aoc_sum": 1.5}
    b = {"replans": 1, "disagree": 0, "optimistic": 0, "pessimistic": 0, "aoc_sum": 1.0}
    s = summarize_gap([a, {}, b])
    assert s["episodes"] == 2 and s["replans"] == 4
    assert s["disagree_rate"] == pytest.approx(0.5) and s["optimistic_rate"] == pytest.approx(0.25)
    assert s["aoc_mean"] == pytest.approx(2.5 / 4)
    assert s["confusion"] is None                      # episodes without a confusion matrix
    c = [[0] * 4 for _ in range(4)]
    c[2][1] = 3
    assert summarize_gap([{**a, "confusion": c}, {**b, "confusion": c}])["confusion"][2][1] == 6
    assert summarize_gap([{}, {}]) is None


def test_gap_rejects_mismatched_logs():
    states, imagined, plans = _episode([0, 2])
    with pytest.raises(ValueError, match="2 imagined clips but 1 plans"):
        imagination_gap(StubTeacher(*[np.zeros(2)] * 3), "roboalign/Lift-v0", 0, states, imagined, plans[:1], 2)
