"""Fit the world model's outcome head (worldmodel/outcome.py) on its own imagination.

    python experiments/train_outcome.py worldmodel_ckpt=<worldmodel.pt> [data.train=[...]] [draws=2]

Every training clip (``window`` model steps of a recorded episode) is imagined ``draws``
times from its real first frame under its real actions; a small head on the frozen
dynamics' hidden states regresses the env's recorded reward after each step. Writes
``<out_dir>/worldmodel.pt`` (the world model plus the head; every other weight unchanged)
and ``<out_dir>/outcome.json`` (fit on train and val clips against the best constant).
"""
from __future__ import annotations

import json
import time

import hydra
from omegaconf import DictConfig, OmegaConf

from envs.rollouts import atomic_path
from experiments.common import resolve, rollout_paths, setup_torch
from worldmodel.data import RolloutWindows
from worldmodel.outcome import fit_outcome, imagine_features
from worldmodel.tokens import file_hash
from worldmodel.world_model import WorldModel


def run(cfg: DictConfig) -> dict:
    setup_torch(cfg.threads)
    if not cfg.worldmodel_ckpt:
        raise ValueError("worldmodel_ckpt is required: the world model whose imagination the head reads "
                         "(e.g. artifacts/stages/aligned-*/worldmodel.pt)")
    wm_path = resolve(cfg.worldmodel_ckpt)
    if not wm_path.exists():
        raise FileNotFoundError(f"world model {wm_path} not found; build it with experiments/closed_loop.py "
                                "or experiments/train_worldmodel.py")
    wm = WorldModel.from_checkpoint(wm_path)
    if wm.action_repeat != cfg.action_repeat:
        raise ValueError(f"action_repeat {cfg.action_repeat} != the world model's {wm.action_repeat}")
    t0 = time.time()
    feats = {}
    for split in ("train", "val"):
        windows = RolloutWindows(rollout_paths(cfg.data[split], split, cfg.artifacts), window=cfg.window,
                                 action_repeat=cfg.action_repeat, stride=cfg.stride)
        feats[split] = imagine_features(wm, windows, draws=cfg.draws, mode=cfg.rollout_mode,
                                        temperature=cfg.temperature, seed=cfg.seed, amp=cfg.amp,
                                        progress=cfg.progress)
    imagine_s = time.time() - t0
    h = cfg.head
    out_wm, metrics = fit_outcome(wm, feats["train"], feats["val"], hidden=h.hidden, steps=h.steps, lr=h.lr,
                                  batch_size=h.batch_size, weight_decay=h.weight_decay, seed=cfg.seed,
                                  success=cfg.success, progress=cfg.progress)
    metrics.update(imagine_s=imagine_s, fit_s=time.time() - t0 - imagine_s)
    out = resolve(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    out_wm.save(out / "worldmodel.pt", metrics={"outcome": metrics},
                upstream={"worldmodel": file_hash(wm_path)})
    with atomic_path(out / "outcome.json") as tmp:
        tmp.write_text(json.dumps({"config": OmegaConf.to_container(cfg), "metrics": metrics}, indent=2))
    for split in ("train", "val"):
        m = metrics[split]
        print(f"{split}: mse {m['mse']:.4f} (constant {m['mse_const']:.4f}, r2 {m['r2']:.3f}), "
              f"success AUC {m['auc_final']:.3f} ({m['success_windows']}/{m['windows']} clips end in success)")
    print(f"world model with outcome head in {out / 'worldmodel.pt'}")
    return metrics


@hydra.main(config_path="conf", config_name="train_outcome", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
