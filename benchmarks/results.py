"""Shared by the benchmark scripts: the machine description and appending a section to RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or what platform reports)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """One line: architecture, cores, CPU model, Python version."""
    return f"{platform.machine()}, {os.cpu_count()} cores, {cpu_name()}, Python {platform.python_version()}"


def best_seconds(fn: Callable[[], object], repeats: int, warmup: bool = False) -> float:
    """The shortest wall time of `repeats` calls of `fn` (after one untimed call with `warmup`)."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def command_line(script: str, argv: list[str] | None) -> str:
    """The command that ran `script` (a benchmark's `__file__`): `argv`, else the process's own arguments."""
    return f"python benchmarks/{Path(script).name} " + " ".join(argv if argv is not None else sys.argv[1:])


def append_results(title: str, command: str, lines: list[str], machine_extra: str = "") -> None:
    """Append a `## title` section (date, machine, exact command, then `lines`) to RESULTS.md."""
    header = [
        f"\n## {title}",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {machine()}{'; ' + machine_extra if machine_extra else ''}",
        f"- command: `{command.strip()}`",
    ]
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nAppended by the scripts in benchmarks/ (newest last).\n")
    with RESULTS.open("a") as fh:
        fh.write("\n".join(header + lines) + "\n")
