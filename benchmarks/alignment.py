"""Alignment on the main job's models: pre-trained vs GRPO-aligned variants, judged by the teacher.

    python benchmarks/alignment.py                         # Lift main-job stages; aligned + neg_mse, all_six
    python benchmarks/alignment.py --variant strong=grpo.lr=5e-5,run.updates=160
    python benchmarks/alignment.py --pipeline env=pick_color 'pipeline.envs=[lift,pick_color,stack]'

Builds (or reuses) the main job's stages (``experiments/pipeline.py``: collect, tokenizer,
world model, bench, student, the default aligned model), then one more ``aligned`` stage per
variant: the main job's alignment overrides plus the variant's (each a cached stage keyed like
any other, so a re-run only evaluates). ``aligned`` is the main job's aligned model itself.
Default variants (issue: alignment must show itself against a single low-level metric and
against the paper's weighting, in the same run):

- ``aligned`` (always): the default reward (student, faithfulness-weighted dims);
- ``neg_mse``: reward = -MSE of the imagined frames vs the real ones (a single low-level metric);
- ``all_six``: the student with the paper's weights (the six dims' maxima).

All models are then evaluated by ``experiments/eval_alignment.py`` on the same held-out
(val-split) contexts with the same sampling seeds: the teacher's six dimensions and total
with 95% intervals, the paired difference vs the pre-trained model, the optimism rate and
fidelity vs the real frames. Alignment cost (wall time per GRPO update and per stage), the
final KL to the pre-trained model and the hacking monitor's flags come from each stage's
``metrics.jsonl``. Writes the research-log section ``--title``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.report import write_section  # noqa: E402

DEFAULT_VARIANTS = {"neg_mse": ["grpo.reward=neg_mse"], "all_six": ["grpo.weights=all_six"]}
TITLE = "Alignment: pre-trained vs aligned (main-job models)"


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name=override[,override...]`` -> (name, overrides); a bare name has no overrides.

    The first ``=`` ends the name; overrides are split on commas outside brackets."""
    name, _, rest = text.partition("=")
    if not name or not name.replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"variant {text!r}: expected NAME=override[,override...]")
    out, depth, cur = [], 0, ""
    for ch in rest:
        depth += (ch in "[{(") - (ch in "]})")
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return name, [o for o in [*out, cur] if o]


def stage_metrics(stage_dir: Path) -> dict:
    """Cost and end state of an alignment stage from its metrics.jsonl and stage.json."""
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "time/step_s" in r]
    probes = [r for r in rows if "probe/teacher_total" in r]
    manifest = json.loads((stage_dir / "stage.json").read_text())
    return {"updates": max((r["step"] for r in rows), default=0),
            "s_per_update": float(np.mean([r["time/step_s"] for r in steps])) if steps else float("nan"),
            "wall_s": float(manifest.get("wall_s", float("nan"))),
            "kl_last": float(np.mean([r["train/kl"] for r in steps[-5:]])) if steps else float("nan"),
            "probe_first": probes[0]["probe/teacher_total"] if probes else float("nan"),
            "probe_last": probes[-1]["probe/teacher_total"] if probes else float("nan"),
            "hacking_flags": int(sum(bool(r.get("probe/hacking")) for r in rows)),
            "config": manifest.get("config", {}).get("grpo", {})}


