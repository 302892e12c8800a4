#!/usr/bin/env python3
"""What the own-Node watch (--health.unready-when-cordoned) costs a real kube-apiserver.

Each exporter lists and watches one full Node, its own, with
``fieldSelector=metadata.name=<node>``. The bench runs the exporter's own code for it
(``exporter.discovery.ownnode.OwnNode`` over ``KubeApi``, one client and connection each) for
N exporters at once, in one process inside the cluster's network namespace, against the real
cluster of ``tests/support/cluster/cluster.py`` (etcd, kube-apiserver with its watch cache),
with the shipped ServiceAccount and RBAC (``deploy/base``) and a bound token of it.

* ``--nodes`` (1,000) Node objects as a kubelet registers them (``bench.apiserver_bench``'s
  ``node_object``: labels, addresses, capacity, conditions, node info); the
  controller-manager runs without its node-lifecycle controller (no kubelet renews these
  Nodes: it would taint them all mid-measurement);
* for each N of ``--watchers`` (and N=0): N exporters' own-Node watches start at once and
  sync; ``--idle-seconds`` with no change (bookmarks only); then ``--rounds`` heartbeat
  rounds: every Node's status patched once, as a kubelet does every
  ``nodeStatusReportFrequency`` (5 min) when nothing changed (the conditions'
  ``lastHeartbeatTime``), by a pool of admin threads, until every watcher has seen its own
  Node's update.

Measured: events and bytes each watcher read (its watch bodies, de-chunked, as ``KubeApi``
reads them), by type; CPU (utime + stime) of kube-apiserver, etcd and the watchers' process
per round, against the same round with no watcher; the API server's live heap and
goroutines with N watches open. Then scaled to 5,000 nodes in the report.

Usage (root): ``python -m bench.ownnode_bench`` (about 10 minutes);
``--nodes 200 --watchers 50 --idle-seconds 30 --rounds 2`` is a quick run. Results go to
``bench/out/ownnode-bench-<UTC time>.json``; ``--report FILE`` prints the Markdown again.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import contextlib
import datetime as dt
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.apiserver_bench import (
    NAMESPACE,
    OUT_DIR,
    SMP,
    Child,
    Meter,
    Rest,
    apiserver_metrics,
    exporter_identity,
    metrics_level,
    node_name,
    node_object,
    now_rfc3339,
    real_pid,
    restart_controller_manager,
    versions,
    wait_quiet,
)
from bench.common import machine_facts

HEARTBEAT_S = 300  # the kubelet's nodeStatusReportFrequency: a status write per node when idle
SCALE_TO = 5000


# --------------------------------------------------------------------------------------------
# The watchers' process (--child N): N exporters' own-Node watch, their bytes counted


def child_main(args: argparse.Namespace) -> int:
    from bench.counting import LOCK, CountingApi, Counts
    from exporter.config import KubernetesSettings
    from exporter.discovery.kubeapi import load_configuration
    from exporter.discovery.ownnode import OwnNode

    owns: list[tuple[OwnNode, Counts]] = []
    for i in range(args.child):
        k = KubernetesSettings(
            kubeconfig=args.kubeconfig, node_name=node_name(i), namespace=NAMESPACE
        )
        counts = Counts()
        owns.append((OwnNode(k, CountingApi(load_configuration(k), counts)), counts))

    def emit(doc: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()

    def snapshot() -> list[dict[str, Any]]:
        with LOCK:
            return [
                {
                    "bytes": dict(c.bytes),
                    "events": dict(c.events),
                    "requests": dict(o.reflector.stats.requests),
                    "errors": dict(o.reflector.stats.errors),
                    "rv": o.reflector._resource_version,
                    "ready": o.readiness().ready,
                }
                for o, c in owns
            ]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        quit_ev = asyncio.Event()

        def command(line: str) -> None:
            if line.strip() == "stats":
                emit({"stats": snapshot(), "t": time.time()})
            else:
                quit_ev.set()

        def stdin_reader() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(command, line)
            loop.call_soon_threadsafe(command, "")

        threading.Thread(target=stdin_reader, name="stdin", daemon=True).start()
        tasks = [asyncio.create_task(o.run(), name=f"own-{i}") for i, (o, _) in enumerate(owns)]
        emit({"started": len(owns), "t": time.time()})
        for _ in range(12000):  # at most 10 min
            if all(o.reflector.synced.is_set() for o, _ in owns) or quit_ev.is_set():
                break
            await asyncio.sleep(0.05)
        emit({"synced": snapshot(), "t": time.time()})
        await quit_ev.wait()
        emit({"final": snapshot(), "t": time.time()})
        for t in tasks:
            t.cancel()

    asyncio.run(run())
    sys.stdout.flush()
    os._exit(0)  # watch threads are blocked in reads


class OwnChild(Child):
    """bench.apiserver_bench's watchers' process, running this module's child instead."""

    module = "bench.ownnode_bench"


