"""Planner: CEM / MPPI find a known optimum, warm start shifts, the world-model MPC
agent acts from observations only, oracle-P beats random on the true dense reward."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from agent.base import RandomAgent
from agent.collect import run_episode
from agent.mpc import WorldModelMPC
from agent.objective import aggregate_futures, plan_objective
from agent.oracle import OracleP, OracleS
from agent.planner import CEM, MPPI, ChunkParam, make_planner, shift_actions, softmax_weights
from envs.splits import split_seeds

LIFT = "roboalign/Lift-v0"


def _quadratic(target: np.ndarray):
    def score(cands: np.ndarray) -> np.ndarray:
        return -((cands - target) ** 2).sum(axis=(1, 2))
    return score


@pytest.mark.parametrize("name,extra", [("cem", {"elites": 16}), ("mppi", {"temperature": 0.5, "pick": "mean"})])
def test_planners_find_the_optimum_of_a_quadratic(name, extra):
    param = ChunkParam(horizon=4, repeat=2)
    target = param.decode(np.random.default_rng(0).uniform(-0.8, 0.8, (1, 4, 4)))[0]
    planner = make_planner({"name": name, "horizon": 4, "repeat": 2, "samples": 128, "iterations": 15,
                            "init_std": 0.6, "min_std": 0.01, **extra})
    res = planner.plan(_quadratic(target), rng=np.random.default_rng(1))
    assert res.actions.shape == (8, 4) and res.evaluations == 128 * 15
    assert np.abs(res.actions - target).max() < 0.1
    # one iteration from scratch is far worse: the iterations do the work
    one = make_planner({"name": name, "horizon": 4, "samples": 128, "iterations": 1, **extra})
    assert _quadratic(target)(res.actions[None])[0] > _quadratic(target)(one.plan(
        _quadratic(target), rng=np.random.default_rng(1)).actions[None])[0]


def test_knot_parametrization_interpolates_and_round_trips():
    p = ChunkParam(horizon=8, repeat=2, knots=3)
    params = np.array([[[-1, 0, 0, -1], [0, 0, 0, 0], [1, 0, 0, 1]]], float)
    a = p.decode(params)[0]
    assert a.shape == (16, 4) and np.allclose(a[0], [-1, 0, 0, -1]) and np.allclose(a[-1], [1, 0, 0, 1])
    assert np.all(np.diff(a[::2, 0]) >= 0)                    # linear ramp per model step
    assert np.allclose(p.encode(a), params[0], atol=1e-6)
    with pytest.raises(ValueError):
        ChunkParam(horizon=4, knots=5)


def test_warm_start_shifts_and_seeds_the_mean():
    a = np.repeat(np.arange(8 * 4, dtype=np.float32).reshape(8, 4) / 50, 2, axis=0)  # held for 2 steps
    s = shift_actions(a, 2)
    assert np.array_equal(s[:14], a[2:]) and np.array_equal(s[14:], a[[15, 15]])
    seen = []

    def score(c):
        seen.append(c.copy())
        return np.zeros(len(c))

    CEM(horizon=8, samples=8, iterations=1).plan(score, warm_start=s, rng=np.random.default_rng(0))
    assert np.allclose(seen[0][0], s, atol=1e-6)              # candidate 0 is the warm start
    with pytest.raises(TypeError):
        make_planner({"name": "cem", "sample": 3})            # a typo is an error, not ignored
    with pytest.raises(KeyError):
        make_planner({"name": "nope"})


def test_mppi_weights_are_a_softmax_over_scores():
    w = MPPI(horizon=2, samples=4).weights(np.array([0.0, 1.0, 2.0, -np.inf]))
    assert np.isclose(w.sum(), 1) and w[3] == 0 and w[2] > w[1] > w[0]
    s = np.array([0.0, 1.0, 3.0])                    # the temperature is in units of the spread: scale-free
    assert np.allclose(softmax_weights(s, 1.0), softmax_weights(100 * s + 7, 1.0))
    assert softmax_weights(s, 1e-3)[2] > 0.999 and np.allclose(softmax_weights(s, 1e3), 1 / 3, atol=1e-3)
    assert np.allclose(softmax_weights(np.full(3, -np.inf), 1.0), 1 / 3)


def test_top_k_pick_draws_uniformly_among_the_k_best():
    proposals = np.zeros((4, 4, 4), np.float32)
    proposals[:, :, 0] = np.array([-0.9, -0.3, 0.3, 0.9])[:, None]      # candidate k: dx of its own
    score = lambda c: c[:, 0, 0] * 10                                   # noqa: E731  higher dx is better
    planner = make_planner({"name": "cem", "horizon": 2, "samples": 4, "iterations": 1, "elites": 2,
                            "pick": "top_k", "pick_k": 2})
    rng = np.random.default_rng(0)
    picked = [int(np.argmin(np.abs(planner.plan(score, rng=rng, proposals=proposals).actions[0, 0]
                                   - proposals[:, 0, 0]))) for _ in range(200)]
    counts = np.bincount(picked, minlength=4)
    assert counts[0] == counts[1] == 0 and counts[2] > 60 and counts[3] > 60       # the two best, about evenly
    one = make_planner({"name": "cem", "horizon": 2, "samples": 4, "iterations": 1, "elites": 2, "pick": "top_k"})
    assert np.isclose(one.plan(score, rng=rng, proposals=proposals).actions[0, 0], 0.9)   # k = 1: the argmax
    with pytest.raises(ValueError, match="pick_k"):
        make_planner({"name": "cem", "pick": "top_k", "pick_k": 0})


def test_switching_cost_breaks_a_tie_toward_the_previous_plan():
    """Two proposals score the same; the switching cost picks the one closer to the previous
    plan (the warm start); without it the first of the tied ones wins. The warm start itself
    (candidate 0) scores worst here, so only the tie is decided."""
    proposals = np.zeros((3, 4, 4), np.float32)
    proposals[1, :, 0], proposals[2, :, 0] = -0.8, 0.7         # both tie at the top score
    previous = np.full((4, 4), 0.0, np.float32)
    previous[:, 0] = 0.9                                        # the previous plan went +x

    def score(c):
        return np.where(np.abs(c[:, 0, 0]) > 0.5, 1.0, 0.0)     # the warm start (dx 0.9) is candidate 0

    def plan(cost):
        planner = make_planner({"name": "cem", "horizon": 2, "samples": 3, "iterations": 1, "elites": 2,
                                "switch_cost": cost})
        return float(planner.plan(lambda c: score(c) - 10 * (np.arange(len(c)) == 0), warm_start=previous,
                                  rng=np.random.default_rng(0), proposals=proposals).actions[0, 0])
    assert np.isclose(plan(0.0), -0.8)       # argmax: the first of the tied candidates
    assert np.isclose(plan(0.1), 0.7)        # closer to the previous plan's +x
    with pytest.raises(ValueError, match="switch_cost"):
        make_planner({"name": "cem", "switch_cost": -1.0})


def test_sample_pick_draws_the_last_iteration_by_softmax_weights():
    """pick='sample' executes a candidate drawn with softmax weights: near the argmax when
    cold, near the proposals' own frequencies when hot; the drawn candidate's score is reported."""
    proposals = np.zeros((4, 4, 4), np.float32)
    proposals[:, :, 0] = np.array([-0.9, -0.3, 0.3, 0.9])[:, None]      # candidate k: dx of its own
    score = lambda c: c[:, 0, 0] * 10                                   # noqa: E731  higher dx is better

    def drawn(temp, n=400):
        planner = make_planner({"name": "cem", "horizon": 2, "samples": 4, "iterations": 1, "elites": 2,
                                "pick": "sample", "pick_temperature": temp})
        rng = np.random.default_rng(0)
        res = [planner.plan(score, rng=rng, proposals=proposals) for _ in range(n)]
        assert all(np.isclose(r.score, score(r.actions[None])[0]) for r in res[:5])
        return np.bincount([int(np.argmin(np.abs(r.actions[0, 0] - proposals[:, 0, 0]))) for r in res],
                           minlength=4) / n

    assert drawn(0.01)[3] == 1.0
    hot = drawn(100.0)
    assert hot.min() > 0.18                          # every proposal, about uniformly
    mid = drawn(1.0)
    assert np.all(np.diff(mid) > 0) and mid[3] < 0.9  # ordered by score, not only the best
    with pytest.raises(ValueError, match="pick_temperature"):
        make_planner({"name": "cem", "horizon": 2, "pick": "sample", "pick_temperature": 0})


# ---------------------------------------------------------------------- world-model MPC
class ToyReward:
    """Stands in for the student: brighter imagined last frames score higher."""

    def __init__(self):
        self.calls = []

    def score(self, frames, instruction, **kw):
        assert frames.dim() == 5 and frames.shape[2:] == (3, 64, 64) and instruction.dtype == torch.long
        self.calls.append(tuple(frames.shape))
        self.actions = kw.pop("actions", None)
        assert not kw
        b = frames.shape[0]
        dims = frames[:, -1].mean((1, 2, 3))[:, None].expand(b, 6).clamp(0, 1)
        self.last_dims = dims
        return {"dims": dims, "shaping": torch.zeros(b, 3), "total": dims.sum(-1)}


class SpyObs(dict):
    """An observation dict that records which keys the agent read."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.read = set()

    def __getitem__(self, k):
        self.read.add(k)
        return super().__getitem__(k)

    def get(self, k, default=None):
        self.read.add(k)
        return super().get(k, default)


