"""SB3 SAC baseline (agent/sb3.py): the state vector, a tiny training run, resuming,
the agent on image-mode observations, clear errors."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from envs.robosuite_env import state_vector
from tests.conftest import CONF_DIR, LIFT, PICK

TINY = {"net_arch": [32, 32], "batch_size": 32, "buffer_size": 1000}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.mark.parametrize("env_id", [LIFT, PICK])
def test_state_vector_matches_state_observation(make_env, env_id):
    state, _ = make_env(env_id, obs_mode="state").reset(seed=3)
    obs, _ = make_env(env_id).reset(seed=3)
    vec = state_vector(obs["proprio"], obs["objects"], obs["instruction"])
    assert vec.dtype == np.float32 and state.dtype == np.float32
    np.testing.assert_array_equal(vec, state)
    with pytest.raises(ValueError, match="proprio"):
        state_vector(obs["proprio"][:3], obs["objects"], obs["instruction"])
    with pytest.raises(ValueError, match="instruction"):
        state_vector(obs["proprio"], obs["objects"], 7, 3)


def test_train_sac_writes_model_and_agent_acts(tmp_path, make_env):
    from agent.sb3 import SACAgent, train_sac

    out = tmp_path / "sac"
    path = train_sac(LIFT, 300, seed=0, out_dir=out, learning_starts=100, progress=False, **TINY)
    assert path == out / "sac.zip" and path.exists()
    meta = json.loads((out / "sac.json").read_text())
    assert meta["env_id"] == LIFT and meta["steps"] == 300 and meta["seed"] == 0
    assert meta["hyperparameters"]["net_arch"] == [32, 32] and meta["hyperparameters"]["learning_starts"] == 100
    assert meta["episodes"] >= 2 and 0.0 <= meta["train_success_rate_last20"] <= 1.0
    assert meta["wall_s"] > 0 and meta["terminate_on_success"] is False
    lengths = [line.split(",")[1] for line in (out / "monitor.csv").read_text().splitlines()[2:]]
    assert lengths and set(lengths) == {"100"}   # episodes run to the time limit

    agent = SACAgent(out)   # the run directory works as well as the zip
    obs, _ = make_env(LIFT).reset(seed=1)
    agent.reset(seed=1)
    a = agent.act(obs)
    assert a.shape == (4,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1.0)
    np.testing.assert_array_equal(a, agent.act(obs))   # deterministic
    clone = pickle.loads(pickle.dumps(agent))          # ships without the model
    assert clone._model is None and len(pickle.dumps(agent)) < 2000
    np.testing.assert_array_equal(clone.act(obs), a)

    pick_obs, _ = make_env(PICK).reset(seed=1)          # 2 cubes: another state size
    with pytest.raises(ValueError, match="trained on roboalign/Lift-v0"):
        agent.act(pick_obs)


def test_train_sac_resumes_and_continues(tmp_path):
    from hydra import compose, initialize_config_dir
    from stable_baselines3 import SAC

    from agent.sb3 import train_sac
    from experiments.train_sac import run

    out = tmp_path / "run"
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train_sac", [f"out={out}", "steps=200", "learning_starts=100", "ckpt_every=100",
                                    "progress=false", "sac.net_arch=[32,32]", "sac.batch_size=32",
                                    "sac.buffer_size=1000"])
    res = run(cfg)
    assert res["steps"] == 200 and res["model"].endswith("sac.zip")
    assert SAC.load(out / "sac.zip").num_timesteps == 200
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 200

    stamp = (out / "sac.zip").stat().st_mtime_ns
    train_sac(LIFT, 200, 0, out, learning_starts=100, progress=False, **TINY)   # finished: no-op
    assert (out / "sac.zip").stat().st_mtime_ns == stamp

    train_sac(LIFT, 300, 0, out, learning_starts=100, progress=False, **TINY)   # continue to 300
    assert SAC.load(out / "sac.zip").num_timesteps == 300
    meta = json.loads((out / "sac.json").read_text())
    assert meta["steps"] == 300 and meta["resumed_at"] == [200]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest.json", "replay_300.pkl",
                                                                       "step_300.zip"]
    with pytest.raises(ValueError, match="other settings"):
        train_sac(LIFT, 400, 0, out, learning_starts=100, progress=False, **{**TINY, "batch_size": 64})


def test_sac_agent_clear_errors(tmp_path, make_env):
    from agent.sb3 import SACAgent

    with pytest.raises(FileNotFoundError, match="no SAC model"):
        SACAgent(tmp_path / "missing.zip")
    bad = tmp_path / "sac.zip"
    bad.write_bytes(b"not a zip")
    agent = SACAgent(bad)
    obs, _ = make_env(LIFT).reset(seed=0)
    with pytest.raises(ValueError, match="not a readable SB3 SAC model"):
        agent.act(obs)
