#!/usr/bin/env python3
"""Probe cost and RTT accuracy of the exporter, against fping and smokeping_prober.

Everything runs in network namespaces built with ``tests/support/netbed.py``: the probers run in the
bed's ``src`` namespace, the targets are routed /32 addresses on the loopback of dst
namespaces (198.18.0.0/15), so no packet leaves the machine.

Part 1, probe cost. For 1,000 and 5,000 kernel-echo targets probed once per second, each
prober runs alone on the same targets for the same warm-up and measured window:

* the exporter (``python -m exporter``), its /metrics scraped once per second (gzip) from a
  thread, as Prometheus would;
* ``fping -l`` with a per-packet interval that fits every target into half a second;
* ``smokeping_prober`` with datagram ICMP sockets (``protocol: udp``), scraped once per
  second too, and at 1,000 targets also with raw sockets (``protocol: icmp``, its default).

Per prober: CPU seconds per wall second (utime+stime of the process and its descendants,
from /proc), peak RSS (VmHWM), echo requests per second counted by an iptables rule in the
dst namespace (the same counter for every prober), and replies lost over the window as the
prober itself reports them.

Part 2, RTT accuracy. A second dst with the kernel's echo switched off and
``tests/support/responder.py`` answering after 3 ms; fping ``-C`` and the exporter probe the same
20 targets at the same time, once while the exporter also probes the 5,000 kernel-echo
targets and is scraped every second, once with the 20 targets alone. The exporter runs with
10 us histogram buckets around 3 ms, so its median is read to about 10 us. A packet socket on
the link to that dst times every request/reply pair as well, the reference both probers are
held against.

Usage: ``python -m bench.probe_bench [--quick] [--exporter-rev REV]`` as root
(``make bench``). Results go to ``bench/out/probe-bench-<UTC time>.json``; a Markdown summary
is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import io
import json
import math
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    BenchError,
    Samples,
    cmdline,
    cpu_model,
    fetch,
    machine_cpu,
    memory_gib,
    parse,
    peak_rss_mib,
    status_kib,
    thread_cpu_seconds,
    tree_cpu_seconds,
    value,
)
from tests.support.exporter_proc import http_get
from tests.support.netbed import Bed, Dst, Namespace, Profile, require_root

OUT_DIR = ROOT / "bench" / "out"
EXPORTER_PORT = 9871
SMOKEPING_PORT = 9374
SMOKEPING_BIN = "prometheus-smokeping-prober"

RTT_TARGETS = 20
RTT_DELAY_MS = 3.0
# 10 us steps from 2.9 ms to 3.3 ms (a median read to ~10 us), coarse elsewhere; 57 bounds,
# under the exporter's limit of 64.
RTT_BUCKETS_US = [
    25, 50, 100, 200, 400, 800, 1600, 2500, 2800,
    *range(2900, 3301, 10),
    3500, 4000, 5000, 10_000, 50_000, 250_000, 1_000_000,
]  # fmt: skip

# ---------------------------------------------------------------------------------------
# /proc accounting (bench.common), as this bench reports it


def threads(pid: int) -> int:
    try:
        return status_kib(pid, "Threads")
    except OSError:
        return 0


def exe_of(pid: int) -> str:
    """What the pid really runs (``ip netns exec`` execs, so it should be the prober)."""
    return " ".join(part for part in cmdline(pid)[:3] if part) or "?"


# ---------------------------------------------------------------------------------------
# the request counter every prober is judged by


class RequestCounter:
    """Counts echo requests arriving in a dst namespace with an iptables rule."""

    CHAIN = "PMBENCH_COUNT"

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        ns.run(["iptables", "-w", "-N", self.CHAIN])
        ns.run(
            [
                "iptables",
                "-w",
                "-A",
                self.CHAIN,
                "-p",
                "icmp",
                "--icmp-type",
                "echo-request",
                "-j",
                "RETURN",
            ]
        )
        ns.run(["iptables", "-w", "-I", "INPUT", "1", "-j", self.CHAIN])

    def read(self) -> tuple[float, int]:
        """(monotonic time of the reading, packets counted so far)."""
        before = time.monotonic()
        out = str(self.ns.run(["iptables", "-w", "-n", "-v", "-x", "-L", self.CHAIN]).stdout)
        after = time.monotonic()
        for line in out.splitlines():
            if "icmptype 8" in line:
                return (before + after) / 2, int(line.split()[0])
        raise BenchError(f"no counter row in:\n{out}")


def rate(first: tuple[float, int], last: tuple[float, int]) -> float:
    return (last[1] - first[1]) / (last[0] - first[0])


# ---------------------------------------------------------------------------------------
# metrics documents


def fetch_raw(ns: Namespace, port: int, timeout: float = 10.0) -> tuple[float, bytes, bool]:
    """GET /metrics asking for gzip: (seconds taken, body as sent, whether gzipped)."""
    got = fetch(ns, port, timeout=timeout)
    return got.seconds, got.raw, got.gzipped


def fetch_text(ns: Namespace, port: int, timeout: float = 10.0) -> str:
    """GET /metrics with gzip: the decoded text."""
    return fetch(ns, port, timeout=timeout).body().decode()


RENDER_SERIES = ("pingmesh_metrics_render_seconds",)


@dataclass
class ScrapeSample:
    at: float
    seconds: float
    wire_bytes: int
    text_bytes: int
    render_seconds: float | None


@dataclass
class Scraper:
    """Scrapes /metrics once per second from a thread until stopped."""

    ns: Namespace
    port: int
    period_s: float = 1.0
    timeout_s: float = 30.0
    max_scrapes: int = 1000
    samples: list[ScrapeSample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Whole documents handed to snapshot(), in order.
    documents: list[str] = field(default_factory=list)
    _wanted: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self._thread.start()

    def snapshot(self, timeout_s: float = 30.0) -> str:
        """The whole text of the next scrape.

        Taken from the periodic scrapes rather than by an extra request, so the prober never
        renders two documents at once (which a single Prometheus would not make it do).
        """
        with self._lock:
            self._wanted += 1
            index = len(self.documents) + self._wanted - 1
        deadline = time.monotonic() + timeout_s
        for _ in range(int(timeout_s / 0.01) + 1):
            with self._lock:
                if len(self.documents) > index:
                    return self.documents[index]
            if time.monotonic() > deadline or self._thread is None:
                break
            time.sleep(0.01)
        raise BenchError(f"no scrape of port {self.port} within {timeout_s:.0f}s")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _run(self) -> None:
        next_at = time.monotonic()
        for _ in range(self.max_scrapes):
            if self._stop.wait(max(0.0, next_at - time.monotonic())):
                return
            at = time.monotonic()
            # A fixed grid, as Prometheus keeps: a slow scrape does not shift the next one,
            # and slots it overran are skipped rather than fired in a burst.
            next_at += self.period_s * max(1, math.ceil((at - next_at) / self.period_s))
            try:
                took, body, gzipped = fetch_raw(self.ns, self.port, self.timeout_s)
            except (OSError, BenchError) as exc:
                self.errors.append(f"{at:.1f}: {exc}")
                continue
            with self._lock:
                keep = self._wanted > 0
            if keep:
                document = (gzip.decompress(body) if gzipped else body).decode()
                with self._lock:
                    self.documents.append(document)
                    self._wanted -= 1
            if gzipped:
                # The exporter's own families come first: inflating only the head keeps
                # this process's CPU (which shares the machine) low; gzip's trailer holds
                # the full length.
                head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body, 256 * 1024)
                text_bytes = int.from_bytes(body[-4:], "little")
            else:
                head, text_bytes = body[: 256 * 1024], len(body)
            # Whole lines only: the head may end inside one.
            whole = head.decode(errors="replace").rpartition("\n")[0]
            found = parse(whole, RENDER_SERIES)
            render = found[0][2] if found else None
            self.samples.append(ScrapeSample(at, took, len(body), text_bytes, render))

    def between(self, start: float, end: float) -> list[ScrapeSample]:
        return [s for s in self.samples if start <= s.at <= end]


def scrape_summary(samples: Sequence[ScrapeSample]) -> dict[str, Any]:
    if not samples:
        return {"scrapes": 0}
    took = [s.seconds for s in samples]
    renders = [s.render_seconds for s in samples if s.render_seconds is not None]
    out: dict[str, Any] = {
        "scrapes": len(samples),
        "scrape_seconds_median": statistics.median(took),
        "scrape_seconds_max": max(took),
        "wire_bytes_median": statistics.median(s.wire_bytes for s in samples),
        "text_bytes_median": statistics.median(s.text_bytes for s in samples),
    }
    if renders:
        out["render_seconds_median"] = statistics.median(renders)
        out["render_seconds_max"] = max(renders)
    return out


# ---------------------------------------------------------------------------------------
# running one prober over one window


@dataclass
class Window:
    """What every prober is measured by over the same kind of window."""

    seconds: float
    cpu_seconds: float
    requests: int
    requests_per_s: float
    peak_rss_mib: float
    threads: int
    pid_runs: str
    # The whole machine, and what is neither the prober nor this script: the kernel's
    # share of the echo traffic, and anything else running (which would spoil the figures).
    machine_busy_per_s: float
    bench_cpu_per_s: float

    @property
    def cpu_per_s(self) -> float:
        return self.cpu_seconds / self.seconds

    @property
    def other_cpu_per_s(self) -> float:
        return self.machine_busy_per_s - self.cpu_per_s - self.bench_cpu_per_s


def wait_for(
    what: str,
    check: Callable[[], bool],
    proc: subprocess.Popen[Any],
    timeout_s: float,
    log_path: Path | None = None,
) -> float:
    """Poll ``check`` until true; returns the seconds it took."""
    started = time.monotonic()
    for _ in range(int(timeout_s / 0.1) + 1):
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path else ""
            raise BenchError(f"{what} exited with {proc.returncode}:\n{tail}")
        with contextlib.suppress(OSError, BenchError):
            if check():
                return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            break
        time.sleep(0.1)
    raise BenchError(f"{what} not ready after {timeout_s:.0f}s")


def measure(
    pid: int,
    counter: RequestCounter,
    window_s: float,
    at_start: Callable[[], None],
    at_end: Callable[[], None],
) -> Window:
    """CPU and the request counter over ``window_s``; hooks read the prober's own view."""
    c0 = counter.read()
    cpu0 = tree_cpu_seconds(pid)
    busy0, own0 = machine_cpu()[0], time.process_time()
    t0 = time.monotonic()
    at_start()
    time.sleep(max(0.0, t0 + window_s - time.monotonic()))
    t1 = time.monotonic()
    busy1, own1 = machine_cpu()[0], time.process_time()
    cpu1 = tree_cpu_seconds(pid)
    c1 = counter.read()
    at_end()
    return Window(
        seconds=t1 - t0,
        cpu_seconds=cpu1 - cpu0,
        requests=c1[1] - c0[1],
        requests_per_s=rate(c0, c1),
        peak_rss_mib=peak_rss_mib(pid),
        threads=threads(pid),
        pid_runs=exe_of(pid),
        machine_busy_per_s=(busy1 - busy0) / (t1 - t0),
        bench_cpu_per_s=(own1 - own0) / (t1 - t0),
    )


