"""Where does the imagined outcome get lost: the tokenizer, the dynamics, or the reading?

    python benchmarks/imagination_stages.py                   # the main job's models (run.json), Lift val episodes
    python benchmarks/imagination_stages.py --temperatures 1.0 0.3 --windows 4 --episodes 16
    python benchmarks/imagination_stages.py --worldmodel A/worldmodel.pt --worldmodel B/worldmodel.pt --draws 3

Held-out (val-split) clips of 8 model steps, cut where the instructed cube is grasped
and lifted (plus the episode end and random windows: :func:`worldmodel.judge.bench.cut_windows`),
are shown to the same calibrated teacher in three versions:

- ``real``: the recorded frames (the teacher's own accuracy);
- ``tokenizer``: the tokenizer's reconstruction of the real frames (context of the
  start frame, each later frame's own dynamics tokens): what the frame codes can show
  (``--tokenizer PATH`` adds other tokenizers' reconstructions);
- ``wm_t<T>``: the world model's rollout from the real start frame under the clip's
  real actions, sampled at temperature T.

A world model with proprio tokens also imagines the proprio; for it a second table reads
the lift off the last frame's proprio instead of the pixels
(:func:`worldmodel.judge.proprio.proprio_lifted`), next to the same rule on the real
proprio (the rule's own ceiling).

For each version: the stage the teacher reads in the clip (Instruction Following 0-3)
against the true stage of the recorded trajectory, as a confusion matrix, and the
recall of "done" (the lift) -- the outcome the planner's reward is meant to see.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from agent.gap import stage_confusion  # noqa: E402
from benchmarks.report import write_section  # noqa: E402
from envs.rollouts import find_rollouts  # noqa: E402
from experiments.common import resolve, setup_torch  # noqa: E402

STAGES = ("nothing", "reached", "grasped", "done")


def reconstruct(tokenizer, clips: list[dict], batch: int = 16) -> list[dict]:
    """A tokenizer's reconstruction of each clip under its start frame's context."""
    import torch

    out = []
    for i in range(0, len(clips), batch):
        chunk = clips[i:i + batch]
        x = torch.from_numpy(np.stack([c["frames"] for c in chunk])).float().div(255).permute(0, 1, 4, 2, 3)
        b, t = x.shape[:2]
        with torch.no_grad():
            ctx = tokenizer.encode_context(x[:, 0])
            tok = tokenizer.encode_dynamics(x[:, 1:].flatten(0, 1), ctx.repeat_interleave(t - 1, 0),
                                            x[:, 0].repeat_interleave(t - 1, 0))
            fr = tokenizer.decode_sequence(tok.view(b, t - 1, -1), ctx, x[:, 0])
        fr = (fr.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
        for c, f in zip(chunk, fr):
            out.append({**c, "frames": np.concatenate([c["frames"][:1], f])})
    return out


def proprio_rows(versions: dict, scored: dict) -> list[str]:
    """Table rows of the proprio-read lift for every version whose clips carry imagined
    proprio, after the same rule on the real clips' recorded proprio."""
    import envs
    from envs.tasks import get_task
    from worldmodel.judge.bench import clip_proprio
    from worldmodel.judge.proprio import proprio_lifted

    imagined = [n for n, clips in versions.items() if clips and all("proprio" in c for c in clips)]
    if not imagined:
        return []
    out = []
    for name in ["real", *imagined]:
        clips = versions[name]
        prop = np.stack([c["proprio"] if name != "real" else clip_proprio(c) for c in clips])
        margin = np.array([get_task(envs.ENV_IDS[c["env_id"]]).lift_margin for c in clips])
        read = proprio_lifted(prop, np.array([c["actions"][-1, 3] for c in clips]), margin)
        true3 = scored[name]["true_stage"][:, 0] == 3
        out.append(f"| {name} (proprio) | {len(clips)} | {int(read[true3].sum())}/{int(true3.sum())} = "
                   f"{read[true3].mean() if true3.any() else 0:.2f} | {int(read[~true3].sum())}/{int((~true3).sum())} = "
                   f"{read[~true3].mean() if (~true3).any() else 0:.2f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="artifacts/closed_loop/lift/run.json", help="a main-job run.json naming the stages")
    ap.add_argument("--worldmodel", action="append", default=None,
                    help="default: the run's aligned stage; 'none': tokenizers (--tokenizer) only; repeat to "
                         "compare world models on the same clips (e.g. before and after a flywheel round)")
    ap.add_argument("--teacher", default=None, help="default: the run's bench stage teacher.json")
    ap.add_argument("--rollouts", nargs="*", default=None, help="default: the run's val collect stage")
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--temperatures", type=float, nargs="*", default=[1.0, 0.3])
    ap.add_argument("--tokenizer", action="append", default=[],
                    help="another tokenizer checkpoint whose reconstructions to read too (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--draws", type=int, default=1,
                    help="imagined futures per clip and temperature (seeds seed..seed+draws-1), pooled in the tables")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch the research log")
    ap.add_argument("--notes", default="", help="free text appended under the tables")
    ap.add_argument("--title", default="Imagination: where the lift gets lost (Lift, held-out clips)",
                    help="the research-log section to (re)write")
    args = ap.parse_args()
    if args.draws < 1:
        raise SystemExit(f"--draws must be >= 1, got {args.draws}")
    if args.worldmodel and "none" in args.worldmodel and len(args.worldmodel) > 1:
        raise SystemExit("--worldmodel none reads tokenizers only: do not combine it with world-model paths")
    setup_torch(args.threads)

    from worldmodel.judge.bench import cut_windows, generate_clips, load_source_episodes, make_clip, prime
    from worldmodel.judge.teacher import Teacher
    from worldmodel.world_model import WorldModel

    run = json.loads(resolve(args.run).read_text()) if resolve(args.run).exists() else {"stages": {}}
    st = run["stages"]
    paths = args.worldmodel or [str(Path(st["aligned"]) / "worldmodel.pt")]
    wm_paths = [] if paths == ["none"] else [resolve(p) for p in paths]
    wm_path = wm_paths[0] if wm_paths else None
    if wm_path is None and (args.temperatures or not args.tokenizer):
        raise SystemExit("--worldmodel none reads tokenizers only: pass --tokenizer PATH and --temperatures (empty)")
    teacher_path = resolve(args.teacher or Path(st["bench"]) / "teacher.json")
    rollouts = args.rollouts or [str(p) for d in st["collect"] for p in find_rollouts(d, "*_val_*.hdf5")]
    wm, teacher = (WorldModel.from_checkpoint(wm_path) if wm_path else None), Teacher.load(teacher_path)
    rng = np.random.default_rng(args.seed)
    real = []
    for ep in load_source_episodes(rollouts, args.episodes):
        for s in cut_windows(ep, args.windows, rng):
            clip = make_clip(ep, s)
            prime(teacher, clip)
            real.append(clip)
    versions = {"real": real, **({"tokenizer": reconstruct(wm.tokenizer, real)} if wm else {})}
    for path in args.tokenizer:
        from worldmodel.tokenizer import DualFSQTokenizer

        versions[f"tokenizer {resolve(path).parent.name}"] = reconstruct(DualFSQTokenizer.from_checkpoint(resolve(path)), real)
    for i, path in enumerate(wm_paths):
        model = wm if i == 0 else WorldModel.from_checkpoint(path)
        for temp in args.temperatures:
            name = f"wm_t{temp:g}" + (f" {path.parent.name}" if len(wm_paths) > 1 else "")
            versions[name] = [c for k in range(args.draws) for c in generate_clips(model, real, [temp], seed=args.seed + k)[0]]
    scored = {name: teacher.score_clips(clips) for name, clips in versions.items()}
    mats = {name: stage_confusion(sc) for name, sc in scored.items()}

    rows = ["| version | clips | true stage 3 (lifted) | read 3 when true 3 (lift recall) | "
            "read 3 when true < 3 (false lift) | read != true | "
            "read < true (pessimistic) | read > true (optimistic) |", "|---|---|---|---|---|---|---|---|"]
    for name, m in mats.items():
        n, lifted, unlifted = m.sum(), m[3].sum(), m[:3].sum()
        rows.append(f"| {name} | {n} | {lifted} | {m[3, 3]}/{lifted} = {m[3, 3] / max(lifted, 1):.2f} | "
                    f"{m[:3, 3].sum()}/{unlifted} = {m[:3, 3].sum() / max(unlifted, 1):.2f} | "
                    f"{1 - np.trace(m) / n:.2f} | {np.tril(m, -1).sum() / n:.2f} | {np.triu(m, 1).sum() / n:.2f} |")
    conf = ["| version | true stage | " + " | ".join(f"read {s}" for s in STAGES) + " |", "|---|---|---|---|---|---|"]
    for name, m in mats.items():
        conf += [f"| {name} | {k} {STAGES[k]} | " + " | ".join(str(v) for v in m[k]) + " |" for k in range(4)]
    prows = proprio_rows(versions, scored)
    if prows:
        rows += ["", "The lift read off the last frame's proprio (held: commanded closed, opening >= "
                 "half a cube width; raised: eef above the lift height), against the true stage 3:", "",
                 "| version | clips | read lifted when true 3 (lift recall) | read lifted when true < 3 (false lift) |",
                 "|---|---|---|---|", *prows]
    names = ", ".join(f"`{p.parent.name}`" for p in wm_paths) or "none"
    body = "\n".join([f"World model {names}, teacher `{teacher_path.parent.name}`; {len(real)} "
                      f"held-out clips (8 model steps = 16 control steps) from {args.episodes} episodes of "
                      f"{', '.join(Path(r).name for r in rollouts)}, {args.windows} windows each"
                      + (f"; {args.draws} imagined futures per clip (seeds {args.seed}..{args.seed + args.draws - 1})"
                         if args.draws > 1 else "") + ".", "",
                      *rows, "", "Confusion ([true stage][stage the teacher reads in the clip]):", "", *conf,
                      *(["", args.notes] if args.notes else [])])
    print(body)
    if not args.no_write:
        argv = sys.argv[1:]
        if "--notes" in argv:   # the command line, without the notes' text
            argv = argv[:argv.index("--notes")] + ["--notes", "..."] + argv[argv.index("--notes") + 2:]
        write_section(args.title, body,
                      command="python benchmarks/imagination_stages.py " + " ".join(argv))


if __name__ == "__main__":
    main()
