"""A Stable-Baselines3 SAC baseline on state observations with robosuite's shaped reward.

``train_sac(env_id, steps, seed, out_dir)`` trains ``SAC("MlpPolicy")`` on the
``obs_mode="state"`` env (:func:`envs.robosuite_env.state_vector`; episodes run to the
id's ``max_episode_steps``, not ending at a success -- see :func:`make_state_env`) and
writes, under ``out_dir``:

- ``sac.zip``: the final SB3 model; ``sac.json``: env id, steps, seed,
  hyper-parameters, wall time, training success rate over the last 20 episodes;
- ``monitor.csv``: SB3's per-episode log (reward, length, time, episode_success); after
  a crash, episodes since the last checkpoint appear twice;
- ``checkpoints/``: the latest ``step_<n>.zip`` + ``replay_<n>.pkl`` (replay buffer)
  and ``latest.json`` pointing at them. Re-running continues from the latest
  checkpoint up to ``steps``; a finished run returns at once; asking for more steps
  than a finished run had continues it.

``SACAgent(path)`` acts with such a model on the image-mode observation dict (it
builds the state vector from ``proprio``, ``objects`` and ``instruction``; the image
is not used) -- a privileged-state baseline, like the scripted expert.
"""
from __future__ import annotations

import json
import os
import platform
import time
from collections import deque
from pathlib import Path

import gymnasium as gym
import numpy as np

from agent.base import Agent
from envs.robosuite_env import state_vector
from envs.rollouts import atomic_path
from envs.vocab import INSTRUCTIONS

#: SAC settings used unless ``train_sac(**sac_kwargs)`` overrides them (SB3's defaults,
#: except ``learning_starts`` and a CPU device: small MLPs run faster there).
DEFAULT_SAC = {"learning_rate": 3e-4, "batch_size": 256, "buffer_size": 1_000_000, "gamma": 0.99,
               "tau": 0.005, "train_freq": 1, "gradient_steps": 1, "net_arch": [256, 256],
               "ent_coef": "auto", "device": "cpu"}
CKPT_DIR = "checkpoints"
N_RECENT = 20          # training episodes in sac.json's success rate


def make_state_env(env_id: str, monitor_dir: str | os.PathLike | None = None, append: bool = False,
                   terminate_on_success: bool = False):
    """The registered env in ``obs_mode="state"``, under gymnasium's ``TimeLimit`` (the
    id's ``max_episode_steps``) and SB3's ``Monitor`` (episode stats + ``episode_success``:
    the task succeeded at some step of the episode).

    ``terminate_on_success=False`` (default) runs every episode to the time limit, as
    robosuite's own benchmarks do: the env ends an episode at the first success, and with
    the shaped reward that is a trap -- one success step pays 1.0 once, while holding the
    cube grasped without lifting it pays ~0.56 every step (reach 1 + grasp 0.25, / 2.25).
    """
    from stable_baselines3.common.monitor import Monitor

    import envs

    env = envs.make(env_id, obs_mode="state", segmentation=False)   # unknown id: a clear error
    if not _has_time_limit(env):   # gym.make adds it from the registration; make sure
        env = gym.wrappers.TimeLimit(env, max_episode_steps=gym.spec(env_id).max_episode_steps)
    env = _EpisodeSuccess(env, terminate_on_success)
    filename = None if monitor_dir is None else str(monitor_dir)
    return Monitor(env, filename=filename, info_keywords=("episode_success",), override_existing=not append)


class _EpisodeSuccess(gym.Wrapper):
    """``info["episode_success"]``: success at any step so far; ``terminated`` only when
    ``terminate_on_success`` (the time limit still truncates)."""

    def __init__(self, env, terminate_on_success: bool):
        super().__init__(env)
        self.terminate_on_success, self._any = bool(terminate_on_success), False

    def reset(self, **kwargs):
        self._any = False
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._any |= bool(info.get("success", False))
        info["episode_success"] = self._any
        return obs, reward, terminated and self.terminate_on_success, truncated, info


def _has_time_limit(env) -> bool:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, gym.wrappers.TimeLimit):
            return True
        env = env.env
    return False


def _sac_settings(learning_starts: int, sac_kwargs: dict) -> dict:
    unknown = set(sac_kwargs) - set(DEFAULT_SAC) - {"policy_kwargs", "target_update_interval",
                                                     "target_entropy", "use_sde", "optimize_memory_usage"}
    if unknown:
        raise ValueError(f"unknown SAC settings {sorted(unknown)}; known: {sorted(DEFAULT_SAC)} "
                         "(+ policy_kwargs, target_update_interval, target_entropy, use_sde, "
                         "optimize_memory_usage)")
    hp = {**DEFAULT_SAC, **sac_kwargs, "learning_starts": int(learning_starts)}
    hp["net_arch"] = [int(n) for n in hp["net_arch"]]
    return hp


