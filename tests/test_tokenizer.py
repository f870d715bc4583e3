"""Dual-branch FSQ tokenizer: token shapes and ranges, train/inference consistency,
context conditioning, input checks, checkpoints, an overfit on real frames, the
frame-pair dataset and the Hydra entry point (tiny preset)."""
from __future__ import annotations

import copy
import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import CONF_DIR
from tests.test_training import write_synthetic_rollouts
from worldmodel.data import FramePairs
from worldmodel.tokenizer import DualFSQTokenizer, TokenizerConfig
from worldmodel.training import CheckpointError, load_checkpoint, save_checkpoint, train

TINY = TokenizerConfig(channels=8, latent_dim=8, ctx_levels=(5, 5, 5), dyn_levels=(5, 5, 5))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(0)
    return DualFSQTokenizer(TINY).eval()


@pytest.fixture(scope="module")
def real_frames(lift_env):
    """16 real Lift frames ``(16, 3, 64, 64)`` in [0, 1], 3 steps apart, from random
    actions held for 6 steps (so the arm visibly moves)."""
    obs, _ = lift_env.reset(seed=3)
    rng, frames = np.random.default_rng(0), []
    for t in range(48):
        if t % 6 == 0:
            action = rng.uniform(-1, 1, 4).astype(np.float32)
        if t % 3 == 0:
            frames.append(obs["image"])
        obs, *_ = lift_env.step(action)
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def overfit(real_frames, tmp_path_factory):
    """A small tokenizer trained 300 steps (the shared loop) on 8 real (context, 24 steps
    later) pairs."""
    torch.manual_seed(0)
    ctx, fut = real_frames[:8], real_frames[8:]
    model = DualFSQTokenizer(TokenizerConfig(channels=16, latent_dim=16))
    with torch.no_grad():
        before = model(ctx, fut)
    model = train(model, lambda start: itertools.repeat((ctx, fut)), lambda m, b: (m(*b)["loss"], {}),
                  steps=300, lr=3e-3, warmup=10, out_dir=tmp_path_factory.mktemp("overfit"),
                  kind="tokenizer", config={}, ckpt_every=10**6, log_every=50, progress=False)
    with torch.no_grad():
        after = model(ctx, fut)
    return model, ctx, fut, before, after


# ----------------------------------------------------------------------------- tokens
def test_round_trip_shapes_and_ranges(tok):
    frames = torch.rand(3, 3, 64, 64)
    ctx = tok.encode_context(frames)
    assert ctx.shape == (3, 64) and ctx.dtype == torch.int64
    assert 0 <= ctx.min() and ctx.max() < TINY.ctx_codebook_size == 125
    dyn = tok.encode_dynamics(frames.flip(0), ctx)
    assert dyn.shape == (3, 16) and dyn.dtype == torch.int64 and 0 <= dyn.min() and dyn.max() < 125
    for out in (tok.decode(dyn, ctx), tok.decode_context(ctx)):
        assert out.shape == (3, 3, 64, 64) and out.dtype == torch.float32
        assert 0 <= out.min() and out.max() <= 1
    assert TINY.n_ctx_tokens == 64 and TINY.n_dyn_tokens == 16
    assert TokenizerConfig().ctx_codebook_size == 1000


def test_forward_matches_the_verbs(tok):
    """Training (forward) and imagination (encode/decode verbs) compute the same thing."""
    ctx_frames, frames = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = tok(ctx_frames, frames)
        ctx = tok.encode_context(ctx_frames)
        dyn = tok.encode_dynamics(frames, ctx)
        assert torch.equal(out["ctx_tokens"], ctx) and torch.equal(out["dyn_tokens"], dyn)
        torch.testing.assert_close(out["ctx_recon"], tok.decode_context(ctx))
        torch.testing.assert_close(out["dyn_recon"], tok.decode(dyn, ctx))
    assert out["loss"].ndim == 0 and {"ctx_mse", "ctx_l1", "dyn_mse", "dyn_l1"} <= set(out)


def test_code_usage(tok):
    ctx = tok.encode_context(torch.rand(4, 3, 64, 64))
    assert 0 < tok.code_usage(ctx) <= 1
    assert tok.code_usage(torch.zeros(5, 64, dtype=torch.long)) == pytest.approx(1 / 125)
    assert tok.code_usage(torch.arange(125).view(5, 25), branch="ctx") == 1.0
    with pytest.raises(ValueError, match="match neither branch"):
        tok.code_usage(torch.zeros(2, 10, dtype=torch.long))


