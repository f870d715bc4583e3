"""Write a named, dated section of the research log (docs/research-log.md) with its command,
machine and date, replacing any old section of the same title."""
from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from experiments.common import command_line, machine

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "docs" / "research-log.md"
HEADER = "# RoboAlign research log\n"


def write_section(title: str, body: str, command: str | None = None) -> None:
    """Replace (or append) ``## title`` in docs/research-log.md, atomically."""
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
    ``--no-write`` (print only) for a script that writes one section of the research log."""
    ap.add_argument("--title", default=title)
    ap.add_argument("--notes", default="")
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch the research log")


def publish(args, body: str) -> None:
    """Print ``body`` (plus ``args.notes``) and write it as section ``args.title`` unless
    ``args.no_write`` (the options of :func:`add_section_args`)."""
    if args.notes:
        body += f"\n\n{args.notes}"
    print(body)
    if not args.no_write:
        write_section(args.title, body + "\n")


def rel_path(p) -> str:
    """``p`` relative to the repository root when it lies inside it (as the research log cites
    paths), else as given."""
    p = Path(p)
    return str(p.relative_to(ROOT)) if p.is_absolute() and p.is_relative_to(ROOT) else str(p)
