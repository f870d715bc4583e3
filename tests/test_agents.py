"""Agents: they see observations only; the scripted expert solves every task; the
noisy expert's failure knob; the random agent."""
from __future__ import annotations

import numpy as np
import pytest

from agent.base import Agent, RandomAgent
from agent.collect import AGENTS, make_agent, run_episode
from agent.scripted import PERTURBATIONS, NoisyExpert, ScriptedExpert
from envs.splits import split_of, split_seeds

OBS_KEYS = {"image", "proprio", "instruction", "objects"}
TRAIN = split_seeds("train", 3)


class SpyExpert(ScriptedExpert):
    """The scripted expert, recording every argument ``act`` receives."""

    def __init__(self):
        super().__init__()
        self.seen: list = []
        self.reset_seeds: list = []

    def reset(self, seed=None):
        super().reset(seed)
        if hasattr(self, "reset_seeds"):
            self.reset_seeds.append(seed)

    def act(self, obs):
        self.seen.append(obs)
        return super().act(obs)


def test_agents_receive_observations_only(pick_env):
    spy = SpyExpert()
    res = run_episode(pick_env, spy, TRAIN[0], options={"instruction": "lift the green cube"})
    assert spy.reset_seeds == [TRAIN[0]]
    assert len(spy.seen) == res.length > 0
    for obs in spy.seen:
        assert isinstance(obs, dict)
        assert set(obs) == OBS_KEYS == set(pick_env.observation_space.spaces)
        assert not {"sim_state", "success", "wrong_object", "object_poses", "segmentation"} & set(obs)
        assert pick_env.observation_space.contains(obs)
    assert res.success and res.failure == "none"


def test_agent_interface():
    with pytest.raises(TypeError):
        Agent()  # abstract

    class Zero(Agent):
        def act(self, obs):
            return np.zeros(4)

    assert Zero().act({}).shape == (4,)
    assert set(AGENTS) == {"scripted", "noisy", "random"}
    assert isinstance(make_agent("noisy", fail_prob=0.2), NoisyExpert)
    with pytest.raises(KeyError, match="scripted"):
        make_agent("nope")


@pytest.mark.parametrize("env_id,options", [
    ("roboalign/Lift-v0", None),
    ("roboalign/PickColor-v0", {"instruction": "lift the red cube"}),
    ("roboalign/PickColor-v0", {"instruction": "lift the green cube"}),
    ("roboalign/Stack-v0", {"instruction": "stack the red cube on the green cube", "swap_colours": False}),
    ("roboalign/Stack-v0", {"instruction": "stack the green cube on the red cube", "swap_colours": False}),
    ("roboalign/Stack-v0", {"instruction": "stack the red cube on the green cube", "swap_colours": True}),
    ("roboalign/Stack-v0", {"instruction": "stack the green cube on the red cube", "swap_colours": True}),
    ("roboalign/PickSide-v0", {"instruction": "lift the cube on the left"}),
])
def test_scripted_expert_succeeds(make_env, env_id, options):
    env = make_env(env_id)
    seed = TRAIN[1]
    assert split_of(seed) == "train"
    res = run_episode(env, ScriptedExpert(), seed, options=options)
    assert res.success, res
    assert res.failure == "none" and not res.wrong_object
    assert res.length < env.spec.max_episode_steps
    if options:
        assert res.instruction == options["instruction"]


def test_noisy_expert_with_fail_prob_one_fails_sometimes(lift_env):
    results, active = [], []
    for seed in TRAIN:
        agent = NoisyExpert(fail_prob=1.0)
        results.append(run_episode(lift_env, agent, seed))
        active.append(agent.active)
    assert all(len(a) >= 1 and set(a) <= set(PERTURBATIONS) for a in active), active
    assert sum(not r.success for r in results) >= 1, [(r.seed, r.success, r.failure) for r in results]
    assert all(r.failure in ("none", "missed_grasp", "drop", "wrong_object", "timeout") for r in results)


def test_noisy_expert_perturbation_draws():
    retries = []
    for seed in range(30):
        agent = NoisyExpert(fail_prob=0.0)
        agent.reset(seed=seed)
        assert agent.active == ()
        assert agent.params.retry is True
        agent = NoisyExpert(fail_prob=1.0)
        agent.reset(seed=seed)
        assert 1 <= len(agent.active) <= 2
        retries.append(agent.params.retry)
    # perturbed episodes retry a missed grasp about half the time
    assert 5 <= sum(retries) <= 25, retries
    # the draw is a function of the seed
    a, b = NoisyExpert(fail_prob=1.0), NoisyExpert(fail_prob=1.0)
    a.reset(seed=5)
    b.reset(seed=5)
    assert a.active == b.active and a.params == b.params
    # fail_prob=0.5 perturbs some episodes and not others
    drawn = []
    for seed in range(40):
        agent = NoisyExpert(fail_prob=0.5)
        agent.reset(seed=seed)
        drawn.append(bool(agent.active))
    assert 5 <= sum(drawn) <= 35


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_noisy_expert_rejects_bad_fail_prob(bad):
    with pytest.raises(ValueError, match="fail_prob"):
        NoisyExpert(fail_prob=bad)


def test_noisy_expert_rejects_unknown_perturbation():
    with pytest.raises(ValueError, match="unknown perturbations"):
        NoisyExpert(perturbations=("offset_grasp", "teleport"))


def _random_actions(seed, n=40, obs=None):
    agent = RandomAgent()
    agent.reset(seed=seed)
    return np.array([agent.act(obs) for _ in range(n)])


def test_random_agent_range_and_reproducibility():
    a = _random_actions(3)
    assert a.shape == (40, 4)
    assert np.all(a >= -1.0) and np.all(a <= 1.0)
    assert np.array_equal(a, _random_actions(3))
    assert not np.array_equal(a, _random_actions(4))
    # actions are held for `repeat` (4) steps, then redrawn
    assert np.array_equal(a[0], a[3]) and not np.array_equal(a[3], a[4])
    assert len({tuple(x) for x in a}) == 10
    # actions span the box
    assert a.min() < -0.5 and a.max() > 0.5