def window_fields(window: Window) -> dict[str, Any]:
    return {
        **asdict(window),
        "cpu_per_s": window.cpu_per_s,
        "other_cpu_per_s": window.other_cpu_per_s,
    }


def stop_process(
    proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout_s: float = 10.0
) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Plan:
    warmup_s: float
    window_s: float
    workdir: Path
    # Where ``python -m exporter`` runs from: its working directory comes first on sys.path.
    exporter_tree: Path = ROOT
    # How often the exporter is scraped in the cost part (Prometheus: typically 15-60 s).
    scrape_period_s: float = 1.0


def write_targets(path: Path, addresses: Sequence[str]) -> Path:
    path.write_text("".join(f"{a}\n" for a in addresses))
    return path


EXPORTER_SERIES = (
    "pingmesh_probe_sent_total",
    "pingmesh_probe_received_total",
    "pingmesh_probe_errors_total",
    "pingmesh_socket_receive_drops_total",
    "pingmesh_packets_sent_total",
    "pingmesh_unmatched_packets_total",
    "pingmesh_probe_rounds_total",
    "pingmesh_probe_rounds_skipped_total",
    "pingmesh_last_round_max_lag_seconds",
    "pingmesh_last_round_duration_seconds",
    "pingmesh_socket_info",
    "pingmesh_targets",
    "pingmesh_probe_rtt_seconds_bucket",
    "pingmesh_probe_rtt_seconds_sum",
    "pingmesh_probe_rtt_seconds_count",
)