def cost_table(costs: dict[str, dict]) -> str:
    lines = ["| variant | reward | weights | lr | updates | s / update | stage wall s | KL (last 5 updates) "
             "| probe teacher total first -> last | hacking flags |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in costs.items():
        g = c["config"]
        w = g.get("weights")
        lines.append(f"| {name} | {g.get('reward')} | {w if isinstance(w, str) else list(w)} | {g.get('lr')} | "
                     f"{c['updates']} | {c['s_per_update']:.2f} | {c['wall_s']:.0f} | {c['kl_last']:.4f} | "
                     f"{c['probe_first']:.2f} -> {c['probe_last']:.2f} | {c['hacking_flags']} |")
    return "\n".join(lines)


def reward_agreement(wm, contexts, student, teacher, n_contexts: int, group_size: int, temperature: float,
                     seed: int = 0) -> dict:
    """Does a reward order one GRPO group (``group_size`` samples of one context) as the teacher does?

    ``n_contexts`` training contexts, each imagined ``group_size`` times by ``wm``; every
    reward GRPO can use is compared with the teacher's reward under the same weights, within
    each group only (that is all the group-normalized advantages see): pairwise accuracy,
    teacher ties left out. Returns {reward name: {"acc", "pairs"}} plus the teacher's mean
    within-group std of the faithful R (how much there is to rank)."""
    import torch

    from experiments.align import student_reward_fn
    from experiments.eval_alignment import imagine, teacher_scores
    from worldmodel.align import WEIGHT_PRESETS, group_advantages, make_clips, single_metric_reward
    from worldmodel.judge import MAX_SCORES
    from worldmodel.judge.distill import pairwise_accuracy

    g = torch.Generator().manual_seed(seed)
    sub = _Subset(contexts, torch.randperm(len(contexts), generator=g)[:n_contexts].tolist())
    s = imagine(wm, sub, group_size, temperature, batch_size=32, seed=seed)
    teacher_dims = teacher_scores(teacher, make_clips(s["clip"], s["actions"], s["instruction"], s["meta"],
                                                      wm.action_repeat))["scores"] / np.asarray(MAX_SCORES)
    acts = s["actions"].reshape(len(s["clip"]), -1, 4)
    student_dims = torch.as_tensor(student_reward_fn(student)(s["clip"], s["instruction"], acts)).float().numpy()
    groups = s["context"].numpy()
    out = {}
    for w_name in ("faithful", "all_six"):
        w = np.asarray(WEIGHT_PRESETS[w_name])
        t_r = teacher_dims @ w
        rewards = {f"student ({w_name})": student_dims @ w}
        if w_name == "faithful":
            for metric in ("neg_mse", "ssim"):
                rewards[metric] = single_metric_reward(s["clip"][:, 1:], s["real"], metric).numpy()
            z = lambda x: group_advantages(torch.as_tensor(x).view(-1, group_size), 1e-9).view(-1).numpy()  # noqa: E731
            rewards["student (faithful) + neg_mse, z-scored per group"] = z(rewards["student (faithful)"]) + z(rewards["neg_mse"])
            out["teacher_group_std"] = float(np.mean([t_r[groups == c].std() for c in np.unique(groups)]))
        for name, r in rewards.items():
            acc, pairs = pairwise_accuracy(r, t_r, groups, return_pairs=True)
            out[f"{name} vs teacher ({w_name})"] = {"acc": float(acc), "pairs": int(pairs)}
    return out


def agreement_check(cfg, stages, train_rollouts, n_contexts: int) -> dict:
    """:func:`reward_agreement` for the pre-trained world model, GRPO's group size and temperature."""
    from experiments import pipeline
    from experiments.align import load_student, load_teacher
    from worldmodel.align import ContextSet
    from worldmodel.training import pick_device
    from worldmodel.world_model import WorldModel

    acfg = pipeline.compose("align", list(cfg.pipeline.align))
    device = pick_device()
    wm = WorldModel.from_checkpoint(pipeline.model_path(stages, "worldmodel"), map_location=device)
    contexts = ContextSet(train_rollouts, acfg.run.horizon, wm.action_repeat, acfg.run.every, acfg.run.max_episodes,
                          segmentation=True)
    student = load_student(pipeline.model_path(stages, "student"), device)
    teacher = load_teacher(str(stages["bench"].dir / "teacher.json"))
    return reward_agreement(wm, contexts, student, teacher, n_contexts, int(acfg.grpo.group_size),
                            float(acfg.grpo.temperature))


def agreement_table(agreement: dict, n_contexts: int) -> str:
    lines = [f"Does the reward order a GRPO group as the teacher does? {n_contexts} training contexts x one group "
             f"each, imagined by the pre-trained model (teacher's mean within-group std of the faithful R: "
             f"{agreement['teacher_group_std']:.3f}); pairwise accuracy within groups, teacher ties left out "
             "(chance 0.5):", "", "| reward vs teacher reward | pairs | accuracy |", "|---|---|---|"]
    lines += [f"| {k} | {v['pairs']} | {v['acc']:.3f} |" for k, v in agreement.items() if isinstance(v, dict)]
    return "\n".join(lines)


class _Subset:
    """The contexts ``idx`` of a :class:`worldmodel.align.ContextSet` (same ``batch`` verb)."""

    def __init__(self, contexts, idx):
        self.contexts, self.idx = contexts, list(idx)

    def __len__(self) -> int:
        return len(self.idx)

    def batch(self, indices) -> dict:
        return self.contexts.batch([self.idx[i] for i in indices])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", nargs="*", default=[],
                    help="overrides of experiments/conf/closed_loop.yaml that choose the stages (e.g. env=..., preset=quick)")
    ap.add_argument("--variant", action="append", type=parse_variant, default=None,
                    help="NAME=override[,override...] on top of the main job's align overrides (repeatable); "
                         "default: neg_mse and all_six")
    ap.add_argument("--agreement-only", action="store_true",
                    help="build up to the student and run only the reward-agreement check (no alignment)")
    ap.add_argument("--no-ablations", action="store_true", help="only the main job's aligned model (no variants)")
    ap.add_argument("--samples", type=int, default=2, help="imagined clips per held-out context and model")
    ap.add_argument("--agreement", type=int, default=32,
                    help="training contexts for the reward-agreement check (0: skip)")
    ap.add_argument("--eval", nargs="*", default=[], help="extra experiments/conf/eval_alignment.yaml overrides")
    ap.add_argument("--out", default="artifacts/benchmarks/alignment")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--title", default=TITLE)
    ap.add_argument("--notes", default="", help="free text appended under the tables")
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch the research log")
    args = ap.parse_args()

    from omegaconf import OmegaConf

    from experiments import eval_alignment, pipeline
    from experiments.common import resolve, setup_torch

    setup_torch(args.threads)
    cfg = pipeline.compose("closed_loop", args.pipeline)
    if args.agreement_only:
        stages = pipeline.build(cfg.pipeline, ["student"], artifacts=cfg.artifacts)
        rollouts = pipeline.collected_rollouts(stages["collect"])
        print(agreement_table(agreement_check(cfg, stages, rollouts["train"], args.agreement), args.agreement))
        return
    stages = pipeline.build(cfg.pipeline, ["aligned"], artifacts=cfg.artifacts)
    coll_keys = {f"collect{i}": r.key for i, r in enumerate(stages["collect"])}
    rollouts = pipeline.collected_rollouts(stages["collect"])
    variants = dict(args.variant or []) if args.variant is not None or args.no_ablations else dict(DEFAULT_VARIANTS)
    aligned = {"aligned": stages["aligned"]}
    for name, extra in variants.items():
        if name in ("pretrained", "aligned"):
            raise SystemExit(f"variant name {name!r} is taken; choose another")
        print(f"[alignment] variant {name}: {extra}")
        aligned[name] = pipeline.aligned_stage(cfg.pipeline, stages, coll_keys, rollouts["train"], extra=extra,
                                               artifacts=cfg.artifacts)

    models = {"pretrained": pipeline.model_path(stages, "worldmodel")}
    models.update({n: s.dir / pipeline.MODEL_FILES["aligned"] for n, s in aligned.items()})
    out = resolve(args.out)
    ecfg = pipeline.compose("eval_alignment", [
        f"artifacts={cfg.artifacts}", f"teacher={stages['bench'].dir / 'teacher.json'}",
        f"student_ckpt={pipeline.model_path(stages, 'student')}", f"data.val={pipeline.path_list(rollouts['val'])}",
        f"samples={args.samples}", f"out_dir={out}", *args.eval])
    ecfg.models = OmegaConf.create({n: str(p) for n, p in models.items()})   # the first is the baseline
    result = eval_alignment.run(ecfg)
    costs = {n: stage_metrics(s.dir) for n, s in aligned.items()}
    md = (Path(out / "results.md").read_text()
          + "\n\nAlignment runs (each an `aligned` stage; cost on this machine, 2 cores):\n\n" + cost_table(costs))
    agreement = {}
    if args.agreement:
        agreement = agreement_check(cfg, stages, rollouts["train"], args.agreement)
        md += "\n\n" + agreement_table(agreement, args.agreement)
    stages_txt = ", ".join(f"{k} `{stages[k].dir.name}`" for k in ("worldmodel", "student", "bench"))
    stages_txt += ", " + ", ".join(f"{n} `{s.dir.name}`" for n, s in aligned.items())
    body = (f"Stages: {stages_txt}. Variants: main job's align overrides {list(cfg.pipeline.align)} plus "
            + ("; ".join(f"{n}: {v}" for n, v in variants.items()) or "none") + ".\n\n" + md
            + (f"\n\n{args.notes}" if args.notes else ""))
    with open(out / "costs.json", "w") as f:
        json.dump({"costs": costs, "paired": result["paired"], "agreement": agreement}, f, indent=2, default=str)
    print(body)
    if not args.no_write:
        write_section(args.title, body)


if __name__ == "__main__":
    main()
