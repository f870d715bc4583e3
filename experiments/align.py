"""GRPO alignment of the pre-trained world model with the distilled student reward.

    python experiments/align.py                              # default preset, faithful weights
    python experiments/align.py align=quick                  # a first run
    python experiments/align.py grpo.weights=all_six         # ablation: the paper's six-dim total
    python experiments/align.py grpo.reward=neg_mse          # ablation: one low-level metric vs real frames

Contexts are windows of the training rollouts (failures included). Writes to
``out_dir`` (default ``artifacts/aligned/<preset>[_<reward>][_<weights>]``):
``metrics.jsonl`` (reward mean/std per dimension, KL, clip fraction, student-teacher
gap, teacher score on a fixed probe set, reward-hacking flag), ``last.pt`` (resumable:
re-running the same command continues) and ``worldmodel.pt`` (the aligned model, read
like any :class:`worldmodel.world_model.WorldModel`).
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from experiments.common import resolve, rollout_paths, setup_torch
from worldmodel.align import ContextSet, GRPOConfig, GRPOTrainer
from worldmodel.judge import MAX_SCORES
from worldmodel.tokens import file_hash
from worldmodel.training import JsonlLogger, pick_device
from worldmodel.world_model import WorldModel

STUDENT_COMMAND = "python experiments/distill_reward.py"


# ----------------------------------------------------------------------------- judges (lazy)
def load_student(path: Path, device):
    """The distilled student reward (worldmodel.judge.student, imported lazily)."""
    if not path.exists():
        raise FileNotFoundError(f"student reward {path} does not exist; build it with `{STUDENT_COMMAND}` "
                                "(or run the ablation without it: grpo.reward=neg_mse)")
    from worldmodel.judge.student import StudentReward

    student = StudentReward.from_checkpoint(path)
    return student.to(device).eval() if hasattr(student, "to") else student


def student_reward_fn(student):
    """reward_fn(frames (N, T+1, 3, H, W), instruction (N,), actions (N, T*stride, 4)) -> (N, 6)
    normalized dims; the actions reach a student trained with action input only."""
    uses_actions = bool(getattr(getattr(student, "config", None), "actions", False))

    def fn(frames, instruction, actions=None):
        with torch.no_grad():
            return student.score(frames, instruction, actions=actions if uses_actions else None)["dims"]
    return fn


def load_teacher(setting):
    """The privileged teacher (worldmodel.judge.teacher, imported lazily), or None:
    ``setting`` true (required), false (never), "auto" (when importable), or the path
    of a calibrated ``teacher.json`` (the bench stage writes one beside its bench file)."""
    if setting is False or str(setting).lower() == "false":
        return None
    if str(setting).endswith(".json"):
        from worldmodel.judge.teacher import Teacher

        if not Path(str(setting)).exists():
            raise FileNotFoundError(f"teacher calibration {setting} not found; build it with "
                                    f"`python experiments/build_bench.py`")
        return Teacher.load(str(setting))
    try:
        from worldmodel.judge.perception import default_perception
        from worldmodel.judge.teacher import DEFAULT_CALIB_PATH, Teacher
    except ImportError as e:
        if setting is True or str(setting).lower() == "true":
            raise
        warnings.warn(f"no teacher ({e}); training without online distillation or teacher probes",
                      stacklevel=2)
        return None
    if DEFAULT_CALIB_PATH.exists():
        return Teacher.load(DEFAULT_CALIB_PATH)
    warnings.warn(f"teacher not calibrated ({DEFAULT_CALIB_PATH} missing): using its default thresholds", stacklevel=2)
    return Teacher(default_perception())


def teacher_fns(teacher, student, cfg: DictConfig):
    """(teacher_fn(clips) -> (N, 6) normalized dims, refresh_fn(clips, teacher_dims) -> metrics).
    The teacher labels each clip list once (the refresh reuses the gap's labels)."""
    if teacher is None:
        return None, None
    last: dict = {}

    def label(clips):
        if last.get("clips") is not clips:
            last.update(clips=clips, labels=teacher.score_clips(clips))
        return last["labels"]

    def teacher_fn(clips):
        return np.asarray(label(clips)["scores"], float) / np.asarray(MAX_SCORES)

    if student is None or cfg.refresh.steps <= 0:
        return teacher_fn, None
    from worldmodel.judge.distill import refresh

    old = resolve(cfg.refresh.old_data) if cfg.refresh.old_data else None
    state = {"data": old if old is not None and old.exists() else None, "calls": 0}

    def refresh_fn(clips, _teacher_dims):
        state["calls"] += 1
        _, state["data"], m = refresh(student, label, clips, state["data"], steps=cfg.refresh.steps,
                                      seed=state["calls"])
        return m
    return teacher_fn, refresh_fn


# ----------------------------------------------------------------------------- the run
def out_dir(cfg: DictConfig) -> Path:
    if cfg.out_dir:
        return resolve(cfg.out_dir)
    name = cfg.preset_name
    if cfg.grpo.reward != "student":
        name += f"_{cfg.grpo.reward}"
    if cfg.grpo.weights != "faithful":
        name += f"_{cfg.grpo.weights}" if isinstance(cfg.grpo.weights, str) else "_custom"
    return resolve(cfg.artifacts) / "aligned" / name


def run(cfg: DictConfig) -> dict:
    setup_torch(cfg.threads)
    device = pick_device()
    gcfg = GRPOConfig(**OmegaConf.to_container(cfg.grpo, resolve=True))
    wm_path = resolve(cfg.worldmodel_ckpt)
    wm = WorldModel.from_checkpoint(wm_path, map_location=device)
    student_path = resolve(cfg.student_ckpt)
    need_student = gcfg.reward == "student" or (cfg.monitor_student and student_path.exists())
    student = load_student(student_path, device) if need_student else None
    teacher = load_teacher(cfg.teacher)
    # the student is refreshed only when it is the reward (the single-metric ablations just log it)
    teacher_fn, refresh_fn = teacher_fns(teacher, student if gcfg.reward == "student" else None, cfg)
    r = cfg.run
    contexts = ContextSet(rollout_paths(cfg.data.train, "train", cfg.artifacts), r.horizon, wm.action_repeat,
                          r.every, r.max_episodes)
    probe = contexts.sample(r.probe_contexts, seed=999_983)        # fixed for the whole run
    trainer = GRPOTrainer(wm, student_reward_fn(student) if student else None, gcfg,
                          teacher_fn=teacher_fn, refresh_fn=refresh_fn)
    out = out_dir(cfg)
    upstream = {"worldmodel": file_hash(wm_path), "student": file_hash(student_path) if student else None}
    # what a resumed run must share (more updates or other logging intervals may extend a run)
    same = {k: v for k, v in OmegaConf.to_container(r).items() if k not in ("updates", "probe_every", "ckpt_every")}
    config = {"grpo": gcfg.to_dict(), "run": same, "seed": cfg.seed, "upstream": upstream}
    ckpt_path, final = out / "last.pt", out / "worldmodel.pt"
    if ckpt_path.exists():
        ckpt = trainer.load(ckpt_path, config)
        if student is not None and "student" in ckpt["extra"]:
            student.load_state_dict(ckpt["extra"]["student"])
    logger = JsonlLogger(out / "metrics.jsonl")
    if trainer.updates == 0:
        logger.log(0, **{"data/contexts": len(contexts), "data/context_success_rate": contexts.success_rate},
                   **trainer.probe(probe))
    extra = (lambda: {"student": student.state_dict()}) if refresh_fn is not None else (lambda: {})
    bar = tqdm(total=r.updates, initial=trainer.updates, desc="align", dynamic_ncols=True, file=sys.stdout)
    metrics: dict = {}
    while trainer.updates < r.updates:
        metrics = trainer.step(contexts.sample(r.contexts_per_update, seed=1_000_003 * cfg.seed + trainer.updates))
        u = trainer.updates
        if r.probe_every and (u % r.probe_every == 0 or u == r.updates):
            metrics.update(trainer.probe(probe))
        logger.log(u, **metrics)
        if metrics.get("probe/hacking"):
            tqdm.write(f"update {u}: REWARD HACKING suspected (student reward up, teacher down); see {logger.path}")
        if u % r.ckpt_every == 0 or u == r.updates:
            trainer.save(ckpt_path, config, extra())
        bar.update(1)
        bar.set_postfix(R=f"{metrics['train/reward_mean']:.3f}", kl=f"{metrics['train/kl']:.4f}",
                        s=f"{metrics['time/step_s']:.1f}")
    bar.close()
    if not final.exists() or final.stat().st_mtime < ckpt_path.stat().st_mtime:
        keep = {k: v for k, v in metrics.items() if k.startswith(("probe/", "train/reward"))}
        wm.save(final, metrics={"updates": trainer.updates, **keep}, upstream=upstream)
        if refresh_fn is not None:   # the student as refreshed online (for the planner)
            student.save(out / "student.pt", step=trainer.updates)
    print(f"aligned world model ({trainer.updates} GRPO updates) in {final}")
    return metrics


@hydra.main(config_path="conf", config_name="align", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
