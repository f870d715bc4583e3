"""The no-world-model value of a plan (agent/value.py) and the prior agent's value pick."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from agent.prior import ActionPrior, PriorAgent, PriorConfig
from agent.value import PlanValue, ValueEnsemble, candidate_features, fit_value, frame_action_features, load_value

TINY = PriorConfig(steps=4, channels=(8, 16), keypoints=8, cond_dim=32, hidden=64, blocks=1, sample_steps=5)


def test_features_hold_the_frame_the_actions_and_the_step():
    image = np.zeros((2, 64, 64, 3), np.uint8)
    image[1] = 255
    actions = np.random.default_rng(0).uniform(-1, 1, (2, 3, 4, 4)).astype(np.float32)
    f = frame_action_features(image, actions, repeat=2, size=4)
    assert f.shape == (6, 2, 3 * 16 + 16 + 2)
    assert torch.all(f[:3, :, :48] == 0) and torch.all(f[3:, :, :48] == 1)          # rows: start-major
    np.testing.assert_allclose(f[4, 0, 48:64].numpy(), actions[1, 1].reshape(-1), atol=1e-6)
    assert torch.equal(f[0, :, 64:], torch.eye(2))
    with pytest.raises(ValueError, match="actions"):
        frame_action_features(image, actions[:, :, :3], repeat=2)


def test_fit_value_orders_candidates_and_round_trips(tmp_path, one_torch_thread):
    """Candidates whose first action moves down are better: the fitted value picks them."""
    rng = np.random.default_rng(0)
    s, n = 60, 4
    actions = rng.uniform(-1, 1, (s, n, 4, 4)).astype(np.float32)
    rewards = np.repeat((-actions[:, :, :1, 2] + 1) / 2, 4, axis=2).astype(np.float32)   # (S, N, 4)
    data = {"image": rng.integers(0, 255, (s, 64, 64, 3), dtype=np.uint8), "actions": actions, "rewards": rewards}
    value = fit_value([data], size=4, steps=400, hidden=32)
    va = candidate_features([data], size=4)
    with torch.no_grad():
        pred = value(va["features"]).squeeze(-1).mean(-1).reshape(s, n)
    assert (pred.argmax(1).numpy() == rewards.mean(-1).argmax(1)).mean() > 0.8
    value.save(tmp_path / "value.pt")
    back = PlanValue.load(tmp_path / "value.pt")
    obs = {"image": data["image"][0]}
    np.testing.assert_allclose(back.score(obs, actions[0]), value.score(obs, actions[0]), atol=1e-6)
    assert back.score(obs, actions[0]).shape == (n,)
    with pytest.raises(ValueError, match="chunks"):
        back.score(obs, actions[0, :, :3])
    torch.save({"kind": "other"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="plan_value"):
        PlanValue.load(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="value_pick"):
        PlanValue.load(tmp_path / "missing.pt")

    # an ensemble: the members' mean minus pessimism x their spread, saved and loaded as one file
    other = fit_value([data], size=4, steps=400, hidden=32, seed=1)
    ens = ValueEnsemble([value, other], pessimism=2.0)
    each = np.stack([value.score(obs, actions[0]), other.score(obs, actions[0])])
    np.testing.assert_allclose(ens.score(obs, actions[0]), each.mean(0) - 2.0 * each.std(0), atol=1e-5)
    with torch.no_grad():
        per_step = torch.stack([value(va["features"][:n]), other(va["features"][:n])])
        np.testing.assert_allclose(ens(va["features"][:n]).numpy(),
                                   (per_step.mean(0) - 2.0 * per_step.std(0, unbiased=False)).numpy(), atol=1e-5)
    ens.save(tmp_path / "ens.pt")
    np.testing.assert_allclose(load_value(tmp_path / "ens.pt").score(obs, actions[0]), ens.score(obs, actions[0]),
                               atol=1e-5)
    np.testing.assert_allclose(load_value(tmp_path / "ens.pt", pessimism=0.0).score(obs, actions[0]), each.mean(0),
                               atol=1e-5)
    assert isinstance(load_value(tmp_path / "value.pt"), PlanValue)
    with pytest.raises(ValueError, match="ensemble"):
        load_value(tmp_path / "value.pt", pessimism=1.0)
    with pytest.raises(ValueError, match="ensemble"):
        PlanValue.load(tmp_path / "ens.pt")
    with pytest.raises(ValueError, match="share one config"):
        ValueEnsemble([value, PlanValue(4, 2, 4, 16)])


def test_a_state_value_reads_the_observation_state(tmp_path, one_torch_thread):
    """Which way is better depends on the state alone (the frame is blank): only a state value can choose."""
    from envs.robosuite_env import state_vector

    rng = np.random.default_rng(1)
    s, n = 80, 4
    proprio = rng.uniform(-1, 1, (s, 4)).astype(np.float32)
    state = np.stack([state_vector(p, np.zeros(3), 0) for p in proprio])
    actions = rng.uniform(-1, 1, (s, n, 4, 4)).astype(np.float32)
    good = np.sign(proprio[:, :1, None]) * actions[:, :, :1, 2]                          # (S, N, 1)
    data = {"image": np.zeros((s, 64, 64, 3), np.uint8), "actions": actions, "state": state,
            "rewards": np.repeat((good + 1) / 2, 4, axis=2).astype(np.float32)}
    value = fit_value([data], inputs="state", steps=600, hidden=32)
    assert value.config["inputs"] == "state" and value.config["state_dim"] == state.shape[1]
    picks = [np.argmax(value.score({"image": data["image"][i], "proprio": proprio[i], "objects": np.zeros(3),
                                    "instruction": 0}, actions[i])) for i in range(s)]
    assert (np.array(picks) == good[:, :, 0].argmax(1)).mean() > 0.8
    value.save(tmp_path / "state.pt")
    assert PlanValue.load(tmp_path / "state.pt").config["inputs"] == "state"
    with pytest.raises(ValueError, match="another task"):
        value.score({"proprio": proprio[0], "objects": np.zeros(6), "instruction": 0}, actions[0])
    with pytest.raises(ValueError, match="add_states"):
        candidate_features([{k: v for k, v in data.items() if k != "state"}], inputs="state")
    with pytest.raises(ValueError, match="unknown value inputs"):
        candidate_features([data], inputs="pixels")


class LastIsBest:        # stands in for a PlanValue
    def score(self, obs, chunks):
        return np.arange(len(chunks), dtype=np.float32)


def test_prior_agent_executes_the_highest_value_sample(one_torch_thread):
    model = ActionPrior(TINY).eval()
    obs = {"image": np.zeros((64, 64, 3), np.uint8), "proprio": np.zeros(4, np.float32), "instruction": 0,
           "objects": np.zeros(3, np.float32)}
    agent = PriorAgent(model, execute=2, samples=5, pick="value", value=LastIsBest())
    agent.reset(seed=1)
    act = agent.act(obs)
    gen = torch.Generator().manual_seed(int(np.random.default_rng((0, 1)).integers(2**62)))
    chunks = model.sample(obs["image"], obs["proprio"], obs["instruction"], 5, gen)
    np.testing.assert_allclose(act, np.clip(chunks[-1][0], -1, 1), atol=1e-6)
    assert agent.name == "prior_value" and pickle.loads(pickle.dumps(agent)).act(obs).shape == (4,)
    with pytest.raises(ValueError, match="needs a value"):
        PriorAgent(model, pick="value")
    with pytest.raises(ValueError, match="needs a value"):
        PriorAgent(model, pick="random", value=LastIsBest())
    # with a temperature the value's scores weight a draw: the higher, the more often
    soft = PriorAgent(model, execute=1, samples=4, pick="value", value=LastIsBest(), temperature=1.0)
    soft.reset(seed=2)
    picks = []
    for _ in range(300):
        gen = torch.Generator().manual_seed(int(soft._gen.initial_seed()))
        gen.set_state(soft._gen.get_state())
        chunks = model.sample(obs["image"], obs["proprio"], obs["instruction"], 4, gen)
        act = soft.act(obs)
        picks.append(int(np.argmin(np.abs(np.clip(chunks[:, 0], -1, 1) - act).sum(-1))))
    counts = np.bincount(picks, minlength=4)
    assert np.all(np.diff(counts) > 0) and counts[0] > 0
    # warm start: the executed plan, shifted, replaces the first sample; a value that prefers it keeps it
    class FirstIsBest:
        seen = []

        def score(self, obs, chunks):
            self.seen.append(np.array(chunks))
            return -np.arange(len(chunks), dtype=np.float32)

    keeper = FirstIsBest()
    warm = PriorAgent(model, execute=2, samples=4, pick="value", value=keeper, warm_start=True)
    warm.reset(seed=3)
    acts = np.stack([warm.act(obs) for _ in range(8)])
    p0 = keeper.seen[0][0]                                  # (4 steps, 4): chosen first, then kept
    assert len(keeper.seen) == 4
    np.testing.assert_allclose(acts, np.clip(p0[[0, 1, 2, 3, 3, 3, 3, 3]], -1, 1), atol=1e-6)
    np.testing.assert_allclose(keeper.seen[1][0], p0[[2, 3, 3, 3]], atol=1e-6)
    # a gate: the value decides only where its best beats the mean by the gate (LastIsBest: by 1.5)
    runs = {}
    for key, kw in {"random": dict(pick="random"), "closed": dict(pick="value", value=LastIsBest(), gate=2.0),
                    "open": dict(pick="value", value=LastIsBest(), gate=1.0),
                    "best_closed": dict(pick="value", value=LastIsBest(), gate=3.5, gate_on="best"),
                    "best_open": dict(pick="value", value=LastIsBest(), gate=3.0, gate_on="best")}.items():
        agent_k = PriorAgent(model, execute=2, samples=4, **kw)
        agent_k.reset(seed=5)
        runs[key] = np.stack([agent_k.act(obs) for _ in range(6)])
    np.testing.assert_allclose(runs["closed"], runs["random"], atol=1e-6)
    np.testing.assert_allclose(runs["best_closed"], runs["random"], atol=1e-6)   # best scores 3 < 3.5
    np.testing.assert_allclose(runs["best_open"], runs["open"], atol=1e-6)
    assert not np.allclose(runs["open"], runs["random"])
    with pytest.raises(ValueError, match="gate"):
        PriorAgent(model, pick="random", gate=0.1)
    with pytest.raises(ValueError, match="warm_start"):
        PriorAgent(model, pick="random", warm_start=True)
    for bad in (dict(pick="value", value=LastIsBest(), temperature=0.0), dict(pick="random", temperature=1.0)):
        with pytest.raises(ValueError, match="temperature"):
            PriorAgent(model, **bad)


def test_grasp_offsets_read_where_the_gripper_closes():
    """The scripted expert aligns before it closes: a small offset, little time below the cube centre."""
    import gymnasium as gym

    import envs  # noqa: F401
    from agent.collect import make_agent
    from benchmarks.grasp_offset import grasp_offsets

    env = gym.make("roboalign/Lift-v0")
    try:
        r = grasp_offsets(env, make_agent("scripted"), [5])
    finally:
        env.close()
    assert r["success"] == [True] and len(r["offset"]) == 1 and r["offset"][0] < 0.02, r
    assert 0 <= r["below"][0] < 20, r


def test_executed_dz_compares_the_picks_first_z_commands():
    from benchmarks.value_pick import executed_dz

    actions = np.zeros((2, 2, 4, 4), np.float32)
    actions[:, 0, :2, 2], actions[:, 1, :2, 2] = -1.0, 0.5         # candidate 0 goes down, 1 up
    rewards = np.zeros((2, 2, 4), np.float32)
    rewards[0, 1], rewards[1, 0] = 1.0, 1.0                        # exact: up at state 0, down at state 1
    out = executed_dz([{"actions": actions, "rewards": rewards}], np.array([1.0, 0.0, 1.0, 0.0]), execute=2)
    assert out == pytest.approx({"pick": -1.0, "exact": -0.25, "random": -0.25})

