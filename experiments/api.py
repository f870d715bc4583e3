"""Plan in your own loop: load a finished main-job run's models as an agent.

    import envs                                        # registers roboalign/*
    from experiments.api import load_agent

    agent = load_agent("mpc_prior", "artifacts/closed_loop/lift")   # a run's output folder
    env = envs.make("roboalign/Lift-v0")
    obs, info = env.reset(seed=7)
    agent.reset(seed=7)
    while True:
        obs, reward, terminated, truncated, info = env.step(agent.act(obs))
        if terminated or truncated:
            break

The agent reads observations only (image, proprio, instruction id), so any instruction of
the vocabulary (``envs.vocab.INSTRUCTIONS``; ``env.reset(options={"instruction": text})``)
works with models that were trained on it. Oracles read the real simulator: call
``agent.attach_privileged_env(env)`` before each episode.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from agent.base import Agent
from experiments.common import resolve
from experiments.pipeline import StageResult, compose


def run_stages(run_dir: str | os.PathLike) -> dict:
    """The stages a finished run used (its ``run.json``), as the pipeline returns them."""
    run = resolve(run_dir) / "run.json"
    if not run.exists():
        raise FileNotFoundError(f"{run} not found: point at the output folder of a finished run of "
                                f"python experiments/closed_loop.py (artifacts/closed_loop/<env>)")

    def stage(d) -> StageResult:
        mark = Path(d) / "stage.json"
        if not mark.exists():
            raise FileNotFoundError(f"{mark} is missing: the stage was removed or never finished; re-run the main job")
        manifest = json.loads(mark.read_text())
        return StageResult(manifest["stage"], manifest["key"], Path(d), True, manifest)

    stages = json.loads(run.read_text())["stages"]
    return {k: [stage(d) for d in v] if isinstance(v, list) else stage(v) for k, v in stages.items()}


def run_config(run_dir: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The closed-loop config a finished run used (saved in its ``run.json``; the default
    config for runs that predate that) with ``key=value`` ``overrides`` on top."""
    run = json.loads((resolve(run_dir) / "run.json").read_text())
    if "config" not in run:
        return compose("closed_loop", [*([f"preset={run['preset']}"] if run.get("preset") else []), *overrides])
    cfg = OmegaConf.create(run["config"])
    for item in overrides:
        key, sep, value = item.partition("=")
        new, key = key.startswith("+"), key.lstrip("+")
        if not sep:
            raise ValueError(f"override {item!r}: expected key=value")
        if not new and OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise KeyError(f"override {item!r}: no key {key!r} in the run's config (add a new one with +{key})")
        OmegaConf.update(cfg, key, yaml.safe_load(value), force_add=True)
    return cfg


def load_agent(method: str = "mpc_prior", run_dir: str | os.PathLike = "artifacts/closed_loop/lift",
               overrides: list[str] | tuple[str, ...] = ()) -> Agent:
    """An agent of a registered method (``experiments/conf/method/``) with the models and the
    settings of the finished run in ``run_dir``; ``overrides`` change settings (planner,
    ``mpc.*``, ``prior_agent.*``), e.g. ``["planner.samples=16"]``."""
    from experiments.closed_loop import make_method, stages_for

    stages = run_stages(run_dir)
    missing = [s for s in stages_for(method) if s not in stages]
    if missing:
        raise KeyError(f"the run in {run_dir} did not build {missing}, which {method} needs; run "
                       f"python experiments/closed_loop.py baselines=[{method}] with the same settings")
    return make_method(method, run_config(run_dir, overrides), stages)


__all__ = ["load_agent", "run_stages", "run_config"]
