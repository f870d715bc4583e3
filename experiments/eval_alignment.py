"""Pre-trained vs aligned world model on held-out clips, judged by the teacher.

    python experiments/eval_alignment.py                        # pre-trained vs artifacts/aligned/default
    python experiments/eval_alignment.py preset_name=quick
    python experiments/eval_alignment.py +models.neg_mse=artifacts/aligned/default_neg_mse/worldmodel.pt

For every held-out context (start frame + real actions of a val episode, failures
included) each model imagines ``samples`` clips with the same random seeds. Reported
per model, with 95% confidence intervals over clips: the teacher's six dimensions and
total (out of 10); the paired difference of the total vs the first model; the
**optimism rate** (the teacher's stage of the imagined clip shows success, IF = 3,
while the replay of the same actions in the simulator does not); the student's
reward when a student exists; and fidelity vs the real frames (PSNR, SSIM,
object+gripper-region MSE). Writes ``results.json``, ``results.md`` and
``side_by_side.mp4`` (one column per model, then the real frames) to ``out_dir``.
"""
from __future__ import annotations

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from agent.evaluate import mcnemar
from envs.video import write_video
from experiments.common import resolve, rollout_paths, save_results, setup_torch
from worldmodel.align import ContextSet, make_clips
from worldmodel.evaluate import frame_metrics, region_mask
from worldmodel.judge import MAX_SCORES, SHORT
from worldmodel.training import autocast, pick_device
from worldmodel.world_model import WorldModel

SUCCESS_IF = 3   # Instruction Following score of a completed task


def mean_ci(x) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% interval."""
    x = np.asarray(x, float)
    if len(x) < 2:
        return float(x.mean()) if len(x) else float("nan"), float("nan")
    return float(x.mean()), float(1.96 * x.std(ddof=1) / np.sqrt(len(x)))


@torch.no_grad()
def imagine(wm: WorldModel, contexts: ContextSet, samples: int, temperature: float, batch_size: int,
            seed: int, amp: bool = True) -> dict:
    """Every context x ``samples`` rollouts, seeds fixed per batch (the same for every model).

    Returns clip frames (N, T+1, 3, H, W) (start first), real (N, T, 3, H, W), seg
    (N, T, H, W), actions (N, T, A), instruction (N,), meta (N dicts), context (N,) index."""
    device = next(wm.parameters()).device
    per_batch = max(1, batch_size // samples)
    out = {k: [] for k in ("clip", "real", "seg", "actions", "instruction", "meta", "context")}
    for i0 in range(0, len(contexts), per_batch):
        idx = list(range(i0, min(len(contexts), i0 + per_batch)))
        b = contexts.batch(idx)
        rep = lambda x: x.repeat_interleave(samples, 0)  # noqa: E731
        frames, actions = rep(b["frames"]).to(device), rep(b["actions"]).to(device)
        g = torch.Generator(device).manual_seed(seed + i0)
        prop = rep(b["proprio"]).to(device) if wm.reads_proprio and "proprio" in b else None
        with autocast(device, amp):
            roll = wm.rollout(frames, actions, temperature=temperature, generator=g, proprio=prop)
        out["clip"].append(torch.cat([frames[:, None], roll.frames.float()], 1).cpu())
        out["real"].append(rep(b["real"]))
        out["seg"].append(rep(b["seg"]))
        out["actions"].append(actions.cpu())
        out["instruction"].append(rep(b["instruction"]))
        out["meta"] += [m for m in b["meta"] for _ in range(samples)]
        out["context"].append(torch.tensor(idx).repeat_interleave(samples))
    return {k: v if k == "meta" else torch.cat(v) for k, v in out.items()}


def teacher_scores(teacher, clips: list[dict]) -> dict:
    """Raw scores (N, 6), total (N,), stage of X (IF) and of the replay (true IF)."""
    out = teacher.score_clips(clips)
    scores = np.asarray(out["scores"], float)
    return {"scores": scores, "total": scores.sum(1), "if_x": scores[:, 0],
            "if_replay": np.asarray(out["true_stage"])[:, 0]}


def optimistic(if_x: np.ndarray, if_replay: np.ndarray) -> np.ndarray:
    """Per clip: imagined success (IF = 3) where the replay of the same actions fails."""
    return (if_x >= SUCCESS_IF) & (if_replay < SUCCESS_IF)


def optimism(if_x: np.ndarray, if_replay: np.ndarray) -> dict:
    """The rate of :func:`optimistic` clips among the replay's failures (and the pessimism rate)."""
    fails, shown, opt = if_replay < SUCCESS_IF, if_x >= SUCCESS_IF, optimistic(if_x, if_replay)
    return {"rate": float(opt.sum() / max(1, fails.sum())), "replay_failures": int(fails.sum()),
            "optimistic_clips": int(opt.sum()),
            "pessimism_rate": float((~shown & ~fails).sum() / max(1, (~fails).sum()))}