@pytest.fixture(scope="module")
def tiny_wm():
    from worldmodel.tokenizer import DualFSQTokenizer, TokenizerConfig
    from worldmodel.world_model import WorldModel

    torch.manual_seed(0)
    tok = TokenizerConfig(channels=8, latent_dim=8, ctx_levels=(5, 5, 5), dyn_levels=(5, 5, 5))
    return WorldModel.build(DualFSQTokenizer(tok), {"d_model": 32, "n_layers": 1, "n_heads": 2},
                            action_repeat=2, window=3).eval()


def test_mpc_adds_the_lift_read_off_the_imagined_proprio(tiny_wm, one_torch_thread):
    """With a proprio world model the MPC reads the observation's proprio, the imagined proprio
    starts from it, and ``proprio_weight`` adds the proprio-read lift to each candidate."""
    from worldmodel.judge.proprio import proprio_lifted
    from worldmodel.tokenizer import DualFSQTokenizer, TokenizerConfig
    from worldmodel.world_model import WorldModel

    torch.manual_seed(0)
    tok = TokenizerConfig(channels=8, latent_dim=8, ctx_levels=(5, 5, 5), dyn_levels=(5, 5, 5))
    pwm = WorldModel.build(DualFSQTokenizer(tok), {"d_model": 32, "n_layers": 1, "n_heads": 2, "proprio_bins": 8,
                                                   "proprio_low": [-0.3, -0.3, 0.8, 0.0],
                                                   "proprio_high": [0.3, 0.3, 1.2, 0.09]},
                           action_repeat=2, window=3).eval()
    planner = {"name": "cem", "horizon": 4, "samples": 6, "iterations": 1, "elites": 2}
    reward = ToyReward()
    agent = WorldModelMPC(pwm, reward, planner=planner, proprio_weight=5.0)
    agent.reset(seed=0)
    obs = SpyObs(image=np.full((64, 64, 3), 100, np.uint8), proprio=np.array([0.0, 0.0, 1.0, 0.08], np.float32),
                 instruction=0, objects=np.zeros(3, np.float32))
    real_imagine, seen = agent.scorer.imagine, {}

    def imagine(image, actions, gen=None, proprio=None):     # every other candidate ends held and raised
        clips = real_imagine(image, actions, gen, proprio)
        seen["start"], seen["actions"] = agent.scorer.last_proprio[:, 0].copy(), actions
        lp = np.tile(np.array([0.0, 0.0, 1.0, 0.001], np.float32), (len(actions), 5, 1))
        lp[::2, -2:, 3] = 0.05
        agent.scorer.last_proprio = lp
        return clips

    agent.scorer.imagine = imagine
    agent.act(obs)
    assert "proprio" in obs.read and np.allclose(seen["start"], obs["proprio"])
    lifted = proprio_lifted(agent.scorer.last_proprio, seen["actions"][:, -1, 3])
    assert lifted.any()
    base = plan_objective({"dims": reward.last_dims}, agent.weights).numpy()
    assert np.isclose(agent.log[-1]["best_score"], (base + 5.0 * lifted).max(), atol=1e-5)
    with pytest.raises(ValueError, match="proprio tokens"):
        WorldModelMPC(tiny_wm, ToyReward(), planner=planner, proprio_weight=1.0).act(obs)
    with pytest.raises(ValueError, match="proprio_weight"):
        WorldModelMPC(pwm, ToyReward(), planner=planner, proprio_weight=-1.0)


