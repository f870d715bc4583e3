"""Draw docs/camera.png: 64x64 observations over a scripted Lift and Stack episode
(top rows, upscaled) and 256 px renders of the same moments (bottom rows).

    python benchmarks/camera_figure.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

import envs  # noqa: E402
from agent.scripted import ScriptedExpert  # noqa: E402


def episode_frames(env_id: str, seed: int, k: int = 6) -> tuple[list, list]:
    env = envs.make(env_id, render_mode="rgb_array", render_size=128)
    agent = ScriptedExpert()
    agent.reset(seed)
    obs, _ = env.reset(seed=seed)
    small, big = [obs["image"]], [env.render()]
    while True:
        obs, _, term, trunc, _ = env.step(agent.act(obs))
        small.append(obs["image"])
        big.append(env.render())
        if term or trunc:
            break
    env.close()
    idx = np.linspace(0, len(small) - 1, k).astype(int)
    return [small[i] for i in idx], [big[i] for i in idx]


def main() -> None:
    rows = []
    for env_id in ("roboalign/Lift-v0", "roboalign/Stack-v0"):
        small, big = episode_frames(env_id, seed=2)
        rows.append(np.concatenate([np.kron(s, np.ones((2, 2, 1), np.uint8)) for s in small], 1))
        rows.append(np.concatenate(big, 1))
    out = ROOT / "docs" / "camera.png"
    out.parent.mkdir(exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main()
