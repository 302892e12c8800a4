"""Facts about the machine a benchmark ran on, shared by the bench scripts."""

from __future__ import annotations

import contextlib


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
