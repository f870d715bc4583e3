"""The main job holds up (tiny preset, the action prior's methods only, so it stays fast):
two runs started at once on one empty artifacts folder build each stage once and agree, and a
run killed with SIGKILL mid-evaluation resumes to the per-seed outcomes of an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT

ARGS = ["preset=tiny", "agent=scripted",
        "baselines=[prior_random,prior]", "videos=0", "imagination_gap=false", "threads=1"]


def _start(artifacts: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "experiments" / "closed_loop.py"), *ARGS,
                             f"artifacts={artifacts}", *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _outcomes(out: Path) -> dict:
    rec = json.loads((out / "outcomes.json").read_text())
    return {m: [(r["seed"], r["success"], r["length"], r["failure"]) for r in rows]
            for m, rows in rec["methods"].items()}


def test_two_runs_at_once_build_each_stage_once_and_agree(tmp_path):
    procs = [_start(tmp_path, "episodes=2", f"out_dir={tmp_path / f'run{i}'}") for i in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    built = [line for log in logs for line in log.splitlines() if ": building in" in line]
    stages = sorted(p.name for p in (tmp_path / "stages").iterdir() if not p.name.startswith("."))
    assert len(built) == len(stages) == 3, (built, stages)        # 2 collections + the prior, once each
    assert _outcomes(tmp_path / "run0") == _outcomes(tmp_path / "run1")


def test_a_run_killed_mid_evaluation_resumes_to_the_same_outcomes(tmp_path):
    whole = _start(tmp_path, "episodes=3", f"out_dir={tmp_path / 'whole'}")
    assert whole.wait(timeout=900) == 0, whole.stdout.read()
    killed = _start(tmp_path, "episodes=3", f"out_dir={tmp_path / 'killed'}")
    episode = tmp_path / "killed" / "prior_random" / "episodes"
    deadline = time.time() + 600
    while not (episode.exists() and list(episode.glob("seed_*.json"))):   # kill -9 once an episode is saved
        assert killed.poll() is None and time.time() < deadline, killed.stdout.read() if killed.poll() else "slow"
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    again = _start(tmp_path, "episodes=3", f"out_dir={tmp_path / 'killed'}")
    log = again.communicate(timeout=900)[0]
    assert again.returncode == 0, log
    assert "already done" in log                                           # finished seeds were kept
    assert _outcomes(tmp_path / "killed") == _outcomes(tmp_path / "whole")
    assert not list(tmp_path.rglob("*.tmp*"))
