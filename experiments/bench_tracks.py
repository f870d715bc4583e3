"""The teacher's object tracks for every clip of a bench (for ``student.model.tracks``).

    python experiments/bench_tracks.py artifacts/judge/default/bench.h5 [--workers 2]

For each clip: where the gripper and each cube are, frame by frame, in the clip (the
teacher's perception) and in the simulator replay of the clip's actions (projected),
``worldmodel.judge.teacher.Teacher.tracks``. Written beside the bench as
``<bench>.tracks.npz`` (``worldmodel.judge.bench.build_tracks``); resumable by chunks.
~0.1 s per clip per core: a 17k-clip bench takes ~15 min on 2 cores.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from worldmodel.judge.bench import build_tracks  # noqa: E402


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench", type=Path, help="bench.h5 built by experiments/build_bench.py")
    ap.add_argument("--teacher", type=Path, default=None, help="teacher.json (default: the one beside the bench)")
    ap.add_argument("--workers", type=int, default=1, help="processes (one core each)")
    a = ap.parse_args(argv)
    t0 = time.time()
    out = build_tracks(a.bench, a.teacher, workers=a.workers)
    print(f"wrote {out} in {time.time() - t0:.0f} s")
    return out


if __name__ == "__main__":
    main()
