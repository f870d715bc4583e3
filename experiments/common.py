"""Shared set-up for the entry scripts: paths under the repository root, torch threads."""
from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def resolve(path: str | os.PathLike) -> Path:
    """A configured path; relative ones live under the repository root."""
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


def machine() -> str:
    """This machine in words: OS, architecture, cores, CPU model, GPU, Python."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except ImportError:
        gpu = "no torch"
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), {gpu}, Python {platform.python_version()}"


def command_line(skip: tuple[str, ...] = ("--notes",)) -> str:
    """This script's command line without the values of ``skip`` options (long notes)."""
    argv = [a for i, a in enumerate(sys.argv) if a not in skip and (i == 0 or sys.argv[i - 1] not in skip)]
    return " ".join(["python", *(shlex.quote(a) for a in argv)])


def git_commit() -> str:
    """The repository's HEAD commit (short), with ``+dirty`` for uncommitted changes; ``unknown`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def setup_torch(threads: int | None = None) -> int:
    """Use all cores (or ``threads``) for torch, one interop thread; returns the count."""
    import torch

    n = int(threads or os.cpu_count() or 1)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass
    return n


def required_file(value, key: str, what: str, make: str) -> Path:
    """A config's required input file ``key`` (``value``), resolved; a clear error naming
    ``what`` it is and the command that ``make``s it when it is unset or missing."""
    if not value:
        raise ValueError(f"{key} is required: {what}")
    path = resolve(value)
    if not path.exists():
        raise FileNotFoundError(f"{key}={value}: {path} not found; {make}")
    return path


def rollout_paths(paths, split: str, artifacts: str | os.PathLike = "artifacts") -> list[Path]:
    """Configured rollout files, or every ``<artifacts>/rollouts/*_<split>_*.hdf5``.

    Raises ``FileNotFoundError`` naming the command that makes them when none exist.
    """
    from envs.rollouts import find_rollouts

    if paths:
        found = [resolve(p) for p in paths]
        missing = [str(p) for p in found if not p.exists()]
        if missing:
            raise FileNotFoundError(f"rollout files not found: {missing}")
        return found
    found = find_rollouts(resolve(artifacts) / "rollouts", f"*_{split}_*.hdf5")
    if not found:
        raise FileNotFoundError(
            f"no {split} rollouts in {resolve(artifacts) / 'rollouts'}; collect some with "
            f"`python experiments/collect.py env=lift agent=noisy episodes=100 split={split}`")
    return found


def save_results(out: str | os.PathLike, payload: dict, markdown: str, json_name: str = "results.json") -> None:
    """Write ``<out>/<json_name>`` and ``<out>/results.md`` atomically."""
    import json

    from envs.rollouts import atomic_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / json_name) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str))
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(markdown.rstrip("\n") + "\n")
