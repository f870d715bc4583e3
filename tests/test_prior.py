"""Action prior: data chunks pad past the episode end, the diffusion prior learns a
known conditional answer, checkpoints round-trip, the planner takes its samples as
proposals, and the prior agents act from observations only."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from agent.planner import make_planner
from agent.prior import ActionPrior, PriorAgent, PriorChunks, PriorConfig, train_prior
from envs.rollouts import RolloutFileError, RolloutWriter, atomic_path

TINY = PriorConfig(steps=4, channels=(8, 16), keypoints=8, cond_dim=32, hidden=64, blocks=1, sample_steps=5)


def _episode(n: int, grip: float, rng) -> dict:
    obs = {"image": rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8),
           "proprio": rng.normal(size=(n, 4)).astype(np.float32),
           "instruction": np.zeros(n, np.int64)}
    actions = np.zeros((n, 4), np.float32)
    actions[:, 0] = np.arange(n) / n
    actions[:, 3] = grip
    return {"actions": actions, "states": np.zeros((n, 3)), "rewards": np.zeros(n, np.float32),
            "dones": np.zeros(n, np.uint8), "obs": obs, "next_obs": obs}


@pytest.fixture
def rollout_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "lift_fake_train_0_2.hdf5"
    with atomic_path(path) as tmp:
        w = RolloutWriter(tmp, {"env_id": "roboalign/Lift-v0"})
        w.add(_episode(5, 1.0, rng), success=True)
        w.add(_episode(3, -1.0, rng), success=False)
        w.close()
    return path


def test_chunks_pad_with_the_last_action_and_filter_failures(rollout_file):
    data = PriorChunks(rollout_file, steps=4, only_success=True)
    assert data.episodes == 1 and len(data) == 5
    assert data.image.shape == (5, 64, 64, 3) and data.actions.shape == (5, 4, 4)
    np.testing.assert_allclose(data.actions[0, :, 0], [0, 0.2, 0.4, 0.6], atol=1e-6)
    np.testing.assert_allclose(data.actions[3, :, 0], [0.6, 0.8, 0.8, 0.8], atol=1e-6)   # padded
    assert len(PriorChunks(rollout_file, steps=4, only_success=False)) == 8
    b = data.batch(np.array([0, 4]), shift=3, rng=np.random.default_rng(0))
    assert b["image"].shape == (2, 3, 64, 64) and b["image"].dtype == torch.float32
    assert b["actions"].shape == (2, 4, 4)


def test_chunks_errors(tmp_path, rollout_file):
    with pytest.raises(RolloutFileError, match="does not exist"):
        PriorChunks(tmp_path / "missing.hdf5")
    rng = np.random.default_rng(0)
    path = tmp_path / "fail.hdf5"
    with atomic_path(path) as tmp:
        w = RolloutWriter(tmp, {})
        w.add(_episode(3, 0.0, rng), success=False)
        w.close()
    with pytest.raises(RolloutFileError, match="no successful episodes"):
        PriorChunks(path, only_success=True)


def test_prior_learns_an_instruction_conditioned_answer(one_torch_thread):
    """Chunks are +0.6 for instruction 0 and -0.6 for instruction 1: after a short fit
    the DDIM samples for each instruction must land near its own value."""
    torch.manual_seed(0)
    model = ActionPrior(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    img = torch.rand(32, 3, 64, 64)
    instr = torch.arange(32) % 2
    target = torch.where(instr[:, None, None] == 0, 0.6, -0.6).expand(32, 4, 4).contiguous()
    batch = {"image": img, "proprio": torch.zeros(32, 4), "instruction": instr, "actions": target}
    first = float(model(batch).detach())
    for _ in range(300):
        loss = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(model(batch).detach()) < 0.5 * first
    model.eval()
    gen = torch.Generator().manual_seed(0)
    frame = (img[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    for i, want in ((0, 0.6), (1, -0.6)):
        s = model.sample(frame, np.zeros(4), i, n=16, generator=gen)
        assert s.shape == (16, 4, 4) and np.abs(s).max() <= 1.0
        assert abs(float(np.median(s)) - want) < 0.2, (i, float(np.median(s)))


def test_instruction_film_starts_as_the_plain_encoder_and_then_follows_the_instruction():
    """``instruction_film``: zero-initialised, the encoder equals the plain one with the
    same weights; once trained (here: random film weights) the image keypoints
    themselves depend on the instruction."""
    import dataclasses

    torch.manual_seed(0)
    plain = ActionPrior(TINY)
    film = ActionPrior(dataclasses.replace(TINY, instruction_film=True))
    missing, unexpected = film.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["feature_film.weight"] and not unexpected
    img, prop = torch.rand(4, 3, 64, 64), torch.zeros(4, 4)
    for i in (0, 1):
        instr = torch.full((4,), i)
        assert torch.allclose(film.encode(img, prop, instr), plain.encode(img, prop, instr), atol=1e-6)
    torch.nn.init.normal_(film.feature_film.weight, std=1.0)
    with torch.no_grad():
        c0 = film.encode(img, prop, torch.zeros(4, dtype=torch.long))
        # same instruction embedding for both, so only the image features can differ
        film.instruction.weight[1] = film.instruction.weight[0]
        c1 = film.encode(img, prop, torch.ones(4, dtype=torch.long))
    assert (c0 - c1).abs().max() > 1e-3


def test_play_prior_samples_do_not_depend_on_the_instruction(one_torch_thread):
    """``instruction_input=False`` (the play prior): no instruction parameters, and the same
    seed gives the same samples under any instruction id; it refuses the instruction FiLM."""
    import dataclasses

    from envs.vocab import INSTRUCTIONS

    torch.manual_seed(0)
    play = ActionPrior(dataclasses.replace(TINY, instruction_input=False))
    assert not any(name.startswith(("instruction.", "feature_film.")) for name, _ in play.named_parameters())
    torch.nn.init.normal_(play.out[1].weight, std=0.1)       # a non-trivial denoiser
    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    samples = [play.sample(frame, np.zeros(4), i, n=4, generator=torch.Generator().manual_seed(3))
               for i in range(len(INSTRUCTIONS))]
    assert np.abs(samples[0]).max() > 0
    assert all(np.array_equal(samples[0], s) for s in samples[1:])
    with pytest.raises(ValueError, match="instruction_input"):
        dataclasses.replace(TINY, instruction_input=False, instruction_film=True)


def test_prior_shape_errors():
    model = ActionPrior(TINY)
    with pytest.raises(ValueError, match=r"\(B, 4, 4\)"):
        model({"image": torch.rand(2, 3, 64, 64), "proprio": torch.zeros(2, 4),
               "instruction": torch.zeros(2, dtype=torch.long), "actions": torch.zeros(2, 5, 4)})
    with pytest.raises(ValueError, match="image"):
        model.sample(np.zeros((64, 64), np.uint8), np.zeros(4), 0)
    with pytest.raises(ValueError, match="unknown PriorConfig"):
        PriorConfig.from_dict({"stepz": 3})


def test_train_prior_resumes_and_round_trips(rollout_file, tmp_path, one_torch_thread):
    out = tmp_path / "prior"
    kw = dict(config=TINY, batch_size=4, only_success=False, progress=False, eval_every=5, amp=False)
    model, metrics = train_prior([rollout_file], [rollout_file], out, steps=10, **kw)
    assert (out / "prior.pt").is_file() and (out / "last.pt").is_file()
    assert np.isfinite(metrics["val_loss"]) and metrics["train_rows"] == 8
    loaded = ActionPrior.from_checkpoint(out / "prior.pt")
    frame = np.zeros((64, 64, 3), np.uint8)
    a = model.sample(frame, np.zeros(4), 0, 3, torch.Generator().manual_seed(1))
    b = loaded.sample(frame, np.zeros(4), 0, 3, torch.Generator().manual_seed(1))
    np.testing.assert_allclose(a, b, atol=1e-5)
    # finished: a second call resumes from last.pt and does no more steps
    lines = (out / "metrics.jsonl").read_text().count("\n")
    train_prior([rollout_file], [rollout_file], out, steps=10, **kw)
    assert lines > 0 and (out / "metrics.jsonl").read_text().count("\n") == lines
    from worldmodel.training import CheckpointError
    with pytest.raises(CheckpointError, match="does not exist"):
        ActionPrior.from_checkpoint(tmp_path / "nope.pt")


def test_planner_uses_the_proposals_first():
    planner = make_planner({"name": "cem", "horizon": 2, "repeat": 2, "samples": 4, "iterations": 1, "elites": 2})
    props = np.zeros((4, 4, 4), np.float32)
    props[2] = 0.5                                        # the only good proposal
    seen = []

    def score(c):
        seen.append(c.copy())
        return -np.abs(c - 0.5).sum(axis=(1, 2))
    res = planner.plan(score, rng=np.random.default_rng(0), proposals=props)
    np.testing.assert_allclose(seen[0], props, atol=1e-6)   # first iteration = the proposals
    np.testing.assert_allclose(res.actions, 0.5, atol=1e-6)
    warm = np.full((4, 4), -0.25, np.float32)
    planner.plan(score, warm_start=warm, rng=np.random.default_rng(0), proposals=props)
    np.testing.assert_allclose(seen[-1][0], warm, atol=1e-6)  # the warm start stays candidate 0
    with pytest.raises(ValueError, match="proposals"):
        planner.plan(score, proposals=props[:3])


def test_prior_agents_act_and_pickle(one_torch_thread):
    model = ActionPrior(TINY).eval()
    obs = {"image": np.zeros((64, 64, 3), np.uint8), "proprio": np.zeros(4, np.float32), "instruction": 0,
           "objects": np.zeros(3, np.float32)}
    agent = PriorAgent(model, execute=2)
    agent.reset(seed=3)
    acts = [agent.act(obs) for _ in range(4)]
    assert all(a.shape == (4,) and a.dtype == np.float32 and np.abs(a).max() <= 1 for a in acts)
    agent.reset(seed=3)
    np.testing.assert_allclose([agent.act(obs) for _ in range(4)], acts)   # repeatable per seed
    rnd = PriorAgent(model, execute=2, samples=4, pick="random")
    assert rnd.name == "prior_random" and rnd.act(obs).shape == (4,)
    assert pickle.loads(pickle.dumps(rnd)).act(obs).shape == (4,)
    with pytest.raises(ValueError, match="pick"):
        PriorAgent(model, pick="best")


def test_prior_agent_runs_in_worker_processes():
    """Agents holding torch state (a torch.Generator) reach spawned episode workers."""
    from agent.collect import run_episodes

    agent = PriorAgent(ActionPrior(TINY).eval(), execute=4)
    out = list(run_episodes("roboalign/Lift-v0", agent, [1, 2], workers=2))
    assert [r.seed for r in out] == [1, 2] and all(r.length > 0 for r in out)


def test_instruction_balanced_rows(rollout_file):
    """balance="instruction" draws a rare instruction as often as a common one."""
    data = PriorChunks(rollout_file, steps=4, only_success=False)
    data.instruction[:] = 0
    data.instruction[-2:] = 1                       # 6 rows of instruction 0, 2 of instruction 1
    rng = np.random.default_rng(0)
    plain = data.instruction[data.sample_rows(4000, rng)]
    balanced = data.instruction[data.sample_rows(4000, rng, "instruction")]
    assert abs(plain.mean() - 0.25) < 0.03 and abs(balanced.mean() - 0.5) < 0.03
    with pytest.raises(ValueError, match="balance must be"):
        data.sample_rows(4, rng, "colour")


def test_colour_swap_recolours_only_the_cubes_and_swaps_the_instruction(tmp_path):
    """Red-cube pixels take the green cube's colour (and back), nothing else changes,
    and "lift the red cube" becomes "lift the green cube"; Stack rows are left alone."""
    from envs.robosuite_env import LABELS
    from envs.vocab import instruction_id

    rng = np.random.default_rng(0)
    ep = _episode(4, 1.0, rng)
    img = np.full((4, 64, 64, 3), 200, np.uint8)
    seg = np.zeros((4, 64, 64), np.uint8)
    img[:, :8, :8], seg[:, :8, :8] = (180, 40, 40), LABELS["red_cube"]
    img[:, -8:, -8:], seg[:, -8:, -8:] = (40, 120, 60), LABELS["green_cube"]
    ep["obs"] = {**ep["obs"], "image": img, "segmentation": seg}
    ep["obs"]["instruction"] = np.array([0, 0, 1, instruction_id("stack the red cube on the green cube")])
    path = tmp_path / "pick_color_fake_train_0_1.hdf5"
    with atomic_path(path) as tmp:
        w = RolloutWriter(tmp, {})
        w.add(ep, success=True)
        w.close()
    with pytest.raises(ValueError, match="segmentation=True"):
        PriorChunks(path, steps=4).colour_gains()
    data = PriorChunks(path, steps=4, segmentation=True)
    idx = np.arange(4)
    plain, swapped = data.batch(idx), data.batch(idx, colour_swap=1.0)
    assert plain["instruction"].tolist() == [0, 0, 1, 2] and swapped["instruction"].tolist() == [1, 1, 0, 2]
    px = lambda b, i, y, x: (b["image"][i, :, y, x] * 255).round().tolist()   # noqa: E731
    assert px(swapped, 0, 0, 0) == pytest.approx([40, 120, 60], abs=3)     # red cube now green
    assert px(swapped, 0, 63, 63) == pytest.approx([180, 40, 40], abs=3)   # green cube now red
    assert px(swapped, 0, 30, 30) == [200, 200, 200]                         # background untouched
    assert torch.equal(swapped["image"][3], plain["image"][3])               # Stack row untouched
    assert torch.equal(swapped["actions"], plain["actions"])
