"""Fit the world model's outcome head (worldmodel/outcome.py) on its own imagination.

    python experiments/train_outcome.py worldmodel_ckpt=<worldmodel.pt> [data.train=[...]] [draws=2]
    python experiments/train_outcome.py worldmodel_ckpt=... data.counterfactual=[A.npz] data.counterfactual_val=[B.npz]

Every training clip (``window`` model steps of a recorded episode) is imagined ``draws``
times from its real first frame under its real actions; a small head on the frozen
dynamics' hidden states regresses the env's recorded reward after each step. With
counterfactual files (``experiments/collect_counterfactual.py``) it also trains on many
candidate plans per state and reports how well it picks among a held-out state's candidates
(``worldmodel.outcome.choice_metrics``). Writes
``<out_dir>/worldmodel.pt`` (the world model plus the head; every other weight unchanged)
and ``<out_dir>/outcome.json`` (fit on train and val clips against the best constant).
"""
from __future__ import annotations

import json
import time

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from agent.counterfactual import LABELS, candidate_labels, load_counterfactuals
from envs.rollouts import atomic_path
from experiments.common import required_file, resolve, rollout_paths, setup_torch
from worldmodel.data import RolloutWindows
from worldmodel.outcome import CandidateClips, choice_metrics, concat_features, fit_outcome, imagine_features
from worldmodel.tokens import file_hash
from worldmodel.world_model import WorldModel


def _candidates(path, action_repeat: int, window: int, label: str) -> CandidateClips:
    d = load_counterfactuals(resolve(path))
    steps = d["actions"].shape[2]
    if steps != window * action_repeat:
        raise ValueError(f"{path}: candidates of {steps} control steps, but window={window} model steps x "
                         f"action_repeat={action_repeat}; set window={steps // action_repeat} (the prior's chunk)")
    return CandidateClips(d["image"], d["actions"], candidate_labels(d, label)[0], action_repeat)


def run(cfg: DictConfig) -> dict:
    setup_torch(cfg.threads)
    label = cfg.data.get("label", "rewards")
    if label not in LABELS:
        raise ValueError(f"unknown data.label {label!r}; known: {sorted(LABELS)}")
    success = LABELS[label]
    recorded = [split for split in ("train", "val") if cfg.data[split] is None or len(cfg.data[split])]  # [] = none
    if label != "rewards" and recorded:
        raise ValueError(f"data.label={label}: recorded episodes hold only the env's reward; set data.train=[] "
                         "data.val=[] and train on data.counterfactual files")
    wm_path = required_file(cfg.worldmodel_ckpt, "worldmodel_ckpt", "the world model whose imagination the head "
                            "reads (e.g. artifacts/stages/aligned-*/worldmodel.pt)",
                            "build it with experiments/closed_loop.py or experiments/train_worldmodel.py")
    wm = WorldModel.from_checkpoint(wm_path)
    if wm.action_repeat != cfg.action_repeat:
        raise ValueError(f"action_repeat {cfg.action_repeat} != the world model's {wm.action_repeat}")
    t0 = time.time()

    def imagine(clips):
        return imagine_features(wm, clips, draws=cfg.draws, mode=cfg.rollout_mode, temperature=cfg.temperature,
                                seed=cfg.seed, amp=cfg.amp, progress=cfg.progress)

    feats = {}
    for split in recorded:
        windows = RolloutWindows(rollout_paths(cfg.data[split], split, cfg.artifacts), window=cfg.window,
                                 action_repeat=cfg.action_repeat, stride=cfg.stride)
        feats[split] = imagine(windows)
    cf = {split: [imagine(_candidates(path, cfg.action_repeat, cfg.window, label)) for path in cfg.data.get(key) or []]
          for split, key in (("train", "counterfactual"), ("val", "counterfactual_val"))}
    if "train" not in feats and not cf["train"]:
        raise ValueError("no training data: give data.train episodes or data.counterfactual files")
    train = concat_features(([feats["train"]] if "train" in feats else []) + cf["train"])
    val = feats["val"] if "val" in feats else (concat_features(cf["val"]) if cf["val"] else None)
    imagine_s = time.time() - t0
    h = cfg.head
    out_wm, metrics = fit_outcome(wm, train, val, hidden=h.hidden, steps=h.steps, lr=h.lr,
                                  batch_size=h.batch_size, weight_decay=h.weight_decay, seed=cfg.seed,
                                  success=success, rank_weight=h.get("rank_weight", 0.0),
                                  rank_focus=h.get("rank_focus", False), progress=cfg.progress)
    with torch.no_grad():
        for split in ("train", "val"):
            if cf[split]:
                c = concat_features(cf[split])
                metrics[f"choice_{split}"] = choice_metrics(out_wm.dynamics.predict_outcome(c["features"]),
                                                            c["rewards"], c["group"], success)
    metrics.update(imagine_s=imagine_s, fit_s=time.time() - t0 - imagine_s, train_clips=len(train["rewards"]))
    out = resolve(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    out_wm.save(out / "worldmodel.pt", metrics={"outcome": metrics},
                upstream={"worldmodel": file_hash(wm_path)})
    with atomic_path(out / "outcome.json") as tmp:
        tmp.write_text(json.dumps({"config": OmegaConf.to_container(cfg), "metrics": metrics}, indent=2))
    for split in (k for k in ("train", "val") if k in metrics):
        m = metrics[split]
        print(f"{split}: mse {m['mse']:.4f} (constant {m['mse_const']:.4f}, r2 {m['r2']:.3f}), "
              f"success AUC {m['auc_final']:.3f} ({m['success_windows']}/{m['windows']} clips end in success)")
    for split in ("train", "val"):
        if f"choice_{split}" in metrics:
            m = metrics[f"choice_{split}"]
            print(f"choice among a {split} state's candidates: pairwise {m['pairwise']:.3f} ({m['pairs']} pairs), "
                  f"pick reaches success {m['pick_success']:.3f} vs random {m['random_success']:.3f}, "
                  f"best {m['best_success']:.3f}; true value {m['pick_value']:.3f} vs random {m['random_value']:.3f}, "
                  f"best {m['best_value']:.3f} ({m['starts']} states)")
    print(f"world model with outcome head in {out / 'worldmodel.pt'}")
    return metrics


@hydra.main(config_path="conf", config_name="train_outcome", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
