"""Collect rollouts to HDF5 (robomimic layout, see envs/rollouts.py).

    python experiments/collect.py env=lift agent=noisy episodes=100 split=train
"""
from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig, OmegaConf

from agent.collect import collect
from experiments.common import resolve


def run(cfg: DictConfig) -> dict:
    summary = collect(cfg.env.id, cfg.agent.name, cfg.episodes, resolve(cfg.out), split=cfg.split,
                      start=cfg.seed_start, workers=cfg.workers,
                      agent_kwargs=OmegaConf.to_container(cfg.agent.kwargs),
                      env_kwargs=OmegaConf.to_container(cfg.env.kwargs),
                      after_success=int(cfg.get("after_success", 0)))
    print(json.dumps(summary, indent=2))
    return summary


@hydra.main(config_path="conf", config_name="collect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
