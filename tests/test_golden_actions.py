"""The golden-action comparison that guards refactors of the agents can fail."""
from __future__ import annotations

from benchmarks.golden_actions import METHODS, compare


def test_compare_names_every_method_whose_actions_moved():
    base = {"mpc": [[[0.1, 0.2, 0.3, -1.0]]], "prior": [[[0.5, 0.5, 0.5, 1.0]]]}
    assert compare(base, base) == []
    moved = {"mpc": [[[0.1, 0.2, 0.3001, -1.0]]], "prior": base["prior"]}
    assert compare(base, moved) == ["mpc: actions differ"]
    shorter = {"mpc": [[]], "prior": base["prior"]}
    assert compare(base, shorter) == ["mpc: actions differ"]
    assert compare(base, {"mpc": base["mpc"]}) == ["prior: only in first"]


def test_golden_methods_are_registered():
    from experiments.closed_loop import methods

    assert set(METHODS) <= set(methods())
