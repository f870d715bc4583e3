"""Collect counterfactual outcomes: many candidate plans per visited state, each replayed in the simulator.

    python experiments/collect_counterfactual.py prior_ckpt=<prior.pt> [episodes=40] [split=train] [workers=2]

The states come from ``prior_random`` episodes (the action prior's samples at the MPC's
cadence, one picked at random), or with ``value_ckpt=<value.pt>`` from ``prior_value`` episodes
(the highest of that :class:`agent.value.PlanValue`'s scores is executed: the states the
chooser itself visits, to refit it on, DAgger-style); at every ``every``-th control step the
prior proposes ``samples`` plans and each is replayed from the exact simulator state
(:mod:`agent.counterfactual`). ``experiments/train_outcome.py data.counterfactual=[...]``
fits the world model's outcome head on them, so it learns which plan from one state lifts.
``add_states=true out=<file>`` (same prior / agent settings as the file was collected with)
retraces a file's episodes to add the ``state`` that files collected before it was recorded lack.
"""
from __future__ import annotations

import time

import hydra
import numpy as np
from omegaconf import DictConfig

from agent.counterfactual import LABELS, add_states, collect_counterfactuals
from agent.prior import PriorAgent
from envs.splits import split_seeds
from experiments.common import required_file, resolve, setup_torch


def run(cfg: DictConfig) -> dict:
    setup_torch(cfg.threads)
    prior = required_file(cfg.prior_ckpt, "prior_ckpt", "the action prior whose candidates are replayed (e.g. "
                          "artifacts/stages/prior-*/prior.pt)", "train one with experiments/train_prior.py")
    value = None if cfg.value_ckpt is None else str(required_file(
        cfg.value_ckpt, "value_ckpt", "the chooser whose states are visited", "fit one with benchmarks/value_pick.py"))
    agent = PriorAgent(str(prior), execute=cfg.agent.execute, samples=cfg.agent.samples,
                       pick="random" if value is None else "value", value=value, threads=cfg.threads)
    t0 = time.time()
    if cfg.add_states:
        data = add_states(required_file(cfg.out, "out", "the counterfactual file to add states to",
                                        "collect it with this script"), cfg.env.id, agent, progress=cfg.progress)
        print(f"added states {data['state'].shape} to {resolve(cfg.out)} in {time.time() - t0:.0f} s")
        return {"states": len(data["seed"]), "wall_s": time.time() - t0}
    seeds = split_seeds(cfg.split, cfg.episodes, cfg.seed_start)
    data = collect_counterfactuals(resolve(cfg.out), cfg.env.id, agent, prior, seeds, workers=cfg.workers,
                                   every=cfg.every, samples=cfg.samples, seed=cfg.seed, progress=cfg.progress)
    success = (data["rewards"] >= LABELS["rewards"] - 1e-6).any(-1)
    # the oracle's pick (highest summed privileged value, as oracle_p_prior picks) vs the env reward's
    ok = (data["values"] >= LABELS["values"] - 1e-6).any(-1)
    first = np.arange(len(ok))
    metrics = {"states": len(data["seed"]), "candidates": int(success.size), "lift_rate": float(success.mean()),
               "states_with_a_lift": float(success.any(-1).mean()),
               "oracle_pick_success": float(ok[first, data["values"].sum(-1).argmax(-1)].mean()),
               "reward_pick_success": float(ok[first, data["rewards"].sum(-1).argmax(-1)].mean()),
               "wall_s": time.time() - t0}
    print(f"{metrics['states']} states x {cfg.samples} candidates in {metrics['wall_s']:.0f} s; "
          f"{metrics['lift_rate']:.2f} of candidates reach success, {metrics['states_with_a_lift']:.2f} of "
          f"states have one that does; the pick by oracle value succeeds at {metrics['oracle_pick_success']:.2f} "
          f"of states, by summed env reward at {metrics['reward_pick_success']:.2f}; -> {resolve(cfg.out)}")
    return metrics


@hydra.main(config_path="conf", config_name="collect_counterfactual", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