def _sac_init_kwargs(hp: dict) -> dict:
    kw = {k: v for k, v in hp.items() if k != "net_arch"}
    kw["policy_kwargs"] = {**(hp.get("policy_kwargs") or {}), "net_arch": hp["net_arch"]}
    return kw


# ---------------------------------------------------------------------- checkpoints
def _latest(out_dir: Path) -> dict | None:
    path = out_dir / CKPT_DIR / "latest.json"
    if not path.exists():
        return None
    meta = json.loads(path.read_text())
    for key in ("model", "replay"):
        if not (out_dir / CKPT_DIR / meta[key]).exists():
            raise FileNotFoundError(f"{path} names {meta[key]}, which is missing; delete "
                                    f"{out_dir / CKPT_DIR} to start over")
    return meta


def _save_checkpoint(model, out_dir: Path, meta: dict) -> None:
    """``step_<n>.zip`` + ``replay_<n>.pkl``, then ``latest.json`` (the commit point),
    then older checkpoints are removed."""
    ckpt = out_dir / CKPT_DIR
    n = int(model.num_timesteps)
    with atomic_path(ckpt / f"replay_{n}.pkl") as tmp:
        model.save_replay_buffer(tmp)
    with atomic_path(ckpt / f"step_{n}.zip") as tmp:
        model.save(tmp)
    meta = {**meta, "step": n, "model": f"step_{n}.zip", "replay": f"replay_{n}.pkl"}
    with atomic_path(ckpt / "latest.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    for old in list(ckpt.glob("step_*.zip")) + list(ckpt.glob("replay_*.pkl")):
        if old.name not in (meta["model"], meta["replay"]):
            old.unlink(missing_ok=True)


def _callback(out_dir: Path, meta: dict, total: int, ckpt_every: int, progress: bool, t0: float):
    """SB3 callback: tracks episode successes, checkpoints every ``ckpt_every`` steps,
    shows a tqdm bar."""
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm.auto import tqdm

    class _Cb(BaseCallback):
        def __init__(self):
            super().__init__()
            self.recent = deque(meta.get("recent_success", []), maxlen=N_RECENT)
            self.episodes = int(meta.get("episodes", 0))
            self.bar = None

        def _on_training_start(self):
            if progress:
                self.bar = tqdm(total=total, initial=self.num_timesteps, desc="sac", unit="step",
                                dynamic_ncols=True)

        def state(self) -> dict:
            return {**meta, "episodes": self.episodes, "recent_success": [bool(s) for s in self.recent],
                    "wall_s": meta.get("wall_s", 0.0) + time.time() - t0}

        def _on_step(self) -> bool:
            for done, info in zip(self.locals["dones"], self.locals["infos"]):
                if done:
                    self.episodes += 1
                    self.recent.append(bool(info.get("episode_success", False)))
            if self.bar is not None:
                self.bar.update(1)
                if self.recent and self.num_timesteps % 100 == 0:
                    self.bar.set_postfix(episodes=self.episodes,
                                         success=f"{np.mean(self.recent):.2f}")
            if ckpt_every and self.num_timesteps % ckpt_every == 0 and self.num_timesteps < total:
                _save_checkpoint(self.model, out_dir, self.state())
            return True

        def _on_training_end(self):
            if self.bar is not None:
                self.bar.close()

    return _Cb()


def train_sac(env_id: str, steps: int, seed: int, out_dir: str | os.PathLike, learning_starts: int = 5000,
              resume: bool = True, progress: bool = True, ckpt_every: int = 5000,
              terminate_on_success: bool = False, **sac_kwargs) -> Path:
    """Train (or continue) SAC on ``env_id``'s state observations for ``steps`` env steps;
    returns ``out_dir/sac.zip``. ``sac_kwargs`` override :data:`DEFAULT_SAC` (``net_arch``:
    hidden sizes of actor and critics). ``resume=False`` ignores (and overwrites) what
    ``out_dir`` holds. A checkpoint made with other settings is an error.
    ``terminate_on_success``: see :func:`make_state_env` (default: fixed-length episodes)."""
    from stable_baselines3 import SAC

    steps, seed, out_dir = int(steps), int(seed), Path(out_dir)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    hp = _sac_settings(learning_starts, sac_kwargs)
    # what a checkpoint must match to be continued (the device may change between runs)
    config = {"env_id": env_id, "seed": seed, "terminate_on_success": bool(terminate_on_success),
              "hyperparameters": {k: v for k, v in hp.items() if k != "device"}}
    final = out_dir / "sac.zip"
    latest = _latest(out_dir) if resume else None
    if latest is not None:
        old = {k: latest.get(k) for k in config}
        if json.loads(json.dumps(config)) != old:
            raise ValueError(f"{out_dir} holds a SAC run with other settings ({old}) than asked "
                             f"({config}); use another out_dir or resume=False")
        if latest["step"] >= steps and final.exists():
            print(f"{final} is already trained ({latest['step']} steps)")
            return final

    out_dir.mkdir(parents=True, exist_ok=True)
    env = make_state_env(env_id, monitor_dir=out_dir,
                         append=latest is not None and (out_dir / "monitor.csv").exists(),
                         terminate_on_success=terminate_on_success)
    t0 = time.time()
    if latest is not None:
        model = SAC.load(out_dir / CKPT_DIR / latest["model"], env=env, device=hp["device"])
        model.load_replay_buffer(out_dir / CKPT_DIR / latest["replay"])
        model.set_random_seed(seed + int(model.num_timesteps))   # new episodes, not a replay
        model._last_obs = None   # the env is fresh: SB3 resets it at the start of learn()
        meta = {**config, **{k: latest[k] for k in ("episodes", "recent_success", "wall_s")},
                "resumed_at": latest.get("resumed_at", []) + [int(model.num_timesteps)]}
        print(f"resuming SAC from {latest['model']} ({model.num_timesteps} of {steps} steps)")
    else:
        model = SAC("MlpPolicy", env, seed=seed, verbose=0, **_sac_init_kwargs(hp))
        meta = {**config, "episodes": 0, "recent_success": [], "wall_s": 0.0, "resumed_at": []}
    cb = _callback(out_dir, meta, steps, ckpt_every, progress, t0)
    try:
        if model.num_timesteps < steps:
            model.learn(total_timesteps=steps - model.num_timesteps, callback=cb,
                        reset_num_timesteps=False, log_interval=None)
        state = cb.state()
        _save_checkpoint(model, out_dir, state)   # with the replay buffer: a later call can extend
        with atomic_path(final) as tmp:
            model.save(tmp)
    finally:
        env.close()
    import stable_baselines3
    import torch

    recent = state["recent_success"]
    summary = {
        "kind": "sb3_sac", "env_id": env_id, "obs_mode": "state", "steps": int(model.num_timesteps),
        "seed": seed, "terminate_on_success": bool(terminate_on_success), "hyperparameters": hp, "obs_dim": int(model.observation_space.shape[0]),
        "wall_s": round(state["wall_s"], 2), "episodes": state["episodes"],
        # fraction of the last 20 training episodes (stochastic policy) with a success at any step
        "train_success_rate_last20": float(np.mean(recent)) if recent else None,
        "train_success_last20_n": len(recent), "resumed_at": state["resumed_at"],
        "torch_threads": torch.get_num_threads(), "sb3_version": stable_baselines3.__version__,
        "host": platform.node(), "model": final.name, "monitor": "monitor.csv",
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with atomic_path(out_dir / "sac.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return final


# ---------------------------------------------------------------------- agent
class SACAgent(Agent):
    """``SACAgent(path, deterministic=True)``: acts with a :func:`train_sac` model.

    ``path``: ``sac.zip`` (or a checkpoint zip, or the run directory holding
    ``sac.zip``). The model loads on first use and is dropped when pickled, so the
    agent ships cheaply to worker processes. ``act`` reads ``proprio``, ``objects``
    and ``instruction`` of the image-mode observation (privileged state, not pixels).
    """

    name = "sac"

    def __init__(self, path: str | os.PathLike, deterministic: bool = True, threads: int | None = None,
                 name: str | None = None):
        path = Path(path)
        if path.is_dir():
            path = path / "sac.zip"
        if not path.is_file():
            raise FileNotFoundError(f"no SAC model at {path}; train one with "
                                    f"`python experiments/train_sac.py env_id=roboalign/Lift-v0`")
        self.path, self.deterministic, self.threads = path, bool(deterministic), threads
        self.name = name or "sac"
        self._model = None

    @property
    def info(self) -> dict:
        """``sac.json`` beside the model (empty when there is none)."""
        meta = self.path.with_name("sac.json")
        try:
            return json.loads(meta.read_text()) if meta.exists() else {}
        except json.JSONDecodeError:
            return {}

    @property
    def model(self):
        if self._model is None:
            from stable_baselines3 import SAC

            try:
                self._model = SAC.load(self.path, device="cpu")
            except Exception as e:  # a truncated / foreign zip
                raise ValueError(f"{self.path} is not a readable SB3 SAC model "
                                 f"({type(e).__name__}: {e})") from e
        return self._model

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_model"] = None
        return state

    def act(self, obs: dict) -> np.ndarray:
        if self.threads:
            import torch

            torch.set_num_threads(int(self.threads))
        state = state_vector(obs["proprio"], obs["objects"], obs["instruction"], len(INSTRUCTIONS))
        expected = self.model.observation_space.shape
        if state.shape != expected:
            trained = self.info.get("env_id", "an unknown env")
            raise ValueError(f"{self.path} was trained on {trained} with state size {expected[0]}, but "
                             f"this observation gives {state.shape[0]} ({len(obs['objects']) // 3} "
                             f"cube(s)); evaluate it on the env it was trained on")
        action, _ = self.model.predict(state, deterministic=self.deterministic)
        return np.clip(np.asarray(action, np.float32).reshape(4), -1.0, 1.0)
