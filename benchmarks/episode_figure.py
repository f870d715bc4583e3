"""A figure of one recorded episode: frames of its video in a grid, as a PNG.

    python -m benchmarks.episode_figure artifacts/closed_loop/lift/videos/mpc_prior_seed<S>.mp4 \
        --frames 6 --out docs/episode.png

World-model methods' videos show the real episode (left half) next to the imagined future of
the plan being executed (right half), so the strip reads real vs imagined over the episode.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def episode_strip(video: str | Path, frames: int = 6, scale: float = 0.5, columns: int = 3) -> np.ndarray:
    """``frames`` evenly spaced frames of ``video`` (first and last included), each resized by
    ``scale``, in a grid of ``columns`` (row-major, unused cells black): ``(rows * h, columns * w, 3)``."""
    import imageio.v3 as iio
    from PIL import Image

    all_frames = np.stack(list(iio.imiter(video)))
    if len(all_frames) == 0:
        raise ValueError(f"{video} holds no frames")
    idx = np.linspace(0, len(all_frames) - 1, max(1, frames)).round().astype(int)
    rows = []
    for i in idx:
        im = Image.fromarray(all_frames[i])
        rows.append(np.asarray(im.resize((int(im.width * scale), int(im.height * scale)), Image.LANCZOS)))
    columns = max(1, min(columns, len(rows)))
    rows += [np.zeros_like(rows[0])] * (-len(rows) % columns)
    return np.concatenate([np.concatenate(rows[r:r + columns], 1) for r in range(0, len(rows), columns)], 0)


def main(argv: list[str] | None = None) -> None:
    from PIL import Image

    from envs.rollouts import atomic_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video")
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--columns", type=int, default=3)
    ap.add_argument("--out", default="docs/episode.png")
    args = ap.parse_args(argv)
    strip = episode_strip(args.video, args.frames, args.scale, args.columns)
    with atomic_path(args.out) as tmp:
        Image.fromarray(strip).save(tmp, format="png")
    print(f"wrote {args.out} ({strip.shape[1]}x{strip.shape[0]})")


if __name__ == "__main__":
    main()
