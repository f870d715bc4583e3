"""GRPO alignment: advantages, clipped objective, KL, a toy step with a known answer, resume."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from worldmodel.align import (
    WEIGHT_PRESETS,
    GRPOConfig,
    GRPOTrainer,
    HackingMonitor,
    clipped_objective,
    group_advantages,
    kl_to_reference,
    rollout_log_probs,
    single_metric_reward,
)
from worldmodel.world_model import WorldModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB, T, H = 8, 2, 16


class ToyTokenizer(nn.Module):
    """Frames decode to a grey level equal to the mean token value / (vocab - 1): a reward
    on brightness then has a known optimum (every token = vocab - 1)."""

    def __init__(self, vocab=VOCAB, n_ctx=4, n_dyn=4):
        super().__init__()
        self.config = SimpleNamespace(dyn_codebook_size=vocab, ctx_codebook_size=vocab,
                                      n_ctx_tokens=n_ctx, n_dyn_tokens=n_dyn)

    def encode_context(self, frames):
        return torch.zeros(frames.shape[0], self.config.n_ctx_tokens, dtype=torch.long)

    def encode_dynamics(self, frames, ctx, ctx_frames=None):
        return torch.zeros(frames.shape[0], self.config.n_dyn_tokens, dtype=torch.long)

    def decode(self, tokens, ctx, ctx_frames=None):
        """(B, Nd) -> (B, 3, H, H)"""
        v = tokens.float().mean(-1) / (self.config.dyn_codebook_size - 1)
        return v[..., None, None, None].expand(*v.shape, 3, H, H).clone()

    def decode_sequence(self, tokens, ctx, ctx_frames=None):
        """(B, T, Nd) -> (B, T, 3, H, H)"""
        return self.decode(tokens, ctx)


def brightness(frames, instruction):
    """Stand-in reward: every one of the six dims = mean brightness of the imagined frames."""
    return frames[:, 1:].mean((1, 2, 3, 4))[:, None].expand(-1, 6)


def toy_model(seed=0):
    torch.manual_seed(seed)
    return WorldModel.build(ToyTokenizer(), {"d_model": 16, "n_layers": 1, "n_heads": 2}, action_repeat=2,
                            window=T).eval()


def toy_batch(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"frames": torch.rand(b, 3, H, H, generator=g), "actions": torch.rand(b, T, 8, generator=g) * 2 - 1,
            "instruction": torch.zeros(b, dtype=torch.long), "real": torch.rand(b, T, 3, H, H, generator=g)}


def expected_first_token(wm, batch) -> torch.Tensor:
    """Exact E[token value] of the first predicted frame (B, Nd) under the model."""
    ctx, prev = wm.encode(batch["frames"])
    logits = wm.dynamics.step(wm.dynamics.start(ctx), prev, batch["actions"][:, 0])
    return (torch.softmax(logits.float(), -1) * torch.arange(VOCAB)).sum(-1)


# ----------------------------------------------------------------------------- maths
def test_group_advantages_zero_mean_unit_scale_and_flat_groups():
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 0.0, 1e-9]])
    a = group_advantages(r)
    assert torch.all(torch.isfinite(a))
    assert torch.allclose(a.mean(1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(a[0].std(unbiased=False), torch.tensor(1.0), atol=1e-3)
    assert torch.equal(a[1], torch.zeros(4))                     # equal rewards: no signal, no NaN
    assert a[2].abs().max() < 1e-4                               # float noise is not amplified
    assert torch.argmax(a[0]) == 3 and torch.argmin(a[0]) == 0


@pytest.mark.parametrize("adv,ratio,vanishes", [
    (1.0, 1.5, True),    # good sample already pushed up beyond 1 + clip: no more push
    (1.0, 0.5, False),   # good sample pushed down too far: still pulled back up
    (-1.0, 0.5, True),   # bad sample already pushed down beyond 1 - clip
    (-1.0, 1.5, False),  # bad sample pushed up: still pushed down
    (1.0, 1.1, False), (-1.0, 0.9, False),                      # inside the range
])
def test_clipped_objective_gradient_vanishes_outside_the_clip_range(adv, ratio, vanishes):
    logp_old = torch.zeros(1, 3)
    logp_new = torch.full((1, 3), float(np.log(ratio)), requires_grad=True)
    loss, frac = clipped_objective(logp_new, logp_old, torch.tensor([adv]), clip=0.2)
    loss.backward()
    if vanishes:
        assert torch.all(logp_new.grad == 0) and float(frac) == 1.0
    else:
        # d(-ratio * adv)/d logp = -adv * ratio / n_tokens: descent raises logp for adv > 0
        assert torch.allclose(logp_new.grad, torch.full((1, 3), -adv * ratio / 3)) and float(frac) == 0.0


def test_kl_is_zero_for_identical_models_and_positive_after_a_change():
    wm = toy_model()
    trainer = GRPOTrainer(wm, brightness, GRPOConfig(group_size=2, amp=False, refresh_every=0))
    s = trainer.sample(toy_batch())
    roll, acts = s["rollout"], s["actions"]
    with torch.no_grad():
        new = rollout_log_probs(wm.dynamics, roll, acts)
        ref = rollout_log_probs(trainer.reference, roll, acts)
        for est in ("exact", "k3"):
            assert float(kl_to_reference(new, ref, roll.tokens, est)) == pytest.approx(0.0, abs=1e-7)
        wm.dynamics.head.bias.add_(torch.linspace(-1, 1, VOCAB))
        new = rollout_log_probs(wm.dynamics, roll, acts)
        assert float(kl_to_reference(new, ref, roll.tokens, "exact")) > 1e-3
        assert float(kl_to_reference(new, ref, roll.tokens, "k3")) > 0


# ----------------------------------------------------------------------------- the trainer
def test_one_grpo_step_moves_towards_the_rewarded_tokens():
    wm, batch = toy_model(), toy_batch()
    trainer = GRPOTrainer(wm, brightness, GRPOConfig(group_size=16, lr=1e-2, epochs=1, kl_weight=0.0, amp=False,
                                                     refresh_every=0))
    tokenizer_before = [p.clone() for p in wm.tokenizer.parameters()]
    before = expected_first_token(wm, batch)
    with torch.no_grad():
        roll = trainer.sample(batch)["rollout"]
        ref_lp = rollout_log_probs(trainer.reference, roll, batch["actions"].repeat_interleave(16, 0))
    m = trainer.step(batch)
    assert m["train/reward_std"] > 0 and m["train/kl"] == pytest.approx(0.0, abs=1e-6)  # first pass: pi == pi_ref
    after = expected_first_token(wm, batch)
    assert torch.all(after > before), (before, after)            # brighter tokens became likelier, everywhere
    with torch.no_grad():                                        # top token up, bottom token down
        lp = rollout_log_probs(wm.dynamics, roll, batch["actions"].repeat_interleave(16, 0))
    assert float((lp - ref_lp)[..., -1].mean()) > 0 > float((lp - ref_lp)[..., 0].mean())
    assert all(torch.equal(a, b) for a, b in zip(tokenizer_before, wm.tokenizer.parameters()))
    for _ in range(5):                                           # and the reward itself rises
        trainer.step(batch)
    s = trainer.sample(batch, group_size=64, generator=torch.Generator().manual_seed(1))
    s0 = GRPOTrainer(toy_model(), brightness, GRPOConfig(amp=False)).sample(
        batch, group_size=64, generator=torch.Generator().manual_seed(1))
    assert float(brightness(s["clip"], None).mean()) > float(brightness(s0["clip"], None).mean()) + 0.02


def test_kl_penalty_holds_the_model_near_the_reference():
    batch, kls = toy_batch(), {}
    for beta in (0.0, 5.0):
        trainer = GRPOTrainer(toy_model(), brightness, GRPOConfig(group_size=8, lr=1e-2, epochs=2, kl_weight=beta,
                                                                  amp=False, refresh_every=0))
        for _ in range(6):
            m = trainer.step(batch)
        kls[beta] = m["train/kl"]
    assert kls[5.0] < kls[0.0]


def test_single_metric_reward_uses_the_real_frames():
    real = torch.rand(3, T, 3, H, H)
    pred = torch.stack([real[0], real[0] * 0.5, torch.zeros_like(real[0])])
    r = single_metric_reward(pred, real[:1].expand(3, -1, -1, -1, -1), "neg_mse")
    assert r[0] == 0 and r[0] > r[1] > r[2]
    ssim = single_metric_reward(real, real, "ssim")
    assert torch.allclose(ssim, torch.ones(3), atol=1e-4)
    trainer = GRPOTrainer(toy_model(), None, GRPOConfig(group_size=4, reward="neg_mse", amp=False, refresh_every=0))
    m = trainer.step(toy_batch())
    assert np.isfinite(m["train/reward_mean"]) and "reward/IF_mean" not in m
    with pytest.raises(ValueError, match="real future frames"):
        trainer.step({k: v for k, v in toy_batch().items() if k != "real"})


def test_weights_default_to_faithfulness_and_validate():
    w = GRPOConfig().weight_vector()
    assert w[2:].min() > w[:2].max()                             # AOC, TC, CR, PA above IF, MS
    assert len(WEIGHT_PRESETS["all_six"]) == 6
    with pytest.raises(ValueError, match="weights must be one of"):
        GRPOConfig(weights="everything")
    with pytest.raises(ValueError, match="reward must be one of"):
        GRPOConfig(reward="lpips")


def test_refresh_hook_gets_judge_clips_and_logs_the_gap():
    calls = []
    batch = toy_batch()
    batch["meta"] = [{"start_state": np.zeros(5), "env_id": "roboalign/Lift-v0"} for _ in range(2)]

    def teacher(clips):
        return np.full((len(clips), 6), 0.25)

    def refresh(clips, teacher_dims):
        calls.append((clips, teacher_dims))
        return {"loss": 0.1}

    trainer = GRPOTrainer(toy_model(), brightness, GRPOConfig(group_size=2, amp=False, refresh_every=2,
                                                              refresh_clips=3), teacher_fn=teacher, refresh_fn=refresh)
    m1, m2 = trainer.step(batch), trainer.step(batch)
    assert "distill/gap" not in m1 and len(calls) == 1           # every K = 2 updates
    clips, tdims = calls[0]
    assert len(clips) == 3 and tdims.shape == (3, 6)
    c = clips[0]
    assert c["frames"].shape == (T + 1, H, H, 3) and c["frames"].dtype == np.uint8
    assert c["actions"].shape == (T * 2, 4) and c["stride"] == 2 and c["env_id"] == "roboalign/Lift-v0"
    assert 0 <= m2["distill/gap"] <= 1 and m2["distill/loss"] == 0.1
    assert m2["distill/teacher_R"] == pytest.approx(0.25)


def test_hacking_monitor_flags_student_up_teacher_down():
    rng = np.random.default_rng(0)
    noise = lambda: 0.01 * rng.standard_normal(16)                 # noqa: E731  per-clip sampling noise
    mon = HackingMonitor(window=3)
    assert mon.update(0, 0.5 + noise(), 0.5 + noise())["hacking"] == 0
    assert mon.update(10, 0.6 + noise(), 0.6 + noise())["hacking"] == 0
    assert mon.update(20, 0.7 + noise(), 0.65 + noise())["hacking"] == 0      # both rise: fine
    with pytest.warns(RuntimeWarning, match="REWARD HACKING"):
        v = mon.update(30, 0.8 + noise(), 0.55 + noise())               # student up, teacher down over 10..30
    assert v["hacking"] == 1 and v["student_slope"] > 0 > v["teacher_slope"] and v["teacher_slope_z"] < -2
    assert mon.update(40, 0.8 + noise(), 0.8 + noise())["hacking"] == 0      # the teacher recovered


def test_hacking_monitor_ignores_moves_within_the_probe_noise():
    """Mean moves of the size seen between probes of a healthy run (~0.01), with per-clip
    spread 0.1, are not significant; neither is a single clip (no noise estimate)."""
    rng = np.random.default_rng(1)
    mon, flags = HackingMonitor(window=3), []
    for k, (ds, dt) in enumerate([(0, 0), (-0.01, 0.01), (0.01, -0.01), (0.02, -0.02)]):
        flags.append(mon.update(10 * k, 0.8 + ds + 0.1 * rng.standard_normal(16),
                                0.85 + dt + 0.1 * rng.standard_normal(16))["hacking"])
    assert flags == [0, 0, 0, 0]
    one = HackingMonitor(window=2)
    one.update(0, 0.5, 0.9)
    assert one.update(10, 0.9, 0.1)["hacking"] == 0
    with pytest.raises(ValueError, match="same clips"):
        one.update(20, np.zeros(3), np.zeros(4))


def test_resume_reproduces_the_optimizer_state_and_the_next_update(tmp_path):
    cfg = GRPOConfig(group_size=4, lr=1e-2, amp=False, refresh_every=0)
    batch = toy_batch()
    a = GRPOTrainer(toy_model(), brightness, cfg)
    a.step(batch)
    a.save(tmp_path / "last.pt", config={"grpo": cfg.to_dict()})
    a.step(batch)
    b = GRPOTrainer(toy_model(), brightness, cfg)                 # a fresh pre-trained model, then resume
    b.load(tmp_path / "last.pt", config={"grpo": cfg.to_dict()})
    assert b.updates == 1
    sa, sb = a.opt.state_dict(), b.opt.state_dict()
    b2 = GRPOTrainer(toy_model(), brightness, cfg)
    b2.load(tmp_path / "last.pt")
    for k, v in b2.opt.state_dict()["state"].items():
        assert set(v) == set(sb["state"][k]) and all(torch.equal(v[n], sb["state"][k][n]) for n in v)
    b.step(batch)
    assert all(torch.equal(p, q) for p, q in zip(a.wm.dynamics.parameters(), b.wm.dynamics.parameters()))
    assert all(torch.equal(sa["state"][k]["exp_avg"], b.opt.state_dict()["state"][k]["exp_avg"]) for k in sa["state"])
    assert all(torch.equal(p, q) for p, q in zip(a.reference.parameters(), b.reference.parameters()))


# ----------------------------------------------------------------------------- the entry point
@pytest.fixture(scope="module")
def align_artifacts(tmp_path_factory):
    """A tiny pre-trained world model, an untrained student and one recorded training episode."""
    from agent.collect import collect
    from worldmodel.judge.student import StudentReward
    from worldmodel.tokenizer import DualFSQTokenizer, TokenizerConfig

    root = tmp_path_factory.mktemp("align")
    collect("roboalign/Lift-v0", "scripted", 1, root / "rollouts" / "lift_scripted_train_0_1.hdf5",
            split="train", workers=1, progress=False)
    torch.manual_seed(0)
    tok = DualFSQTokenizer(TokenizerConfig(channels=8, latent_dim=8, ctx_levels=(5, 5, 5), dyn_levels=(5, 5, 5)))
    WorldModel.build(tok, {"d_model": 32, "n_layers": 1, "n_heads": 2}).save(root / "wm.pt")
    StudentReward().save(root / "student.pt")
    return root


def _align_cfg(root, out, *overrides):
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("align", ["align=tiny", f"artifacts={root}", f"worldmodel_ckpt={root / 'wm.pt'}",
                                 f"student_ckpt={root / 'student.pt'}", "teacher=false", "threads=1",
                                 f"out_dir={out}", *overrides])


def test_align_entry_point_writes_a_world_model_and_resumes_exactly(align_artifacts):
    import json

    from experiments.align import run
    from worldmodel.training import load_checkpoint

    root = align_artifacts
    run(_align_cfg(root, root / "straight", "run.updates=2"))
    run(_align_cfg(root, root / "resumed", "run.updates=1"))
    run(_align_cfg(root, root / "resumed", "run.updates=2"))      # same command, more updates: continues
    straight, resumed = (load_checkpoint(root / d / "last.pt", kind="align") for d in ("straight", "resumed"))
    assert straight["step"] == resumed["step"] == 2
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])
    assert straight["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()
    for k, st in straight["optimizer"]["state"].items():
        assert all(torch.equal(st[n], resumed["optimizer"]["state"][k][n]) for n in st)
    aligned = WorldModel.from_checkpoint(root / "resumed" / "worldmodel.pt")
    assert torch.equal(aligned.dynamics.head.weight, resumed["model"]["head.weight"])
    rows = [json.loads(line) for line in (root / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["data/contexts"] > 0 and "probe/student_R" in rows[0]
    train = [r for r in rows if "train/kl" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert {"reward/AOC_mean", "reward/AOC_std", "train/clip_frac", "train/reward_mean"} <= set(train[0])


def test_align_entry_point_needs_the_student_and_names_the_command(align_artifacts):
    from experiments.align import run

    with pytest.raises(FileNotFoundError, match="distill_reward.py"):
        run(_align_cfg(align_artifacts, align_artifacts / "x", f"student_ckpt={align_artifacts / 'none.pt'}"))


def test_optimism_rate_and_paired_difference():
    from experiments.eval_alignment import mean_ci, optimism, paired

    # imagined IF vs replay IF: two replays fail; one of those clips shows success anyway
    o = optimism(np.array([3, 0, 3, 3]), np.array([0, 0, 3, 3]))
    assert o["rate"] == 0.5 and o["replay_failures"] == 2 and o["optimistic_clips"] == 1
    m, ci = mean_ci([1.0, 1.0, 1.0])
    assert m == 1.0 and ci == 0.0
    p = paired(np.array([1.0, 1.0, 2.0, 2.0]), np.array([2.0, 2.0, 2.0, 4.0]), np.array([0, 0, 1, 1]))
    assert p["diff"] == pytest.approx(1.0) and p["contexts"] == 2


def test_eval_alignment_runs_without_a_teacher(align_artifacts, tmp_path):
    import json

    from hydra import compose, initialize_config_dir

    from experiments.align import run as align
    from experiments.eval_alignment import run
    from tests.conftest import CONF_DIR

    root = align_artifacts
    if not (root / "straight" / "worldmodel.pt").exists():
        align(_align_cfg(root, root / "straight", "run.updates=2"))
    rollouts = root / "rollouts" / "lift_scripted_train_0_1.hdf5"
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("eval_alignment", [f"models.pretrained={root / 'wm.pt'}",
                                         f"models.aligned={root / 'straight' / 'worldmodel.pt'}",
                                         f"student_ckpt={root / 'student.pt'}", "teacher=false",
                                         f"data.val=[{rollouts}]",
                                         "horizon=2", "every=16", "samples=2", "videos=1", "threads=1",
                                         f"out_dir={tmp_path}"])
    out = run(cfg)
    assert set(out["models"]) == {"pretrained", "aligned"}
    assert 0 < out["models"]["aligned"]["fidelity"]["ssim"] <= 1
    assert json.loads((tmp_path / "results.json").read_text())["contexts"] == out["contexts"]
    assert (tmp_path / "side_by_side.mp4").stat().st_size > 0 and "PSNR" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("preset", ["tiny", "quick", "default", "full"])
def test_align_presets_compose_into_valid_configs(preset, tmp_path):
    from omegaconf import OmegaConf

    from experiments.align import out_dir

    cfg = _align_cfg(tmp_path, "", f"align={preset}")
    g = GRPOConfig(**OmegaConf.to_container(cfg.grpo, resolve=True))
    assert cfg.preset_name == preset and cfg.run.updates > 0 and g.group_size >= 2
    assert out_dir(cfg) == tmp_path / "aligned" / preset
    ablation = _align_cfg(tmp_path, "", f"align={preset}", "grpo.weights=all_six", "grpo.reward=neg_mse")
    assert out_dir(ablation) == tmp_path / "aligned" / f"{preset}_neg_mse_all_six"


def test_a_reward_with_an_actions_parameter_gets_the_control_actions():
    seen = []

    def reward(frames, instruction, actions=None):
        seen.append(actions.shape)
        return brightness(frames, instruction)

    GRPOTrainer(toy_model(), reward, GRPOConfig(group_size=2, amp=False, refresh_every=0)).step(toy_batch())
    assert seen == [(4, T * 2, 4)]


def test_alignment_benchmark_parses_variants_and_reads_stage_costs(tmp_path):
    import json

    from benchmarks.alignment import parse_variant, stage_metrics

    assert parse_variant("strong=grpo.lr=5e-5,run.updates=160,grpo.weights=[0,0,0.5,0.1,0,0.4]") == (
        "strong", ["grpo.lr=5e-5", "run.updates=160", "grpo.weights=[0,0,0.5,0.1,0,0.4]"])
    assert parse_variant("plain") == ("plain", [])
    with pytest.raises(Exception, match="NAME=override"):
        parse_variant("=grpo.lr=1")
    rows = [{"step": 0, "probe/teacher_total": 5.0},
            *({"step": u, "time/step_s": 2.0 + u, "train/kl": 0.01 * u} for u in range(1, 11)),
            {"step": 10, "probe/teacher_total": 5.5, "probe/hacking": 1}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "stage.json").write_text(json.dumps({"wall_s": 42.0, "config": {"grpo": {"lr": 1e-5}, "run": {}}}))
    m = stage_metrics(tmp_path)
    assert m["updates"] == 10 and m["wall_s"] == 42.0 and m["hacking_flags"] == 1
    assert m["s_per_update"] == pytest.approx(7.5) and m["kl_last"] == pytest.approx(0.08)
    assert (m["probe_first"], m["probe_last"]) == (5.0, 5.5) and m["config"]["lr"] == 1e-5
