"""Train the SB3 SAC baseline (agent/sb3.py) on state observations, robosuite's shaped reward.

    python experiments/train_sac.py [env_id=roboalign/Lift-v0] [steps=300000] [seed=0] [sac.batch_size=...]

Writes ``out/sac.zip`` + ``out/sac.json`` (settings, wall time, training success rate
over the last 20 episodes), ``out/monitor.csv`` and ``out/checkpoints/``. Re-running
the same command resumes; a finished run returns at once; more ``steps`` continue it.
Evaluate with ``agent.sb3.SACAgent(out / "sac.zip")``.
"""
from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments.common import ROOT, resolve, setup_torch


def out_dir(cfg: DictConfig):
    """``cfg.out``, or ``<artifacts>/sac/<task>_s<seed>``."""
    import envs

    if cfg.out:
        return resolve(cfg.out)
    task = envs.ENV_IDS.get(cfg.env_id, str(cfg.env_id).replace("/", "_"))
    return resolve(cfg.artifacts) / "sac" / f"{task}_s{cfg.seed}"


def run(cfg: DictConfig) -> dict:
    """Train (or resume) SAC; returns ``{"model", "summary", "out"}`` (paths as strings)."""
    from agent.sb3 import train_sac

    setup_torch(cfg.threads)
    out = out_dir(cfg)
    sac = OmegaConf.to_container(cfg.sac, resolve=True)
    model = train_sac(cfg.env_id, cfg.steps, cfg.seed, out, learning_starts=cfg.learning_starts,
                      ckpt_every=cfg.ckpt_every, terminate_on_success=cfg.terminate_on_success,
                      progress=cfg.progress, **sac)
    summary = json.loads((out / "sac.json").read_text())
    rel = {k: str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)
           for k, p in (("model", model), ("summary", out / "sac.json"), ("out", out))}
    print(json.dumps({k: summary[k] for k in ("env_id", "steps", "episodes", "wall_s",
                                              "train_success_rate_last20")}, indent=2))
    print(f"SAC model in {rel['model']}; summary in {rel['summary']}")
    return {**rel, **{k: summary[k] for k in ("steps", "wall_s", "train_success_rate_last20")}}


@hydra.main(config_path="conf", config_name="train_sac", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