def start_exporter(
    bed: Bed, plan: Plan, targets_file: Path, extra: Sequence[str] = (), tag: str = "exporter"
) -> tuple[subprocess.Popen[Any], Path, float]:
    log_path = plan.workdir / f"{tag}.log"
    with open(log_path, "wb") as log:
        proc = bed.src.popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "--probe.interval",
                "1s",
                "--targets-file",
                str(targets_file),
                "--web.listen-address",
                f"127.0.0.1:{EXPORTER_PORT}",
                *extra,
            ],
            cwd=plan.exporter_tree,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def ready() -> bool:
        code, _, _ = http_get(bed.src, EXPORTER_PORT, "/readyz", timeout=2)
        return code == 200

    took = wait_for("exporter", ready, proc, 60, log_path)
    return proc, log_path, took


def exporter_view(samples: Samples, targets: set[str] | None = None) -> dict[str, Any]:
    def mine(lb: dict[str, str]) -> bool:
        return targets is None or lb.get("target") in targets

    errors: dict[str, float] = {}
    for n, lb, v in samples:
        if n == "pingmesh_probe_errors_total" and mine(lb):
            errors[lb["reason"]] = errors.get(lb["reason"], 0) + v
    unmatched: dict[str, float] = {}
    for n, lb, v in samples:
        if n == "pingmesh_unmatched_packets_total":
            unmatched[lb["reason"]] = unmatched.get(lb["reason"], 0) + v
    sent = {
        lb["target"]: v for n, lb, v in samples if n == "pingmesh_probe_sent_total" and mine(lb)
    }
    received = {
        lb["target"]: v for n, lb, v in samples if n == "pingmesh_probe_received_total" and mine(lb)
    }
    return {
        "sent": sum(sent.values()),
        "received": sum(received.values()),
        # One document reads a target's sent and received counters at different moments;
        # a probe answered in between shows as received > sent.  Clamping each target at
        # zero keeps that skew out of the loss.
        "lost_clamped": sum(max(0.0, v - received.get(t, 0.0)) for t, v in sent.items()),
        "targets_received_gt_sent": sum(1 for t, v in sent.items() if received.get(t, 0.0) > v),
        "errors": errors,
        "unmatched": unmatched,
        "receive_drops": value(samples, "pingmesh_socket_receive_drops_total", default=0.0),
        "packets_sent": value(samples, "pingmesh_packets_sent_total", default=0.0),
        "rounds": value(samples, "pingmesh_probe_rounds_total", default=0.0),
        "rounds_skipped": value(samples, "pingmesh_probe_rounds_skipped_total", default=0.0),
        "last_round_max_lag_s": value(samples, "pingmesh_last_round_max_lag_seconds", default=0.0),
        "last_round_duration_s": value(
            samples, "pingmesh_last_round_duration_seconds", default=0.0
        ),
        "receive_buffer_bytes": value(
            samples, "pingmesh_socket_info", default=0.0, ip_family="ipv4"
        ),
        "targets": value(samples, "pingmesh_targets", default=0.0),
    }


