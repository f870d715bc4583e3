"""Shared training loop: exact resume, finished runs, JSONL metrics, checkpoint errors,
and a 2-process gloo DDP run of the tokenizer entry point under torchrun."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from envs.rollouts import RolloutWriter
from tests.conftest import ROOT
from worldmodel.training import (
    CheckpointError,
    JsonlLogger,
    autocast,
    load_checkpoint,
    pick_device,
    save_checkpoint,
    setup_distributed,
    train,
)

CONFIG = {"model": {"width": 8}, "lr": 0.01}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Interrupt(Exception):
    pass


def _make_batches(stop_after: int | None = None):
    """Batch ``s`` is a function of ``s`` only; optionally 'crash' after ``stop_after`` batches."""
    def batches(start: int):
        for n, step in enumerate(range(start, 10**9)):
            if stop_after is not None and n == stop_after:
                raise Interrupt
            g = torch.Generator().manual_seed(step)
            x = torch.randn(16, 4, generator=g)
            yield x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return batches


def _loss(model, batch):
    x, y = batch
    loss = ((model(x) - y) ** 2).mean()
    return loss, {"mse": loss.detach()}


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 1))


def _train(out_dir, make_batches, steps=6, **kw):
    kw = {"lr": 0.01, "kind": "toy", "config": CONFIG, "warmup": 2, "ckpt_every": 3, "log_every": 2,
          "progress": False, **kw}
    return train(_model(), make_batches, _loss, steps=steps, out_dir=out_dir, **kw)


def test_resume_is_exact(tmp_path):
    straight = _train(tmp_path / "a", _make_batches())
    with pytest.raises(Interrupt):   # crash after 4 batches; last.pt holds step 3
        _train(tmp_path / "b", _make_batches(stop_after=4))
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 3
    resumed = _train(tmp_path / "b", _make_batches())   # the same command again
    for p, q in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(p, q)
    a, b = (load_checkpoint(tmp_path / d / "last.pt", kind="toy", config=CONFIG) for d in "ab")
    assert a["step"] == b["step"] == 6
    assert a["extra"]["scheduler"] == b["extra"]["scheduler"]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k


def test_finished_run_returns_immediately(tmp_path):
    first = _train(tmp_path, _make_batches(), eval_fn=lambda m: {"score": 1.0}, eval_every=3)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    again = _train(tmp_path, _make_batches(stop_after=0))   # would raise if it drew a batch
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == lines
    for p, q in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(p, q)


def test_jsonl_metrics(tmp_path):
    _train(tmp_path, _make_batches(), eval_fn=lambda m: {"score": 0.5}, eval_every=3)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/loss" in r]
    eval_rows = [r for r in rows if "eval/score" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6]
    assert [r["step"] for r in eval_rows] == [3, 6]
    for r in train_rows:
        assert {"train/loss", "train/mse", "train/lr", "train/grad_norm", "train/step_s"} <= set(r)
        assert np.isfinite(r["train/loss"]) and r["train/lr"] > 0
    assert eval_rows[-1]["eval/score"] == 0.5
    assert load_checkpoint(tmp_path / "last.pt")["metrics"] == {"eval/score": 0.5}
    off = JsonlLogger(tmp_path / "off.jsonl", enabled=False)
    off.log(1, x=1.0)
    assert not (tmp_path / "off.jsonl").exists()


def test_loss_decreases(tmp_path):
    _train(tmp_path, _make_batches(), steps=60, lr=0.02, log_every=10)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train/loss"] < 0.5 * rows[0]["train/loss"]


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*train_tokenizer.py"):
        load_checkpoint(tmp_path / "nope.pt", kind="tokenizer")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    path = save_checkpoint(tmp_path / "dyn.pt", kind="dynamics", config=CONFIG, model=_model(), step=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "dyn.pt"]   # no temp file left
    with pytest.raises(CheckpointError, match="this is a 'dynamics' checkpoint, expected 'tokenizer'"):
        load_checkpoint(path, kind="tokenizer")
    other = {"model": {"width": 16}, "lr": 0.01, "extra_key": 1}
    with pytest.raises(CheckpointError, match=r"(?s)different config.*extra_key.*model\.width: checkpoint 8, now 16"
                                               r".*new out_dir"):
        load_checkpoint(path, kind="dynamics", config=other)
    ckpt = load_checkpoint(path, kind="dynamics", config={"lr": 0.01, "model": {"width": 8}})
    assert ckpt["step"] == 5 and ckpt["format_version"] == 1 and "torch" in ckpt["versions"]
    run_dir = tmp_path / "run"   # resuming a run dir whose last.pt has another config refuses too
    run_dir.mkdir()
    os.replace(path, run_dir / "last.pt")
    with pytest.raises(CheckpointError, match="different config"):
        train(_model(), _make_batches(), _loss, steps=6, lr=0.01, out_dir=run_dir, kind="dynamics",
              config=other, progress=False)


def test_device_autocast_and_single_process():
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    with autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), enabled=False):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    if "RANK" not in os.environ:
        d = setup_distributed()
        assert (d.rank, d.world_size, d.is_main) == (0, 1, True)


# ----------------------------------------------------------------------------- DDP
def write_synthetic_rollouts(path, episodes=2, steps=12, seed=0):
    """A small rollout file in the real layout with random frames and masks (no simulator)."""
    rng = np.random.default_rng(seed)
    writer = RolloutWriter(path, env_args={"env_id": "synthetic"})
    for _ in range(episodes):
        img = rng.integers(0, 256, (steps + 1, 64, 64, 3), dtype=np.uint8)
        seg = rng.integers(0, 4, (steps + 1, 64, 64), dtype=np.uint8)
        writer.add({"actions": rng.uniform(-1, 1, (steps, 4)).astype(np.float32),
                    "states": np.zeros((steps, 3)), "rewards": np.zeros(steps, np.float32),
                    "dones": np.zeros(steps, np.uint8),
                    "obs": {"image": img[:-1], "segmentation": seg[:-1]},
                    "next_obs": {"image": img[1:], "segmentation": seg[1:]}}, seed=0, success=False)
    writer.close()
    return path


def test_torchrun_ddp_tokenizer(tmp_path):
    """Two gloo processes train the tiny tokenizer preset; rank 0 writes last.pt."""
    data = write_synthetic_rollouts(tmp_path / "synthetic_train.hdf5")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(ROOT / "experiments" / "train_tokenizer.py"), "tokenizer=tiny", f"data.train=[{data}]",
           f"data.val=[{data}]", f"out_dir={out}", f"artifacts={tmp_path / 'artifacts'}", "data.val_pairs=16",
           "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "last.pt", kind="tokenizer")
    assert ckpt["step"] == 4 and "eval/ctx_psnr" in ckpt["metrics"]
    assert ckpt["config"]["train"]["batch_size"] == 4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]   # main rank logs once
