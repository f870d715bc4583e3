"""The world model's outcome head: reward labels per model step, fitting on the model's own
imagination, checkpoints, and the planner's objective term."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from agent.mpc import WorldModelMPC, plan_objective
from worldmodel.data import RolloutWindows
from worldmodel.outcome import fit_outcome, imagine_features, outcome_metrics
from worldmodel.tokenizer import DualFSQTokenizer, TokenizerConfig
from worldmodel.world_model import WorldModel

TOK = TokenizerConfig(channels=8, latent_dim=8, ctx_levels=(5, 5, 5), dyn_levels=(5, 5, 5))


@pytest.fixture(scope="module")
def wm():
    torch.manual_seed(0)
    return WorldModel.build(DualFSQTokenizer(TOK), {"d_model": 32, "n_layers": 1, "n_heads": 2},
                            action_repeat=2, window=3).eval()


@pytest.fixture(scope="module")
def episode_file(tmp_path_factory):
    """One scripted Lift episode (it succeeds: its rewards climb to the success reward 1.0)."""
    from agent.collect import collect

    path = tmp_path_factory.mktemp("outcome") / "lift.hdf5"
    collect("roboalign/Lift-v0", "scripted", 1, path, split="train", workers=1, progress=False)
    return path


def test_windows_carry_the_reward_after_each_model_step(episode_file):
    from envs.rollouts import read_episode

    rewards = read_episode(episode_file, 0)["rewards"]
    windows = RolloutWindows([episode_file], window=4, action_repeat=2, stride=6)
    for i in (0, len(windows) - 1):
        item = windows[i]
        want = [rewards[item["start"] + 2 * (t + 1) - 1] for t in range(4)]
        assert item["rewards"].shape == (4,) and np.allclose(item["rewards"].numpy(), want)
    assert float(rewards.max()) == pytest.approx(1.0)          # the success reward the metrics use


def test_outcome_head_is_fitted_on_imagination_and_leaves_the_world_model_alone(wm, episode_file, tmp_path,
                                                                              one_torch_thread):
    windows = RolloutWindows([episode_file], window=4, action_repeat=2, stride=2)
    feats = imagine_features(wm, windows, draws=2, batch_size=16, progress=False)
    n, d = len(windows), wm.dynamics.cfg.d_model
    assert feats["features"].shape == (2 * n, 4, d) and feats["rewards"].shape == (2 * n, 4)
    assert torch.equal(feats["window"], torch.arange(n).repeat_interleave(2))    # a window's draws adjacent
    assert torch.equal(feats["rewards"][0], feats["rewards"][1])
    assert not torch.allclose(feats["features"][0], feats["features"][1])        # two imagined draws
    with pytest.raises(ValueError, match="outcome head"):
        wm.dynamics.predict_outcome(feats["features"])

    head_wm, metrics = fit_outcome(wm, feats, feats, hidden=32, steps=400, lr=3e-3, progress=False)
    m = metrics["train"]
    # it beats the best constant (an untrained tiny model's features still tell early from late)
    assert m["r2"] > 0.2 and m["mse"] < m["mse_const"] and m["auc_final"] > 0.6, m
    assert metrics["val"] == m
    # every weight but the head's is the world model's own
    own = wm.state_dict()
    for k, v in head_wm.state_dict().items():
        if not k.startswith("dynamics.outcome."):
            assert torch.equal(v, own[k]), k
    # a rollout returns its outcome estimate per step; a checkpoint keeps the head
    frames, actions = windows[0]["frames"][:1].float() / 255, windows[0]["actions"][None]
    roll = head_wm.rollout(frames, actions, generator=torch.Generator().manual_seed(1))
    assert roll.outcome.shape == (1, 4) and roll.features.shape == (1, 4, d)
    assert torch.allclose(roll.outcome, head_wm.dynamics.predict_outcome(roll.features))
    assert wm.rollout(frames, actions).outcome is None
    head_wm.save(tmp_path / "wm.pt")
    back = WorldModel.from_checkpoint(tmp_path / "wm.pt")
    again = back.rollout(frames, actions, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.outcome, roll.outcome)
    # the teacher-forced features are the step features the head reads in a rollout (up to
    # the first SWR boundary, W = 3: the 4th step is imagined under a re-encoded context)
    ctx, prev = back.encode(frames)
    tf = back.dynamics.features(ctx, prev, actions, roll.tokens)
    assert torch.allclose(tf[:, :3], roll.features[:, :3], atol=1e-4)


def test_outcome_metrics_reward_a_separating_prediction():
    rewards = torch.tensor([[0.1, 0.2], [0.2, 1.0], [0.1, 0.3], [0.5, 1.0]])
    good = outcome_metrics(rewards.clone(), rewards)
    assert good["mse"] == 0 and good["r2"] == 1 and good["auc_final"] == 1 and good["success_windows"] == 2
    flat = outcome_metrics(torch.full_like(rewards, float(rewards.mean())), rewards)
    assert flat["mse"] == pytest.approx(flat["mse_const"]) and flat["auc_final"] == 0.5
    assert np.isnan(outcome_metrics(rewards, torch.zeros_like(rewards))["auc_final"])   # no success at all


class ZeroReward:
    def score(self, frames, instruction, **kw):
        b = frames.shape[0]
        return {"dims": torch.zeros(b, 6), "shaping": torch.zeros(b, 3), "total": torch.zeros(b)}


def test_planner_objective_adds_the_outcome_estimate(wm, tmp_path, one_torch_thread):
    out = {"dims": torch.zeros(2, 6), "shaping": torch.zeros(2, 3)}
    outcome = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    weights = {"IF": 0, "MS": 0, "AOC": 0, "TC": 0, "CR": 0, "PA": 0, "target_rise": 0, "grip_dist": 0,
               "progress": 0, "outcome": 2.0}
    assert torch.allclose(plan_objective(out, weights, outcome), torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="outcome head"):
        plan_objective(out, weights)
    # the MPC's best plan is the candidate the head rates highest (the student scores all alike)
    head_wm = wm.with_outcome_head(8)
    torch.nn.init.normal_(head_wm.dynamics.outcome[0].weight, 0, 1.0)
    agent = WorldModelMPC(head_wm, ZeroReward(), planner={"name": "cem", "horizon": 4, "samples": 6,
                                                          "iterations": 1, "elites": 2},
                          weights={"outcome": 1.0, "target_rise": 0.0, "grip_dist": 0.0})
    agent.reset(seed=0)
    obs = {"image": np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), "instruction": 0}
    agent.act(obs)
    assert agent.log[-1]["best_score"] != 0.0
    with pytest.raises(ValueError, match="outcome head"):
        WorldModelMPC(wm, ZeroReward(), planner={"name": "cem", "horizon": 4, "samples": 6, "iterations": 1,
                                                 "elites": 2}, weights={"outcome": 1.0}).act(obs)


def test_train_outcome_script_needs_a_world_model_and_a_known_label(tmp_path):
    from hydra import compose, initialize_config_dir

    from experiments.train_outcome import run
    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train_outcome", [f"artifacts={tmp_path}"])
        with pytest.raises(ValueError, match="worldmodel_ckpt is required"):
            run(cfg)
        cfg = compose("train_outcome", [f"artifacts={tmp_path}", f"worldmodel_ckpt={tmp_path / 'no.pt'}"])
        with pytest.raises(FileNotFoundError, match="not found"):
            run(cfg)
        # oracle values exist only for counterfactual candidates, not recorded episodes
        cfg = compose("train_outcome", [f"artifacts={tmp_path}", "data.label=values"])
        with pytest.raises(ValueError, match="data.train=\\[\\] data.val=\\[\\]"):
            run(cfg)
        cfg = compose("train_outcome", [f"artifacts={tmp_path}", "data.label=value"])
        with pytest.raises(ValueError, match="unknown data.label"):
            run(cfg)


def test_counterfactuals_replay_each_candidate_from_the_visited_state(tmp_path, one_torch_thread):
    """Each candidate's rewards are what the simulator gives for those actions from that
    exact state; the states are the agent's own."""
    import gymnasium as gym

    from agent.collect import make_agent
    from agent.counterfactual import add_states, candidate_labels, collect_counterfactuals, load_counterfactuals
    from agent.oracle import OracleP
    from envs.robosuite_env import state_vector
    from worldmodel.outcome import CandidateClips

    class FixedPrior:     # stands in for the action prior: a ramp of plans, down to the cube
        def sample(self, image, proprio, instruction, n, generator=None):
            plans = np.zeros((n, 4, 4), np.float32)
            plans[:, :, 2] = -np.linspace(0, 1, n)[:, None]
            return plans

    data = collect_counterfactuals(tmp_path / "cf.npz", "roboalign/Lift-v0", make_agent("scripted"), FixedPrior(),
                                   [5], every=6, samples=3, progress=False)
    s = len(data["seed"])
    assert s >= 2 and data["actions"].shape == (s, 3, 4, 4) and data["rewards"].shape == (s, 3, 4)
    assert list(data["t"][:2]) == [0, 6] and set(data["seed"]) == {5}
    back = load_counterfactuals(tmp_path / "cf.npz")
    assert all(np.array_equal(back[k], data[k]) for k in data)
    # replay the second state's last candidate by hand: the same rewards
    env = gym.make("roboalign/Lift-v0")
    try:
        agent = make_agent("scripted")
        agent.reset(seed=5)
        obs, _ = env.reset(seed=5)
        for _ in range(6):
            obs, *_ = env.step(agent.act(obs))
        assert np.array_equal(obs["image"], data["image"][1])
        assert np.array_equal(data["state"][1], state_vector(obs["proprio"], obs["objects"], obs["instruction"]))
        state = env.unwrapped.get_sim_state()
        want = [env.step(a)[1] for a in data["actions"][1, 2]]
        # the oracle values sum to what oracle-P scores the plan with from that state
        oracle = OracleP()
        oracle.attach_privileged_env(env)
        score, _ = oracle.rollout_return(state, data["actions"][1, 2])
    finally:
        env.close()
    assert np.allclose(data["rewards"][1, 2], want, atol=1e-5)
    assert data["values"].shape == (s, 3, 4) and np.isclose(data["values"][1, 2].sum(), score, atol=1e-4)
    assert np.array_equal(candidate_labels(back, "values")[0], data["values"])
    success, at = candidate_labels(back, "success")
    assert at == 1.0 and np.array_equal(success, (data["rewards"] >= 1.0 - 1e-6).astype(np.float32))
    with pytest.raises(ValueError, match="collect it again"):
        candidate_labels({k: v for k, v in back.items() if k != "values"}, "values")
    with pytest.raises(ValueError, match="unknown counterfactual label"):
        candidate_labels(back, "value")
    # as clips: model steps of 2 control steps, the reward after each model step's last one
    clips = CandidateClips(data["image"], data["actions"], data["rewards"], action_repeat=2)
    item = clips[4]          # start 1, candidate 1
    assert len(clips) == 3 * s and item["group"] == 1 and item["frames"].shape == (1, 3, 64, 64)
    assert item["actions"].shape == (2, 8) and np.allclose(item["rewards"], data["rewards"][1, 1, 1::2])
    with pytest.raises(ValueError, match="disagree"):
        CandidateClips(data["image"][:1], data["actions"], data["rewards"])
    with pytest.raises(FileNotFoundError, match="collect_counterfactual"):
        load_counterfactuals(tmp_path / "missing.npz")
    # a file without states gets them back by retracing its agent's episodes; another agent is refused
    np.savez(tmp_path / "old.npz", **{k: v for k, v in data.items() if k != "state"})
    assert "state" not in load_counterfactuals(tmp_path / "old.npz")
    assert np.array_equal(add_states(tmp_path / "old.npz", "roboalign/Lift-v0", make_agent("scripted"),
                                     progress=False)["state"], data["state"])
    assert np.array_equal(load_counterfactuals(tmp_path / "old.npz")["state"], data["state"])
    with pytest.raises(ValueError, match="does not retrace"):
        add_states(tmp_path / "old.npz", "roboalign/Lift-v0", make_agent("random"), progress=False)


