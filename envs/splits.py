"""Disjoint seed ranges for train / validation / test data, enforced in code.

Every seed used to reset an environment for data or evaluation comes from
:func:`split_seeds`, so a test seed can never end up in training data.
"""
from __future__ import annotations

SPLITS: dict[str, range] = {
    "train": range(0, 1_000_000),
    "val": range(1_000_000, 1_100_000),
    "test": range(2_000_000, 2_100_000),
}


def split_seeds(split: str, n: int, start: int = 0) -> list[int]:
    """``n`` consecutive seeds of ``split`` beginning at offset ``start`` in its range."""
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; known: {sorted(SPLITS)}")
    r = SPLITS[split]
    if n < 0 or start < 0 or start + n > len(r):
        raise ValueError(f"split {split!r} holds {len(r)} seeds; asked for [{start}, {start + n})")
    return list(r[start:start + n])


def split_of(seed: int) -> str:
    """Which split a seed belongs to; raises if it belongs to none."""
    for name, r in SPLITS.items():
        if seed in r:
            return name
    raise ValueError(f"seed {seed} lies in no split ({ {k: (v.start, v.stop) for k, v in SPLITS.items()} })")


def check_disjoint(seeds_by_split: dict[str, list[int]]) -> None:
    """Raise if any seed is listed under a split it does not belong to."""
    for split, seeds in seeds_by_split.items():
        bad = [s for s in seeds if split_of(s) != split]
        if bad:
            raise ValueError(f"seeds {bad[:5]} are not in split {split!r}")
