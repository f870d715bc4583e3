"""Dynamics transformer: causality, KV-cache equivalence, sampling, log-probs."""
from __future__ import annotations

import pytest
import torch

from worldmodel.dynamics import DynamicsConfig, DynamicsModel, sample_tokens

CFG = DynamicsConfig(vocab=50, ctx_vocab=40, n_ctx=8, n_dyn=4, action_dim=8, d_model=32, n_layers=2, n_heads=2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = DynamicsModel(CFG).eval()
    for p in m.parameters():  # larger weights so every input visibly matters
        p.data.normal_(0, 0.3)
    return m


def _batch(b=3, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randint(0, CFG.ctx_vocab, (b, CFG.n_ctx), generator=g)
    prev0 = torch.randint(0, CFG.vocab, (b, CFG.n_dyn), generator=g)
    actions = torch.rand(b, t, CFG.action_dim, generator=g) * 2 - 1
    tokens = torch.randint(0, CFG.vocab, (b, t, CFG.n_dyn), generator=g)
    return ctx, prev0, actions, tokens


def test_logits_shape(model):
    ctx, prev0, actions, tokens = _batch()
    assert model(ctx, prev0, actions, tokens).shape == (3, 5, CFG.n_dyn, CFG.vocab)


def test_future_cannot_influence_earlier_logits(model):
    ctx, prev0, actions, tokens = _batch()
    base = model(ctx, prev0, actions, tokens)
    t = 2
    tokens2, actions2 = tokens.clone(), actions.clone()
    tokens2[:, t:] = (tokens2[:, t:] + 7) % CFG.vocab      # frames t+1.. (inputs of blocks t+2..)
    actions2[:, t + 1:] = -actions2[:, t + 1:]             # actions of later steps
    out = model(ctx, prev0, actions2, tokens2)
    assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5)
    assert not torch.allclose(out[:, t + 1:], base[:, t + 1:], atol=1e-3)


def test_action_of_a_step_changes_its_own_frame(model):
    ctx, prev0, actions, tokens = _batch()
    actions2 = actions.clone()
    actions2[:, 1] = -actions2[:, 1]
    a, b = model(ctx, prev0, actions, tokens), model(ctx, prev0, actions2, tokens)
    assert torch.allclose(a[:, :1], b[:, :1], atol=1e-5)
    assert not torch.allclose(a[:, 1], b[:, 1], atol=1e-3)


def test_kv_cache_logits_equal_full_pass(model):
    ctx, prev0, actions, tokens = _batch()
    full = model(ctx, prev0, actions, tokens)
    cache = model.start(ctx)
    prev = prev0
    for t in range(actions.shape[1]):
        logits = model.step(cache, prev, actions[:, t])
        assert torch.allclose(logits, full[:, t], atol=1e-4), t
        prev = tokens[:, t]


def test_cached_sampling_equals_uncached_sampling(model):
    ctx, prev0, actions, _ = _batch(b=2, t=4)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    cache, prev, cached = model.start(ctx), prev0, []
    for t in range(4):
        prev = sample_tokens(model.step(cache, prev, actions[:, t]), 1.0, 10, g1)
        cached.append(prev)
    uncached = torch.zeros(2, 4, CFG.n_dyn, dtype=torch.long)
    for t in range(4):  # recompute the whole prefix each step, no cache
        logits = model(ctx, prev0, actions[:, : t + 1], uncached[:, : t + 1])[:, t]
        uncached[:, t] = sample_tokens(logits, 1.0, 10, g2)
    assert torch.equal(torch.stack(cached, 1), uncached)


def test_naive_window_caps_the_cache(model):
    ctx, prev0, actions, tokens = _batch(t=6)
    cap = CFG.n_ctx + 2 * (1 + CFG.n_dyn)
    cache, prev = model.start(ctx), prev0
    for t in range(6):
        model.step(cache, prev, actions[:, t], max_len=cap)
        prev = tokens[:, t]
        assert cache["kv"][0][0].shape[2] <= cap


def test_log_prob_matches_logits_and_has_grad(model):
    ctx, prev0, actions, tokens = _batch(b=2, t=3)
    lp = model.log_prob(ctx, prev0, actions, tokens)
    assert lp.shape == (2,) and torch.all(lp < 0)
    logits = model(ctx, prev0, actions, tokens)
    manual = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).sum((1, 2, 3))
    assert torch.allclose(lp, manual, atol=1e-4)
    m2 = DynamicsModel(CFG)
    m2.load_state_dict(model.state_dict())
    m2.log_prob(ctx, prev0, actions, tokens).sum().backward()
    assert m2.head.weight.grad is not None and m2.head.weight.grad.abs().sum() > 0


def test_sample_tokens_temperature_and_top_k():
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0]]).repeat(500, 1)
    assert torch.all(sample_tokens(logits, 0.0) == 2)
    g = torch.Generator().manual_seed(0)
    top2 = sample_tokens(logits, 5.0, top_k=2, generator=g)
    assert set(top2.tolist()) == {2, 3}