def evaluate_model(wm, contexts, cfg, teacher=None, student=None) -> dict:
    """Everything for one model; ``_clips`` holds the imagined data for the video."""
    s = imagine(wm, contexts, cfg.samples, cfg.temperature, cfg.batch_size, cfg.seed, cfg.amp)
    fid = frame_metrics(s["clip"][:, 1:], s["real"], region_mask(s["seg"]))
    r = {"clips": len(s["clip"]), "fidelity": {k: float(v.mean()) for k, v in fid.items()}, "_clips": s}
    if teacher is not None:
        clips = make_clips(s["clip"], s["actions"], s["instruction"], s["meta"], wm.action_repeat)
        t = teacher_scores(teacher, clips)
        r["teacher"] = {name: mean_ci(t["scores"][:, k]) for k, name in enumerate(SHORT)}
        r["teacher"]["total"] = mean_ci(t["total"])
        r["optimism"] = optimism(t["if_x"], t["if_replay"])
        r["_total"] = t["total"]
        r["_optimistic"] = optimistic(t["if_x"], t["if_replay"])   # per clip, for McNemar
    if student is not None:
        from experiments.align import student_reward_fn

        acts = s["actions"].reshape(len(s["clip"]), -1, 4)
        dims = torch.as_tensor(student_reward_fn(student)(s["clip"], s["instruction"], acts)).float().cpu()
        r["student_total"] = mean_ci((dims * torch.tensor(MAX_SCORES)).sum(1).numpy())
    keep = cfg.videos * cfg.samples   # only the video's clips stay in memory (1 GB per model at 8 samples)
    r["_clips"] = {"clip": s["clip"][:keep].clone(), "real": s["real"][:keep].clone(), "context": s["context"]}
    return r


def real_reference(contexts: ContextSet, teacher, repeat: int) -> dict:
    """The teacher on the real clips of the same contexts (the ceiling)."""
    b = contexts.batch(range(len(contexts)))
    clip = torch.cat([b["frames"][:, None], b["real"]], 1)
    t = teacher_scores(teacher, make_clips(clip, b["actions"], b["instruction"], b["meta"], repeat))
    out = {name: mean_ci(t["scores"][:, k]) for k, name in enumerate(SHORT)}
    out["total"] = mean_ci(t["total"])
    return out


def paired(a: np.ndarray, b: np.ndarray, context: np.ndarray) -> dict:
    """Total of b minus a, averaged per context first (samples share seeds), with CI and %."""
    ids = np.unique(context)
    diff = np.array([b[context == i].mean() - a[context == i].mean() for i in ids])
    m, ci = mean_ci(diff)
    return {"diff": m, "ci": ci, "relative_pct": 100 * m / max(1e-9, float(a.mean())), "contexts": len(ids)}


def side_by_side(results: dict, path, n: int, samples: int) -> None:
    names = list(results)
    first = results[names[0]]["_clips"]
    frames, captions = [], []
    for c in range(0, min(n * samples, len(first["clip"])), samples):
        real = torch.cat([first["clip"][c, :1], first["real"][c]])
        for t in range(real.shape[0]):
            row = torch.cat([results[m]["_clips"]["clip"][c, t] for m in names] + [real[t]], -1)
            frames.append((row.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8))
            captions.append([f"context {c // samples} step {t}", " | ".join(names + ["real"])])
    write_video(frames, path, fps=4, captions=captions, scale=3)


def _fmt(mci) -> str:
    return f"{mci[0]:.2f} ± {mci[1]:.2f}"


