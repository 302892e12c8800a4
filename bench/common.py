"""What the benches share: /proc sampling, scraping /metrics, parsing it, the machine's facts.

Parsing is the tests' one parser (``tests.support.metrics``): ``parse`` and ``value`` are
re-exported here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.exporter_proc import http_get
from tests.support.metrics import Sample, Samples, parse, value
from tests.support.netbed import Namespace

__all__ = ["Sample", "Samples", "parse", "value"]

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# /proc sampling: CPU seconds (utime + stime) and memory of processes, and of the machine


def stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the parenthesised command name (which may hold spaces);
    OSError when the process is gone."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads); OSError when it is gone."""
    f = stat_fields(pid)
    return (int(f[11]) + int(f[12])) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of the process, its live descendants, and the children it reaped."""
    try:
        root = stat_fields(pid)
    except OSError:
        raise BenchError(f"process {pid} is gone") from None
    # cutime/cstime cover children that exited (and were waited for) during the window.
    total = int(root[11]) + int(root[12]) + int(root[13]) + int(root[14])
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            f = stat_fields(child)
            total += int(f[11]) + int(f[12])
    return total / CLK_TCK


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """utime + stime of one thread; NaN when it is gone."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM, ...; Threads is a count); 0 if absent,
    OSError when the process is gone."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def peak_rss_mib(pid: int) -> float:
    """VmHWM of the process plus its live descendants, in MiB (0 for any that is gone)."""
    kib = 0
    for p in (pid, *descendants(pid)):
        with contextlib.suppress(OSError):
            kib += status_kib(p, "VmHWM")
    return kib / 1024


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def children(pid: int) -> list[int]:
    """The live children of the process (of all its threads)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                out.extend(int(x) for x in text.split())
    return out


def descendants(root: int) -> list[int]:
    """Live descendants of ``root`` (children, grandchildren, ...)."""
    found: list[int] = []
    frontier = [root]
    seen = {root}
    while frontier:
        for child in children(frontier.pop()):
            if child not in seen:
                seen.add(child)
                found.append(child)
                frontier.append(child)
    return found


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of all CPUs since boot, from the first line of /proc/stat."""
    with open("/proc/stat", encoding="ascii") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...; guest time is inside user.
    total = sum(f[:8])
    idle = f[3] + f[4]
    return (total - idle) / CLK_TCK, total / CLK_TCK


# --------------------------------------------------------------------------------------------
# scraping


@dataclass
class Fetched:
    """One GET of /metrics: when it started and ended, the body as sent."""

    started: float
    ended: float
    raw: bytes
    gzipped: bool

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def wire_bytes(self) -> int:
        return len(self.raw)

    def body(self) -> bytes:
        return gzip.decompress(self.raw) if self.gzipped else self.raw

    def samples(self, names: tuple[str, ...] | None = None) -> Samples:
        return parse(self.body().decode(), names)


def fetch(
    ns: Namespace, port: int, compressed: bool = True, timeout: float = 10.0, path: str = "/metrics"
) -> Fetched:
    """GET /metrics from inside a namespace, asking for gzip when ``compressed``."""
    headers = {"Accept-Encoding": "gzip"} if compressed else {}
    started = time.monotonic()
    code, hdrs, raw = http_get(ns, port, path, headers=headers, timeout=timeout)
    ended = time.monotonic()
    if code != 200:
        raise BenchError(f"{path} on port {port} answered {code}")
    return Fetched(started, ended, raw, hdrs.get("content-encoding") == "gzip")


# --------------------------------------------------------------------------------------------
# the machine


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


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Count, median, spread and mean of some measurements, as the benches report them."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "min": ordered[0],
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }
