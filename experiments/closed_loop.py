"""Main job: run an agent for N held-out episodes in the real simulator.

    python experiments/closed_loop.py [env=lift] [agent=scripted] [preset=default]

Writes a results table, per-episode JSONL, a summary and videos under
``artifacts/closed_loop/<env>/<agent>/``.
"""
from __future__ import annotations

import time

import hydra
from omegaconf import DictConfig, OmegaConf

from agent.collect import make_agent
from agent.evaluate import evaluate, results_table
from envs.splits import split_seeds
from experiments.common import resolve, setup_torch


def run(cfg: DictConfig) -> dict:
    """The importable closed loop: builds the agent, evaluates it, returns the summary."""
    setup_torch(cfg.threads)
    t0 = time.time()
    agent = make_agent(cfg.agent.name, **OmegaConf.to_container(cfg.agent.kwargs))
    seeds = split_seeds(cfg.split, cfg.episodes, cfg.seed_start)
    summary = evaluate(cfg.env.id, agent, seeds, out_dir=resolve(cfg.out_dir), videos=cfg.videos,
                       workers=cfg.workers,
                       env_kwargs=OmegaConf.to_container(cfg.env.kwargs))
    summary["wall_s"] = time.time() - t0
    print(results_table([summary]))
    print(f"wall time {summary['wall_s']:.1f} s; results in {resolve(cfg.out_dir)}")
    return summary


@hydra.main(config_path="conf", config_name="closed_loop", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
