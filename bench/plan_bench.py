#!/usr/bin/env python3
"""What one pod or node event costs the mesh plan, from scratch and kept across events.

Discovery used to answer every coalesced change with ``plan(me, peers, zones, mesh)`` over
every peer (``before``); it now keeps a ``mesh.Planner`` and hands it the keys the watch
touched (``after``: ``sync_pods``/``sync_nodes`` with those keys, then ``plan()``, as
``KubernetesDiscovery.recompute`` does). Each event is applied to the stores first, then
only the plan work is timed: not the watch, not the publishing to the prober.

Events, on a cluster of n peer pods, one per node, plus this exporter:

* pod deleted / pod added: a rolling replacement, the pod of a random node deleted, then
  its successor created on the same node with a new name and pod IP;
* readiness: a random pod turns not ready, or ready again;
* pod IP: a random pod's IP changes (same pod);
* node deleted (zones only): a random Node disappears while its pod is still listed; it
  comes back, untimed, before the next one.

Layouts: zones off, 3 zones and 30 zones (a tenth of the nodes without a zone), with the
default ``--mesh.peers 20 --mesh.full-mesh-max 100``. Both paths' plans are compared on
every tenth event. The from-scratch path is timed on fewer events where it is slow (it
stops after ``--before-seconds`` per cell, at 20 events at least); the count is printed.

Usage: ``python -m bench.plan_bench [--quick] [--events N]`` from the repository root (or
``PYTHONPATH=. python bench/plan_bench.py``).
Prints the machine, then a Markdown table of milliseconds per event: median and p99.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

from exporter.config import MeshSettings
from exporter.mesh import Identity, MeshPlan, Planner, plan
from exporter.objects import NodeMeta, Peer

KINDS = ("pod deleted", "pod added", "readiness", "pod IP", "node deleted")
UNDO = {"pod deleted": "pod added", "node deleted": "node back"}


class Cluster:
    """The reflectors' stores of one cluster, and the events applied to them."""

    def __init__(self, n: int, zones: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.zones = zones
        self.serial = 0
        self.gone = NodeMeta("", None, None)  # the Node last deleted
        self.pods: dict[str, Peer] = {}
        self.nodes: dict[str, NodeMeta] = {}
        self.names: list[str] = []
        for i in range(n + 1):
            octets = f"{self.rng.randrange(256)}-{self.rng.randrange(256)}"
            node = f"ip-10-{octets}-{i}.eu-west-1.compute.internal"
            zone = None if i % 10 == 9 or not zones else f"zone-{i % zones}"
            self.nodes[node] = NodeMeta(node, zone, None)
            self.names.append(node)
            if i:
                self._create(node)
        self.me = Identity(self.names[0], "pm-me")
        self.by_node = {p.node: key for key, p in self.pods.items()}

    def _create(self, node: str) -> str:
        self.serial += 1
        s = self.serial
        key = f"monitoring/pm-{s}"
        self.pods[key] = Peer(
            key=key,
            name=f"pm-{s}",
            node=node,
            pod_ips=(f"10.{(s >> 16) & 255}.{(s >> 8) & 255}.{s & 255}",),
            host_ips=(f"172.16.{(s >> 8) & 255}.{s & 255}",),
            phase="Running",
            ready=True,
            terminating=False,
            created="2026-01-01T00:00:00Z",
        )
        return key

    def victim(self) -> str:
        return self.rng.choice(self.names[1:])

    def event(self, kind: str, node: str) -> tuple[set[str], set[str]]:
        """Apply one event; the pod keys and node keys it touched."""
        key = self.by_node.get(node)
        if kind == "pod deleted" and key is not None:
            del self.pods[key], self.by_node[node]
            return {key}, set()
        if kind == "pod added" and key is None:
            key = self.by_node[node] = self._create(node)
            return {key}, set()
        if kind == "readiness" and key is not None:
            self.pods[key] = replace(self.pods[key], ready=not self.pods[key].ready)
            return {key}, set()
        if kind == "pod IP" and key is not None:
            self.serial += 1
            ip = f"10.200.{(self.serial >> 8) & 255}.{self.serial & 255}"
            self.pods[key] = replace(self.pods[key], pod_ips=(ip,))
            return {key}, set()
        if kind == "node deleted":
            meta = self.nodes.pop(node)
            self.gone = meta
            return set(), {node}
        if kind == "node back":
            self.nodes[node] = self.gone
            return set(), {node}
        raise ValueError(kind)


def _stats(times: list[float]) -> str:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered) * 1e3:.3f} / {p99 * 1e3:.3f}"


