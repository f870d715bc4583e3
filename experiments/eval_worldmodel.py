"""Evaluate a trained world model on held-out episodes.

    python experiments/eval_worldmodel.py [name=default] [worldmodel_ckpt=...]

Writes to ``out_dir``: ``results.json``, ``results.md`` (per-task table: model vs
copy-last-frame vs tokenizer ceiling; SWR vs full vs naive over long rollouts; the
action-conditioning check), ``horizon.png`` (error vs horizon) and
``side_by_side.mp4`` (real | predicted | copy-last).
"""
from __future__ import annotations

from collections import defaultdict

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from envs.rollouts import atomic_path
from envs.video import write_video
from experiments.common import resolve, rollout_paths, save_results, setup_torch
from worldmodel.evaluate import action_conditioning, load_episodes, open_loop
from worldmodel.world_model import WorldModel


def _row(name: str, m: dict) -> str:
    """Means over clips and steps; "PSNR of the mean MSE" pools the squared error first, so a
    few identical frames (PSNR capped at 60 dB) cannot decide it."""
    return (f"| {name} | {np.mean(m['psnr']):.2f} | {10 * np.log10(1 / max(np.mean(m['mse']), 1e-6)):.2f} | "
            f"{np.mean(m['ssim']):.3f} | {np.mean(m['region_mse']):.4f} | {np.mean(m['region_psnr']):.2f} |")


def _plot(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, m in results.items():
        steps = np.arange(1, len(m["psnr"]) + 1)
        axes[0].plot(steps, m["psnr"], label=label)
        axes[1].plot(steps, m["region_mse"], label=label)
    axes[0].set(xlabel="predicted step", ylabel="PSNR (dB)")
    axes[1].set(xlabel="predicted step", ylabel="object+gripper MSE")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _video(examples, path) -> None:
    start, real, pred = examples
    frames = []
    for b in range(min(4, start.shape[0])):
        for t in range(real.shape[1]):
            row = torch.cat([real[b, t], pred[b, t], start[b]], -1)        # (3, H, 3W)
            frames.append((row.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8))
    captions = [[f"clip {i // real.shape[1]}  step {i % real.shape[1] + 1}", "real | predicted | copy-last"]
                for i in range(len(frames))]
    write_video(frames, path, fps=4, captions=captions, scale=3)


def run(cfg: DictConfig) -> dict:
    setup_torch(cfg.threads)
    wm = WorldModel.from_checkpoint(resolve(cfg.worldmodel_ckpt))
    paths = rollout_paths(cfg.data.val, "val", cfg.artifacts)
    out = resolve(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_task = defaultdict(list)
    for ep in load_episodes(paths, cfg.max_episodes):
        by_task[ep["env_id"]].append(ep)
    results, lines = {"open_loop": {}, "long": {}, "action_conditioning": {}}, []
    lines += [f"Open loop, {cfg.horizon} model steps ({cfg.horizon * wm.action_repeat} control steps), "
              f"temperature {cfg.temperature}, held-out episodes.", "",
              "| task / predictor | PSNR | PSNR of mean MSE | SSIM | object+gripper MSE | object+gripper PSNR |",
              "|---|---|---|---|---|---|"]
    examples = None
    for task, eps in sorted(by_task.items()):
        r = open_loop(wm, eps, cfg.horizon, cfg.every, temperature=cfg.temperature)
        examples = examples or r.pop("examples")
        r.pop("examples", None)
        results["open_loop"][task] = r
        for name in ("model", "copy_last", "recon"):
            lines.append(_row(f"{task} / {name} ({r['clips']} clips)", r[name]))
    _plot({f"{t.split('/')[1]} {n}": r[n] for t, r in results["open_loop"].items() for n in ("model", "copy_last")},
          out / "horizon.png")
    _video(examples, out / "side_by_side.mp4")
    if cfg.long_horizon:
        eps = [e for es in by_task.values() for e in es]
        lines += ["", f"Long rollouts, {cfg.long_horizon} model steps, W = {wm.window}:", "",
                  "| mode | PSNR | PSNR of mean MSE | SSIM | object+gripper MSE | object+gripper PSNR | s / clip | "
                  "peak cache |", "|---|---|---|---|---|---|---|---|"]
        for mode in cfg.long_modes:
            r = open_loop(wm, eps, cfg.long_horizon, 10**6, mode=mode, temperature=cfg.temperature)
            r.pop("examples")
            results["long"][mode] = r
            lines.append(_row(mode, r["model"]) + f" {r['seconds_per_clip']:.2f} | {r['peak_cache_len']} |")
        _plot({f"{m} ({cfg.long_horizon} steps)": r["model"] for m, r in results["long"].items()}, out / "long.png")
    ac = cfg.action_conditioning
    if ac.alternatives > 1:
        eps = [e for es in by_task.values() for e in es]
        r = action_conditioning(wm, eps, ac.alternatives, cfg.horizon, max_starts=ac.starts)
        results["action_conditioning"] = r
        lines += ["", f"Action conditioning: {r['starts']} starts x {r['alternatives']} action sequences, each "
                  "also run in the simulator from the recorded state.", "",
                  "| prediction vs | PSNR | object+gripper MSE |", "|---|---|---|",
                  f"| its own real outcome | {r['psnr_matched']:.2f} | {r['region_mse_matched']:.4f} |",
                  f"| other sequences' outcomes | {r['psnr_mismatched']:.2f} | {r['region_mse_mismatched']:.4f} |",
                  "", f"own outcome closer than another's in {100 * r['matched_better_rate']:.0f}% of pairs"]
    table = "\n".join(lines)
    save_results(out, results, table)
    print(table)
    return results


@hydra.main(config_path="conf", config_name="eval_worldmodel", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