def test_world_model_mpc_acts_from_observations_only(tiny_wm, one_torch_thread, tmp_path):
    reward = ToyReward()
    agent = WorldModelMPC(tiny_wm, reward, planner={"name": "cem", "horizon": 4, "samples": 6,
                                                    "iterations": 2, "elites": 2}, execute=2)
    agent.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs = SpyObs(image=rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
                     proprio=np.zeros(4, np.float32), instruction=0, objects=np.zeros(3, np.float32))
        a = agent.act(obs)
        assert a.shape == (4,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1)
        assert obs.read <= {"image", "instruction"}          # never objects (privileged), never info
    assert len(agent.log) == 3 and [e["step"] for e in agent.log] == [0, 2, 4]
    assert reward.calls[0] == (6, 5, 3, 64, 64)               # all candidates in one batch, start prepended
    assert agent.last_imagined.shape == (5, 64, 64, 3) and agent.last_imagined.dtype == np.uint8
    assert all(e["plan_s"] >= e["wm_s"] > 0 for e in agent.log)
    extras = agent.episode_log()                              # what the closed loop's videos read
    assert [s for s, _ in extras["imagined"]] == [0, 2, 4] and extras["repeat"] == 2
    agent.reset()
    assert agent._plan is None and agent.log == [] and agent.last_imagined is None
    assert reward.actions is None                              # video only by default
    # score_actions: the reward also gets every candidate's control actions, clipped to [-1, 1]
    seen = WorldModelMPC(tiny_wm, reward, planner={"name": "cem", "horizon": 4, "samples": 6, "iterations": 1,
                                                   "elites": 2}, score_actions=True)
    seen.act(obs)
    assert reward.actions.shape == (6, 8, 4) and reward.actions.dtype == torch.float32
    assert reward.actions.abs().max() <= 1
    # futures: every candidate imagined k times in the same batch, the objective their mean
    draw_reward = ToyReward()
    fut = WorldModelMPC(tiny_wm, draw_reward, planner={"name": "cem", "horizon": 4, "samples": 6, "iterations": 1,
                                                  "elites": 2}, futures=3)
    fut.reset(seed=3)
    real_imagine = fut.scorer.imagine
    draws = torch.Generator().manual_seed(0)
    fut.scorer.imagine = lambda image, actions, **kw: real_imagine(image, actions, **kw) * 0 + torch.rand(  # draws that
        (len(actions), 5, 3, 64, 64), generator=draws)   # differ (the tiny model's are all alike)
    fut.act(obs)
    assert draw_reward.calls[-1] == (18, 5, 3, 64, 64)
    per_draw = plan_objective({"dims": draw_reward.last_dims}, fut.weights).reshape(6, 3)
    assert not torch.allclose(per_draw[:, 0], per_draw[:, 1])              # the draws differ
    assert np.isclose(fut.log[-1]["best_score"], per_draw.mean(1).max().item(), atol=1e-5)
    # pessimism: mean - l * spread over the draws; with 2 draws and 1.0 the worse draw
    assert np.allclose(aggregate_futures(np.array([[1.0, 3.0], [2.0, 2.0]]), 1.0), [1.0, 2.0])
    low = WorldModelMPC(tiny_wm, draw_reward, planner={"name": "cem", "horizon": 4, "samples": 6, "iterations": 1,
                                                  "elites": 2}, futures=3, pessimism=0.5)
    low.reset(seed=3)
    low.scorer.imagine = fut.scorer.imagine
    low.act(obs)
    per_draw = plan_objective({"dims": draw_reward.last_dims}, low.weights).reshape(6, 3)
    lcb = per_draw.mean(1) - 0.5 * per_draw.std(1, unbiased=False)
    assert np.isclose(low.log[-1]["best_score"], lcb.max().item(), atol=1e-5)
    for bad in ({"futures": 1, "pessimism": 1.0}, {"futures": 2, "pessimism": -1.0}):
        with pytest.raises(ValueError, match="pessimism"):
            WorldModelMPC(tiny_wm, draw_reward, planner={"name": "cem"}, **bad)
    with pytest.raises(ValueError, match="futures"):
        WorldModelMPC(tiny_wm, draw_reward, planner={"name": "cem"}, futures=0)
    # constructible in worker processes: checkpoint paths are loaded lazily, pickles cheaply
    path = tmp_path / "wm.pt"
    tiny_wm.save(path)
    lazy = pickle.loads(pickle.dumps(WorldModelMPC(str(path), reward, planner={"name": "mppi", "horizon": 2,
                                                                              "samples": 4, "iterations": 1})))
    assert lazy.scorer._wm.obj is None
    assert lazy.act(obs).shape == (4,) and lazy.scorer._wm.obj is not None


