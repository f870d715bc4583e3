"""Why does the action prior miss the green cube? -> BENCHMARKS.md ("PickColor: where the green cube gets lost").

    python benchmarks/colour_diagnosis.py --rollouts FILE.hdf5 --prior a.pt [b.pt ...] [--seeds 10]

1. **What a colour detector sees**: over the rollout file's frames, pixels that are
   clearly green (G > R + 30 and G > B + 30) or red, split into the cube of that colour
   (simulator segmentation) and everything else (robot, scene).
2. **Where the prior closes the gripper**: each prior acts alone on held-out PickColor
   test seeds. It records the xy distance from the gripper to the instructed cube and to
   the other cube at the first control step that commands "close", per instruction colour.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import envs  # noqa: E402,F401  (registers the env ids)
from benchmarks.report import write_section  # noqa: E402
from envs.robosuite_env import LABELS  # noqa: E402
from envs.rollouts import demo_keys, open_rollouts  # noqa: E402
from envs.splits import split_seeds  # noqa: E402
from envs.vocab import COLOURS, target_colour  # noqa: E402

TITLE = "PickColor: where the green cube gets lost"


def colour_pixels(path, episodes: int = 20, every: int = 5) -> dict:
    """``{colour: {"cube": n, "elsewhere": n}}`` clearly-coloured pixel counts."""
    out = {c: {"cube": 0, "elsewhere": 0} for c in COLOURS}
    with open_rollouts(path) as f:
        for key in demo_keys(f)[:episodes]:
            g = f["data"][key]["obs"]
            img, seg = g["image"][::every].astype(int), g["segmentation"][::every]
            r, gr, b = img[..., 0], img[..., 1], img[..., 2]
            masks = {"red": (r > gr + 30) & (r > b + 30), "green": (gr > r + 30) & (gr > b + 30)}
            for c in COLOURS:
                cube = seg == LABELS[f"{c}_cube"]
                out[c]["cube"] += int((masks[c] & cube).sum())
                off_cubes = (seg != LABELS["red_cube"]) & (seg != LABELS["green_cube"])
                out[c]["elsewhere"] += int((masks[c] & off_cubes).sum())
    return out


def first_close(prior_path: str, seeds: list[int], env_id: str = "roboalign/PickColor-v0") -> list[dict]:
    """Per seed: instruction colour, success, and the gripper's xy distance (m) to the
    instructed and the other cube at the first "close" command of the prior alone."""
    from agent.prior import PriorAgent

    agent = PriorAgent(prior_path, execute=8, samples=1)
    env = gym.make(env_id)
    rows = []
    try:
        for seed in seeds:
            obs, info = env.reset(seed=seed)
            agent.reset(seed)
            colour = target_colour(int(obs["instruction"]))
            other = next(c for c in COLOURS if c != colour)
            row, done = {"seed": seed, "colour": colour, "success": False}, False
            while not done:
                action = agent.act(obs)
                if "to_target" not in row and action[3] > 0:
                    eef, poses = np.asarray(obs["proprio"][:2]), info["object_poses"]
                    row["to_target"] = float(np.linalg.norm(eef - np.asarray(poses[colour])[:2]))
                    row["to_other"] = float(np.linalg.norm(eef - np.asarray(poses[other])[:2]))
                obs, _, term, trunc, info = env.step(action)
                done = term or trunc
            row["success"] = bool(info.get("success", term))
            rows.append(row)
    finally:
        env.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rollouts", required=True, help="a PickColor rollout file with segmentation")
    ap.add_argument("--prior", nargs="+", required=True, help="action prior checkpoints (prior.pt)")
    ap.add_argument("--seeds", type=int, default=10, help="test seeds per instruction colour")
    ap.add_argument("--notes", default="")
    ap.add_argument("--title", default=TITLE, help="the BENCHMARKS.md section to write")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    px = colour_pixels(args.rollouts)
    lines = [f"Clearly coloured pixels in 20 episodes of `{args.rollouts}` (every 5th frame):", "",
             "| colour | on the cube of that colour | elsewhere (robot, scene) | elsewhere / cube |",
             "|---|---|---|---|"]
    lines += [f"| {c} | {v['cube']} | {v['elsewhere']} | {v['elsewhere'] / max(1, v['cube']):.2f} |"
              for c, v in px.items()]
    lines += ["", f"The prior alone on held-out PickColor test seeds (the first {args.seeds} of each colour): "
              "gripper xy distance to the instructed / the other cube at the first close command.", "",
              "| prior | instruction | episodes | success | median to target (cm) | median to other (cm) | "
              "within 2 cm of target |", "|---|---|---|---|---|---|---|"]
    pool = split_seeds("test", 6 * args.seeds)
    env = gym.make("roboalign/PickColor-v0")
    by_colour: dict[str, list[int]] = {c: [] for c in COLOURS}
    for s in pool:   # which seeds draw which instruction (reset only)
        obs, _ = env.reset(seed=s)
        lst = by_colour[target_colour(int(obs["instruction"]))]
        if len(lst) < args.seeds:
            lst.append(s)
    env.close()
    for prior in args.prior:
        rows = first_close(prior, sorted(by_colour["red"] + by_colour["green"]))
        for c in COLOURS:
            rs = [r for r in rows if r["colour"] == c]
            closed = [r for r in rs if "to_target" in r]
            to_t = np.array([r["to_target"] for r in closed]) * 100
            to_o = np.array([r["to_other"] for r in closed]) * 100
            lines.append(f"| `{Path(prior).parent.name}` | {c} | {len(rs)} | {sum(r['success'] for r in rs)} | "
                         f"{np.median(to_t):.1f} | {np.median(to_o):.1f} | {int((to_t < 2).sum())}/{len(closed)} |")
        print(json.dumps(rows))
    body = "\n".join(lines) + (f"\n\n{args.notes}\n" if args.notes else "\n")
    print(body)
    if not args.no_write:
        write_section(args.title, body)


if __name__ == "__main__":
    main()
