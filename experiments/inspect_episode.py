"""Inspect one episode of a finished run: re-run a seed with the plan recorder on and write its
contact sheet (and a rerun recording with rerun-sdk), optionally with each kept candidate's
true value from a replay in the simulator.

    python -m experiments.inspect_episode --run artifacts/closed_loop/lift --method mpc_prior \\
        --seed 2000000 [--values] [--compare-off] [--out artifacts/inspect]

The run's models and the main job's settings (plus ``--override key=value ...``) rebuild the
method's agent; on the same machine the episode is the one the run recorded (the recorder does
not change the actions; ``--compare-off`` runs the seed again without it and checks that, and
reports the planning time per control step with and without recording).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def true_values(replans, states: list[np.ndarray], env) -> dict:
    """``{(replan, kept position): oracle-P's value}`` of the last iteration's kept candidates,
    each replayed from the real state of its replan (no rendering)."""
    from agent.oracle import SimulatorScorer

    scorer = SimulatorScorer()
    scorer.attach_privileged_env(env)
    out = {}
    for i, rp in enumerate(replans):
        if rp.iterations:
            vals, _ = scorer.score_candidates(states[rp.step], rp.iterations[-1]["kept_actions"])
            out.update({(i, j): float(v) for j, v in enumerate(vals)})
    scorer.close()
    return out


def main(argv: list[str] | None = None) -> None:
    from omegaconf import OmegaConf

    import envs
    from agent.collect import run_episode
    from agent.evaluate import write_inspection
    from experiments.api import load_agent, run_config, run_stages
    from experiments.common import resolve, setup_torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="artifacts/closed_loop/lift", help="a finished main-job run's output folder")
    ap.add_argument("--method", default="mpc_prior")
    ap.add_argument("--seed", type=int, required=True, help="a test seed of the run (see its outcomes.json)")
    ap.add_argument("--override", nargs="*", default=[], help="closed-loop config overrides (planner.*, mpc.*)")
    ap.add_argument("--values", action="store_true", help="replay the kept candidates for their true value")
    ap.add_argument("--compare-off", action="store_true", help="also run without the recorder: same actions? time?")
    ap.add_argument("--out", default=None, help="folder for the sheet (default: <run>/<method>/inspect)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    setup_torch(args.threads)
    stages = run_stages(args.run)        # a clear error before anything runs if the run is incomplete
    cfg = run_config(args.run)
    env = envs.make(cfg.env.id, **OmegaConf.to_container(cfg.env.kwargs))     # the env as the run made it
    agent = load_agent(args.method, args.run, ["inspect.enabled=true", *args.override])
    if not getattr(agent, "inspecting", False):
        raise SystemExit(f"{args.method} imagines nothing to inspect; use a world-model method (mpc, mpc_prior, ...)")
    res = run_episode(env, agent, args.seed, record=True)      # as the closed loop runs it, states kept
    actions, plan_on, replans = res.episode["actions"], agent.planning_time_per_step(), res.extras["inspect"]
    values = true_values(replans, res.episode["states"], env) if args.values else None
    shown_vs_real = None
    if "bench" in stages:       # the teacher's reading of each executed plan, imagined vs replayed
        from agent.gap import load_teacher, score_executed
        from envs.vocab import instruction_id

        log = agent.episode_log()
        scored = score_executed(load_teacher(str(stages["bench"].dir / "teacher.json")), cfg.env.id,
                                instruction_id(res.instruction), res.episode["states"], log["imagined"], log["plans"],
                                log["repeat"])
        shown_vs_real = {i: (int(round(s)), int(t)) for i, (s, t) in
                         enumerate(zip(scored["scores"][:, 0], scored["true_stage"][:, 0]))}
    out = resolve(args.out) if args.out else resolve(args.run) / args.method / "inspect"
    paths = write_inspection(res, out / f"{args.method}_seed{args.seed}", values, shown_vs_real)
    print(f"{args.method} seed {args.seed}: {'SUCCESS' if res.success else 'failed'} in {len(actions)} steps; "
          f"{len(replans)} replans; planning {plan_on:.3f} s per control step with the recorder")
    for p in paths:
        print(f"wrote {p} ({Path(p).stat().st_size / 1e6:.1f} MB)")
    if args.compare_off:
        plain = load_agent(args.method, args.run, args.override)
        off = run_episode(env, plain, args.seed, record=True).episode["actions"]
        same = off.shape == actions.shape and np.array_equal(off, actions)
        print(f"without the recorder: planning {plain.planning_time_per_step():.3f} s per control step; "
              f"actions {'identical' if same else 'DIFFERENT'}")
    env.close()


if __name__ == "__main__":
    main()