def test_oracle_p_beats_random_on_the_dense_reward(make_env):
    env = make_env(LIFT, obs_mode="image", segmentation=False)
    seed = split_seeds("val", 1)[0]
    steps = 12

    def dense_return(agent):
        agent.reset(seed=seed)
        if hasattr(agent, "attach_privileged_env"):
            agent.attach_privileged_env(env)
        obs, _ = env.reset(seed=seed)
        total = 0.0
        for _ in range(steps):
            obs, r, term, _, _ = env.step(agent.act(obs))
            total += r
            if term:
                break
        return total

    oracle = OracleP(planner={"name": "cem", "horizon": 4, "samples": 8, "iterations": 1, "elites": 2},
                     execute=2)
    planned, random = dense_return(oracle), dense_return(RandomAgent())
    assert planned > 2 * random + 0.2, (planned, random)     # it approaches the cube; random does not
    assert len(oracle.log) == steps // 2 and all(e["sim_steps"] > 0 for e in oracle.log)
    clone = pickle.loads(pickle.dumps(oracle))                 # picklable: no env travels
    assert clone._real is None and clone._sim is None
    with pytest.raises(RuntimeError, match="attach_privileged_env"):
        clone.reset(seed=seed)
        clone.act(env.reset(seed=seed)[0])


