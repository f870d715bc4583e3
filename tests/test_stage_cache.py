"""The stage cache holds up: one builder per stage across processes, a killed builder blocks
no one, finished work is reused, and a finished stage whose files changed is rebuilt."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from experiments.pipeline import file_table, run_stage


def _build_slowly(out: Path, log_file: str, seconds: float = 0.0, partial_then_hang: bool = False) -> dict:
    with open(log_file, "a") as f:                       # one line per build, by any process
        f.write(f"{os.getpid()}\n")
    (out / "model.bin").write_bytes(b"weights" * 1000)
    if partial_then_hang:
        time.sleep(3600)
    time.sleep(seconds)
    (out / "sub").mkdir(exist_ok=True)
    (out / "sub" / "metrics.jsonl").write_text('{"loss": 1.0}\n')
    return {"loss": 1.0}


def _worker(artifacts: str, log_file: str, seconds: float, queue) -> None:
    lines = []
    res = run_stage("toy", {"a": 1}, {}, lambda out: _build_slowly(out, log_file, seconds),
                    artifacts=artifacts, log=lines.append)
    queue.put((res.key, res.reused, lines))


def test_finished_stage_records_its_files_and_is_reused(tmp_path):
    log_file = str(tmp_path / "builds.log")
    first = run_stage("toy", {"a": 1}, {}, lambda out: _build_slowly(out, log_file), artifacts=tmp_path)
    manifest = json.loads((first.dir / "stage.json").read_text())
    assert set(manifest["files"]) == {"model.bin", "sub/metrics.jsonl"}
    assert manifest["files"] == file_table(first.dir) and not first.reused
    again = run_stage("toy", {"a": 1}, {}, lambda out: _build_slowly(out, log_file), artifacts=tmp_path)
    assert again.reused and again.key == first.key
    assert Path(log_file).read_text().count("\n") == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_finished_stage_whose_files_changed_is_rebuilt_with_a_warning(tmp_path, damage):
    log_file = str(tmp_path / "builds.log")
    first = run_stage("toy", {"a": 1}, {}, lambda out: _build_slowly(out, log_file), artifacts=tmp_path)
    model = first.dir / "model.bin"
    if damage == "truncate":
        model.write_bytes(model.read_bytes()[:100])
    elif damage == "flip":
        model.write_bytes(b"W" + model.read_bytes()[1:])        # same size, other content
    else:
        model.unlink()
    with pytest.warns(UserWarning, match="changed since it finished.*model.bin"):
        again = run_stage("toy", {"a": 1}, {}, lambda out: _build_slowly(out, log_file), artifacts=tmp_path)
    assert not again.reused and model.read_bytes() == b"weights" * 1000
    assert Path(log_file).read_text().count("\n") == 2
    assert run_stage("toy", {"a": 1}, {}, lambda out: _build_slowly(out, log_file), artifacts=tmp_path).reused


def test_a_stage_finished_before_files_were_recorded_is_trusted(tmp_path):
    log_file = str(tmp_path / "builds.log")
    first = run_stage("toy", {"a": 1}, {}, lambda out: _build_slowly(out, log_file), artifacts=tmp_path)
    mark = first.dir / "stage.json"
    manifest = json.loads(mark.read_text())
    del manifest["files"]
    mark.write_text(json.dumps(manifest))
    assert run_stage("toy", {"a": 1}, {}, lambda out: _build_slowly(out, log_file), artifacts=tmp_path).reused


def test_two_runs_at_once_build_a_stage_once(tmp_path):
    ctx = mp.get_context("spawn")
    queue, log_file = ctx.Queue(), str(tmp_path / "builds.log")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), log_file, 2.0, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    results = [queue.get(timeout=10) for _ in procs]
    assert Path(log_file).read_text().count("\n") == 1                 # one builder
    assert len({k for k, _, _ in results}) == 1 and sorted(r for _, r, _ in results) == [False, True]


def _logging_worker(artifacts: str, log_file: str, lines_file: str) -> None:
    def log(line: str) -> None:
        with open(lines_file, "a") as f:
            f.write(line + "\n")
    run_stage("toy", {"a": 1}, {}, lambda out: _build_slowly(out, log_file), artifacts=artifacts, log=log)


def test_a_run_that_must_wait_is_told_who_holds_the_lock(tmp_path):
    from experiments.pipeline import stage_key, stage_lock

    out = tmp_path / "stages" / f"toy-{stage_key('toy', {'a': 1}, {})[:12]}"
    lines = tmp_path / "lines.log"
    ctx = mp.get_context("spawn")
    with stage_lock(out, "toy", log=lambda s: None):                  # this process holds it
        proc = ctx.Process(target=_logging_worker, args=(str(tmp_path), str(tmp_path / "builds.log"), str(lines)))
        proc.start()
        deadline = time.time() + 120
        while not (lines.exists() and "being built by" in lines.read_text()):
            assert time.time() < deadline and proc.is_alive(), "the second run never waited"
            time.sleep(0.05)
        assert f"pid {os.getpid()}" in lines.read_text()
        assert not (out / "stage.json").exists()                      # it waits, it does not build
    proc.join(120)                                                   # released: it builds and finishes
    assert proc.exitcode == 0 and (out / "stage.json").exists()


def test_a_builder_killed_mid_build_blocks_no_one_and_its_work_resumes(tmp_path):
    ctx = mp.get_context("spawn")
    log_file = str(tmp_path / "builds.log")
    proc = ctx.Process(target=_hanging_worker, args=(str(tmp_path), log_file))
    proc.start()
    deadline = time.time() + 60
    while not (Path(log_file).exists() and list(tmp_path.glob("stages/toy-*/model.bin"))):
        assert time.time() < deadline, "the builder never started"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)                                   # kill -9 while it holds the lock
    proc.join(10)
    t0 = time.time()
    res = run_stage("toy", {"a": 1}, {}, lambda out: _build_slowly(out, log_file), artifacts=tmp_path,
                    log=lambda s: None)
    assert time.time() - t0 < 30 and not res.reused and (res.dir / "stage.json").exists()
    assert Path(log_file).read_text().count("\n") == 2                 # the killed build, then this one


def _hanging_worker(artifacts: str, log_file: str) -> None:
    run_stage("toy", {"a": 1}, {}, lambda out: _build_slowly(out, log_file, partial_then_hang=True),
              artifacts=artifacts, log=lambda s: None)