def _scratch(c: Cluster, mesh: MeshSettings) -> MeshPlan:
    zones = {m.name: m.zone for m in c.nodes.values()} if mesh.zones else None
    return plan(c.me, c.pods.values(), zones, mesh)


def measure(n: int, zones: int, kind: str, events: int, before_seconds: float) -> dict[str, str]:
    mesh = MeshSettings(zones=zones > 0)
    c = Cluster(n, zones, seed=n + zones)
    planner = Planner(c.me, mesh)
    start = time.perf_counter()
    planner.sync_pods(c.pods, None)
    planner.sync_nodes(c.nodes, None)
    planner.plan()
    first = time.perf_counter() - start

    def step(timed: Callable[[set[str], set[str]], MeshPlan], node: str) -> float:
        # A replacement deletes before it adds, and the untimed half of each event goes
        # through the same path, so both paths see the same cluster at every event.
        if kind == "pod added":
            timed(*c.event("pod deleted", node))
        t0 = time.perf_counter()
        timed(*c.event(kind, node))
        took = time.perf_counter() - t0
        if kind in UNDO:
            timed(*c.event(UNDO[kind], node))
        return took

    def incremental(pods: set[str], nodes: set[str]) -> MeshPlan:
        planner.sync_pods(c.pods, pods)
        planner.sync_nodes(c.nodes, nodes)
        return planner.plan()

    after: list[float] = []
    for i in range(events):
        after.append(step(incremental, c.victim()))
        if i % 10 == 0:
            assert planner.plan() == _scratch(c, mesh), "the planner and plan() disagree"

    before: list[float] = []
    spent = 0.0
    while len(before) < events and (spent < before_seconds or len(before) < 20):
        took = step(lambda pods, nodes: _scratch(c, mesh), c.victim())
        before.append(took)
        spent += took
    planner.sync_pods(c.pods, None)
    planner.sync_nodes(c.nodes, None)
    assert planner.plan() == _scratch(c, mesh)
    return {
        "peers": f"{n:,}",
        "zones": str(zones) if zones else "off",
        "event": kind,
        "before ms, median / p99": _stats(before),
        "(events)": str(len(before)),
        "after ms, median / p99": _stats(after),
        "(events) ": str(len(after)),
        "first plan ms": f"{first * 1e3:.1f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 peers, 100 events")
    parser.add_argument("--events", type=int, default=400, help="timed events per cell")
    parser.add_argument(
        "--before-seconds", type=float, default=8.0, help="time budget of the slow path"
    )
    args = parser.parse_args()
    sizes = [1_000] if args.quick else [1_000, 5_000]
    events = 100 if args.quick else args.events
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    print(
        f"nproc {os.cpu_count()}, {cpu}, Python {platform.python_version()}, "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; peers = {MeshSettings().peers}, "
        f"full_mesh_max = {MeshSettings().full_mesh_max}"
    )
    rows = [
        measure(n, zones, kind, events, args.before_seconds)
        for n in sizes
        for zones in (0, 3, 30)
        for kind in KINDS
        if zones or kind != "node deleted"
    ]
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row[column] for column in header) + " |", flush=True)


if __name__ == "__main__":
    main()
