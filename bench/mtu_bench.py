#!/usr/bin/env python3
"""What the full-size (MTU) probes cost: CPU, memory, series and scrape size, at 200 and 1,000
targets, against the same exporter with them off.

The exporter runs in a test bed's ``src`` namespace and probes kernel-echo targets (routed
/32 addresses on a dst namespace's loopback, 198.18.0.0/15) once per second with the small
echo, and, per case, with no full-size probes (``--probe.mtu-interval=0``), with the default
(one 1,500-byte probe per target every 10 s), and with one every second (ten times the
default, to show what the cost scales with). Each case runs alone: a warm-up, then a
measured window of CPU seconds (utime+stime, /proc) per wall second, while /metrics is
scraped every 5 s as Prometheus would. The last scrape is counted: series per target of the
small echoes and of the full-size probes, document bytes, render time. Apart from that, the
time of one interface-MTU lookup (rtnetlink, once per target when it is added) is taken in
the src namespace.

Usage: ``python -m bench.mtu_bench [--quick] [--repeat N] [--sizes 200,1000]`` as root (``--repeat``
runs every case N times, in turn, so a busy spell of the machine shows as a spread). Results go to
``bench/out/mtu-bench-<UTC time>.json``; a Markdown summary is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from tests.support.exporter_proc import http_get, in_namespace
from tests.support.netbed import Bed, require_root

PORT = 9871
RENDER_RE = re.compile(rb"^pingmesh_metrics_render_seconds (\S+)$", re.M)
OUT_DIR = ROOT / "bench" / "out"
CASES = {"off": "0", "default 10s": "10s", "1s": "1s"}
MTU_FAMILIES = (
    "pingmesh_mtu_probe_sent_total",
    "pingmesh_mtu_probe_received_total",
    "pingmesh_mtu_probe_errors_total",
    "pingmesh_path_mtu_bytes",
)


def _series_per_target(samples: list[tuple[str, dict[str, str], float]]) -> dict[str, float]:
    targets = {lb["target"] for _, lb, _ in samples if "target" in lb}
    mtu = sum(1 for n, lb, _ in samples if n in MTU_FAMILIES and "target" in lb)
    small = sum(1 for n, lb, _ in samples if n not in MTU_FAMILIES and "target" in lb)
    n = max(len(targets), 1)
    return {"targets": len(targets), "small_per_target": small / n, "mtu_per_target": mtu / n}


def run_case(
    bed: Bed, workdir: Path, targets: Path, n: int, interval: str, warmup: float, window: float
) -> dict[str, Any]:
    log_path = workdir / f"exporter-{n}-{interval}.log"
    with open(log_path, "wb") as log:
        proc = bed.src.popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "--probe.interval=1s",
                f"--probe.mtu-interval={interval}",
                "--targets-file",
                str(targets),
                "--web.listen-address",
                f"127.0.0.1:{PORT}",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    stop = threading.Event()
    scrapes: list[float] = []
    renders: list[float] = []

    def scraper() -> None:
        while not stop.wait(5.0):
            try:
                got = fetch(bed.src, PORT)
            except (OSError, BenchError):
                continue
            scrapes.append(got.seconds)
            # The render time of the scrape before: read from the text, not parsed in full
            # (this process shares the two cores with the exporter).
            found = RENDER_RE.search(got.body())
            if found:
                renders.append(float(found.group(1)))

    thread = threading.Thread(target=scraper, name="scraper", daemon=True)
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise BenchError(f"exporter exited: {log_path.read_text()[-2000:]}")
            try:
                if http_get(bed.src, PORT, "/readyz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        thread.start()
        time.sleep(warmup)
        cpu0, t0, busy0 = tree_cpu_seconds(proc.pid), time.monotonic(), machine_cpu()[0]
        time.sleep(window)
        cpu1, t1, busy1 = tree_cpu_seconds(proc.pid), time.monotonic(), machine_cpu()[0]
        last = fetch(bed.src, PORT, compressed=False)
        rss = peak_rss_mib(proc.pid)
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(15)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    samples = parse(last.body().decode())
    sent = value(samples, "pingmesh_mtu_probe_sent_total", default=0.0)
    received = value(samples, "pingmesh_mtu_probe_received_total", default=0.0)
    return {
        "targets": n,
        "mtu_interval": interval,
        "cpu_per_s": (cpu1 - cpu0) / (t1 - t0),
        "window_s": t1 - t0,
        "peak_rss_mib": rss,
        "document_bytes": len(last.body()),
        # The whole machine's busy CPU over the window: other work than the exporter's
        # (the kernel's echo replies, this script, anything else) shows here.
        "machine_busy_per_s": (busy1 - busy0) / (t1 - t0),
        "render_s": statistics.median(renders[1:] or renders or [0.0]),
        "scrape_s_median": statistics.median(scrapes) if scrapes else None,
        "mtu_sent": sent,
        "mtu_received": received,
        "small_sent": value(samples, "pingmesh_probe_sent_total", default=0.0),
        "small_received": value(samples, "pingmesh_probe_received_total", default=0.0),
        **_series_per_target(samples),
    }


def lookup_cost(bed: Bed, addresses: Sequence[str]) -> dict[str, Any]:
    """Seconds per interface-MTU lookup, in the namespace the exporter runs in."""
    from exporter.probing.route import RouteMtu

    def timed() -> dict[str, Any]:
        table = RouteMtu()
        try:
            started = time.perf_counter()
            sizes = {table.lookup(a) for a in addresses}
            took = time.perf_counter() - started
        finally:
            table.close()
        each = took / len(addresses)
        return {"lookups": len(addresses), "seconds_each": each, "mtus": sorted(sizes)}

    return in_namespace(bed.src, timed)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"MTU probes, {m['date_utc']}, {m['nproc']} cores ({m['cpu_model']}), kernel "
        f"{m['kernel']}, Python {m['python']}, commit {m['commit']}. Small echo every 1 s; "
        f"window {result['window_s']:.0f} s after {result['warmup_s']:.0f} s warm-up; "
        "/metrics scraped every 5 s.",
        "",
        "| targets | full-size probes | CPU s/s | machine busy s/s | peak RSS MiB "
        "| series/target (small + MTU) | document KiB | render ms (median) "
        "| full-size sent / received |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['targets']:,} | {r['mtu_interval'] if r['mtu_interval'] != '0' else 'off'} "
            f"| {r['cpu_per_s']:.3f} | {r['machine_busy_per_s']:.2f} | {r['peak_rss_mib']:.0f} "
            f"| {r['small_per_target']:.0f} + {r['mtu_per_target']:.0f} "
            f"| {r['document_bytes'] / 1024:.0f} | {r['render_s'] * 1000:.1f} "
            f"| {r['mtu_sent']:.0f} / {r['mtu_received']:.0f} |"
        )
    lk = result["lookup"]
    lines += [
        "",
        f"Interface-MTU lookup (rtnetlink, once per target added): "
        f"{lk['seconds_each'] * 1e6:.0f} us each over {lk['lookups']} targets.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="short windows, for a smoke run")
    p.add_argument("--sizes", default="200,1000", help="target counts, comma-separated")
    p.add_argument("--repeat", type=int, default=1, help="rounds over every case, in turn")
    p.add_argument("--out", type=Path, default=OUT_DIR)
    args = p.parse_args(argv)
    reason = require_root()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    warmup, window = (5.0, 10.0) if args.quick else (15.0, 40.0)
    sizes = [int(x) for x in args.sizes.split(",")]
    runs = []
    with Bed() as bed, tempfile.TemporaryDirectory(prefix="pmtb-mtu-bench-") as tmp:
        workdir = Path(tmp)
        dst = bed.add_dst("echo")
        addresses = dst.add_targets(max(sizes))
        lookup = lookup_cost(bed, addresses)
        for _round in range(args.repeat):
            for n in sizes:
                targets = workdir / f"targets-{n}.txt"
                targets.write_text("".join(f"{a}\n" for a in addresses[:n]))
                for interval in CASES.values():
                    runs.append(run_case(bed, workdir, targets, n, interval, warmup, window))
                    print(json.dumps(runs[-1]), file=sys.stderr)
    result = {
        "machine": machine_facts(),
        "warmup_s": warmup,
        "window_s": window,
        "runs": runs,
        "lookup": lookup,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"mtu-bench-{stamp}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    print(markdown(result))
    print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
