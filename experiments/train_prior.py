"""Train the learned action prior (a small diffusion policy) on collected rollouts.

    python experiments/train_prior.py [prior=tiny|quick|default] [data.train=[...]] [data.val=[...]]

Reads rollout files (default: every ``<artifacts>/rollouts/*_train_*.hdf5`` and
``*_val_*.hdf5``; make them with ``python experiments/collect.py``), trains
:class:`agent.prior.ActionPrior` (``agent/prior.py``) and writes to ``out_dir``:
``prior.pt`` (``ActionPrior.from_checkpoint``), ``metrics.json`` (val denoising loss,
first-action error of DDIM samples) and the resumable ``last.pt`` / ``metrics.jsonl``
(re-running the same command resumes, or returns at once when finished).
"""
from __future__ import annotations

import json
import time

import hydra
from omegaconf import DictConfig, OmegaConf

from agent.prior import PriorConfig, train_prior  # noqa: E402
from envs.rollouts import atomic_path  # noqa: E402
from experiments.common import resolve, rollout_paths, setup_torch  # noqa: E402


def run(cfg: DictConfig) -> dict:
    setup_torch(cfg.threads)
    train = rollout_paths(cfg.data.train, "train", cfg.artifacts)
    val = rollout_paths(cfg.data.val, "val", cfg.artifacts) if cfg.data.val is not False else []
    out = resolve(cfg.out_dir)
    t = OmegaConf.to_container(cfg.prior.train)
    t0 = time.time()
    _, metrics = train_prior(train, val, out, config=PriorConfig.from_dict(OmegaConf.to_container(cfg.prior.model)),
                             steps=t["steps"], batch_size=t["batch_size"], lr=t["lr"], shift=t["shift"],
                             only_success=t["only_success"], balance=t["balance"],
                             colour_swap=t["colour_swap"], seed=cfg.seed, amp=cfg.amp, progress=cfg.progress,
                             eval_every=t["eval_every"])
    metrics.update(train_files=[str(p) for p in train], val_files=[str(p) for p in val],
                   train_s_this_run=round(time.time() - t0, 1))
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1))
    print(f"prior in {out / 'prior.pt'}: val loss {metrics.get('val_loss')}, "
          f"first-action MAE {metrics.get('val_first_action_mae')}")
    return metrics


@hydra.main(config_path="conf", config_name="train_prior", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
