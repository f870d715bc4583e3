"""Recording episodes to MP4 with a caption strip (instruction / step / success)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from envs.rollouts import atomic_path


def caption_frame(frame: np.ndarray, lines: Sequence[str], scale: int = 1) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(H*scale + strip, W*scale, 3)`` with text lines under the image."""
    img = Image.fromarray(np.asarray(frame, np.uint8))
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    font = ImageFont.load_default()
    line_h = 12
    canvas = Image.new("RGB", (img.width, img.height + line_h * len(lines) + 4), (20, 20, 20))
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(lines):
        draw.text((3, img.height + 2 + i * line_h), text, fill=(235, 235, 235), font=font)
    return np.asarray(canvas)


def write_video(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: int = 20,
                captions: Sequence[Sequence[str]] | None = None, scale: int = 1) -> Path:
    """Write every frame (none dropped) to an MP4 at ``path``, atomically.

    ``frames``: sequence of ``(H, W, 3)`` uint8; ``captions``: per-frame text lines.
    """
    from moviepy.video.io.ffmpeg_writer import FFMPEG_VideoWriter

    if len(frames) == 0:
        raise ValueError("write_video needs at least one frame")
    if captions is not None and len(captions) != len(frames):
        raise ValueError(f"{len(captions)} captions for {len(frames)} frames")
    shapes = {np.shape(f) for f in frames}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[2] != 3:
        raise ValueError(f"frames must all have one (H, W, 3) shape; got {sorted(shapes)}")
    out = [caption_frame(f, captions[i] if captions else [], scale) for i, f in enumerate(frames)]
    h, w = out[0].shape[:2]
    pad_h, pad_w = h + h % 2, w + w % 2  # yuv420p needs even sizes
    with atomic_path(path) as tmp:
        writer = FFMPEG_VideoWriter(str(tmp), (pad_w, pad_h), fps, codec="libx264",
                                    ffmpeg_params=["-pix_fmt", "yuv420p"], logfile=None)
        try:
            for f in out:
                canvas = np.zeros((pad_h, pad_w, 3), np.uint8)
                canvas[:h, :w] = f
                writer.write_frame(canvas)
        finally:
            writer.close()
    return Path(path)


def read_video_frame_count(path: str | os.PathLike) -> int:
    """Number of frames in a video file (for tests and checks)."""
    import imageio_ffmpeg

    n, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    return int(n)