def table(results: dict, reference: dict | None, pairs: dict) -> str:
    lines = []
    if any("teacher" in r for r in results.values()):
        lines += ["| model | clips | " + " | ".join(SHORT) + " | total /10 | optimism rate | student total |",
                  "|---|---|" + "---|" * (len(SHORT) + 3)]
        for name, r in results.items():
            o = r["optimism"]
            lines.append(f"| {name} | {r['clips']} | " + " | ".join(_fmt(r["teacher"][k]) for k in SHORT)
                         + f" | {_fmt(r['teacher']['total'])} | {100 * o['rate']:.1f}% "
                         f"({o['optimistic_clips']}/{o['replay_failures']}) | "
                         + (_fmt(r["student_total"]) if "student_total" in r else "-") + " |")
        if reference:
            lines.append("| real clips | - | " + " | ".join(_fmt(reference[k]) for k in SHORT)
                         + f" | {_fmt(reference['total'])} | - | - |")
        for name, p in pairs.items():
            lines.append(f"\n{name}: teacher total {p['diff']:+.3f} ± {p['ci']:.3f} ({p['relative_pct']:+.1f}%) "
                         f"paired over {p['contexts']} contexts"
                         + ("; optimistic clips only before / only after {a_only} / {b_only} (exact McNemar "
                            "p = {p:.2f})".format(**p["optimism_mcnemar"]) if "optimism_mcnemar" in p else ""))
        lines.append("")
    lines += ["| model | PSNR | SSIM | object+gripper MSE | object+gripper PSNR |", "|---|---|---|---|---|"]
    for name, r in results.items():
        f = r["fidelity"]
        lines.append(f"| {name} | {f['psnr']:.2f} | {f['ssim']:.3f} | {f['region_mse']:.4f} | {f['region_psnr']:.2f} |")
    return "\n".join(lines)


def run(cfg: DictConfig) -> dict:
    setup_torch(cfg.threads)
    device = pick_device()
    from experiments.align import load_student, load_teacher

    models = {}
    for name, path in OmegaConf.to_container(cfg.models, resolve=True).items():
        p = resolve(path)
        if not p.exists():
            raise FileNotFoundError(f"{name}: no world model at {p}; build it with `python experiments/align.py` "
                                    f"(aligned) or `python experiments/train_worldmodel.py` (pre-trained)")
        models[name] = WorldModel.from_checkpoint(p, map_location=device)
    repeat = next(iter(models.values())).action_repeat
    contexts = ContextSet(rollout_paths(cfg.data.val, "val", cfg.artifacts), cfg.horizon, repeat, cfg.every,
                          cfg.max_episodes, segmentation=True)
    teacher = load_teacher(cfg.teacher)
    student_path = resolve(cfg.student_ckpt)
    student = load_student(student_path, device) if cfg.student_ckpt and student_path.exists() else None
    results = {name: evaluate_model(wm, contexts, cfg, teacher, student) for name, wm in models.items()}
    reference = real_reference(contexts, teacher, repeat) if teacher is not None else None
    names = list(results)
    ctx = results[names[0]]["_clips"]["context"].numpy()
    base, pairs = results[names[0]], {}
    for n in names[1:] if teacher is not None else []:   # same contexts and seeds: clip i of each model is a pair
        pairs[f"{n} vs {names[0]}"] = {**paired(base["_total"], results[n]["_total"], ctx),
                                       "optimism_mcnemar": mcnemar(base["_optimistic"].tolist(),
                                                                   results[n]["_optimistic"].tolist())}
    out = resolve(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.videos:
        side_by_side(results, out / "side_by_side.mp4", cfg.videos, cfg.samples)
    md = (f"Held-out contexts: {len(contexts)} ({100 * contexts.success_rate:.0f}% from successful episodes), "
          f"{cfg.samples} samples each at temperature {cfg.temperature}, {cfg.horizon} model steps.\n\n"
          + table(results, reference, pairs))
    public = {n: {k: v for k, v in r.items() if not k.startswith("_")} for n, r in results.items()}
    payload = {"models": public, "real": reference, "paired": pairs, "contexts": len(contexts),
               "config": OmegaConf.to_container(cfg, resolve=True)}
    save_results(out, payload, md)
    print(md)
    return payload


@hydra.main(config_path="conf", config_name="eval_alignment", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
