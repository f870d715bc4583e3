"""Write a named section of BENCHMARKS.md (with command, machine and date), replacing any old one."""
from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nNumbers measured by the scripts in `benchmarks/`; each section names its command, machine and date.\n"


def machine() -> str:
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


def write_section(title: str, body: str, command: str | None = None) -> None:
    """Replace (or append) ``## title`` in BENCHMARKS.md, atomically."""
    command = command or command_line()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"## {title}\n\n- command: `{command}`\n- machine: {machine()}\n- date: {stamp}\n\n"
               f"{body.strip()}\n")
    text = BENCH.read_text() if BENCH.exists() else HEADER
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    tmp = BENCH.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, BENCH)


def add_section_args(ap, title: str) -> None:
    """``--title`` (default ``title``), ``--notes`` (text appended to the body) and
    ``--no-write`` (print only) for a script that writes one BENCHMARKS.md section."""
    ap.add_argument("--title", default=title)
    ap.add_argument("--notes", default="")
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch BENCHMARKS.md")


def publish(args, body: str) -> None:
    """Print ``body`` (plus ``args.notes``) and write it as section ``args.title`` unless
    ``args.no_write`` (the options of :func:`add_section_args`)."""
    if args.notes:
        body += f"\n\n{args.notes}"
    print(body)
    if not args.no_write:
        write_section(args.title, body + "\n")


def rel_path(p) -> str:
    """``p`` relative to the repository root when it lies inside it (as BENCHMARKS.md cites
    paths), else as given."""
    p = Path(p)
    return str(p.relative_to(ROOT)) if p.is_absolute() and p.is_relative_to(ROOT) else str(p)
