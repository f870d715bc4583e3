"""Where does a chooser close the gripper? The first close command's offset from the cube, per agent.

    python benchmarks/grasp_offset.py --prior artifacts/stages/prior-177f0a460611/prior.pt \\
        --value artifacts/value_pick/<name>/value.pt [more value.pt] [--episodes 20]

``prior_random`` and ``PriorAgent(pick="value")`` for each value run on the same held-out test
seeds (32 samples, a new pick every 2 control steps). Read from the observations (proprio and
cube centre): at the first gripper-close command after the start, the end effector's horizontal
distance from the cube centre; and how many steps the end effector spends below the cube centre
(pressing down onto or beside it). A chooser that descends before aligning closes far off centre.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import add_section_args, publish  # noqa: E402
from experiments.common import resolve, setup_torch  # noqa: E402


def grasp_offsets(env, agent, seeds) -> dict:
    """Per episode on ``seeds``: success, the first close command's xy offset from the cube (m),
    and the steps with the end effector below the cube centre."""
    import numpy as np

    success, offset, below = [], [], []
    for s in seeds:
        agent.reset(seed=int(s))
        obs, _ = env.reset(seed=int(s))
        first, low, info = None, 0, {}
        for t in range(env.spec.max_episode_steps or 10**6):
            act = agent.act(obs)
            d = np.asarray(obs["objects"][:3]) - np.asarray(obs["proprio"][:3])
            if first is None and t > 0 and act[3] > 0:
                first = float(np.linalg.norm(d[:2]))
            low += int(d[2] > 0)
            obs, _, terminated, truncated, info = env.step(act)
            if terminated or truncated:
                break
        success.append(bool(info.get("success")))
        below.append(low)
        if first is not None:
            offset.append(first)
    return {"success": success, "offset": offset, "below": below}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", required=True)
    ap.add_argument("--value", nargs="*", default=[], help="PlanValue checkpoints (benchmarks/value_pick.py)")
    ap.add_argument("--env", default="roboalign/Lift-v0")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed-start", type=int, default=0, help="offset into the test split")
    ap.add_argument("--threads", type=int, default=None)
    add_section_args(ap, "Closed loop: where the choosers close the gripper (Lift)")
    args = ap.parse_args()
    setup_torch(args.threads)

    import gymnasium as gym
    import numpy as np

    import envs  # noqa: F401  (registers roboalign/*)
    from agent.prior import PriorAgent
    from envs.splits import split_seeds

    prior = str(resolve(args.prior))
    seeds = split_seeds("test", args.episodes, args.seed_start)
    agents = [("prior_random", PriorAgent(prior, execute=2, samples=32, pick="random"))]
    agents += [(f"prior_value `{Path(v).parent.name}`", PriorAgent(prior, execute=2, samples=32, pick="value",
                                                                 value=str(resolve(v)))) for v in args.value]
    env = gym.make(args.env)
    rows = ["| agent | success | episodes that close | first close: xy offset from the cube (m) | "
            "steps below the cube centre (of the episode) |", "|---|---|---|---|---|"]
    try:
        for name, agent in agents:
            r = grasp_offsets(env, agent, seeds)
            rows.append(f"| {name} | {sum(r['success'])}/{len(seeds)} | {len(r['offset'])} | "
                        f"{np.mean(r['offset']):.3f} +- {np.std(r['offset']):.3f} | {np.mean(r['below']):.1f} |")
            print(rows[-1], flush=True)
    finally:
        env.close()
    publish(args, "\n".join([f"{args.env}, {len(seeds)} held-out test seeds ({seeds[0]}..{seeds[-1]}), prior "
                             f"`{Path(prior).parent.name}`, 32 samples, a new pick every 2 control steps.", "",
                             *rows]))


if __name__ == "__main__":
    main()