def test_run_episode_attaches_the_privileged_env_to_oracles_only(make_env):
    env = make_env(LIFT, obs_mode="image", segmentation=False)
    oracle = OracleP(planner={"name": "cem", "horizon": 2, "samples": 2, "iterations": 1, "elites": 1})

    class Stop(Exception):
        pass

    def act(obs):
        raise Stop

    oracle.act = act
    with pytest.raises(Stop):
        run_episode(env, oracle, split_seeds("val", 1)[0])
    assert oracle._real is env.unwrapped
    assert not hasattr(RandomAgent(), "attach_privileged_env")


def test_oracle_s_scores_the_real_rendered_future_with_the_reward(make_env):
    """Oracle-S's candidate clips are the frames the real env shows for those actions."""
    env = make_env(LIFT, obs_mode="image", segmentation=False)
    seed = split_seeds("val", 1)[0]
    reward = ToyReward()
    oracle = OracleS(reward, planner={"name": "cem", "horizon": 2, "samples": 3, "iterations": 1, "elites": 1},
                     execute=2)
    oracle.reset(seed=seed)
    oracle.attach_privileged_env(env)
    obs, _ = env.reset(seed=seed)
    a = oracle.act(obs)
    assert a.shape == (4,) and reward.calls == [(3, 3, 3, 64, 64)]   # start frame + one per 2 steps
    # the clip of the executed plan is what the real simulator renders
    state = env.unwrapped.get_sim_state()
    clip = oracle.render_clip(state, oracle._plan)
    np.testing.assert_array_equal(clip[0], obs["image"])
    frames = [obs["image"]]
    for t, act in enumerate(oracle._plan):
        obs, *_ = env.step(act)
        if t % 2 == 1:
            frames.append(obs["image"])
    np.testing.assert_array_equal(clip, np.stack(frames))
    assert pickle.loads(pickle.dumps(oracle))._sim is None
    # with a learned prior, its samples are the first iteration's candidates
    from agent.prior import ActionPrior, PriorConfig

    prior = ActionPrior(PriorConfig(steps=4, channels=(8,), keypoints=4, cond_dim=16, hidden=16, blocks=1,
                                    sample_steps=2)).eval()
    with_prior = OracleS(reward, planner={"name": "cem", "horizon": 2, "samples": 3, "iterations": 1, "elites": 1},
                         prior=prior)
    with_prior.reset(seed=seed)
    with_prior.attach_privileged_env(env)
    obs, _ = env.reset(seed=seed)
    props = with_prior.proposer.propose(obs, with_prior.samples, with_prior._gen)
    assert props.shape == (3, 4, 4) and with_prior.act(obs).shape == (4,)
    with pytest.raises(ValueError, match="unknown objective weights"):
        OracleS(reward, weights={"speed": 1.0})


