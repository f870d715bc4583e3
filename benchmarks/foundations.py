"""Foundations benchmarks -> docs/research-log.md.

    python benchmarks/foundations.py [expert] [throughput] [replay] [--seeds 50]

- expert: scripted-expert success on held-out test seeds (offset 10000 of the test
  split, never used during development), Lift, PickColor (each instruction) and Stack,
  with 95% Wilson intervals;
- throughput: rollout collection (64x64 RGB + segmentation, noisy expert, Lift) in env
  steps/s with 1 process vs 2, including process start-up;
- replay: max pixel difference between recorded episodes and their replay from
  ``states[0]`` + the recorded actions.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import envs  # noqa: E402
from agent.collect import collect  # noqa: E402
from agent.evaluate import evaluate, results_table  # noqa: E402
from agent.scripted import NoisyExpert, ScriptedExpert  # noqa: E402
from benchmarks.report import write_section  # noqa: E402
from envs.rollouts import demo_keys, open_rollouts  # noqa: E402
from envs.splits import split_seeds  # noqa: E402

BENCH_OFFSET = 10_000  # test-split seeds reserved for this benchmark


def expert(n: int, workers: int) -> None:
    seeds = split_seeds("test", n, BENCH_OFFSET)
    rows, ok = [], True
    runs = [("roboalign/Lift-v0", None), ("roboalign/PickColor-v0", "lift the red cube"),
            ("roboalign/PickColor-v0", "lift the green cube"), ("roboalign/Stack-v0", None)]
    for env_id, instr in runs:
        opts = [{"instruction": instr}] * n if instr else None
        s = evaluate(env_id, ScriptedExpert(), seeds, workers=workers, options=opts)
        if instr:
            s["env_id"] = f"{env_id} ({instr})"
        rows.append(s)
        ok = ok and s["success_rate"] >= 0.95
        print(results_table([s]), flush=True)
    noisy = evaluate("roboalign/Lift-v0", NoisyExpert(fail_prob=0.5), seeds, workers=workers)
    noisy["agent"] = "noisy (fail_prob 0.5; data source, not a target)"
    rows.append(noisy)
    body = (f"Scripted expert, {n} held-out test seeds per row (test split offset {BENCH_OFFSET}: "
            f"seeds {seeds[0]}..{seeds[-1]}). Target >= 0.95 per row: {'met' if ok else 'NOT met'}.\n\n"
            + results_table(rows))
    write_section("Scripted expert success", body)


def throughput(episodes: int) -> None:
    lines = ["| processes | episodes | env steps | wall s | env steps/s |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as d:
        for workers in (1, 2):
            s = collect("roboalign/Lift-v0", "noisy", episodes, Path(d) / f"w{workers}.hdf5", split="val",
                        workers=workers, progress=False)
            lines.append(f"| {workers} | {episodes} | {s['steps']} | {s['seconds']:.1f} | {s['steps_per_s']:.1f} |")
            print(lines[-1], flush=True)
    body = ("Collection of Lift with the noisy expert (fail_prob 0.5): 64x64 RGB and segmentation "
            "rendered every step, poses, HDF5 writing with gzip; wall time includes spawning the "
            "worker processes.\n\n" + "\n".join(lines))
    write_section("Collection throughput", body)


def replay(episodes: int) -> None:
    lines = ["| env | episodes | steps | max abs pixel diff | frames not bit-identical |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as d:
        for env_id in envs.ENV_IDS:
            path = Path(d) / "r.hdf5"
            collect(env_id, "noisy", episodes, path, split="val", workers=2, progress=False)
            env = envs.make(env_id)
            worst, differing, steps = 0, 0, 0
            with open_rollouts(path) as f:
                for key in demo_keys(f):
                    g = f["data"][key]
                    images, actions = g["next_obs"]["image"][()], g["actions"][()]
                    obs, _ = env.reset(options={"sim_state": g["states"][0]})
                    worst = max(worst, int(np.abs(obs["image"].astype(int) - g["obs"]["image"][0]).max()))
                    for t, a in enumerate(actions):
                        obs, *_ = env.step(a)
                        diff = int(np.abs(obs["image"].astype(int) - images[t]).max())
                        worst, differing, steps = max(worst, diff), differing + (diff > 0), steps + 1
            env.close()
            lines.append(f"| {env_id} | {episodes} | {steps} | {worst} | {differing} |")
            print(lines[-1], flush=True)
    body = ("Noisy-expert episodes (val seeds) recorded by `collect`, then replayed with "
            "`env.reset(options={'sim_state': states[0]})` and the recorded actions; every frame "
            "compared with the recorded one (uint8).\n\n" + "\n".join(lines))
    write_section("Replay fidelity", body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="*", default=["expert", "throughput", "replay"])
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    t0 = time.time()
    if "expert" in args.what:
        expert(args.seeds, args.workers)
    if "throughput" in args.what:
        throughput(args.episodes)
    if "replay" in args.what:
        replay(max(2, args.episodes // 4))
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
