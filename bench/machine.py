"""Facts about the machine a benchmark ran on, shared by the bench scripts."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def memory_gib() -> float:
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="utf-8") as fh:
        return round(int(fh.readline().split()[1]) / 2**20, 1)
    return 0.0


def git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_facts(**extra: Any) -> dict[str, Any]:
    """The machine, the commit measured and the time, for a bench's report."""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": git("rev-parse", "--short", "HEAD"),
        "exporter_tree_modified": git("status", "--porcelain", "--", "exporter"),
        **extra,
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