def test_choice_metrics_compare_the_pick_with_a_random_one():
    from worldmodel.outcome import choice_metrics

    # two starts x 3 candidates; the success reward 1.0 is reached by one candidate of start 0
    rewards = torch.tensor([[0.1, 1.0], [0.1, 0.2], [0.0, 0.1], [0.3, 0.3], [0.2, 0.2], [0.1, 0.1]])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    right = choice_metrics(rewards.clone(), rewards, groups)
    assert right["pairwise"] == 1.0 and right["pick_success"] == 0.5 and right["best_success"] == 0.5
    assert right["random_success"] == pytest.approx(1 / 6)
    wrong = choice_metrics(-rewards, rewards, groups)
    assert wrong["pairwise"] == 0.0 and wrong["pick_success"] == 0.0 and wrong["pairs"] == right["pairs"] == 6
    # the true mean reward of the pick: start 0 (0.55, 0.15, 0.05), start 1 (0.3, 0.2, 0.1)
    assert right["pick_value"] == pytest.approx((0.55 + 0.3) / 2) and right["best_value"] == right["pick_value"]
    assert wrong["pick_value"] == pytest.approx((0.05 + 0.1) / 2)
    assert right["random_value"] == pytest.approx((0.25 + 0.2) / 2)
    assert right["value_gain"] == pytest.approx(1.0) and wrong["value_gain"] < 0
    assert right["decisive"] == 1 and right["decisive_gain"] == pytest.approx(1.0)   # start 0 only
    assert wrong["decisive_gain"] == pytest.approx((0.05 - 0.25) / (0.55 - 0.25))
    # room to choose (best - mean): start 0 has 0.30, start 1 0.10; a prediction that prefers strongly
    # at start 1 and hardly at start 0 orders the same way but its confidence is misplaced
    assert right["spread_corr"] == pytest.approx(1.0)
    misplaced = choice_metrics(rewards * torch.tensor([0.1, 0.1, 0.1, 10, 10, 10])[:, None], rewards, groups)
    assert misplaced["pairwise"] == 1.0 and misplaced["spread_corr"] == pytest.approx(-1.0)
    # the top pick's predicted minus true gain over its start's mean: 0 when exact; here
    # start 0 predicts 0.03 for a true 0.30, start 1 1.0 for a true 0.10
    assert right["pick_optimism"] == pytest.approx(0.0, abs=1e-6)
    assert misplaced["pick_optimism"] == pytest.approx(((0.03 - 0.30) + (1.0 - 0.10)) / 2, abs=1e-5)


