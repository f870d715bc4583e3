"""benchmarks/grounding.py: pairs of a generation and its opposite-instruction relabel, and the
which-cube agreement."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.grounding import agreement, opposite_pairs, relabel_pairs


def _bench(degradations, sources=None):
    n = len(degradations)
    actions = np.zeros((n, 16, 4), np.float32)
    actions[:, 0, 0] = [i // 2 for i in range(n)]        # rows 2k and 2k+1 share their actions
    return {"degradation": np.array(degradations, dtype=object),
            "source": np.array(sources or ["generated"] * n, dtype=object),
            "episode": np.array(["f:demo_0"] * n, dtype=object), "start_step": np.zeros(n, np.int64),
            "actions": actions}


def test_opposite_pairs_match_each_relabel_to_its_own_generation():
    b = _bench(["wm_t1", "wm_t1:opposite", "wm_t0.5", "wm_t0.5:opposite"])
    own, opp = opposite_pairs(b)
    assert own.tolist() == [0, 2] and opp.tolist() == [1, 3]
    with pytest.raises(ValueError, match="wm_opposite"):
        opposite_pairs(_bench(["wm_t1", "wm_t1"]))


def test_agreement_counts_only_pairs_the_reference_orders():
    # reference: pair 0 own > opp, pair 1 own < opp, pair 2 tied (left out)
    ref_own, ref_opp = [3, 0, 1], [0, 2, 1]
    assert agreement([0.9, 0.1, 0.5], [0.1, 0.9, 0.2], ref_own, ref_opp) == (1.0, 2)
    assert agreement([0.9, 0.9, 0.5], [0.1, 0.1, 0.2], ref_own, ref_opp) == (0.5, 2)
    assert agreement([0.5, 0.5, 0.5], [0.5, 0.5, 0.5], ref_own, ref_opp) == (0.0, 2)   # a blind judge never agrees


def test_relabel_pairs_match_the_two_sides_of_one_generation():
    from envs.vocab import instruction_id

    left, right = instruction_id("lift the cube on the left"), instruction_id("lift the cube on the right")
    red = instruction_id("lift the red cube")
    b = _bench(["wm_t1:relabel", "wm_t1:relabel", "wm_t1", "wm_t1:relabel"])
    b["instruction"] = np.array([right, left, red, left], np.int64)
    b["actions"][3, 0, 0] = 7.0          # row 3: another generation, whose other side was too close to call
    a, c = relabel_pairs(b)
    assert a.tolist() == [1] and c.tolist() == [0]          # (left, right) of the first generation only
    assert relabel_pairs(_bench(["wm_t1"]) | {"instruction": np.array([red])})[0].size == 0


def test_agreed_marks_each_ordered_pair_for_a_paired_test():
    from benchmarks.grounding import agreed

    # reference orders pairs 0, 1 (pair 2 tied, left out); the judge agrees on pair 0 only
    assert agreed([0.9, 0.9, 0.5], [0.1, 0.1, 0.2], [3, 0, 1], [0, 2, 1]).tolist() == [True, False]