def test_overfit_real_frames(overfit):
    """150 steps on 8 real pairs cut both reconstruction errors by > 10x."""
    _, _, _, before, after = overfit
    for branch in ("ctx", "dyn"):
        assert after[f"{branch}_mse"] < before[f"{branch}_mse"] / 10, branch
    assert -10 * torch.log10(after["ctx_mse"]) > 18   # dB (~19.6 measured; 7.4 before)


def test_context_conditions_the_dynamics_branch(overfit):
    """The same dynamics tokens decode differently under other context tokens, beyond the
    change of the context reconstruction itself; encoding depends on the context too."""
    model, ctx_frames, frames, *_ = overfit
    with torch.no_grad():
        ctx = model.encode_context(ctx_frames)
        other = ctx.roll(1, dims=0)
        dyn = model.encode_dynamics(frames, ctx)
        # the dynamics encoder reads the context (before quantization: a small overfit
        # model may spend few dynamics codes, so the tokens themselves can coincide)
        x = frames * 2 - 1
        latents = [model._dyn_encode(x, *model._context_features(model._tokens(c, "ctx"))) for c in (ctx, other)]
        assert (latents[0] - latents[1]).abs().mean() > 1e-4
        delta = model.decode(dyn, ctx) - model.decode_context(ctx)
        delta_other = model.decode(dyn, other) - model.decode_context(other)
        assert (delta - delta_other).abs().mean() > 1e-3
        # and the right context reconstructs the future better than a wrong one
        err = ((model.decode(dyn, ctx) - frames) ** 2).mean()
        err_other = ((model.decode(dyn, other) - frames) ** 2).mean()
        assert err_other > 1.1 * err


# ----------------------------------------------------------------------------- input checks
def test_frame_checks(tok):
    with pytest.raises(ValueError, match=r"expected \(B,3,64,64\) frames, got \(2, 3, 32, 32\)"):
        tok.encode_context(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="channels last"):
        tok.encode_context(torch.rand(2, 64, 64, 3))
    with pytest.raises(ValueError, match="divide 0-255 images by 255"):
        tok.encode_context(torch.rand(2, 3, 64, 64) * 255)
    with pytest.raises(TypeError, match="torch.Tensor"):
        tok.encode_context(np.zeros((2, 3, 64, 64), np.float32))
    u8 = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)   # uint8 is converted
    assert torch.equal(tok.encode_context(u8), tok.encode_context(u8.float() / 255))


def test_token_checks(tok):
    ctx = tok.encode_context(torch.rand(2, 3, 64, 64))
    dyn = torch.zeros(2, 16, dtype=torch.long)
    with pytest.raises(ValueError, match=r"context tokens out of range \[0, 125\)"):
        tok.decode_context(ctx + 125)
    with pytest.raises(ValueError, match=r"dynamics tokens out of range"):
        tok.decode(dyn - 1, ctx)
    with pytest.raises(ValueError, match=r"integer tensor \(B, 16\)"):
        tok.decode(dyn.float(), ctx)
    with pytest.raises(ValueError, match=r"integer tensor \(B, 64\)"):
        tok.decode(dyn, ctx[:, :10])
    with pytest.raises(ValueError, match="batch sizes differ"):
        tok.decode(dyn[:1], ctx)
    with pytest.raises(ValueError, match="power of two"):
        TokenizerConfig(ctx_grid=6)


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_is_exact(tok, tmp_path):
    path = tok.save(tmp_path / "tok.pt", step=7)
    loaded = DualFSQTokenizer.from_checkpoint(path)
    assert loaded.config == TINY and not loaded.training
    frames = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ctx = tok.encode_context(frames)
        assert torch.equal(loaded.encode_context(frames), ctx)
        dyn = tok.encode_dynamics(frames.flip(0), ctx)
        assert torch.equal(loaded.encode_dynamics(frames.flip(0), ctx), dyn)
        assert torch.equal(loaded.decode(dyn, ctx), tok.decode(dyn, ctx))
    assert DualFSQTokenizer.from_checkpoint(path, config=TINY).config == TINY