def test_sample_tokens_follows_the_distribution():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    logits = probs.clamp(min=1e-12).log().repeat(20000, 1)
    tokens = sample_tokens(logits, 1.0, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert torch.allclose(freq, probs, atol=0.015)
    assert freq[1] == 0       # a zero-probability token is never drawn


def test_clear_errors_for_wrong_shapes(model):
    ctx, prev0, actions, tokens = _batch()
    with pytest.raises(ValueError, match="actions must have 8 features"):
        model(ctx, prev0, actions[..., :4], tokens)
    with pytest.raises(ValueError, match="context tokens"):
        model(ctx[:, :3], prev0, actions, tokens)


# ----------------------------------------------------------------------------- proprio tokens
PCFG = DynamicsConfig(vocab=50, ctx_vocab=40, n_ctx=8, n_dyn=4, action_dim=8, d_model=32, n_layers=2, n_heads=2,
                      proprio_bins=16, proprio_low=(-0.2, -0.2, 0.8, 0.0), proprio_high=(0.2, 0.2, 1.2, 0.08))


@pytest.fixture(scope="module")
def pmodel():
    torch.manual_seed(1)
    m = DynamicsModel(PCFG).eval()
    for p in m.parameters():
        p.data.normal_(0, 0.3)
    return m


def _props(b=3, t=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, PCFG.proprio_bins, (b, t + 1, 4), generator=g)


def test_proprio_tokens_quantize_into_the_range_and_decode_to_bin_centres(pmodel):
    p = torch.tensor([[-0.2, 0.0, 0.8, 0.0], [0.1999, 0.2, 1.5, 0.04], [-9.0, 0.0125, 1.01, 0.0799]])
    tok = pmodel.proprio_tokens(p)
    assert tok.tolist() == [[0, 8, 0, 0], [15, 15, 15, 8], [0, 8, 8, 15]]   # clamped outside the range
    back = pmodel.proprio_values(tok)
    width = (torch.tensor(PCFG.proprio_high) - torch.tensor(PCFG.proprio_low)) / PCFG.proprio_bins
    inside = p.clamp(torch.tensor(PCFG.proprio_low), torch.tensor(PCFG.proprio_high))
    assert torch.all((back - inside).abs() <= width / 2 + 1e-6)


def test_proprio_is_read_as_context_and_predicted_causally(pmodel):
    ctx, prev0, actions, tokens = _batch(seed=2)
    props = _props()
    logits, plogits = pmodel(ctx, prev0, actions, tokens, props[:, 0], props[:, 1:])
    assert logits.shape == (3, 5, 4, 50) and plogits.shape == (3, 5, 4, PCFG.proprio_bins)
    # the proprio of frame 2 is an input of step block 3 only: earlier outputs do not move,
    # both the frame and the proprio predictions of block 3 do
    props2 = props.clone()
    props2[:, 2] = (props2[:, 2] + 5) % PCFG.proprio_bins
    l2, p2 = pmodel(ctx, prev0, actions, tokens, props2[:, 0], props2[:, 1:])
    assert torch.allclose(l2[:, :2], logits[:, :2], atol=1e-5) and torch.allclose(p2[:, :2], plogits[:, :2], atol=1e-5)
    assert not torch.allclose(l2[:, 2], logits[:, 2], atol=1e-3)
    assert not torch.allclose(p2[:, 2], plogits[:, 2], atol=1e-3)


def test_proprio_kv_cache_equals_the_full_pass_and_log_prob_sums_both(pmodel):
    ctx, prev0, actions, tokens = _batch(b=2, t=3, seed=3)
    props = _props(b=2, t=3)
    logits, plogits = pmodel(ctx, prev0, actions, tokens, props[:, 0], props[:, 1:])
    cache, prev, pprev = pmodel.start(ctx), prev0, props[:, 0]
    for t in range(3):
        out = pmodel.step(cache, prev, actions[:, t], prev_prop=pprev)
        assert torch.allclose(out, logits[:, t], atol=1e-4)
        assert torch.allclose(cache["proprio_logits"], plogits[:, t], atol=1e-4)
        prev, pprev = tokens[:, t], props[:, t + 1]
    lp = pmodel.log_prob(ctx, prev0, actions, tokens, props[:, 0], props[:, 1:])
    manual = (torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).sum((1, 2, 3))
              + torch.log_softmax(plogits, -1).gather(-1, props[:, 1:, :, None]).sum((1, 2, 3)))
    assert torch.allclose(lp, manual, atol=1e-4)
    loss, metrics = pmodel.loss(ctx, prev0, actions, tokens, props[:, 0], props[:, 1:])
    assert {"ce", "acc", "proprio_ce", "proprio_acc"} <= set(metrics)
    assert float(loss.detach()) == pytest.approx(metrics["ce"] + metrics["proprio_ce"], rel=1e-4)


def test_proprio_config_errors_and_description(model, pmodel):
    ctx, prev0, actions, tokens = _batch(b=2, t=2)
    with pytest.raises(ValueError, match="pass proprio"):
        pmodel(ctx, prev0, actions, tokens)
    with pytest.raises(ValueError, match="without proprio"):
        model(ctx, prev0, actions, tokens, torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="proprio_low < proprio_high"):
        DynamicsConfig(proprio_bins=8, proprio_low=(0, 0, 0, 0), proprio_high=(1, 1, 1))
    # a model without proprio describes itself exactly as before the option existed
    assert "proprio_bins" not in CFG.to_dict()
    assert DynamicsConfig(**PCFG.to_dict()) == PCFG