# --------------------------------------------------------------------------------------------
# Heartbeats: what a kubelet writes every 5 minutes per node when nothing changed


def heartbeat_round(rest: Rest, nodes: int, concurrency: int) -> float:
    t = now_rfc3339()
    patch = {
        "status": {
            "conditions": [
                {"type": c, "lastHeartbeatTime": t}
                for c in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")
            ]
        }
    }
    started = time.monotonic()
    with cf.ThreadPoolExecutor(concurrency, thread_name_prefix="heartbeat") as pool:
        for f in [
            pool.submit(
                rest.call,
                "PATCH",
                f"/api/v1/nodes/{node_name(i)}/status?fieldManager=kubelet",
                patch,
                SMP,
            )
            for i in range(nodes)
        ]:
            f.result()
    return time.monotonic() - started


def populate_nodes(rest: Rest, nodes: int, concurrency: int) -> float:
    t = now_rfc3339()
    started = time.monotonic()
    with cf.ThreadPoolExecutor(concurrency, thread_name_prefix="populate") as pool:
        for f in [
            pool.submit(
                rest.call, "POST", "/api/v1/nodes?fieldManager=kubelet", node_object(i, 10, t)
            )
            for i in range(nodes)
        ]:
            f.result()
    return time.monotonic() - started


def _sum(stats: list[dict[str, Any]], table: str, key: str) -> int:
    return sum(int(s[table].get(key, 0)) for s in stats)