def test_rank_loss_orders_candidates_of_one_start():
    """A head fitted with the ranking term orders each start's candidates by their outcome
    (a small within-start signal under a large between-start one)."""
    from worldmodel.outcome import fit_outcome

    torch.manual_seed(0)
    wm = WorldModel.build(DualFSQTokenizer(TOK), {"d_model": 16, "n_layers": 1, "n_heads": 2},
                          action_repeat=2, window=3).eval()
    g = torch.Generator().manual_seed(0)
    starts, cands, t = 40, 4, 2
    base = torch.randn(starts, 1, 1, 16, generator=g) * 3          # between-start variation
    quality = torch.randn(starts, cands, 1, 1, generator=g)          # within-start: one feature
    feats = (base + torch.randn(starts, cands, t, 16, generator=g) * 0.1).clone()
    feats[..., 0] += quality[..., 0, 0][..., None]
    rewards = (base[..., 0].expand(starts, cands, t) * 0.5 + 0.1 * quality[..., 0]).flatten(0, 1)
    data = {"features": feats.flatten(0, 1), "rewards": rewards,
            "group": torch.arange(starts).repeat_interleave(cands), "window": torch.arange(starts * cands)}
    from worldmodel.outcome import choice_metrics
    with pytest.raises(ValueError, match="grouped by start"):
        fit_outcome(wm, {k: v for k, v in data.items() if k != "group"}, steps=2, rank_weight=1.0, progress=False)
    ranked, _ = fit_outcome(wm, data, hidden=16, steps=300, lr=3e-3, rank_weight=1.0, progress=False)
    with torch.no_grad():
        m = choice_metrics(ranked.dynamics.predict_outcome(data["features"]), rewards, data["group"], tol=0.0)
    assert m["pairwise"] > 0.8, m


