"""World-model facade: SWR segmentation and bounded context, checkpoints, errors, evaluation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from worldmodel.tokenizer import DualFSQTokenizer, TokenizerConfig
from worldmodel.training import CheckpointError
from worldmodel.world_model import WorldModel, group_actions

TOK = TokenizerConfig(channels=16, latent_dim=16, ctx_levels=(5, 5, 5), dyn_levels=(5, 5, 5))
DYN = {"d_model": 32, "n_layers": 1, "n_heads": 2}


@pytest.fixture(scope="module")
def wm():
    torch.manual_seed(0)
    return WorldModel.build(DualFSQTokenizer(TOK), DYN, action_repeat=2, window=3).eval()


def _inputs(b=2, t=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, 64, 64, generator=g), torch.rand(b, t, 8, generator=g) * 2 - 1


def test_swr_segments_and_bounded_context(wm):
    frames, actions = _inputs(t=7)
    blk = 1 + wm.dynamics.cfg.n_dyn
    roll = wm.rollout(frames, actions, mode="swr")
    assert roll.frames.shape == (2, 7, 3, 64, 64) and roll.tokens.shape == (2, 7, wm.dynamics.cfg.n_dyn)
    assert [(s.start, s.stop) for s in roll.segments] == [(0, 3), (3, 6), (6, 7)]
    assert roll.peak_cache_len == wm.dynamics.cfg.n_ctx + 3 * blk          # O(W), not O(T)
    full = wm.rollout(frames, actions, mode="full")
    assert len(full.segments) == 1 and full.peak_cache_len == wm.dynamics.cfg.n_ctx + 7 * blk
    naive = wm.rollout(frames, actions, mode="naive")
    assert naive.peak_cache_len <= wm.dynamics.cfg.n_ctx + 3 * blk
    assert 0.0 <= float(roll.frames.min()) and float(roll.frames.max()) <= 1.0


def test_swr_reencodes_the_last_predicted_frame(wm):
    frames, actions = _inputs(t=6)
    roll = wm.rollout(frames, actions, mode="swr")
    ctx, prev = wm.encode(roll.frames[:, 2])            # last frame of the first segment
    assert torch.equal(roll.segments[1].ctx, ctx) and torch.equal(roll.segments[1].prev0, prev)


def test_greedy_rollout_is_deterministic_and_sampling_follows_the_generator(wm):
    frames, actions = _inputs()
    a = wm.rollout(frames, actions, temperature=0.0).tokens
    assert torch.equal(a, wm.rollout(frames, actions, temperature=0.0).tokens)
    s1 = wm.rollout(frames, actions, temperature=1.0, generator=torch.Generator().manual_seed(1)).tokens
    s2 = wm.rollout(frames, actions, temperature=1.0, generator=torch.Generator().manual_seed(1)).tokens
    assert torch.equal(s1, s2)


def test_pixel_context_rollout_decodes_on_the_segment_start_frames():
    """A ``pixel_context`` tokenizer: each segment's frames are a change on top of the
    segment's start frame (the real one first, then the re-encoded prediction), so an
    untrained decoder reproduces the start frame exactly through the whole rollout."""
    torch.manual_seed(0)
    wm = WorldModel.build(DualFSQTokenizer(TokenizerConfig(**{**TOK.__dict__, "pixel_context": True})), DYN,
                          action_repeat=2, window=3).eval()
    frames, actions = _inputs(t=5)
    for start in (frames, frames[:1]):      # per-clip start frames, and one shared start frame
        roll = wm.rollout(start, actions, mode="swr")
        expect = start.expand(2, -1, -1, -1)[:, None].expand(2, 5, -1, -1, -1)
        torch.testing.assert_close(roll.frames, expect, atol=1e-6, rtol=0)


def test_log_prob_over_segments_has_gradient(wm):
    frames, actions = _inputs(t=5)
    roll = wm.rollout(frames, actions, temperature=1.0, generator=torch.Generator().manual_seed(0))
    lp = wm.log_prob(roll, actions)
    assert lp.shape == (2,) and torch.all(torch.isfinite(lp)) and torch.all(lp < 0)
    lp.sum().backward()
    assert wm.dynamics.head.weight.grad is not None
    wm.dynamics.zero_grad(set_to_none=True)


def test_checkpoint_round_trip_reproduces_rollouts(wm, tmp_path):
    path = wm.save(tmp_path / "wm.pt", metrics={"ce": 1.0}, upstream={"tokenizer": "abc"})
    wm2 = WorldModel.from_checkpoint(path)
    frames, actions = _inputs()
    assert torch.equal(wm.rollout(frames, actions, temperature=0.0).frames,
                       wm2.rollout(frames, actions, temperature=0.0).frames)
    assert wm2.window == 3 and wm2.action_repeat == 2


def test_clear_errors(wm, tmp_path):
    frames, actions = _inputs()
    with pytest.raises(ValueError, match=r"actions must be \(B, T, 8\)"):
        wm.rollout(frames, actions[..., :4])
    with pytest.raises(ValueError, match=r"\(B,3,64,64\)"):
        wm.rollout(torch.rand(2, 3, 32, 32), actions)
    with pytest.raises(ValueError, match="unknown rollout mode"):
        wm.rollout(frames, actions, mode="teleport")
    with pytest.raises(ValueError, match="do not split"):
        group_actions(torch.zeros(1, 5, 4), 2)
    tok_path = DualFSQTokenizer(TOK).save(tmp_path / "tok.pt")
    with pytest.raises(CheckpointError, match="expected 'worldmodel'"):
        WorldModel.from_checkpoint(tok_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        WorldModel.from_checkpoint(tmp_path / "missing.pt")


def test_open_loop_metrics_on_a_recorded_episode(wm, tmp_path):
    from agent.collect import collect
    from worldmodel.evaluate import frame_metrics, load_episodes, open_loop, region_mask

    path = tmp_path / "r.hdf5"
    collect("roboalign/Lift-v0", "scripted", 1, path, split="val", workers=1, progress=False)
    eps = load_episodes([path])
    r = open_loop(wm, eps, horizon=4, every=16)
    assert r["clips"] >= 2 and len(r["model"]["psnr"]) == 4
    # the copy-last baseline is exact at no step once the arm moves, and the identity is perfect
    real = torch.rand(1, 2, 3, 64, 64)
    mask = region_mask(torch.ones(1, 2, 64, 64, dtype=torch.uint8))
    same = frame_metrics(real, real, mask)
    assert torch.all(same["ssim"] > 0.999) and torch.all(same["region_mse"] == 0)
    assert np.all(np.isfinite(r["copy_last"]["psnr"]))


def test_tokenized_windows_match_direct_encoding_and_are_cached(wm, tmp_path):
    from agent.collect import collect
    from worldmodel.data import RolloutWindows
    from worldmodel.tokens import cached_tokens

    path = tmp_path / "r.hdf5"
    collect("roboalign/Lift-v0", "random", 1, path, split="val", workers=1, progress=False)
    data = cached_tokens(wm.tokenizer, "h", [path], window=3, action_repeat=2, stride=20, cache_dir=tmp_path / "c")
    windows = RolloutWindows([path], window=3, action_repeat=2, stride=20)
    assert len(data["ctx"]) == len(windows) and data["tokens"].shape[1:] == (3, wm.dynamics.cfg.n_dyn)
    item = windows[1]
    frames = item["frames"].float() / 255
    ctx = wm.tokenizer.encode_context(frames[:1])
    assert torch.equal(data["ctx"][1], ctx[0])
    dyn = wm.tokenizer.encode_dynamics(frames, ctx.expand(4, -1))
    assert torch.equal(data["prev0"][1], dyn[0]) and torch.equal(data["tokens"][1], dyn[1:])
    assert torch.equal(data["actions"][1], item["actions"])
    assert len(list((tmp_path / "c").glob("tokens_*.pt"))) == 1
    again = cached_tokens(wm.tokenizer, "h", [path], window=3, action_repeat=2, stride=20, cache_dir=tmp_path / "c")
    assert torch.equal(again["tokens"], data["tokens"])


@pytest.mark.slow
def test_train_worldmodel_runs_under_torchrun_with_two_processes(wm, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from agent.collect import collect

    root = Path(__file__).resolve().parents[1]
    for split in ("train", "val"):
        collect("roboalign/Lift-v0", "random", 1, tmp_path / "rollouts" / f"lift_random_{split}_0_1.hdf5",
                split=split, workers=1, progress=False)
    wm.tokenizer.save(tmp_path / "tok.pt")
    import socket

    with socket.socket() as sock:  # a free port, so parallel runs do not collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(root / "experiments" / "train_worldmodel.py"), "dynamics=tiny", f"artifacts={tmp_path}",
           f"tokenizer_ckpt={tmp_path / 'tok.pt'}"]
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "worldmodel" / "tiny" / "worldmodel.pt").exists()
    assert WorldModel.from_checkpoint(tmp_path / "worldmodel" / "tiny" / "worldmodel.pt").window == 6


def test_rollout_shares_one_start_frame_across_candidates(wm):
    """One start frame with B action sequences == the frame repeated B times."""
    frames = torch.rand(1, 3, 64, 64)
    actions = torch.rand(3, 7, wm.dynamics.cfg.action_dim) * 2 - 1
    shared = wm.rollout(frames, actions, mode="swr", window=3, temperature=0)
    repeated = wm.rollout(frames.expand(3, -1, -1, -1), actions, mode="swr", window=3, temperature=0)
    assert torch.equal(shared.tokens, repeated.tokens)
    torch.testing.assert_close(shared.frames, repeated.frames)


def test_fine_tuning_init_loads_dynamics_and_rejects_another_model(wm, tmp_path):
    """train_worldmodel.py init_ckpt=...: the flywheel continues a model's dynamics."""
    from experiments.train_worldmodel import _init_from

    wm.save(tmp_path / "wm.pt")
    torch.manual_seed(1)
    fresh = WorldModel.build(wm.tokenizer, DYN, action_repeat=2, window=3)
    assert _init_from(fresh, None, "h") is None
    digest = _init_from(fresh, tmp_path / "wm.pt", "h")
    assert isinstance(digest, str) and len(digest) >= 12
    for a, b in zip(fresh.dynamics.state_dict().values(), wm.dynamics.state_dict().values()):
        assert torch.equal(a, b)
    wider = WorldModel.build(wm.tokenizer, {**DYN, "d_model": 64}, action_repeat=2, window=3)
    with pytest.raises(ValueError, match="same dynamics config"):
        _init_from(wider, tmp_path / "wm.pt", "h")
    torch.manual_seed(2)
    other_tok = WorldModel.build(DualFSQTokenizer(TOK), DYN, action_repeat=2, window=3)
    with pytest.raises(ValueError, match="another tokenizer"):
        _init_from(other_tok, tmp_path / "wm.pt", "h")