def one_run(
    cluster: Any, rest: Rest, meter: Meter, n: int, kubeconfig: Path, args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {"watchers": n}
    child = None
    if n:
        child = OwnChild(cluster.cp.path, n, kubeconfig, cluster.dir / f"ownnode-child-{n}.log")
        meter.add("watchers", child.pid)
    try:
        if child is not None:
            a = meter.snapshot()
            child.read("started", 120)
            synced = child.read("synced", 900)["synced"]
            b = meter.snapshot()
            out["sync"] = {
                "cost": meter.window(a, b),
                "list_bytes": _sum(synced, "bytes", "nodes/list"),
            }
            assert all(s["ready"] for s in synced), "a watcher is not ready"
        time.sleep(args.settle_seconds)
        out["level"] = metrics_level(apiserver_metrics(rest))
        s0 = child.stats() if child else []
        a = meter.snapshot()
        time.sleep(args.idle_seconds)
        b = meter.snapshot()
        s1 = child.stats() if child else []
        out["idle"] = {
            "cost": meter.window(a, b),
            "bookmarks": _sum(s1, "events", "nodes/BOOKMARK")
            - _sum(s0, "events", "nodes/BOOKMARK"),
            "watch_bytes": _sum(s1, "bytes", "nodes/watch") - _sum(s0, "bytes", "nodes/watch"),
            "watch_requests": _sum(s1, "requests", "watch") - _sum(s0, "requests", "watch"),
        }
        rounds = []
        for _ in range(args.rounds):
            s0 = child.stats() if child else []
            a = meter.snapshot()
            took = heartbeat_round(rest, args.nodes, args.concurrency)
            # Until every watcher has its own Node's update (bounded).
            s1 = s0
            for _ in range(300):
                if not child:
                    break
                s1 = child.stats()
                if _sum(s1, "events", "nodes/MODIFIED") - _sum(s0, "events", "nodes/MODIFIED") >= n:
                    break
                time.sleep(0.2)
            b = meter.snapshot()
            rounds.append(
                {
                    "write_s": took,
                    "cost": meter.window(a, b),
                    "modified": _sum(s1, "events", "nodes/MODIFIED")
                    - _sum(s0, "events", "nodes/MODIFIED"),
                    "watch_bytes": _sum(s1, "bytes", "nodes/watch")
                    - _sum(s0, "bytes", "nodes/watch"),
                }
            )
            time.sleep(args.settle_seconds)
        out["rounds"] = rounds
        if child is not None:
            out["errors"] = _sum(child.stats(), "errors", "connection")
    finally:
        if child is not None:
            child.stop()
            meter.remove("watchers")
    return out


# --------------------------------------------------------------------------------------------
# Report


def _cpu(w: dict[str, Any], name: str) -> float:
    return float(w["cpu_s"].get(name, 0.0))


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    runs = {r["watchers"]: r for r in result["runs"]}
    base = runs.get(0)
    lines = [
        f"Measured {m.get('date_utc', '')} on {m.get('cpu_model', '')} ({m.get('nproc', '')} "
        f"cores), commit {m.get('commit', '')}, "
        f"{result['plan']['nodes']} Nodes, kube-apiserver "
        f"{m.get('versions', {}).get('kube-apiserver', '')}:",
        "",
        "| watchers | list bytes each | heartbeat round: events to watchers | bytes each (watch) "
        "| API server CPU per round | over no watcher | watchers' CPU per round "
        "| bookmarks each per min (idle) | API server live heap | goroutines |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, r in sorted(runs.items()):
        rounds = r["rounds"]
        cpu = sum(_cpu(x["cost"], "kube-apiserver") for x in rounds) / len(rounds)
        base_cpu = (
            sum(_cpu(x["cost"], "kube-apiserver") for x in base["rounds"]) / len(base["rounds"])
            if base
            else 0.0
        )
        w_cpu = sum(_cpu(x["cost"], "watchers") for x in rounds) / len(rounds)
        mod = sum(x["modified"] for x in rounds) / len(rounds)
        wb = sum(x["watch_bytes"] for x in rounds) / len(rounds)
        idle = r["idle"]
        per_min = idle["bookmarks"] / n / (idle["cost"]["seconds"] / 60) if n else 0.0
        heap = f"{r['level']['live_heap_mib']:.0f} MiB | {r['level']['goroutines']:.0f}"
        if not n:
            lines.append(f"| 0 | | | | {cpu:.3f} s | | | | {heap} |")
            continue
        cells = [
            f"{r['sync']['list_bytes'] / n:,.0f}",
            f"{mod:.0f}",
            f"{wb / n:,.0f}",
            f"{cpu:.3f} s",
            f"{cpu - base_cpu:+.3f} s",
            f"{w_cpu:.3f} s",
            f"{per_min:.2f}",
        ]
        lines.append(f"| {n} | {' | '.join(cells)} | {heap} |")
    big = max(runs)
    if big and base:
        r = runs[big]
        wb = sum(x["watch_bytes"] for x in r["rounds"]) / len(r["rounds"]) / big
        idle = r["idle"]
        bm_per_h = idle["bookmarks"] / big / idle["cost"]["seconds"] * 3600
        bm_bytes = idle["watch_bytes"] / max(idle["bookmarks"], 1)
        per_h_events = 3600 / HEARTBEAT_S
        # Heap and goroutines per watch: the slope between the two largest runs when there
        # are two (the first watches also warm the server up), else against no watcher.
        sizes = sorted(n for n in runs if n)
        low = runs[sizes[-2]] if len(sizes) > 1 else base
        span = big - low["watchers"]
        heap = (r["level"]["live_heap_mib"] - low["level"]["live_heap_mib"]) / span
        gor = (r["level"]["goroutines"] - low["level"]["goroutines"]) / span

        def round_cpu(run: dict[str, Any]) -> float:
            return sum(_cpu(x["cost"], "kube-apiserver") for x in run["rounds"]) / len(
                run["rounds"]
            )

        extra = round_cpu(r) - round_cpu(base)
        per_event_ms = max(extra, 0.0) / big * 1000  # every watcher got one event a round
        per_h = per_h_events * wb + bm_per_h * bm_bytes
        lines += [
            "",
            f"Per exporter and hour of ordinary heartbeats (one status write per node every "
            f"{HEARTBEAT_S // 60} min): {per_h_events:.0f} MODIFIED events of {wb:,.0f} bytes "
            f"and {bm_per_h:.0f} bookmarks of {bm_bytes:,.0f} bytes, {per_h / 1024:,.0f} KiB. "
            f"At {SCALE_TO:,} nodes ({SCALE_TO:,} exporters): "
            f"{SCALE_TO * per_h_events:,.0f} events an hour to all of them "
            f"({SCALE_TO * per_h_events / 3600:.1f}/s), {SCALE_TO * per_h / 2**20:,.0f} MiB an "
            f"hour; API server CPU for them at most {per_event_ms:.2f} ms an event "
            f"({extra:+.3f} s a round with {big} watchers over none), "
            f"{per_event_ms * SCALE_TO * per_h_events / 3600 / 1000:.4f} CPU s/s; the watches "
            f"hold {heap * 1024:,.1f} KiB of heap and {gor:.1f} goroutines each (slope "
            f"{low['watchers']} to {big}): {heap * SCALE_TO:,.0f} MiB and "
            f"{gor * SCALE_TO:,.0f} goroutines at {SCALE_TO:,}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else "")
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument(
        "--watchers",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[250, 1000],
        help="exporter counts, comma-separated (each at most --nodes)",
    )
    ap.add_argument("--idle-seconds", type=float, default=120.0)
    ap.add_argument("--settle-seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--report", type=Path, default=None)
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--kubeconfig", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args)
    if args.report:
        print(markdown(json.loads(args.report.read_text())), end="")
        return 0
    if any(n > args.nodes for n in args.watchers):
        ap.error("--watchers: each at most --nodes (one exporter per node)")

    from tests.support.cluster.cluster import Cluster

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = OUT_DIR / f"ownnode-bench-{stamp}.json"
    result: dict[str, Any] = {
        "plan": {
            "nodes": args.nodes,
            "watchers": [0, *args.watchers],
            "idle_s": args.idle_seconds,
            "rounds": args.rounds,
        },
        "machine": machine_facts(versions=versions()),
        "runs": [],
    }
    with Cluster(dual_stack=False) as cluster:
        restart_controller_manager(cluster)
        kubeconfig = exporter_identity(cluster, cluster.dir / "kubeconfig-bench-sa")
        rest = Rest(cluster.cp, cluster.server, cluster.pki.ca, cluster.pki.tokens["admin"])
        pids = {}
        for name in ("kube-apiserver", "etcd"):
            popen = cluster.processes[name].proc
            assert popen is not None
            pids[name] = real_pid(popen.pid, name)
        meter = Meter(pids)
        try:
            result["populate_s"] = populate_nodes(rest, args.nodes, args.concurrency)
            result["quiet"] = wait_quiet(rest)
            for n in [0, *args.watchers]:
                print(f"{n} watchers ...", flush=True)
                result["runs"].append(one_run(cluster, rest, meter, n, kubeconfig, args))
                path.write_text(json.dumps(result, indent=1) + "\n")
        finally:
            meter.close()
            with contextlib.suppress(Exception):
                path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    print(markdown(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