def test_oracle_p_takes_its_first_proposals_from_a_prior():
    class FakePrior:
        def __init__(self):
            self.calls = []

        def sample(self, image, proprio, instruction, n, gen):
            self.calls.append((instruction, n))
            return np.full((n, 4, 4), 0.25, np.float32)

    planner = {"name": "cem", "horizon": 2, "samples": 6, "iterations": 1, "elites": 2}
    obs = {"image": np.zeros((64, 64, 3), np.uint8), "proprio": np.zeros(9, np.float32), "instruction": 1}
    gaussian = OracleP(planner=planner)
    assert gaussian.proposer.propose(obs, gaussian.samples, gaussian._gen) is None          # Gaussian proposals
    prior = FakePrior()
    oracle = OracleP(planner=planner, prior=prior)
    cands = oracle.proposer.propose(obs, oracle.samples, oracle._gen)
    assert cands.shape == (6, 4, 4) and prior.calls == [(1, 6)]
    # without a prior the planner's random stream is what it was: the prior draws from its own
    a, b = OracleP(planner=planner), OracleP(planner=planner, prior=prior)
    a.reset(seed=3), b.reset(seed=3)
    assert a._rng.random() == b._rng.random()
    clone = pickle.loads(pickle.dumps(OracleP(planner=planner, prior="missing/prior.pt")))
    assert clone.proposer._prior.obj is None and clone.proposer._prior.src == "missing/prior.pt"


