"""Collect episodes of any closed-loop method with the main job's models, e.g. held-out
episodes of the action prior's random pick for ``benchmarks/imagination_stages.py``:

    python benchmarks/collect_method.py prior_random --episodes 40 --split val --start 100 \\
        --out artifacts/heldout/prior_random_val_40.hdf5 'pipeline.prior=["prior=default","prior.train.steps=4000"]'

Trailing arguments are ``experiments/conf/closed_loop.yaml`` overrides (which models the
method uses; missing stages are built by :mod:`experiments.pipeline`). The rollouts are
written atomically in the format of :mod:`envs.rollouts`, with segmentation and
``after_success`` steps as the flywheel records them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from experiments.common import resolve, setup_torch  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("method", help="a method name of experiments/closed_loop.py (prior_random, prior, mpc_prior, ...)")
    ap.add_argument("--episodes", type=int, required=True)
    ap.add_argument("--split", default="val", choices=["train", "val", "test"])
    ap.add_argument("--start", type=int, default=0, help="offset into the split's seeds")
    ap.add_argument("--out", required=True, help="the HDF5 file to write")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="experiments/conf/closed_loop.yaml overrides")
    args = ap.parse_intermixed_args(argv)
    if args.episodes < 1:
        raise SystemExit(f"--episodes must be >= 1, got {args.episodes}")

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from agent.collect import collect
    from experiments import pipeline
    from experiments.closed_loop import make_method, method_spec, stages_for

    if method_spec(args.method).builder == "sac":
        raise SystemExit(f"{args.method}: an SB3 agent is trained per run, not collected from here")
    with initialize_config_dir(str(ROOT / "experiments" / "conf"), version_base="1.3"):
        cfg = compose("closed_loop", [*args.overrides, f"threads={args.threads}"])
    setup_torch(args.threads)
    stages = pipeline.build(cfg.pipeline, stages_for(args.method), artifacts=cfg.artifacts) if stages_for(args.method) else {}
    agent = make_method(args.method, cfg, stages)
    summary = collect(cfg.env.id, agent, args.episodes, resolve(args.out), split=args.split, start=args.start,
                      workers=args.workers, env_kwargs=OmegaConf.to_container(cfg.env.kwargs),
                      after_success=int(cfg.flywheel.get("after_success", 0)))
    print(json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    main()
