"""Build the judge benchmark set (worldmodel/judge/bench.py documents clips, splits and the file).

    python experiments/build_bench.py                 # default: all train/val rollouts, ~4,500 clips
    python experiments/build_bench.py bench=tiny      # tests: seconds
    python experiments/build_bench.py worldmodel=null # no world-model generations

Steps: fit perception + calibrate the teacher on real TRAIN clips (saved next to the
bench); then one resumable shard per rollout file (real clips, degradations,
world-model generations, all labelled by the teacher; ``bench.shard_episodes`` episodes
per shard; a shard whose config matches is reused, so an interrupted build resumes); merge into ``out`` atomically and write ``summary.md`` beside it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from envs.rollouts import demo_keys, find_rollouts, open_rollouts
from experiments.common import resolve, setup_torch
from worldmodel.judge.bench import build_shard, calibrated_teacher, concat_rows, read_rows, summary_table, write_bench
from worldmodel.judge.teacher import TEACHER_VERSION


def source_paths(cfg) -> list[Path]:
    if cfg.rollouts:
        return [resolve(p) for p in cfg.rollouts]
    root = resolve(cfg.artifacts) / "rollouts"
    paths = find_rollouts(root, "*_train_*.hdf5") + find_rollouts(root, "*_val_*.hdf5")
    if not paths:
        raise FileNotFoundError(f"no rollouts in {root}; collect with "
                                "`python experiments/collect.py env=lift agent=noisy episodes=100 split=train`")
    return paths


def shard_config(bench: dict, seed: int, calib: dict, wm_path: Path | None) -> tuple[dict, str]:
    """What a shard's content depends on, and its 12-hex key (part of the shard's file name,
    so a shard is reused by any run whose settings match). The preset's ``name`` is left
    out: the same settings under another preset name build the same clips."""
    shard_cfg = {"bench": {k: v for k, v in bench.items() if k != "name"}, "seed": seed, "teacher": calib,
                 "teacher_version": TEACHER_VERSION, "worldmodel": str(wm_path) if wm_path is not None else None,
                 "wm_mtime": wm_path.stat().st_mtime if wm_path is not None else None}
    return shard_cfg, hashlib.sha1(json.dumps(shard_cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run(cfg: DictConfig) -> dict:
    setup_torch(cfg.threads)
    b = cfg.bench
    out_dir, out = resolve(cfg.out_dir), resolve(cfg.out)
    paths = source_paths(cfg)
    # calibration always uses every train rollout file (not only this run's shards)
    train = ([resolve(p) for p in cfg.calib_rollouts] if cfg.calib_rollouts else
             find_rollouts(resolve(cfg.artifacts) / "rollouts", "*_train_*.hdf5")) or \
        [p for p in paths if "_train_" in p.name] or paths
    teacher, stats = calibrated_teacher(train, out_dir, b.calib_episodes, b.windows, cfg.seed, cfg.recalibrate)
    if stats:
        print("teacher calibrated:", json.dumps(stats, default=float))
    wm, wm_path = None, resolve(cfg.worldmodel) if cfg.worldmodel else None
    if wm_path is not None and wm_path.exists():
        from worldmodel.world_model import WorldModel

        wm = WorldModel.from_checkpoint(wm_path).eval()
    elif wm_path is not None:
        print(f"no world model at {wm_path}: building without generations")
    shard_cfg, key = shard_config(OmegaConf.to_container(b), cfg.seed, teacher.calib,
                                  wm_path if wm is not None else None)
    parts = []
    jobs = []
    for path in paths:
        with open_rollouts(path) as f:
            n = len(demo_keys(f))
        n = min(n, b.max_episodes or n)
        size = b.shard_episodes or n
        jobs += [(path, (i, min(i + size, n)), n) for i in range(0, n, size)]
    for path, (lo, hi), n in tqdm(jobs, desc="shards"):
        shard = out_dir / "shards" / f"{path.stem}_{lo}_{hi}_{key}.h5"
        if not shard.exists():
            rows = build_shard(path, teacher, max_episodes=b.max_episodes, windows=b.windows,
                               degradations_per_clip=b.degradations_per_clip, wm=wm,
                               wm_starts=max(1, round(b.wm_starts * (hi - lo) / n)) if b.wm_starts else 0,
                               wm_temperatures=list(b.wm_temperatures), wm_batch=cfg.wm_batch, seed=cfg.seed,
                               episodes=(lo, hi), wm_action_noise=list(b.get("wm_action_noise") or []),
                               wm_opposite=bool(b.get("wm_opposite", False)),
                               wm_relabel=list(b.get("wm_relabel") or []))
            if rows:
                write_bench(shard, rows, {"config": shard_cfg})
        if shard.exists():
            parts.append(read_rows(shard))
    rows = concat_rows(parts)
    write_bench(out, rows, {"config": shard_cfg, "dimensions": json.dumps(list(
        __import__("worldmodel.judge", fromlist=["DIMENSIONS"]).DIMENSIONS))})
    table = summary_table(rows)
    splits = {s: rows["split"].count(s) for s in ("train", "val", "test")}
    text = f"# Judge bench summary ({len(rows['frames'])} clips; splits {splits})\n\n{table}\n"
    (out_dir / "summary.md").write_text(text)
    print(text)
    return {"path": str(out), "n": len(rows["frames"]), "splits": splits}


@hydra.main(config_path="conf", config_name="build_bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