def test_random_scorer_runs_the_same_agent_without_judgement():
    """RandomScorer: the planner, proposals and warm start of a scored method, uniform scores."""
    from agent.choose import PlanningAgent, RandomScorer
    from agent.prior import PriorProposer

    class FakePrior:
        def sample(self, image, proprio, instruction, n, gen):
            return torch.rand((n, 4, 4), generator=gen).numpy() * 2 - 1

    planner = {"name": "cem", "horizon": 2, "samples": 6, "iterations": 2, "elites": 2}
    obs = {"image": np.zeros((64, 64, 3), np.uint8), "proprio": np.zeros(4, np.float32), "instruction": 0}
    agent = PlanningAgent(PriorProposer(FakePrior()), RandomScorer(), planner=planner)
    runs = []
    for _ in range(2):
        agent.reset(seed=5)
        runs.append(np.stack([agent.act(obs) for _ in range(6)]))
    assert np.array_equal(runs[0], runs[1])                      # repeatable per episode seed
    assert len(agent.log) == 3 and all(e["evaluations"] == 12 for e in agent.log)
    scores = RandomScorer()
    scores.begin(obs, torch.Generator().manual_seed(0), 0)
    s = scores.score(np.zeros((500, 4, 4), np.float32))
    assert s.shape == (500,) and 0 <= s.min() and s.max() < 1 and s.std() > 0.2


def test_inspect_records_the_planners_own_scores_and_choice_without_changing_actions(tiny_wm, tmp_path):
    """The recorder's scores are the planner's, its chosen candidate is the executed plan, and
    the actions are identical with the recorder on and off; the sheet and the rerun file are written."""
    from agent.inspect import contact_sheet, write_rrd, write_sheet

    planner = {"name": "cem", "horizon": 4, "samples": 6, "iterations": 2, "elites": 2}
    obs = {"image": np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8),
           "proprio": np.zeros(4, np.float32), "instruction": 0}
    runs = {}
    for on in (False, True):
        agent = WorldModelMPC(tiny_wm, ToyReward(), planner=planner, inspect={"top_k": 2, "random": 1} if on else None)
        agent.reset(seed=11)
        runs[on] = (np.stack([agent.act(obs) for _ in range(4)]), agent)
    assert np.array_equal(runs[False][0], runs[True][0])           # recording changes nothing
    agent = runs[True][1]
    replans = agent.episode_log()["inspect"]
    assert len(replans) == len(agent.log) == 2
    for rp, entry in zip(replans, agent.log):
        assert len(rp.iterations) == 2 and rp.step == entry["step"]
        best = max(float(it["objective"].max()) for it in rp.iterations)
        assert np.isclose(best, entry["best_score"])                  # the planner's own scores
        it, k = rp.chosen
        assert it >= 0 and np.isclose(rp.iterations[it]["objective"][k], entry["score"])
        assert np.array_equal(rp.executed_actions, agent.scorer.plans[replans.index(rp)])
        last = rp.iterations[-1]
        assert len(last["kept"]) == 3 and list(last["kept"][:2]) == list(np.argsort(-last["objective"])[:2])
        assert last["kept_clips"].shape == (3, 5, 64, 64, 3) and last["dims"].shape == (6, 6)
    sheet = contact_sheet(replans, "failed")
    assert sheet.shape[0] == 2 * (64 + 24) and sheet.shape[1] == (3 + 3) * 64
    marked = contact_sheet(replans, "failed", values={(0, 0): 1.5}, stages={0: (3, 1), 1: (2, 2)})
    assert marked.shape == sheet.shape and not np.array_equal(marked, sheet)   # captions drawn
    assert write_sheet(replans, tmp_path / "ep.png").stat().st_size > 1000
    rrd = write_rrd(replans, tmp_path / "ep.rrd")
    assert rrd is None or rrd.stat().st_size > 1000                 # None without rerun-sdk