def view_delta(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, val in last.items():
        if isinstance(val, dict):
            before = first.get(key, {})
            out[key] = {k: v - before.get(k, 0) for k, v in val.items() if v - before.get(k, 0)}
        elif key.startswith("last_round") or key in (
            "receive_buffer_bytes",
            "targets",
            "targets_received_gt_sent",
        ):
            out[key] = val
        else:
            out[key] = val - first.get(key, 0)
    return out


def run_exporter(
    bed: Bed, plan: Plan, counter: RequestCounter, targets_file: Path, n: int
) -> dict[str, Any]:
    proc, log_path, ready_s = start_exporter(bed, plan, targets_file, tag=f"exporter-{n}")
    scraper = Scraper(bed.src, EXPORTER_PORT, period_s=plan.scrape_period_s)
    texts: list[str] = []
    main_cpu: list[float] = []
    marks: list[float] = []

    def snapshot() -> None:
        marks.append(time.monotonic())
        main_cpu.append(thread_cpu_seconds(proc.pid, proc.pid))
        # Parsed after the window: this process shares the two cores with the prober.
        texts.append(scraper.snapshot())

    try:
        # Probing alone first, to tell the memory of probing from that of rendering.
        settle = min(2.0, plan.warmup_s / 2)
        time.sleep(settle)
        rss_before_scrapes = peak_rss_mib(proc.pid)
        scraper.start()
        time.sleep(plan.warmup_s - settle)
        window = measure(proc.pid, counter, plan.window_s, snapshot, snapshot)
    finally:
        scraper.stop()
        stop_process(proc)
    views = [exporter_view(parse(text, EXPORTER_SERIES)) for text in texts]
    delta = view_delta(views[0], views[1])
    return {
        **window_fields(window),
        # The event loop's thread: sending, receiving, timeouts; the HTTP threads that
        # render /metrics are the rest of the process.
        "probe_loop_cpu_per_s": (main_cpu[1] - main_cpu[0]) / (marks[1] - marks[0]),
        "ready_after_s": ready_s,
        "replies_lost": delta["lost_clamped"],
        "replies_lost_unclamped": delta["sent"] - delta["received"],
        "skewed_targets_at_start_end": [
            views[0]["targets_received_gt_sent"],
            views[1]["targets_received_gt_sent"],
        ],
        "peak_rss_mib_before_scrapes": rss_before_scrapes,
        "exporter": delta,
        "scrapes": scrape_summary(scraper.between(marks[0], marks[1])),
        "scrape_errors": scraper.errors[:20],
        "log_tail": log_path.read_text(errors="replace")[-1500:],
    }


_FPING_SPLIT_RE = re.compile(r"^(\S+)\s*: xmt/rcv/%loss = (\d+)/(\d+)/")
_CLOCK_RE = re.compile(r"^\[\d\d:\d\d:\d\d\]$")


def fping_splits(text: str) -> list[tuple[int, int, int]]:
    """(hosts, sent, received) of each interval summary fping printed on SIGQUIT.

    A summary starts with a ``[HH:MM:SS]`` line; the final summary printed at exit follows
    without one (and, with -Q, without a blank line), so a host seen twice ends a block.
    """
    blocks: list[tuple[int, int, int]] = []
    current: dict[str, tuple[int, int]] | None = None

    def close() -> None:
        if current:
            blocks.append(
                (
                    len(current),
                    sum(s for s, _ in current.values()),
                    sum(r for _, r in current.values()),
                )
            )

    for line in text.splitlines():
        if _CLOCK_RE.match(line.strip()):
            close()
            current = {}
            continue
        if current is None:
            continue
        match = _FPING_SPLIT_RE.match(line)
        if match is None or match.group(1) in current:
            close()
            current = None
            continue
        current[match.group(1)] = (int(match.group(2)), int(match.group(3)))
    close()
    return blocks


def fping_interval_ms(n: int) -> float:
    # Every target once within half of the 1 s period leaves fping slack to keep up.
    return round(500.0 / n, 3)


def run_fping(
    bed: Bed, plan: Plan, counter: RequestCounter, targets_file: Path, n: int
) -> dict[str, Any]:
    err_path = plan.workdir / f"fping-{n}.stderr"
    interval = fping_interval_ms(n)
    # In loop mode fping prints every reply unless -Q is given, even with -q; a report
    # interval longer than the run keeps it quiet, SIGQUIT prints the window's split.
    argv = [
        "fping",
        "-l",
        "-p",
        "1000",
        "-i",
        f"{interval:g}",
        "-Q",
        "3600",
        "-f",
        str(targets_file),
    ]
    with open(err_path, "wb") as err:
        proc = bed.src.popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    try:
        # fping has no readiness signal; it starts sending at once.
        time.sleep(plan.warmup_s)
        if proc.poll() is not None:
            raise BenchError(f"fping exited: {err_path.read_text(errors='replace')[-2000:]}")
        window = measure(
            proc.pid,
            counter,
            plan.window_s,
            lambda: proc.send_signal(signal.SIGQUIT),
            lambda: proc.send_signal(signal.SIGQUIT),
        )
        # The split is printed on fping's next pass through its loop.
        time.sleep(0.5)
    finally:
        stop_process(proc, signal.SIGINT)
    splits = fping_splits(err_path.read_text(errors="replace"))
    if len(splits) < 2:
        raise BenchError(f"fping printed {len(splits)} interval summaries, expected 2+")
    hosts, sent, received = splits[1]
    return {
        **window_fields(window),
        "argv": " ".join(argv),
        "replies_lost": sent - received,
        "fping": {"hosts": hosts, "sent": sent, "received": received},
    }


SMOKEPING_SERIES = ("smokeping_requests_total", "smokeping_response_duration_seconds_count")


def smokeping_view(samples: Samples) -> dict[str, float]:
    requests = {lb.get("host", ""): v for n, lb, v in samples if n == SMOKEPING_SERIES[0]}
    responses = {lb.get("host", ""): v for n, lb, v in samples if n == SMOKEPING_SERIES[1]}
    return {
        "requests": sum(requests.values()),
        "responses": sum(responses.values()),
        # As for the exporter: counters read at different moments of one document.
        "lost_clamped": sum(max(0.0, v - responses.get(h, 0.0)) for h, v in requests.items()),
        "skewed": sum(1 for h, v in requests.items() if responses.get(h, 0.0) > v),
    }


def run_smokeping(
    bed: Bed, plan: Plan, counter: RequestCounter, addresses: Sequence[str], protocol: str, tag: str
) -> dict[str, Any]:
    config = plan.workdir / f"{tag}.yml"
    # JSON is YAML: no YAML library needed.
    config.write_text(
        json.dumps(
            {
                "targets": [
                    {
                        "hosts": list(addresses),
                        "interval": "1s",
                        "network": "ip4",
                        "protocol": protocol,
                    }
                ]
            }
        )
    )
    log_path = plan.workdir / f"{tag}.log"
    with open(log_path, "wb") as log:
        proc = bed.src.popen(
            [
                SMOKEPING_BIN,
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{SMOKEPING_PORT}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    scraper = Scraper(bed.src, SMOKEPING_PORT)
    texts: list[str] = []
    marks: list[float] = []

    def snapshot() -> None:
        marks.append(time.monotonic())
        texts.append(scraper.snapshot(timeout_s=60))

    try:
        ready_s = wait_for(
            "smokeping_prober", lambda: bool(fetch(bed.src, SMOKEPING_PORT)), proc, 60, log_path
        )
        scraper.start()
        time.sleep(plan.warmup_s)
        window = measure(proc.pid, counter, plan.window_s, snapshot, snapshot)
    finally:
        scraper.stop()
        stop_process(proc)
    views = [smokeping_view(parse(text, SMOKEPING_SERIES)) for text in texts]
    requests = views[1]["requests"] - views[0]["requests"]
    responses = views[1]["responses"] - views[0]["responses"]
    return {
        **window_fields(window),
        "protocol": protocol,
        "ready_after_s": ready_s,
        "replies_lost": views[1]["lost_clamped"] - views[0]["lost_clamped"],
        "replies_lost_unclamped": requests - responses,
        "smokeping": {
            "requests": requests,
            "responses": responses,
            "skewed_hosts_at_start_end": [v["skewed"] for v in views],
        },
        "scrapes": scrape_summary(scraper.between(marks[0], marks[1])),
        "scrape_errors": scraper.errors[:20],
    }


# ---------------------------------------------------------------------------------------
# RTT accuracy


def histogram_delta(
    first: Samples, last: Samples, targets: set[str]
) -> tuple[list[tuple[float, float]], float, float]:
    """Cumulative (le, count) summed over targets, plus RTT sum and count, last - first."""

    def fold(samples: Samples) -> tuple[dict[float, float], float, float]:
        buckets: dict[float, float] = {}
        rtt_sum = count = 0.0
        for n, lb, v in samples:
            if lb.get("target") not in targets:
                continue
            if n == "pingmesh_probe_rtt_seconds_bucket":
                le = float(lb["le"])
                buckets[le] = buckets.get(le, 0.0) + v
            elif n == "pingmesh_probe_rtt_seconds_sum":
                rtt_sum += v
            elif n == "pingmesh_probe_rtt_seconds_count":
                count += v
        return buckets, rtt_sum, count

    b0, s0, c0 = fold(first)
    b1, s1, c1 = fold(last)
    cumulative = sorted((le, b1[le] - b0.get(le, 0.0)) for le in b1)
    return cumulative, s1 - s0, c1 - c0


def histogram_quantile(cumulative: Sequence[tuple[float, float]], q: float) -> float:
    """Quantile by linear interpolation inside the bucket that holds it (as
    histogram_quantile does in PromQL)."""
    if not cumulative or cumulative[-1][1] <= 0:
        return math.nan
    rank = cumulative[-1][1] * q
    lower, below = 0.0, 0.0
    for le, cum in cumulative:
        if cum >= rank:
            if math.isinf(le):
                return lower
            inside = cum - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, cum
    return math.nan


def histogram_share_above(cumulative: Sequence[tuple[float, float]], bound: float) -> float:
    counts = dict(cumulative)
    if not cumulative or cumulative[-1][1] <= 0 or bound not in counts:
        return math.nan
    return 1.0 - counts[bound] / cumulative[-1][1]


ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
SCM_TIMESTAMPNS = 35


@dataclass
class WireCapture:
    """Echo request/reply pairs seen on the src end of a veth, timed by the kernel.

    The time between a request leaving and its reply arriving on the link is what both
    probers should report; it separates a prober's own error from the responder's.  fping
    fills its payload with zeros and the exporter does not, which tells their packets apart.
    """

    ns: Namespace
    ifname: str
    max_packets: int = 200_000
    rtts: dict[str, list[float]] = field(default_factory=lambda: {"exporter": [], "fping": []})
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        sock = self.ns.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        sock.bind((self.ifname, ETH_P_ALL))
        sock.setsockopt(socket.SOL_SOCKET, SCM_TIMESTAMPNS, 1)
        sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, args=(sock,), name="capture", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self, sock: socket.socket) -> None:
        requests: dict[tuple[bytes, bytes], float] = {}
        try:
            for _ in range(self.max_packets):
                if self._stop.is_set():
                    return
                try:
                    data, anc, _flags, addr = sock.recvmsg(2048, 64)
                except TimeoutError:
                    continue
                if addr[1] != ETH_P_IP or len(data) < 28 or data[9] != socket.IPPROTO_ICMP:
                    continue
                stamp = next(
                    (
                        struct.unpack("=qq", d[:16])
                        for lvl, kind, d in anc
                        if lvl == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS
                    ),
                    None,
                )
                if stamp is None:
                    continue
                at = stamp[0] + stamp[1] / 1e9
                icmp = data[(data[0] & 0x0F) * 4 :]
                if icmp[0] == 8:
                    requests[(data[16:20], icmp[4:8])] = at
                elif icmp[0] == 0:
                    sent = requests.pop((data[12:16], icmp[4:8]), None)
                    if sent is not None:
                        who = "fping" if not any(icmp[8:]) else "exporter"
                        self.rtts[who].append(at - sent)
        finally:
            sock.close()


def summary(values: Sequence[float], bound: float) -> dict[str, float]:
    if not values:
        return {"samples": 0}
    ordered = sorted(values)
    return {
        "samples": len(ordered),
        "median_s": statistics.median(ordered),
        "mean_s": statistics.fmean(ordered),
        "p90_s": ordered[int(0.9 * (len(ordered) - 1))],
        "max_s": ordered[-1],
        "share_above_3_3ms": sum(1 for v in ordered if v > bound + 1e-9) / len(ordered),
    }


_FPING_COUNT_RE = re.compile(r"^(\S+)\s*:((?:\s+(?:[\d.]+|-))+)\s*$")


def fping_rtts(text: str) -> tuple[list[float], int]:
    """RTTs in seconds from ``fping -C`` output, and the count of lost probes."""
    values: list[float] = []
    lost = 0
    for line in text.splitlines():
        match = _FPING_COUNT_RE.match(line)
        if not match:
            continue
        for token in match.group(2).split():
            if token == "-":
                lost += 1
            else:
                values.append(float(token) / 1000)
    return values, lost


def run_rtt_case(
    bed: Bed,
    plan: Plan,
    counter: RequestCounter,
    delay: Dst,
    background: Sequence[str],
    count: int,
    scraped: bool,
    tag: str,
) -> dict[str, Any]:
    delayed = delay.targets_v4
    targets_file = write_targets(plan.workdir / f"{tag}.targets", [*delayed, *background])
    delayed_file = write_targets(plan.workdir / f"{tag}.delayed", delayed)
    buckets = ",".join(f"{b}us" for b in RTT_BUCKETS_US)
    proc, log_path, ready_s = start_exporter(
        bed, plan, targets_file, ["--probe.rtt-buckets", buckets], tag=f"exporter-{tag}"
    )
    scraper = Scraper(bed.src, EXPORTER_PORT)
    wire = WireCapture(bed.src, delay.src_if)
    fping_err = plan.workdir / f"fping-{tag}.stderr"
    argv = ["fping", "-C", str(count), "-p", "1000", "-q", "-f", str(delayed_file)]
    try:
        if scraped:
            scraper.start()
        time.sleep(plan.warmup_s)
        wire.start()
        # Parsed after the window, so that parsing 30 MB here does not take CPU from the
        # responder and the probers while fping runs.
        first_text = (
            scraper.snapshot() if scraped else fetch_text(bed.src, EXPORTER_PORT, timeout=30)
        )
        c0 = counter.read()
        started = time.monotonic()
        with open(fping_err, "wb") as err:
            fping = bed.src.popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        try:
            fping.wait(timeout=count + 30)
        except subprocess.TimeoutExpired:
            stop_process(fping, signal.SIGINT)
            raise BenchError(f"fping -C {count} did not finish") from None
        ended = time.monotonic()
        c1 = counter.read()
        last_text = (
            scraper.snapshot() if scraped else fetch_text(bed.src, EXPORTER_PORT, timeout=30)
        )
    finally:
        wire.stop()
        scraper.stop()
        stop_process(proc)
    first = parse(first_text, EXPORTER_SERIES)
    last = parse(last_text, EXPORTER_SERIES)
    cumulative, rtt_sum, rtt_count = histogram_delta(first, last, set(delayed))
    fping_values, fping_lost = fping_rtts(fping_err.read_text(errors="replace"))
    exporter_median = histogram_quantile(cumulative, 0.5)
    # The edge of the fine buckets; fping prints 10 us steps, so 3.30 ms is at the bound.
    tail_bound = RTT_BUCKETS_US[RTT_BUCKETS_US.index(3300)] / 1e6
    fping_sorted = sorted(fping_values)
    fping_median = statistics.median(fping_values) if fping_values else math.nan
    view = view_delta(exporter_view(first, set(delayed)), exporter_view(last, set(delayed)))
    everyone = view_delta(exporter_view(first), exporter_view(last))
    # Only the buckets that received samples, to keep the JSON readable.
    per_bucket = []
    below = 0.0
    for le, cum in cumulative:
        if cum - below:
            per_bucket.append([le, cum - below])
        below = cum
    return {
        "exporter_targets": len(delayed) + len(background),
        "scraped_every_s": scraped,
        "window_s": ended - started,
        "fping_argv": " ".join(argv),
        # Both probers' requests to the delayed targets: 2 x targets per second expected.
        "delayed_requests_per_s": rate(c0, c1),
        "exporter_ready_after_s": ready_s,
        "exporter_samples": rtt_count,
        "exporter_median_s": exporter_median,
        "exporter_mean_s": rtt_sum / rtt_count if rtt_count else math.nan,
        "exporter_p90_s": histogram_quantile(cumulative, 0.9),
        "exporter_share_above_3_3ms": histogram_share_above(cumulative, tail_bound),
        "exporter_lost": view["lost_clamped"],
        "exporter_errors": view["errors"],
        "exporter_all_targets_lost": everyone["lost_clamped"],
        "exporter_receive_drops": everyone["receive_drops"],
        "exporter_histogram": per_bucket,
        "fping_samples": len(fping_values),
        "fping_lost": fping_lost,
        "fping_median_s": fping_median,
        "fping_mean_s": statistics.fmean(fping_values) if fping_values else math.nan,
        "fping_p90_s": (
            fping_sorted[int(0.9 * (len(fping_sorted) - 1))] if fping_sorted else math.nan
        ),
        "fping_share_above_3_3ms": (
            sum(1 for v in fping_values if v > tail_bound + 1e-9) / len(fping_values)
            if fping_values
            else math.nan
        ),
        "fping_min_s": min(fping_values, default=math.nan),
        "fping_max_s": max(fping_values, default=math.nan),
        "median_diff_us": (exporter_median - fping_median) * 1e6,
        "wire_exporter": summary(wire.rtts["exporter"], tail_bound),
        "wire_fping": summary(wire.rtts["fping"], tail_bound),
        "scrapes": scrape_summary(scraper.samples) if scraped else {"scrapes": 0},
        "log_tail": log_path.read_text(errors="replace")[-1500:],
    }


# ---------------------------------------------------------------------------------------
# machine facts and output


def _first_line(argv: Sequence[str], cwd: Path = ROOT) -> str:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=20, check=False, cwd=cwd
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({exc})"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def extract_revision(rev: str, into: Path) -> tuple[Path, str]:
    """The exporter package as committed at ``rev``, unpacked under ``into``."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", f"{rev}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    tree = into / f"exporter-{commit}"
    tree.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "exporter"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        # Our own repository's archive; the "data" filter exists from Python 3.11.4 on.
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tree, filter="data")
        else:
            tar.extractall(tree)
    return tree, commit


def machine_facts(exporter_tree: Path, exporter_commit: str | None) -> dict[str, Any]:
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": _first_line(["nproc"]),
        "cpu_model": cpu_model(),
        "memory_gib": memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "fping": _first_line(["fping", "-v"]),
        "smokeping_prober": _first_line([SMOKEPING_BIN, "--version"]),
        "exporter": _first_line([sys.executable, "-m", "exporter", "--version"], cwd=exporter_tree),
        "exporter_tree": str(exporter_tree),
        "exporter_commit": exporter_commit,
        "repository_head": _first_line(["git", "rev-parse", "--short", "HEAD"]),
        # Only meaningful when the exporter runs from this work tree.
        "work_tree_exporter_modified": bool(
            _first_line(["git", "status", "--porcelain", "--", "exporter"])
            not in ("", "unavailable")
        ),
    }


def _ms(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value * 1000:.0f} ms"


def _num(value: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def cost_table(n: int, runs: dict[str, dict[str, Any]]) -> str:
    names = [
        k for k in ("exporter", "fping", "smokeping_prober", "smokeping_prober_raw") if k in runs
    ]
    heads = {
        "exporter": "exporter",
        "fping": "fping",
        "smokeping_prober": "smokeping_prober (datagram)",
        "smokeping_prober_raw": "smokeping_prober (raw)",
    }
    fping_cpu = runs["fping"]["cpu_per_s"] if "fping" in runs else math.nan

    def row(label: str, cell: Callable[[str, dict[str, Any]], str]) -> str:
        return f"| {label} | " + " | ".join(cell(k, runs[k]) for k in names) + " |"

    def scrape_cell(k: str, r: dict[str, Any], key: str) -> str:
        s = r.get("scrapes", {})
        if f"{key}_median" not in s:
            return "-"
        return f"{_ms(s[f'{key}_median'])} / {_ms(s[f'{key}_max'])}"

    def lost_cell(k: str, r: dict[str, Any]) -> str:
        lost = r["replies_lost"]
        cell = f"{lost:.0f}"
        if k == "exporter":
            cell += f" (receive drops {r['exporter']['receive_drops']:.0f})"
        return cell

    window = next(iter(runs.values()))["seconds"] if runs else math.nan
    lines = [
        f"**{n:,} targets**, {window:.0f} s window",
        "",
        "| | " + " | ".join(heads[k] for k in names) + " |",
        "|---|" + "---:|" * len(names),
        row("CPU s/s", lambda k, r: _num(r["cpu_per_s"])),
        row(
            "CPU ratio to fping",
            lambda k, r: (
                f"{r['cpu_per_s'] / fping_cpu:.1f}x" if not math.isnan(fping_cpu) else "n/a"
            ),
        ),
        row(
            "of which probe loop (exporter)",
            lambda k, r: _num(r["probe_loop_cpu_per_s"]) if k == "exporter" else "-",
        ),
        row("peak RSS MiB", lambda k, r: f"{r['peak_rss_mib']:.1f}"),
        row(
            "rest of the machine CPU s/s (kernel, anything else)",
            lambda k, r: _num(r.get("other_cpu_per_s", math.nan), 2),
        ),
        row("achieved requests/s", lambda k, r: f"{r['requests_per_s']:.0f}"),
        row("replies lost (window)", lost_cell),
        row("/metrics render median / max", lambda k, r: scrape_cell(k, r, "render_seconds")),
        row("scrape (gzip) median / max", lambda k, r: scrape_cell(k, r, "scrape_seconds")),
    ]
    return "\n".join(lines)


def exporter_key(
    label: str, period: float, variants: Sequence[tuple[str, Path]], periods: Sequence[float]
) -> str:
    """The result key of one exporter run: plain "exporter" for the first variant at the
    first period, so single runs read as before."""
    if (label, period) == (variants[0][0], periods[0]):
        return "exporter"
    return f"exporter@{label or 'tree'}/{period:g}s"


def operating_point_table(result: dict[str, Any]) -> str:
    """Per size and exporter run: CPU s/s beside fping's in the same run, the ratio, RSS,
    the render time, and the exporter's own counters over the window."""
    lines = [
        "| targets | exporter | scrape | exporter CPU s/s | fping CPU s/s | ratio "
        "| exporter RSS MiB | render median / max | lost | errors | drops | unmatched "
        "| rounds skipped | rest of machine CPU s/s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    for n, runs in result["cost"].items():
        fping = runs.get("fping", {}).get("cpu_per_s", math.nan)
        for key, r in runs.items():
            if not key.startswith("exporter"):
                continue
            e = r["exporter"]
            s = r.get("scrapes", {})
            render = (
                f"{_ms(s['render_seconds_median'])} / {_ms(s['render_seconds_max'])}"
                if "render_seconds_median" in s
                else "-"
            )
            ratio = r["cpu_per_s"] / fping if fping and not math.isnan(fping) else math.nan
            lines.append(
                f"| {int(n):,} | {r.get('exporter_commit') or 'tree'} "
                f"| {r.get('scrape_period_s', 0):g} s | {r['cpu_per_s']:.4f} | {fping:.4f} "
                f"| {ratio:.2f}x | {r['peak_rss_mib']:.1f} | {render} "
                f"| {r['replies_lost']:.0f} | {e['errors'] or 0} | {e['receive_drops']:.0f} "
                f"| {e['unmatched'] or 0} | {e['rounds_skipped']:.0f} "
                f"| {r.get('other_cpu_per_s', math.nan):.3f} |"
            )
    return "\n".join(lines)


def rtt_table(cases: dict[str, dict[str, Any]]) -> str:
    def us(value: float | None) -> str:
        return "n/a" if value is None or math.isnan(value) else f"{value * 1e6:.1f} us"

    lines = [
        "| case | prober | median | mean | > 3.3 ms | samples | wire median / mean / > 3.3 ms "
        "| median - wire median |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in cases.items():
        label = f"{name}: exporter on {c['exporter_targets']:,} targets, " + (
            "scraped every 1 s" if c["scraped_every_s"] else "not scraped"
        )
        for who in ("exporter", "fping"):
            w = c[f"wire_{who}"]
            median = c[f"{who}_median_s"]
            wire_cell = (
                f"{us(w['median_s'])} / {us(w['mean_s'])} / {w['share_above_3_3ms']:.1%}"
                if w.get("samples")
                else "n/a"
            )
            error = f"{(median - w['median_s']) * 1e6:+.1f} us" if w.get("samples") else "n/a"
            lines.append(
                f"| {label} | {who} | {us(median)} | {us(c[f'{who}_mean_s'])} "
                f"| {c[f'{who}_share_above_3_3ms']:.1%} | {c[f'{who}_samples']:.0f} "
                f"| {wire_cell} | {error} |"
            )
            label = ""
        lines.append(
            f"| | exporter - fping | {c['median_diff_us']:+.1f} us | "
            f"{(c['exporter_mean_s'] - c['fping_mean_s']) * 1e6:+.1f} us | | | | |"
        )
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    exporter = f"commit {m['exporter_commit']}" if m.get("exporter_commit") else m["exporter_tree"]
    parts = [
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, "
        f"Python {m['python']}, {m['fping']}, {m['smokeping_prober']}; {m['date_utc']}; "
        f"exporter from {exporter}",
        "",
    ]
    if result["config"].get("operating_point") or len(result["config"]["scrape_periods_s"]) > 1:
        parts += [operating_point_table(result), ""]
    else:
        for n, runs in result["cost"].items():
            parts += [cost_table(int(n), runs), ""]
    if result.get("rtt"):
        parts += [
            f"**RTT accuracy** (3 ms user-space responder, {RTT_TARGETS} targets)",
            "",
            rtt_table(result["rtt"]),
            "",
        ]
    return "\n".join(parts)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1,000 targets only, 10 s windows, short RTT check",
    )
    p.add_argument("--sizes", default=None, help="target counts, comma-separated")
    p.add_argument("--warmup", type=float, default=None, help="seconds before each window")
    p.add_argument("--window", type=float, default=None, help="measured seconds per prober")
    p.add_argument("--rtt-count", type=int, default=None, help="fping -C count per RTT case")
    p.add_argument(
        "--probers",
        default="exporter,fping,smokeping",
        help="which probers to run in the cost part, comma-separated",
    )
    p.add_argument("--no-rtt", action="store_true", help="skip the RTT accuracy part")
    p.add_argument(
        "--scrape-period",
        type=float,
        default=1.0,
        help="seconds between scrapes of the exporter in the cost part",
    )
    p.add_argument(
        "--operating-point",
        action="store_true",
        help="the DaemonSet's operating point: 1, 40, 200, 1,000 and 5,000 targets, exporter "
        "and fping in the same run, scraped every 15 s and every 1 s, no RTT part",
    )
    p.add_argument(
        "--scrape-periods",
        default=None,
        help="several scrape periods (seconds, comma-separated): the exporter runs once per "
        "period, fping once per size",
    )
    p.add_argument(
        "--small-window",
        type=float,
        default=None,
        help="measured seconds for sizes of 200 targets or fewer (their CPU is a few ticks "
        "of 10 ms a second: a long window makes it measurable)",
    )
    p.add_argument(
        "--exporter-revs",
        default=None,
        help="several git revisions, comma-separated: each runs at every size and period "
        "beside the same fping run (before/after in one run)",
    )
    p.add_argument("--out", type=Path, default=OUT_DIR, help="directory for the JSON result")
    p.add_argument(
        "--exporter-tree",
        type=Path,
        default=ROOT,
        help="directory holding the exporter package to run (default: this tree)",
    )
    p.add_argument(
        "--exporter-rev",
        default=None,
        help="run the exporter package as committed at this git revision "
        "(extracted with git archive; the work tree is left alone)",
    )
    return p.parse_args(argv)


def preflight(with_smokeping: bool) -> None:
    reason = require_root()
    if reason is not None:
        raise SystemExit(f"probe_bench: {reason}")
    missing = [tool for tool in ("fping", "iptables") if shutil.which(tool) is None]
    if with_smokeping and shutil.which(SMOKEPING_BIN) is None:
        missing.append(SMOKEPING_BIN)
    if missing:
        raise SystemExit(f"probe_bench: missing {', '.join(missing)} (make system-deps)")


def run_all(
    args: argparse.Namespace,
    probers: set[str],
    sizes: list[int],
    warmup: float,
    window: float,
    rtt_count: int,
    workdir: Path,
) -> dict[str, Any]:
    exporter_tree, exporter_commit = args.exporter_tree.resolve(), None
    if args.exporter_rev:
        exporter_tree, exporter_commit = extract_revision(args.exporter_rev, workdir)
    # (label, tree) per exporter variant; the first is the one reported as "exporter".
    variants: list[tuple[str, Path]] = [("", exporter_tree)]
    if args.exporter_revs:
        variants = []
        for rev in (r.strip() for r in args.exporter_revs.split(",") if r.strip()):
            tree, commit = extract_revision(rev, workdir)
            variants.append((commit, tree))
        exporter_tree, exporter_commit = variants[0][1], variants[0][0]
    periods = (
        [float(x) for x in args.scrape_periods.split(",")]
        if args.scrape_periods
        else [args.scrape_period]
    )
    result: dict[str, Any] = {
        "machine": machine_facts(exporter_tree, exporter_commit),
        "config": {
            "sizes": sizes,
            "warmup_s": warmup,
            "window_s": window,
            "rtt_count": rtt_count,
            "quick": args.quick,
            "small_window_s": args.small_window,
            "operating_point": args.operating_point,
            "scrape_periods_s": periods,
            "exporter_variants": [label for label, _ in variants],
        },
        "cost": {},
        "rtt": {},
    }
    plan = Plan(warmup, window, workdir, exporter_tree, args.scrape_period)
    with Bed() as bed:
        echo = bed.add_dst("echo", kernel_echo=True)
        addresses = echo.add_targets(max(sizes), 0)
        counter = RequestCounter(echo.ns)
        for n in sizes:
            chosen = addresses[:n]
            targets_file = write_targets(workdir / f"targets-{n}.txt", chosen)
            runs: dict[str, dict[str, Any]] = {}
            result["cost"][str(n)] = runs
            sized = plan
            if args.small_window is not None and n <= 200:
                sized = replace(plan, window_s=args.small_window)
            if "fping" in probers:
                print(f"[{n} targets] fping", flush=True)
                runs["fping"] = run_fping(bed, sized, counter, targets_file, n)
            if "exporter" in probers:
                for period in periods:
                    for label, tree in variants:
                        key = exporter_key(label, period, variants, periods)
                        print(f"[{n} targets] {key}", flush=True)
                        one = replace(sized, exporter_tree=tree, scrape_period_s=period)
                        runs[key] = run_exporter(bed, one, counter, targets_file, n)
                        runs[key]["scrape_period_s"] = period
                        runs[key]["exporter_commit"] = label or exporter_commit
            if "smokeping" in probers:
                print(f"[{n} targets] smokeping_prober (datagram)", flush=True)
                runs["smokeping_prober"] = run_smokeping(
                    bed, plan, counter, chosen, "udp", f"smokeping-{n}"
                )
                if n == 1000 and not args.quick:
                    # Its default mode: one raw socket per target, each of which sees every
                    # reply.  Shorter, as it saturates the machine.
                    print(f"[{n} targets] smokeping_prober (raw)", flush=True)
                    short = Plan(min(warmup, 3.0), min(window, 10.0), workdir, exporter_tree)
                    try:
                        runs["smokeping_prober_raw"] = run_smokeping(
                            bed, short, counter, chosen, "icmp", f"smokeping-raw-{n}"
                        )
                    except BenchError as exc:
                        # An extra column: its failure to come up is a result, not a crash.
                        result.setdefault("failures", {})[f"smokeping_prober_raw-{n}"] = str(exc)
        if not args.no_rtt:
            delay: Dst = bed.add_dst("delay", kernel_echo=False)
            delay.add_targets(RTT_TARGETS, 0)
            delay_counter = RequestCounter(delay.ns)
            bed.start_responder(
                delay, [Profile(prefix=str(delay.v4_prefix), delay_ms=RTT_DELAY_MS)]
            )
            big = addresses[: max(sizes)]
            # fping -C sets the window here; the exporter only needs its sockets warm.
            rtt_plan = Plan(min(warmup, 3.0), window, workdir, exporter_tree)
            print(f"[rtt] {len(big)} + {RTT_TARGETS} targets, scraped", flush=True)
            result["rtt"]["loaded"] = run_rtt_case(
                bed, rtt_plan, delay_counter, delay, big, rtt_count, True, "rtt-loaded"
            )
            print(f"[rtt] {RTT_TARGETS} targets alone", flush=True)
            result["rtt"]["alone"] = run_rtt_case(
                bed, rtt_plan, delay_counter, delay, [], rtt_count, False, "rtt-alone"
            )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.operating_point:
        # The DaemonSet's sizes; fping and the exporter in the same run; both scrape
        # periods. Explicit options still win.
        args.sizes = args.sizes or "1,40,200,1000,5000"
        args.probers = "exporter,fping"
        args.no_rtt = True
        args.scrape_periods = args.scrape_periods or "15,1"
        args.small_window = args.small_window if args.small_window is not None else 60.0
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else [1000]
        if args.quick
        else [1000, 5000]
    )
    warmup = args.warmup if args.warmup is not None else (3.0 if args.quick else 5.0)
    window = args.window if args.window is not None else (10.0 if args.quick else 30.0)
    rtt_count = args.rtt_count or (10 if args.quick else 60)
    probers = {p.strip() for p in args.probers.split(",") if p.strip()}
    unknown = probers - {"exporter", "fping", "smokeping"}
    if unknown:
        raise SystemExit(f"probe_bench: unknown probers {sorted(unknown)}")
    preflight("smokeping" in probers)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="probe-bench-"))
    try:
        result = run_all(args, probers, sizes, warmup, window, rtt_count, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["elapsed_s"] = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"probe-bench-{stamp}.json"
    path.write_text(json.dumps(_jsonable(result), indent=1) + "\n")
    print()
    print(markdown(result))
    print(f"elapsed {result['elapsed_s']:.0f} s; results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