def test_frame_metrics_in_chunks_equal_one_ssim_call(monkeypatch):
    from torchmetrics.functional.image import structural_similarity_index_measure

    import worldmodel.evaluate as ev

    g = torch.Generator().manual_seed(0)
    real = torch.rand(3, 5, 3, 32, 32, generator=g)
    pred = (real + 0.1 * torch.randn(real.shape, generator=g)).clamp(0, 1)
    mask = torch.ones(3, 5, 32, 32, dtype=torch.bool)
    monkeypatch.setattr(ev, "SSIM_CHUNK", 4)          # 15 frames -> 4 calls, the last one short
    chunked = ev.frame_metrics(pred, real, mask)["ssim"]
    whole = structural_similarity_index_measure(pred.flatten(0, 1), real.flatten(0, 1), data_range=1.0,
                                                reduction="none").view(3, 5).mean(0)
    assert torch.allclose(chunked, whole, atol=1e-6)


# ----------------------------------------------------------------------------- proprio tokens
PROP = {**DYN, "proprio_bins": 16, "proprio_low": [-0.3, -0.3, 0.8, 0.0], "proprio_high": [0.3, 0.3, 1.2, 0.09]}


@pytest.fixture(scope="module")
def pwm():
    torch.manual_seed(0)
    return WorldModel.build(DualFSQTokenizer(TOK), PROP, action_repeat=2, window=3).eval()


