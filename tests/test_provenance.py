"""benchmarks/provenance.py: which instruction labelled which data, read from the artifacts."""
from __future__ import annotations

import json
from collections import Counter

import h5py
import numpy as np

from benchmarks.provenance import POOLED, bench_rows, prior_rows, table
from envs.vocab import instruction_id

RED, GREEN, LEFT = (instruction_id(t) for t in ("lift the red cube", "lift the green cube", "lift the cube on the left"))


def _prior(tmp_path, name, instruction_input, only_success=True):
    d = tmp_path / name
    d.mkdir()
    cfg = {"prior": {"model": {"instruction_input": instruction_input}, "train": {"only_success": only_success}}}
    (d / "stage.json").write_text(json.dumps({"config": cfg}))
    return d


def test_priors_count_their_training_episodes_and_a_play_prior_pools_them(tmp_path):
    rollouts = {"train": Counter({RED: 5, GREEN: 4}), "val": Counter({RED: 1}), "train_success": Counter({RED: 3, GREEN: 2})}
    assert prior_rows(_prior(tmp_path, "a", True), rollouts) == {RED: 3, GREEN: 2}
    assert prior_rows(_prior(tmp_path, "b", True, only_success=False), rollouts) == {RED: 5, GREEN: 4}
    assert prior_rows(_prior(tmp_path, "c", False), rollouts) == {POOLED: 5}


def test_bench_rows_split_relabelled_generations_from_the_rest(tmp_path):
    path = tmp_path / "bench.h5"
    rows = [("real", "", RED, "train"), ("generated", "wm_t1", RED, "train"), ("generated", "wm_t1:relabel", LEFT, "train"),
            ("generated", "wm_t1:opposite", GREEN, "train"), ("generated", "wm_t1:relabel", LEFT, "test")]
    with h5py.File(path, "w") as f:
        for k, i in (("source", 0), ("degradation", 1), ("split", 3)):
            f[k] = np.array([r[i] for r in rows], dtype=h5py.string_dtype())
        f["instruction"] = np.array([r[2] for r in rows], np.int64)
    train = bench_rows(path)
    assert train == {"real": Counter({RED: 1}), "generated": Counter({RED: 1}),
                     "relabelled": Counter({LEFT: 1, GREEN: 1})}
    assert bench_rows(path, ("train", "test"))["relabelled"][LEFT] == 2
    text = table({"train": Counter({RED: 2}), "val": Counter()}, {"play": {POOLED: 2}}, train, train)
    left = next(line for line in text.splitlines() if line.startswith("| lift the cube on the left"))
    # the zero-shot instruction: no rollouts, no prior rows; bench and student rows only
    assert left.split("|")[2:5] == [" 0 ", " 0 ", " 0 "] and left.rstrip(" |").endswith("1")