def test_rank_focus_follows_the_starts_where_the_choice_matters():
    """Most starts slightly prefer a low feature; a few prefer a high one by far. A linear head
    (no interactions) ranked uniformly follows the many; aimed by ``rank_focus`` it follows the few."""
    from worldmodel.outcome import _rank_loss, train_head

    g = torch.Generator().manual_seed(0)
    starts, cands = 200, 6
    a = torch.rand(starts, cands, generator=g) * 2 - 1
    decisive = torch.arange(starts) % 20 == 0                                   # 5% of starts
    value = torch.where(decisive[:, None], 0.5 + 0.5 * a, 0.5 - 0.05 * a)
    data = {"features": a.reshape(-1, 1, 1), "rewards": value.reshape(-1, 1),
            "group": torch.arange(starts).repeat_interleave(cands)}
    slopes = {}
    for focus in (False, True):
        head = train_head(torch.nn.Linear(1, 1), data, steps=300, lr=1e-2, rank_weight=5.0, rank_focus=focus,
                          progress=False)
        slopes[focus] = head.weight.item()
    assert slopes[False] < 0 < slopes[True], slopes
    # by_gap weights each pair by its true gap: hand-computed for one start of three rows
    head = torch.nn.Linear(1, 1)
    with torch.no_grad():
        head.weight.fill_(1.0)
        head.bias.zero_()
    x, y = torch.tensor([[[0.0]], [[1.0]], [[2.0]]]), torch.tensor([[0.0], [0.1], [0.4]])
    pairs = [(0.1, 1.0), (0.4, 2.0), (0.3, 1.0)]                                  # (gap, prediction gap)
    want = sum(w * F.softplus(torch.tensor(-d / 0.05)) for w, d in pairs) / sum(w for w, _ in pairs)
    got = _rank_loss(head, x, y, [torch.arange(3)], tol=0.02, temperature=0.05, by_gap=True)
    assert torch.isclose(got, want, atol=1e-6)
    # the advantage loss: centred predictions (-1, 0, 1) against centred truth (-1/6, -1/15, 7/30)
    adv = _rank_loss(head, x, y, [torch.arange(3)], tol=0.02, temperature=0.05, kind="advantage")
    centred = torch.tensor([-1.0, 0.0, 1.0]) - (y[:, 0] - y[:, 0].mean())
    assert torch.isclose(adv, centred.pow(2).mean(), atol=1e-6)