def test_checkpoint_of_another_config_or_kind(tok, tmp_path):
    path = tok.save(tmp_path / "tok.pt")
    with pytest.raises(CheckpointError, match=r"(?s)another config.*channels: checkpoint 8, now 16"):
        DualFSQTokenizer.from_checkpoint(path, config=replace(TINY, channels=16))
    other = save_checkpoint(tmp_path / "dyn.pt", kind="dynamics", config={"model": {}}, model=tok, step=0)
    with pytest.raises(CheckpointError, match="this is a 'dynamics' checkpoint, expected 'tokenizer'"):
        DualFSQTokenizer.from_checkpoint(other)
    with pytest.raises(CheckpointError, match="does not exist.*train_tokenizer.py"):
        DualFSQTokenizer.from_checkpoint(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- data
def test_frame_pairs(tmp_path):
    path = write_synthetic_rollouts(tmp_path / "r.hdf5", episodes=2, steps=12)
    ds = FramePairs(path, max_gap=4, masks=True)
    assert len(ds) == 2 * 13 * 5 and len(ds.frames) == 2
    item = ds[3 * 5 + 2]                       # frame 3 of episode 0, gap 2
    assert (item["episode"], item["t"], item["gap"]) == (0, 3, 2)
    assert item["context"].shape == item["frame"].shape == (3, 64, 64)
    assert item["context"].dtype == torch.float32 and 0 <= item["frame"].min() and item["frame"].max() <= 1
    expected = torch.from_numpy(ds.frames[0][5]).permute(2, 0, 1).float() / 255
    assert torch.equal(item["frame"], expected)
    assert torch.equal(item["mask"], torch.from_numpy(ds.masks[0][5]))
    last = ds[(13 + 12) * 5 + 4]               # the last frame of episode 1: gap clipped to 0
    assert (last["episode"], last["t"], last["gap"]) == (1, 12, 0)
    assert "mask" not in FramePairs(path, max_gap=0)[0]
    with pytest.raises(IndexError):
        ds[len(ds)]


# ----------------------------------------------------------------------------- entry point
def _compose(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train_tokenizer", overrides=overrides)


def test_train_tokenizer_tiny_run_and_resume(tmp_path):
    from experiments.train_tokenizer import run

    data = write_synthetic_rollouts(tmp_path / "r.hdf5")
    overrides = ["tokenizer=tiny", f"data.train=[{data}]", f"data.val=[{data}]", f"out_dir={tmp_path / 'out'}",
                 "data.val_pairs=16", "progress=false", "threads=1"]
    metrics = run(_compose(overrides))
    keys = {f"eval/{b}_{m}" for b in ("ctx", "dyn", "copy") for m in ("psnr", "region_psnr")}
    assert keys | {"eval/ctx_code_usage", "eval/dyn_code_usage"} <= set(metrics)
    assert all(np.isfinite(v) for v in metrics.values())
    assert 0 < metrics["eval/ctx_code_usage"] <= 1
    out = tmp_path / "out"
    assert {"last.pt", "metrics.jsonl", "eval.png"} <= {p.name for p in out.iterdir()}
    assert load_checkpoint(out / "last.pt", kind="tokenizer")["step"] == 4
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
    assert run(_compose(overrides)) == metrics            # finished: returns the stored metrics
    tok = DualFSQTokenizer.from_checkpoint(out / "last.pt")
    assert tok.config.channels == 8
    with pytest.raises(CheckpointError, match="different config"):   # same out_dir, other config
        run(_compose(overrides + ["tokenizer.train.lr=0.5"]))


def test_train_tokenizer_without_data_says_how_to_collect(tmp_path):
    from experiments.train_tokenizer import run

    cfg = _compose(["tokenizer=tiny", f"artifacts={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="experiments/collect.py .*split=train"):
        run(cfg)


def test_decode_sequence_matches_per_frame_decode(tok):
    """The once-per-context path (features broadcast over frames, and computed once when
    all clips share one context) gives the per-frame decode's frames."""
    tok = copy.deepcopy(tok)
    with torch.no_grad():   # the change head starts at zero: give the dynamics branch a say
        for p in tok.dyn_dec.out.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    ctx = tok.encode_context(torch.rand(3, 3, 64, 64))
    dyn = torch.randint(0, tok.config.dyn_codebook_size, (3, 3, tok.config.n_dyn_tokens))
    for chunk in (128, 6):   # one pass, and chunks of 2 clips (the last one shorter)
        tok.DECODE_CHUNK = chunk
        for c in (ctx, ctx[:1].expand(3, -1)):
            with torch.no_grad():
                seq = tok.decode_sequence(dyn, c)
                per = torch.stack([tok.decode(dyn[:, i], c) for i in range(3)], 1)
            assert seq.shape == (3, 3, 3, 64, 64)
            torch.testing.assert_close(seq, per)
    assert not torch.allclose(seq[0, 0], seq[1, 0])   # the tokens, not only the context, decide
    with pytest.raises(ValueError, match="batch sizes"):
        tok.decode_sequence(dyn, ctx[:1])


def test_pixel_context_keeps_what_does_not_change_exact(real_frames):
    """With ``pixel_context`` the dynamics change is added to the context frame's own pixels:
    an untrained (zero-change) decoder returns the context frame exactly, not its lossy
    reconstruction; the verbs need the context frames and check them; the training pass
    and the public verbs agree."""
    torch.manual_seed(0)
    tok = DualFSQTokenizer(replace(TINY, pixel_context=True)).eval()
    ctx_frames, fut = real_frames[:3], real_frames[3:6]
    with torch.no_grad():
        ctx = tok.encode_context(ctx_frames)
        dyn = tok.encode_dynamics(fut, ctx, ctx_frames)
        torch.testing.assert_close(tok.decode(dyn, ctx, ctx_frames), ctx_frames, atol=1e-6, rtol=0)
        assert (tok.decode_context(ctx) - ctx_frames).abs().max() > 0.05    # the token path is lossy
        out = tok(ctx_frames, fut)
        torch.testing.assert_close(out["dyn_recon"], tok.decode(out["dyn_tokens"], out["ctx_tokens"], ctx_frames))
        seq = tok.decode_sequence(dyn[:, None].expand(3, 2, -1), ctx, ctx_frames)
        torch.testing.assert_close(seq[:, 1], tok.decode(dyn, ctx, ctx_frames))
        shared = tok.decode_sequence(dyn[:, None], ctx[:1].expand(3, -1), ctx_frames[:1])   # one start frame
        torch.testing.assert_close(shared[:, 0], ctx_frames[:1].expand(3, -1, -1, -1), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="pass ctx_frames"):
        tok.decode(dyn, ctx)
    with pytest.raises(ValueError, match="pass ctx_frames"):
        tok.encode_dynamics(fut, ctx)
    with pytest.raises(ValueError, match="batch sizes differ"):
        tok.decode(dyn, ctx, ctx_frames[:2])
    with pytest.raises(ValueError, match="ctx_frames"):
        tok.decode(dyn, ctx, ctx_frames[:, :, :32])


def test_region_weights_reweight_the_loss(tok, real_frames):
    """Uniform pixel weights leave the loss unchanged; weights on the pixels a tokenizer gets
    most wrong raise it (and gradients follow them)."""
    ctx, fut = real_frames[:2], real_frames[2:4]
    with torch.no_grad():
        plain = tok(ctx, fut)
        ones = torch.ones(2, 64, 64)
        assert torch.allclose(tok(ctx, fut, (ones, ones))["loss"], plain["loss"], rtol=1e-5)
        err = (plain["dyn_recon"] - fut).abs().mean(1)                 # (2, 64, 64)
        hot = 1.0 + 20.0 * (err > err.flatten(1).quantile(0.9, 1)[:, None, None]).float()
        assert tok(ctx, fut, (ones, hot))["loss"] > plain["loss"]
        assert torch.equal(tok(ctx, fut, (ones, hot))["dyn_mse"], plain["dyn_mse"])   # metrics stay unweighted


def test_train_tokenizer_region_weight_reads_the_masks(tmp_path):
    from experiments.train_tokenizer import run

    data = write_synthetic_rollouts(tmp_path / "r.hdf5")
    metrics = run(_compose(["tokenizer=tiny", "+tokenizer.model.region_weight=5", f"data.train=[{data}]",
                            f"data.val=[{data}]", f"out_dir={tmp_path / 'out'}", "data.val_pairs=16",
                            "progress=false", "threads=1"]))
    assert all(np.isfinite(v) for v in metrics.values())
    assert DualFSQTokenizer.from_checkpoint(tmp_path / "out" / "last.pt").config.region_weight == 5


@pytest.mark.parametrize("preset", ["tiny", "quick", "default", "full", "hifi"])
def test_tokenizer_presets_build_models_with_their_token_layout(preset):
    from omegaconf import OmegaConf

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train_tokenizer", [f"tokenizer={preset}"])
    model = DualFSQTokenizer(TokenizerConfig.from_dict(OmegaConf.to_container(cfg.tokenizer.model))).eval()
    c = model.config
    frames = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ctx = model.encode_context(frames)
        dyn = model.encode_dynamics(frames, ctx)
        out = model.decode(dyn, ctx)
    assert cfg.tokenizer.name == preset and cfg.tokenizer.train.steps > 0
    assert ctx.shape == (2, c.ctx_grid ** 2) and dyn.shape == (2, c.dyn_grid ** 2)
    assert int(ctx.max()) < c.ctx_codebook_size and int(dyn.max()) < c.dyn_codebook_size
    assert out.shape == frames.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    if preset == "hifi":
        assert (c.n_ctx_tokens, c.n_dyn_tokens, c.ctx_codebook_size) == (256, 64, 64000)