def test_proprio_rollout_imagines_proprio_and_carries_it_over_swr_boundaries(pwm, tmp_path):
    frames, actions = _inputs(t=7)
    start = torch.tensor([[0.0, 0.1, 1.0, 0.08], [0.1, -0.1, 0.9, 0.02]])
    roll = pwm.rollout(frames, actions, proprio=start, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert roll.proprio.shape == (2, 7, 4) and roll.proprio_tokens.shape == (2, 7, 4)
    assert torch.equal(roll.proprio, pwm.dynamics.proprio_values(roll.proprio_tokens))
    # each SWR segment starts from the proprio imagined last in the one before (the frame is
    # re-encoded, the proprio tokens are carried over unchanged)
    assert torch.equal(roll.segments[0].prop0, pwm.dynamics.proprio_tokens(start))
    assert torch.equal(roll.segments[1].prop0, roll.proprio_tokens[:, 2])
    assert torch.equal(roll.segments[2].prop0, roll.proprio_tokens[:, 5])
    # the start proprio is read: another start changes what is imagined
    other = pwm.rollout(frames, actions, proprio=start.flip(0), temperature=0.0)
    assert not torch.equal(other.proprio_tokens, pwm.rollout(frames, actions, proprio=start, temperature=0.0).proprio_tokens)
    # log-probs cover the proprio tokens, with gradient into the proprio head
    lp = pwm.log_prob(roll, actions)
    lp.sum().backward()
    assert pwm.dynamics.prop_head.weight.grad.abs().sum() > 0
    pwm.dynamics.zero_grad(set_to_none=True)
    # one shared start frame and proprio for many candidates
    shared = pwm.rollout(frames[:1], actions, proprio=start[:1], temperature=0.0)
    assert shared.proprio.shape == (2, 7, 4)
    # a checkpoint describes its quantization and reproduces the rollout
    again = WorldModel.from_checkpoint(pwm.save(tmp_path / "pwm.pt"))
    assert again.dynamics.cfg == pwm.dynamics.cfg
    assert torch.equal(again.rollout(frames, actions, proprio=start, temperature=0.0).proprio,
                       pwm.rollout(frames, actions, proprio=start, temperature=0.0).proprio)


def test_proprio_rollout_errors(wm, pwm):
    frames, actions = _inputs()
    with pytest.raises(ValueError, match="pass the start frame's proprio"):
        pwm.rollout(frames, actions)
    with pytest.raises(ValueError, match=r"proprio must be \(2, 4\)"):
        pwm.rollout(frames, actions, proprio=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="without proprio tokens"):
        wm.rollout(frames, actions, proprio=torch.zeros(2, 4))


def test_tokenized_windows_carry_the_recorded_proprio(tmp_path):
    import h5py

    from agent.collect import collect
    from worldmodel.data import RolloutWindows

    path = tmp_path / "r.hdf5"
    collect("roboalign/Lift-v0", "random", 1, path, split="val", workers=1, progress=False)
    windows = RolloutWindows([path], window=3, action_repeat=2, stride=20)
    with h5py.File(path) as f:
        g = f["data/demo_0"]
        prop = np.concatenate([g["obs/proprio"][()], g["next_obs/proprio"][-1:]])
        # the privileged readouts the bench's clips carry (clip_proprio) are the same numbers
        eef, opening = g["obs/eef_pos"][()], g["obs/gripper_opening"][()]
    assert np.allclose(prop[:-1, :3], eef, atol=1e-6) and np.allclose(prop[:-1, 3], opening, atol=1e-6)
    item = windows[1]
    assert torch.equal(item["proprio"], torch.from_numpy(prop[20:27:2]))


def test_train_worldmodel_fits_proprio_tokens_over_the_data_range_and_fine_tuning_keeps_it(wm, tmp_path):
    """``dynamics.model.proprio_bins > 0`` through the training script: the quantization range
    comes from the training windows' proprio and is stored in the checkpoint; a fine-tune
    (``init_ckpt``) keeps the model's range instead of refitting it on its new data."""
    from agent.collect import collect
    from experiments.pipeline import compose
    from experiments.train_worldmodel import proprio_range, run
    from worldmodel.data import RolloutWindows

    files = {s: tmp_path / f"lift_random_{s}_0_1.hdf5" for s in ("train", "val")}
    for split, path in files.items():
        collect("roboalign/Lift-v0", "random", 1, path, split=split, workers=1, progress=False)
    wm.tokenizer.save(tmp_path / "tok.pt")
    common = ["dynamics=tiny", "dynamics.model.proprio_bins=8", "dynamics.train.steps=2", "dynamics.train.warmup=1",
              f"artifacts={tmp_path}", f"tokenizer_ckpt={tmp_path / 'tok.pt'}", f"data.train=[{files['train']}]",
              f"data.val=[{files['val']}]", "val_windows=8"]
    metrics = run(compose("train_worldmodel", common + [f"out_dir={tmp_path / 'a'}"]))
    assert {"ce", "proprio_ce", "proprio_acc"} <= set(metrics)
    model = WorldModel.from_checkpoint(tmp_path / "a" / "worldmodel.pt")
    windows = RolloutWindows([files["train"]], window=8, action_repeat=2, stride=2)
    first = range(min(len(windows), 64))            # dynamics=tiny trains on the first 64 windows
    lo, hi = proprio_range(torch.stack([windows[i]["proprio"] for i in first]))
    assert model.reads_proprio and list(model.dynamics.cfg.proprio_low) == lo and list(model.dynamics.cfg.proprio_high) == hi
    tuned = run(compose("train_worldmodel", common + [f"out_dir={tmp_path / 'b'}", f"init_ckpt={tmp_path / 'a' / 'worldmodel.pt'}",
                                                      f"data.train=[{files['val']}]"]))
    assert tuned and WorldModel.from_checkpoint(tmp_path / "b" / "worldmodel.pt").dynamics.cfg == model.dynamics.cfg