def test_advantage_loss_keeps_the_gaps_at_their_true_size():
    """Within-start gaps 0.03 (most starts) and 0.5 (a few): the logistic pair loss pushes every
    pair apart by several temperatures, so the head over-states the small gaps; the advantage
    regression keeps each start's predicted gap near its true gap."""
    from worldmodel.outcome import train_head

    g = torch.Generator().manual_seed(0)
    starts, cands = 200, 4
    a = torch.rand(starts, cands, generator=g)
    big = (torch.arange(starts) % 10 == 0).float()[:, None]
    value = a * (0.03 + 0.47 * big)                             # true gap scales with the start's kind
    feats = torch.stack([a, big.expand(-1, cands), a * big], -1)  # the head can tell the kinds apart
    data = {"features": feats.reshape(-1, 1, 3), "rewards": value.reshape(-1, 1),
            "group": torch.arange(starts).repeat_interleave(cands)}
    true_small = (value.max(1).values - value.min(1).values)[big[:, 0] == 0].mean()
    gaps = {}
    for kind in ("logistic", "advantage"):
        head = train_head(torch.nn.Linear(3, 1), data, steps=400, lr=1e-2, rank_weight=10.0, rank_loss=kind,
                          progress=False)
        with torch.no_grad():
            p = head(feats).squeeze(-1)
        gaps[kind] = float((p.max(1).values - p.min(1).values)[big[:, 0] == 0].mean())
    assert gaps["logistic"] > 2 * true_small and abs(gaps["advantage"] - true_small) < 0.3 * true_small, \
        (gaps, float(true_small))
    with pytest.raises(ValueError, match="rank_loss"):
        train_head(torch.nn.Linear(3, 1), data, steps=1, rank_weight=1.0, rank_loss="hinge", progress=False)
