"""Distil the privileged teacher into the fast student reward.

    python experiments/distill_reward.py [student=tiny|quick|default|full|ranking|tracks] [bench_file=artifacts/judge/default/bench.h5]

Reads the teacher-labelled benchmark set (``worldmodel.judge.bench``; build it with
``python experiments/build_bench.py``), trains :class:`worldmodel.judge.student.StudentReward`
on its ``train`` split with the dimension-weighted Huber loss (``worldmodel.judge.distill``),
evaluating on ``val``, and writes to ``out_dir`` (default ``artifacts/student/<name>``):

- ``student.pt``: the student (``StudentReward.from_checkpoint``), with metrics and the
  bench file's hash;
- ``metrics.json``: val and test fidelity (Spearman per dimension and of the total, MAE,
  pairwise ranking accuracy within shared starts, overall and per source);
- ``last.pt`` / ``metrics.jsonl``: the resumable training state (re-running resumes).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from experiments.common import resolve, setup_torch  # noqa: E402
from worldmodel.judge.distill import concat_data, distill, evaluate, finite, from_bench, n_rows, subset  # noqa: E402
from worldmodel.judge.student import StudentConfig, StudentReward  # noqa: E402
from worldmodel.tokens import file_hash  # noqa: E402

BENCH_COMMAND = "python experiments/build_bench.py"
KEYS = ("frames", "instruction", "scores", "shaping", "actions", "split", "source", "degradation", "episode",
        "start_step")


def load_bench_file(path: Path) -> dict:
    """The bench file as a dict of arrays (``worldmodel.judge.bench.load_bench``)."""
    if not path.exists():
        raise FileNotFoundError(f"bench file {path} does not exist; build it with `{BENCH_COMMAND}` "
                                f"(or pass bench_file=<path>)")
    from worldmodel.judge.bench import load_bench

    return load_bench(path)


def bench_perception(bench_path: Path):
    """The teacher's fitted perception saved next to a bench file (``perception.npz``), for a
    student with the colour input (``student.model.colour=true``)."""
    from worldmodel.judge.perception import Perception

    path = bench_path.parent / "perception.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: a student with colour input reads the teacher's perception "
                                f"saved next to the bench; rebuild the bench with `{BENCH_COMMAND}`")
    return Perception.load(path)


def fidelity(student: StudentReward, data: dict, amp: bool = True) -> dict:
    """:func:`evaluate` on all rows and per ``source`` (pairwise accuracy within shared
    starts), and on all rows without actions (``video_only``: how ``score(frames,
    instruction)`` without actions does)."""
    out = {"all": evaluate(student, data, amp=amp)}
    if "actions" in data and student.config.actions:
        out["video_only"] = evaluate(student, data, amp=amp, use_actions=False)
    if "source" in data:
        for src in sorted(set(map(str, data["source"]))):
            rows = subset(data, np.asarray(data["source"]).astype(str) == src)
            out[src] = evaluate(student, rows, amp=amp)
    return {k: {m: finite(v) for m, v in d.items()} for k, d in out.items()}


def run(cfg: DictConfig) -> dict:
    setup_torch(cfg.threads)
    bench_path = resolve(cfg.bench_file)
    bench = load_bench_file(bench_path)
    data = from_bench({k: v for k, v in bench.items() if k in KEYS})
    del bench
    if cfg.student.model.get("tracks"):
        import torch

        from worldmodel.judge.bench import load_tracks

        tr = load_tracks(bench_path)
        data["x_track"], data["r_track"] = torch.from_numpy(tr["x"]), torch.from_numpy(tr["r"])
    splits = {s: subset(data, np.asarray(data["split"]).astype(str) == s) for s in ("train", "val", "test")}
    del data
    train_splits = list(cfg.student.get("train_splits", ["train"]))
    train_rows = splits["train"]
    for extra in train_splits:
        if extra == "test":
            raise ValueError("the test split is held out; train on train (and val) only")
        if extra != "train":
            train_rows = concat_data(train_rows, splits[extra])
    if n_rows(train_rows) == 0:
        raise ValueError(f"{bench_path} has no train rows")
    if cfg.student.max_train:
        train_rows = subset(train_rows, np.arange(min(cfg.student.max_train, n_rows(train_rows))))
    val = splits["val"] if n_rows(splits["val"]) and "val" not in train_splits else None
    scfg = StudentConfig.from_dict(OmegaConf.to_container(cfg.student.model))
    tcfg = OmegaConf.to_container(cfg.student.train)
    bench_hash = file_hash(bench_path)

    import torch

    torch.manual_seed(cfg.seed)
    student = StudentReward(scfg)
    if scfg.colour:
        student.set_colour_table(bench_perception(bench_path))
    out = resolve(cfg.out_dir)
    t0 = time.time()
    student, _ = distill(
        student, train_rows, val, steps=tcfg["steps"], batch_size=tcfg["batch_size"], lr=tcfg["lr"],
        weight_decay=tcfg["weight_decay"], dim_weights=tcfg["dim_weights"],
        shaping_weight=tcfg["shaping_weight"], huber_delta=tcfg["huber_delta"], out_dir=out,
        config={"bench_hash": bench_hash, "max_train": cfg.student.max_train,
                **({"train_splits": train_splits} if train_splits != ["train"] else {})}, eval_every=tcfg["eval_every"],
        ckpt_every=tcfg["ckpt_every"], log_every=tcfg["log_every"], warmup=tcfg["warmup"], amp=cfg.amp,
        seed=cfg.seed, progress=cfg.progress, flip=tcfg.get("flip", False),
        rank_weight=tcfg.get("rank_weight", 0.0), source_weights=tcfg.get("source_weights"),
        shaping_rank_weight=tcfg.get("shaping_rank_weight", 0.0), track_weight=tcfg.get("track_weight", 1.0))
    train_s = time.time() - t0
    metrics = {"bench": str(bench_path), "bench_hash": bench_hash, "rows": {s: n_rows(d) for s, d in splits.items()},
               "train_splits": train_splits,
               "train_rows_used": n_rows(train_rows), "params": student.n_params(),
               "train_s_this_run": round(train_s, 1)}
    for s in ("val", "test"):
        if n_rows(splits[s]):
            metrics[s] = fidelity(student, splits[s], amp=cfg.amp)
    summary = {f"{s}/{k}": metrics[s]["all"][k] for s in ("val", "test") if s in metrics
               for k in ("spearman_total", "mae_total", "pairwise_acc")}
    student.save(out / "student.pt", step=tcfg["steps"], metrics=summary,
                 extra={"upstream": {"bench": bench_hash}, "train": tcfg})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    for s in ("val", "test"):
        if s in metrics:
            a = metrics[s]["all"]
            print(f"{s}: spearman total {a['spearman_total']}, mae total {a['mae_total']}, "
                  f"pairwise acc {a.get('pairwise_acc')} ({a.get('pairs')} pairs)")
    print(f"student in {out / 'student.pt'}")
    return metrics


@hydra.main(config_path="conf", config_name="distill_reward", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
