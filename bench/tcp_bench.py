#!/usr/bin/env python3
"""What the TCP probes cost: CPU and series of the exporter at 200 and 1,000 targets probed
once per second, with the echo alone, with TCP over one flow, and with TCP over eight flows.

Everything runs in network namespaces built with ``tests/support/netbed.py``: the exporter in
the bed's ``src`` namespace in static mode (``--probe.tcp=true``), the targets routed /32
addresses on the loopback of one dst namespace, where one listener on the wildcard address
accepts every connect (and closes it) on the probed port. The exporter is scraped once per
second (gzip) from a thread, as Prometheus would.

Per run: CPU seconds per wall second of the exporter (utime+stime, /proc) over the measured
window, the machine's busy share beside it (other work on the machine shows there), TCP
connects per second and how many were ``ok``, and the series of one scrape in the text
format: in all, and per target.

Usage: ``python -m bench.tcp_bench [--quick]`` as root. Results go to
``bench/out/tcp-bench-<UTC time>.json``; a Markdown summary is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import (
    ROOT,
    BenchError,
    fetch,
    machine_cpu,
    machine_facts,
    parse,
    peak_rss_mib,
    tree_cpu_seconds,
    value,
)
from tests.support.netbed import Bed, require_root

PORT = 9871
PEER_PORT = 9872
LISTENER = """
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", %d))
s.listen(4096)
print("listening", flush=True)
while True:  # until the bed kills it
    c, _ = s.accept()
    c.close()
"""


@dataclass
class Run:
    targets: int
    mode: str  # "icmp", "tcp-1", "tcp-8"
    cpu_per_s: float
    machine_busy: float
    rss_mib: float
    connects_per_s: float
    ok_per_s: float
    render_s: float
    series: int
    tcp_series: int
    series_per_target: float


class Scraper(threading.Thread):
    """Scrapes /metrics once a second until stopped, keeping the last body."""

    def __init__(self, bed: Bed) -> None:
        super().__init__(daemon=True)
        self.bed = bed
        self.stop = threading.Event()
        self.last = b""

    def run(self) -> None:
        while not self.stop.wait(1.0):  # ends when the bench sets stop
            try:
                self.last = fetch(self.bed.src, PORT).body()
            except (OSError, BenchError):
                continue


def one(bed: Bed, addresses: list[str], mode: str, warm: float, window: float) -> Run:
    args = [
        sys.executable,
        "-m",
        "exporter",
        f"--web.listen-address=127.0.0.1:{PORT}",
        "--probe.interval=1s",
        "--log.level=warn",
    ]
    if mode != "icmp":
        args += ["--probe.tcp=true", f"--probe.tcp-port={PEER_PORT}"]
        args.append(f"--probe.flows={mode.split('-')[1]}")
    for a in addresses:
        args += ["--target", a]
    proc = bed.src.popen(args, cwd=ROOT)
    scraper = Scraper(bed)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # bounded: 20 s for the exporter to serve
            try:
                fetch(bed.src, PORT, path="/readyz")
                break
            except (OSError, BenchError):
                time.sleep(0.2)
        scraper.start()
        time.sleep(warm)
        first = fetch(bed.src, PORT)
        cpu0, (busy0, total0), t0 = tree_cpu_seconds(proc.pid), machine_cpu(), time.monotonic()
        time.sleep(window)
        cpu1, (busy1, total1), t1 = tree_cpu_seconds(proc.pid), machine_cpu(), time.monotonic()
        last = fetch(bed.src, PORT)
        text = last.body().decode()
        before, after = parse(first.body().decode()), parse(text)
        # The counters were read while each scrape rendered: their rates are over the time
        # between the two scrapes' midpoints, not the CPU window.
        counted = (last.started + last.ended - first.started - first.ended) / 2
        rss = peak_rss_mib(proc.pid)
    finally:
        scraper.stop.set()
        proc.terminate()
        proc.wait(10)
    elapsed = t1 - t0
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    tcp_lines = [ln for ln in lines if ln.startswith("pingmesh_tcp_")]
    one_target = f'target="{addresses[0]}"'
    per_target = sum(1 for ln in lines if one_target in ln)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, default=0.0, **labels) - value(
            before, name, default=0.0, **labels
        )

    connects = delta("pingmesh_tcp_connects_total")
    ok = delta("pingmesh_tcp_probe_total", result="ok")
    render = value(after, "pingmesh_metrics_render_seconds")
    return Run(
        targets=len(addresses),
        mode=mode,
        cpu_per_s=(cpu1 - cpu0) / elapsed,
        machine_busy=(busy1 - busy0) / (total1 - total0),
        rss_mib=rss,
        connects_per_s=connects / counted,
        ok_per_s=ok / counted,
        render_s=render,
        series=len(lines),
        tcp_series=len(tcp_lines),
        series_per_target=per_target,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows, for a smoke run")
    opts = parser.parse_args()
    reason = require_root()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    warm, window = (3.0, 5.0) if opts.quick else (10.0, 30.0)
    runs: list[Run] = []
    with Bed() as bed:
        dst = bed.add_dst("tcp")
        addresses = dst.add_targets(1000)
        listener = dst.ns.popen(
            [sys.executable, "-c", LISTENER % PEER_PORT], stdout=subprocess.PIPE
        )
        assert listener.stdout is not None
        listener.stdout.readline()
        for n in (200, 1000):
            for mode in ("icmp", "tcp-1", "tcp-8"):
                run = one(bed, addresses[:n], mode, warm, window)
                runs.append(run)
                print(json.dumps(asdict(run)), flush=True)
    facts = machine_facts(warm_s=warm, window_s=window)
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = Path(out / f"tcp-bench-{stamp}.json")
    path.write_text(json.dumps({"machine": facts, "runs": [asdict(r) for r in runs]}, indent=1))
    print(f"\n{facts['cpu_model']}, {facts['nproc']} cores, {facts['date_utc']}, {path.name}\n")
    print(
        "| targets | probes | CPU s/s | machine busy | peak RSS MiB | TCP connects/s (ok) "
        "| series | of them TCP | per target |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r.targets:,} | {r.mode} | {r.cpu_per_s:.3f} | {r.machine_busy:.0%} "
            f"| {r.rss_mib:.1f} | {r.connects_per_s:.0f} ({r.ok_per_s:.0f}) | {r.render_s:.3f} "
            f"| {r.series:,} "
            f"| {r.tcp_series:,} | {r.series_per_target:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
