"""The main job holds up (tiny preset, the action prior's methods only, so it stays fast):
two runs started at once on one empty artifacts folder build each stage once and agree; a
run killed with SIGKILL mid-evaluation resumes to an uninterrupted run's per-seed outcomes;
shards through Hydra's launchers merge to a single run's table."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from envs.splits import split_seeds
from tests.conftest import ROOT

ARGS = ["preset=tiny", "agent=scripted", "baselines=[prior_random,prior]", "videos=0", "threads=1"]
ENV = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}


def _start(artifacts: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "experiments" / "closed_loop.py"), *ARGS,
                             f"artifacts={artifacts}", *extra], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _multirun(artifacts: Path, launcher: str, shards: str, *extra: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "closed_loop.py"), "--multirun",
                           f"hydra/launcher={launcher}", f"seed_start={shards}", *ARGS, f"artifacts={artifacts}",
                           *extra], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _outcomes(out: Path) -> dict:
    rec = json.loads((out / "outcomes.json").read_text())
    return {m: [(r["seed"], r["success"], r["length"], r["failure"]) for r in rows]
            for m, rows in rec["methods"].items()}


@pytest.fixture(scope="module")
def two_at_once(tmp_path_factory):
    """Two main jobs started at once on one empty artifacts folder (2 episodes each)."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    procs = [_start(artifacts, "episodes=2", f"out_dir={artifacts / f'run{i}'}") for i in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    return artifacts, logs


def test_two_runs_at_once_build_each_stage_once_and_agree(two_at_once):
    artifacts, logs = two_at_once
    built = [line for log in logs for line in log.splitlines() if ": building in" in line]
    stages = sorted(p.name for p in (artifacts / "stages").iterdir() if not p.name.startswith("."))
    assert len(built) == len(stages) == 3, (built, stages)        # 2 collections + the prior, once each
    assert _outcomes(artifacts / "run0") == _outcomes(artifacts / "run1")


def test_a_run_killed_mid_evaluation_resumes_to_the_same_outcomes(two_at_once):
    artifacts, _ = two_at_once
    killed = _start(artifacts, "episodes=2", f"out_dir={artifacts / 'killed'}")
    episode = artifacts / "killed" / "prior_random" / "episodes"
    deadline = time.time() + 600
    while not (episode.exists() and list(episode.glob("seed_*.json"))):   # kill -9 once an episode is saved
        assert killed.poll() is None and time.time() < deadline, killed.stdout.read() if killed.poll() else "slow"
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    again = _start(artifacts, "episodes=2", f"out_dir={artifacts / 'killed'}")
    log = again.communicate(timeout=900)[0]
    assert again.returncode == 0, log
    assert "already done" in log and ": building in" not in log          # finished work was kept
    assert _outcomes(artifacts / "killed") == _outcomes(artifacts / "run0")
    assert not list((artifacts / "killed").rglob("*.tmp*"))


def test_two_shards_through_the_joblib_launcher_merge_to_a_single_runs_table(two_at_once):
    artifacts, _ = two_at_once
    log = _multirun(artifacts, "shards", "0,1", "episodes=1", f"out_dir={artifacts / 'sharded'}")
    assert ": building in" not in log
    merge = _start(artifacts, "episodes=2", f"out_dir={artifacts / 'sharded'}")   # every seed reused
    merged = merge.communicate(timeout=900)[0]
    assert merge.returncode == 0 and merged.count("2 of 2 seeds already done") == 3, merged
    assert _outcomes(artifacts / "sharded") == _outcomes(artifacts / "run0")


def test_the_slurm_launcher_runs_shards_with_submitits_local_executor(tmp_path):
    _multirun(tmp_path, "slurm_local", "0,1", "episodes=1", "baselines=[]", f"out_dir={tmp_path / 'out'}")
    assert sorted(p.name for p in (tmp_path / "out" / "scripted" / "episodes").iterdir()) == \
        sorted(f"seed_{s}.json" for s in split_seeds("test", 2))
