#!/usr/bin/env python3
"""What Kubernetes discovery costs the API server and the exporter, with thousands of peers.

There is no cluster: ``tests/support/kubefake.py`` is the API server (it speaks the real list/watch
protocol, pages lists, sends bookmarks, answers 410 after a compaction) and runs inside the
``src`` namespace of a ``tests/support/netbed.py`` test bed, where one exporter process
(``python -m exporter``) discovers its peers through it. Every peer pod IP and host IP is a
routed /32 on the loopback of a dst namespace of the bed (198.18.0.0/15), so the probes the
exporter sends never leave the machine.

The fake holds ``--peers`` (5,000) exporter pods, one per node, in one namespace, with the
exporter's label selector. While the exporter runs:

* churn: a rolling pod replacement, ``--churn-rate`` (2) per second: delete a pod, create its
  successor on the same node with a new name and a new pod IP (freed pod IPs are reused
  first-in first-out, as an IPAM would);
* every ``--compact-every`` (3 minutes): the fake drops every open watch, takes one more churn
  step and compacts its history, so the exporter's resume gets 410 Gone and must list again
  (dropping first makes the 410 certain: the exporter cannot have seen the newest version);
* the exporter runs with ``--kubernetes.watch-timeout 1m`` (each watch 1 to 2 minutes), so
  ordinary watch ends also fall inside the window; the fake sends a bookmark every
  ``--bookmark-interval`` (60 s, about what a real API server does);
* ``/metrics`` is scraped with gzip every 15 s, as Prometheus would.

Each phase starts the exporter, waits until it probes every target, lets it run 30 s without
churn (its cost at rest), then starts the churn. Requests and bytes are counted from the
exporter's launch, so its first LIST counts.

Phase 1, sampled mode (the default flags: ``--mesh.full-mesh-max 100 --mesh.peers 20``, probe
interval 1 s, Service checks on) for ``--churn-minutes`` (10): LIST and WATCH requests per
resource, bytes the fake sent (total and per minute), LISTs not explained by a 410, the
exporter's CPU and memory, the series it exposes. Latency here: delete the pod of a peer this
exporter probes (``pingmesh_peer_ready`` names them), wait until its series are gone, create
its successor with a new IP, and poll /metrics every 50 ms until its series are back.

Phase 2, full mesh (``--mesh.full-mesh-max 10000 --probe.interval 10s``: every peer, pod and
node target, 2 per peer) for ``--full-mesh-seconds`` (120) with the same churn: first a window
without anything else (CPU, memory, scrapes), then latency trials: create a pod on a brand-new
node and poll /metrics (uncompressed) every 50 ms until a ``pingmesh_probe_sent_total`` series
with that ``target_node`` appears.

Latency is from just before the change reaches the fake to the end of the first /metrics
response that shows it; the start of that request is recorded too (the change became visible
between the start of the previous poll and the end of this one). The exporter's log line
"target set changed", written as the prober's table (which /metrics renders) takes a change,
gives the same latency without the polling's resolution; in full mesh it also times every
churn replacement.

Usage: ``python -m bench.discovery_bench [--quick]`` as root. ``--quick`` is a one-minute
smoke run with 1,000 peers; ``--phases sampled|full-mesh`` runs one phase; ``--report
FILE.json ...`` prints the Markdown of earlier results. Results go to
``bench/out/discovery-bench-<UTC time>.json`` (written after each phase), the exporter's log
of each phase next to it; a Markdown summary is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from bench.common import (
    ROOT,
    Samples,
    cpu_seconds,
    fetch,
    machine_facts,
    parse,
    status_kib,
    value,
)
from tests.support.exporter_proc import http_get, in_namespace
from tests.support.kubefake import KubeFake, RequestRecord
from tests.support.kubeobjects import make_pod
from tests.support.netbed import Bed, Namespace, require_root

OUT_DIR = ROOT / "bench" / "out"
PORT = 9871
NAMESPACE = "pingmesh"
LABELS = {"app.kubernetes.io/name": "pingmesh-exporter"}
SELF_NODE = "node-0"
SELF_POD = f"pm-{SELF_NODE}"
SAMPLE_EVERY_S = 5.0
SCRAPE_EVERY_S = 15.0
POLL_EVERY_S = 0.05
FIRST_PER_TARGET = "# HELP pingmesh_probe_rtt_seconds"
SENT_LINE = b"pingmesh_probe_sent_total{"
RESOURCES = ("pods", "services", "endpointslices", "nodes")
CHANGE_RE = re.compile(
    r'^ts=(\S+) .*msg="target set changed: (\d+) added, (\d+) removed, '
    r"(\d+) moved"
)


@dataclass(frozen=True)
class Plan:
    peers: int
    churn_s: float
    churn_rate: float
    compact_every_s: float
    full_mesh_s: float
    idle_s: float
    sampled_trials: int
    full_mesh_trials: int
    bookmark_interval_s: float
    watch_timeout: str
    spare_pod_ips: int
    quick: bool


# --------------------------------------------------------------------------------------------
# The exporter process


class Exporter:
    """``python -m exporter`` in the bed's src namespace, its output straight to a file (a
    pipe nobody reads would fill up and stall it over a ten-minute run)."""

    def __init__(
        self, ns: Namespace, args: Sequence[str], log_path: Path, port: int = PORT
    ) -> None:
        self.ns = ns
        self.port = port
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        argv = [
            sys.executable,
            "-m",
            "exporter",
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--log.level",
            "info",
            *args,
        ]
        self.argv = argv
        self.started = time.monotonic()
        # ``ip netns exec`` execs the command: the pid is the exporter's own.
        self.proc: subprocess.Popen[bytes] = ns.popen(
            argv, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float) -> float:
        """Seconds from start until /readyz answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"exporter exited with {self.proc.returncode}, see {self.log_path}"
                )
            with contextlib.suppress(OSError):
                if http_get(self.ns, self.port, "/readyz", timeout=5)[0] == 200:
                    return time.monotonic() - self.started
            time.sleep(0.1)
        raise RuntimeError(f"exporter not ready after {timeout:.0f}s, see {self.log_path}")

    def fetch(self, compressed: bool, timeout: float = 60.0) -> Scrape:
        got = fetch(self.ns, self.port, compressed=compressed, timeout=timeout)
        return Scrape(got.started, got.ended, got.wire_bytes, got.body())

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def memory(self) -> dict[str, float]:
        return {
            "rss_mib": status_kib(self.pid, "VmRSS") / 1024,
            "hwm_mib": status_kib(self.pid, "VmHWM") / 1024,
        }

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def log_summary(self) -> dict[str, Any]:
        levels: Counter[str] = Counter()
        notable: list[str] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            m = re.search(r"\blevel=(\w+)", line)
            level = m.group(1) if m else "other"
            levels[level] += 1
            if level in ("warn", "error", "other") and len(notable) < 40:
                notable.append(line[:400])
        return {
            "lines_by_level": dict(levels),
            "warn_error_lines": notable,
            "path": str(self.log_path.relative_to(ROOT)),
        }


@dataclass
class Scrape:
    started: float
    ended: float
    wire_bytes: int
    body: bytes

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def own_metrics(self) -> Samples:
        """The exporter's own families (everything before the per-target ones), parsed."""
        text = self.body.decode()
        cut = text.find(FIRST_PER_TARGET)
        return parse(text if cut < 0 else text[:cut])

    def shows_target(self, node: str) -> bool:
        """A ``pingmesh_probe_sent_total`` series with ``target_node="<node>"``.

        A byte search, not a parse: it runs on every 50 ms poll of a document of up to 10,000
        targets, where parsing would take longer than the poll interval."""
        needle = f'target_node="{node}"'.encode()
        start = 0
        while (i := self.body.find(needle, start)) >= 0:
            line_start = self.body.rfind(b"\n", 0, i) + 1
            if self.body.startswith(SENT_LINE, line_start):
                return True
            start = i + len(needle)
        return False

    def selected_nodes(self) -> list[str]:
        return [
            lb["target_node"]
            for _n, lb, _v in parse(self.body.decode(), ("pingmesh_peer_ready",))
            if "target_node" in lb
        ]

    def series(self) -> dict[str, Any]:
        """Samples (lines that are not comments) in total and per metric family, as the
        document's ``# TYPE`` lines name the families: a count of lines, no values."""
        per_family: Counter[str] = Counter()
        family = ""
        for line in self.body.decode().splitlines():
            if not line:
                continue
            if line.startswith("# TYPE "):
                family = line.split()[2]
                per_family[family] += 0
            elif not line.startswith("#"):
                per_family[family] += 1
        return {
            "total": sum(per_family.values()),
            "families": len(per_family),
            "per_family": dict(per_family.most_common()),
            "bytes": len(self.body),
        }


def by_label(samples: Samples, name: str, *keys: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for n, lb, v in samples:
        if n == name:
            k = "/".join(lb.get(key, "") for key in keys)
            out[k] = out.get(k, 0.0) + v
    return out


# --------------------------------------------------------------------------------------------
# The simulated cluster


@dataclass
class PeerPod:
    node: str
    name: str
    generation: int
    pod_ip: str
    host_ip: str


class Cluster:
    """The DaemonSet's pods in the fake, and the address pools they draw from."""

    def __init__(self, fake: KubeFake, pod_ips: list[str], host_ips: list[str], peers: int) -> None:
        self.fake = fake
        self.lock = threading.Lock()
        self.pods: dict[str, PeerPod] = {}
        self.free_pod_ips: deque[str] = deque(pod_ips)
        self.free_host_ips: deque[str] = deque(host_ips)
        self.order: deque[str] = deque()
        self.busy: set[str] = set()
        self.replacements = 0
        self.added_nodes = 0
        nodes = [SELF_NODE, *(f"node-{i:05d}" for i in range(1, peers + 1))]
        objs = []
        for node in nodes:
            name = SELF_POD if node == SELF_NODE else f"pm-{node}-0"
            pod = PeerPod(node, name, 0, self.free_pod_ips.popleft(), self.free_host_ips.popleft())
            self.pods[node] = pod
            objs.append(self._obj(pod))
            if node != SELF_NODE:
                self.order.append(node)
        fake.upsert_many("pods", objs)

    @staticmethod
    def _obj(pod: PeerPod) -> dict[str, Any]:
        return make_pod(
            pod.name,
            NAMESPACE,
            pod.node,
            [pod.pod_ip],
            [pod.host_ip],
            LABELS,
            owner_daemonset="pingmesh-exporter",
        )

    def replace_next(self) -> str:
        """One step of the rolling replacement: the next node not in a latency trial."""
        with self.lock:
            for _ in range(len(self.order)):
                node = self.order[0]
                self.order.rotate(-1)
                if node not in self.busy:
                    break
            else:
                return ""
            self._delete(node)
            self._create(node)
            self.replacements += 1
            return node

    def _delete(self, node: str) -> None:
        old = self.pods[node]
        self.fake.delete("pods", NAMESPACE, old.name)
        self.free_pod_ips.append(old.pod_ip)

    def _create(self, node: str) -> None:
        old = self.pods[node]
        gen = old.generation + 1
        new = PeerPod(node, f"pm-{node}-{gen}", gen, self.free_pod_ips.popleft(), old.host_ip)
        self.pods[node] = new
        self.fake.upsert("pods", self._obj(new))

    def reserve(self, node: str) -> None:
        with self.lock:
            self.busy.add(node)

    def release(self, node: str) -> None:
        with self.lock:
            self.busy.discard(node)

    def delete(self, node: str) -> None:
        with self.lock:
            self._delete(node)

    def recreate(self, node: str) -> None:
        with self.lock:
            self._create(node)

    def add_node(self) -> str:
        with self.lock:
            self.added_nodes += 1
            node = f"node-new-{self.added_nodes:03d}"
            pod = PeerPod(
                node, f"pm-{node}-0", 0, self.free_pod_ips.popleft(), self.free_host_ips.popleft()
            )
            self.pods[node] = pod
            self.order.append(node)
            self.fake.upsert("pods", self._obj(pod))
            return node


class Churn(threading.Thread):
    """Rolling replacement at a fixed rate; compactions on a fixed schedule."""

    def __init__(
        self, cluster: Cluster, rate: float, compact_every_s: float, start: float, end: float
    ) -> None:
        super().__init__(name="churn", daemon=True)
        self.cluster = cluster
        self.rate = rate
        self.compact_every_s = compact_every_s
        self.start_at = start
        self.end_at = end
        self.stop_event = threading.Event()
        self.compactions: list[dict[str, float]] = []
        self.steps = 0
        self.late_steps = 0
        self.step_walls: list[float] = []  # time.time() just before each replacement

    def run(self) -> None:
        fake = self.cluster.fake
        next_compact = (
            self.start_at + self.compact_every_s if self.compact_every_s > 0 else float("inf")
        )
        k = 0
        while True:
            due = self.start_at + k / self.rate
            if due >= self.end_at or self.stop_event.wait(max(0.0, due - time.monotonic())):
                return
            if time.monotonic() - due > 1.0:
                self.late_steps += 1
            if time.monotonic() >= next_compact:
                dropped = fake.drop_watches()
                self.step_walls.append(time.time())
                self.cluster.replace_next()
                fake.compact()
                self.compactions.append(
                    {
                        "t": time.monotonic() - self.start_at,
                        "dropped_watches": dropped,
                        "compacted_rv": float(fake.resource_version),
                    }
                )
                next_compact += self.compact_every_s
            else:
                self.step_walls.append(time.time())
                self.cluster.replace_next()
            self.steps += 1
            k += 1


# --------------------------------------------------------------------------------------------
# Sampling while a phase runs


def logical_lists(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    """First pages only: a LIST of 5,000 pods is 10 requests of 500 (``limit``/``continue``)."""
    return [r for r in records if r.verb == "list" and not r.query.get("continue")]


def fake_totals(fake: KubeFake) -> dict[str, Any]:
    records = fake.requests
    out: dict[str, Any] = {}
    for res in RESOURCES:
        mine = [r for r in records if r.resource == res]
        out[res] = {
            "lists": len(logical_lists(mine)),
            "list_pages": sum(1 for r in mine if r.verb == "list"),
            "watches": sum(1 for r in mine if r.verb == "watch"),
            "bytes": sum(r.bytes_sent for r in mine),
            "list_bytes": sum(r.bytes_sent for r in mine if r.verb == "list"),
            "watch_bytes": sum(r.bytes_sent for r in mine if r.verb == "watch"),
        }
    out["other_requests"] = sum(1 for r in records if r.resource is None)
    out["bytes"] = sum(r.bytes_sent for r in records)
    return out


class Sampler(threading.Thread):
    """Every 5 s: the exporter's CPU and memory, the fake's request log totals."""

    def __init__(self, exporter: Exporter, fake: KubeFake, start: float) -> None:
        super().__init__(name="sampler", daemon=True)
        self.exporter = exporter
        self.fake = fake
        self.start_at = start
        self.stop_event = threading.Event()
        self.samples: list[dict[str, Any]] = []

    def take(self) -> None:
        if not self.exporter.alive():
            return
        self.samples.append(
            {
                "t": time.monotonic() - self.start_at,
                "wall": time.time(),
                "cpu_s": self.exporter.cpu(),
                **self.exporter.memory(),
                "loadavg_1m": os.getloadavg()[0],
                "fake": fake_totals(self.fake),
            }
        )

    def run(self) -> None:
        k = 0
        while True:
            self.take()
            k += 1
            due = self.start_at + k * SAMPLE_EVERY_S
            if self.stop_event.wait(max(0.0, due - time.monotonic())):
                self.take()
                return


class Scraper(threading.Thread):
    """Prometheus: /metrics with gzip every 15 s."""

    def __init__(self, exporter: Exporter, start: float) -> None:
        super().__init__(name="scraper", daemon=True)
        self.exporter = exporter
        self.start_at = start
        self.stop_event = threading.Event()
        self.scrapes: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def run(self) -> None:
        k = 0
        while not self.stop_event.wait(
            max(0.0, self.start_at + k * SCRAPE_EVERY_S - time.monotonic())
        ):
            k += 1
            try:
                s = self.exporter.fetch(compressed=True)
            except (OSError, RuntimeError) as exc:
                self.errors.append(f"{time.monotonic() - self.start_at:.1f}s: {exc}")
                continue
            own = s.own_metrics()
            self.scrapes.append(
                {
                    "t": s.started - self.start_at,
                    "seconds": s.seconds,
                    "wire_bytes": s.wire_bytes,
                    "bytes": len(s.body),
                    "render_s": value(own, "pingmesh_metrics_render_seconds", default=0.0),
                    "discovery_up": value(own, "pingmesh_discovery_up", default=0.0),
                    "targets": value(own, "pingmesh_targets", default=0.0),
                    "mesh_peers": value(own, "pingmesh_mesh_peers", default=0.0),
                    "selected_peers": value(own, "pingmesh_mesh_selected_peers", default=0.0),
                }
            )


def cpu_rates(samples: Sequence[dict[str, Any]]) -> list[float]:
    return [
        (b["cpu_s"] - a["cpu_s"]) / (b["t"] - a["t"])
        for a, b in itertools.pairwise(samples)
        if b["t"] > a["t"]
    ]


def window_cost(samples: Sequence[dict[str, Any]], t0: float, t1: float) -> dict[str, Any]:
    inside = [s for s in samples if t0 - 0.5 <= s["t"] <= t1 + 0.5]
    if len(inside) < 2:
        return {}
    first, last = inside[0], inside[-1]
    rates = cpu_rates(inside)
    return {
        "from_s": first["t"],
        "to_s": last["t"],
        "cpu_per_s": (last["cpu_s"] - first["cpu_s"]) / (last["t"] - first["t"]),
        "cpu_per_s_max_5s": max(rates) if rates else 0.0,
        "machine_loadavg_1m_mean": statistics.fmean(s["loadavg_1m"] for s in inside),
        "rss_mib_end": last["rss_mib"],
        "hwm_mib": last["hwm_mib"],
    }


def per_minute(
    samples: Sequence[dict[str, Any]],
    records: Sequence[RequestRecord],
    start_wall: float,
    minutes: int,
) -> list[dict[str, Any]]:
    """Bytes the fake sent per minute (from the cumulative samples) and requests started."""
    zero: dict[str, Any] = {"fake": {"bytes": 0, **{res: {"bytes": 0} for res in RESOURCES}}}

    def at(t: float) -> dict[str, Any]:
        # The log was cleared right before the exporter started: nothing was sent at 0 s
        # (the first sample is only taken once it probes every target).
        return zero if t <= 0 else min(samples, key=lambda s: abs(s["t"] - t))

    rows = []
    for m in range(minutes):
        a, b = at(60.0 * m), at(60.0 * (m + 1))
        lo, hi = start_wall + 60.0 * m, start_wall + 60.0 * (m + 1)
        inside = [r for r in records if lo <= r.time < hi]
        row: dict[str, Any] = {"minute": m + 1, "bytes": b["fake"]["bytes"] - a["fake"]["bytes"]}
        for res in ("pods", "services", "endpointslices"):
            row[f"{res}_bytes"] = b["fake"][res]["bytes"] - a["fake"][res]["bytes"]
        row["lists"] = len(logical_lists(inside))
        row["list_pages"] = sum(1 for r in inside if r.verb == "list")
        row["watches"] = sum(1 for r in inside if r.verb == "watch")
        rows.append(row)
    return rows


def summary(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "min": ordered[0],
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "max": ordered[-1],
    }


# Latency trials


def poll_until(
    exporter: Exporter,
    cond: Callable[[Scrape], bool],
    since: float,
    timeout: float,
    compressed: bool,
) -> dict[str, Any]:
    """Poll /metrics every 50 ms (start to start) until cond holds."""
    polls = 0
    prev_start = since
    while True:
        s = exporter.fetch(compressed=compressed)
        polls += 1
        if cond(s):
            return {
                "seconds": s.ended - since,
                "seen_request_started_s": s.started - since,
                "previous_request_started_s": prev_start - since,
                "polls": polls,
                "poll_seconds": s.seconds,
            }
        if s.ended - since > timeout:
            return {"seconds": None, "polls": polls, "timed_out": True}
        prev_start = s.started
        time.sleep(max(0.0, s.started + POLL_EVERY_S - time.monotonic()))


def sampled_trial(exporter: Exporter, cluster: Cluster, used: set[str]) -> dict[str, Any]:
    """Delete a probed peer's pod, wait for its series to go, create the successor with a new
    pod IP, time until the series are back."""
    selected = exporter.fetch(compressed=True).selected_nodes()
    candidates = [n for n in selected if n not in used and n in cluster.pods] or [
        n for n in selected if n in cluster.pods
    ]
    if not candidates:
        return {"error": f"no selected peer to replace (selected: {selected})"}
    node = candidates[0]
    used.add(node)
    cluster.reserve(node)
    try:
        t0, w0 = time.monotonic(), time.time()
        cluster.delete(node)
        gone = poll_until(exporter, lambda s: not s.shows_target(node), t0, 30.0, True)
        gone["wall"] = w0
        t1, w1 = time.monotonic(), time.time()
        cluster.recreate(node)
        back = poll_until(exporter, lambda s: s.shows_target(node), t1, 30.0, True)
        back["wall"] = w1
        return {"node": node, "removed": gone, "appeared": back}
    finally:
        cluster.release(node)


def full_mesh_trial(exporter: Exporter, cluster: Cluster) -> dict[str, Any]:
    t0, w0 = time.monotonic(), time.time()
    node = cluster.add_node()
    got = poll_until(exporter, lambda s: s.shows_target(node), t0, 60.0, False)
    got["wall"] = w0
    return {"node": node, "appeared": got}


def target_changes(log_path: Path) -> list[tuple[float, int, int, int]]:
    """(unix time, added, removed, moved) of every "target set changed" line: the moment the
    prober's table, which /metrics renders, took the change."""
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        m = CHANGE_RE.match(line)
        if m:
            when = dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ")
            out.append(
                (
                    when.replace(tzinfo=dt.UTC).timestamp(),
                    int(m.group(2)),
                    int(m.group(3)),
                    int(m.group(4)),
                )
            )
    return out


def first_change(
    changes: Sequence[tuple[float, int, int, int]],
    since: float,
    pick: Callable[[tuple[float, int, int, int]], bool],
) -> float | None:
    """Seconds from since to the first matching change (log times are in whole ms)."""
    for c in changes:
        if c[0] >= since - 0.001 and pick(c):
            return max(0.0, c[0] - since)
    return None


def add_log_latency(
    trials: list[dict[str, Any]], changes: Sequence[tuple[float, int, int, int]]
) -> None:
    for t in trials:
        if "removed" in t:
            t["removed"]["table_s"] = first_change(
                changes, t["removed"]["wall"], lambda c: c[2] > 0
            )
        if "appeared" in t:
            t["appeared"]["table_s"] = first_change(
                changes, t["appeared"]["wall"], lambda c: c[1] > 0
            )


# --------------------------------------------------------------------------------------------
# Phases


def exporter_args(kubeconfig: Path, plan: Plan, *extra: str) -> list[str]:
    return [
        "--discovery",
        "kubernetes",
        "--kubeconfig",
        str(kubeconfig),
        "--kubernetes.namespace",
        NAMESPACE,
        "--kubernetes.node-name",
        SELF_NODE,
        "--kubernetes.pod-name",
        SELF_POD,
        "--kubernetes.watch-timeout",
        plan.watch_timeout,
        *extra,
    ]


def trial_summary(trials: Sequence[dict[str, Any]], what: str, key: str) -> dict[str, Any]:
    return summary([t[what][key] for t in trials if t.get(what, {}).get(key) is not None])


def run_phase(
    name: str,
    bed: Bed,
    fake: KubeFake,
    cluster: Cluster,
    plan: Plan,
    kubeconfig: Path,
    extra: Sequence[str],
    log_path: Path,
    window_s: float,
    compact_every_s: float,
    expect_targets: int,
    trials: Callable[[Exporter, float], list[dict[str, Any]]],
    quiet_s: float,
    full_mesh: bool,
) -> dict[str, Any]:
    """Start the exporter; once it probes every target: plan.idle_s without churn, then
    window_s of churn (quiet_s of it without latency trials, then the trials)."""
    fake.clear_log()
    args = exporter_args(kubeconfig, plan, *extra)
    print(f"[{name}] starting the exporter: {' '.join(args)}", flush=True)
    exporter = Exporter(bed.src, args, log_path)
    result: dict[str, Any] = {"args": args}
    try:
        result["ready_s"] = exporter.wait_ready(timeout=180)
        result["cpu_s_to_ready"] = exporter.cpu()
        # The first complete sync is done; wait until the prober has every target.
        deadline = time.monotonic() + 120
        while True:
            own = exporter.fetch(compressed=True).own_metrics()
            targets = value(own, "pingmesh_targets", default=0.0)
            if targets >= expect_targets:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"[{name}] targets stuck at {targets} < {expect_targets}")
            time.sleep(0.2)
        result["all_targets_s"] = time.monotonic() - exporter.started
        result["cpu_s_to_all_targets"] = exporter.cpu()
        result["memory_at_start"] = exporter.memory()
        # Requests are counted from the exporter's launch: its first LIST counts.
        start = exporter.started
        start_wall = time.time() - (time.monotonic() - start)
        t_idle0 = time.monotonic()
        t_win0 = t_idle0 + plan.idle_s
        end = t_win0 + window_s
        sampler = Sampler(exporter, fake, start)
        scraper = Scraper(exporter, t_idle0)
        churn = Churn(cluster, plan.churn_rate, compact_every_s, t_win0, end)
        for t in (sampler, scraper, churn):
            t.start()
        print(
            f"[{name}] {plan.idle_s:.0f}s without churn, then {window_s:.0f}s of churn "
            f"({plan.churn_rate}/s"
            + (f", compaction every {compact_every_s:.0f}s)" if compact_every_s else ")"),
            flush=True,
        )
        time.sleep(max(0.0, min(end, t_win0 + quiet_s) - time.monotonic()))
        trial_results = trials(exporter, end)
        time.sleep(max(0.0, end - time.monotonic()))
        churn.stop_event.set()
        churn.join(10)
        scraper.stop_event.set()
        scraper.join(60)
        # Let the exporter settle, then read its own view and the series.
        time.sleep(2)
        sampler.stop_event.set()
        sampler.join(30)
        final = exporter.fetch(compressed=False)
        own = final.own_metrics()
        t_end = time.monotonic()
        if not exporter.alive():
            raise RuntimeError(f"[{name}] the exporter died, see {log_path}")
        records = fake.requests
        totals = fake_totals(fake)
        restarts = by_label(own, "pingmesh_discovery_watch_restarts_total", "resource", "reason")
        gone = {res: restarts.get(f"{res}/gone", 0.0) for res in RESOURCES}

        def rel(t: float) -> float:
            return t - start

        result.update(
            {
                "start_wall": start_wall,
                "window_s": t_end - start,
                "idle_from_s": rel(t_idle0),
                "churn_from_s": rel(t_win0),
                "churn_to_s": rel(end),
                "churn": {
                    "replacements": churn.steps,
                    "late_steps": churn.late_steps,
                    "compactions": churn.compactions,
                },
                "fake": totals,
                "expected_lists": {
                    res: 1 + int(gone[res])
                    for res in RESOURCES
                    if totals[res]["lists"] or gone[res]
                },
                "unexplained_lists": {
                    res: totals[res]["lists"] - 1 - int(gone[res])
                    for res in RESOURCES
                    if totals[res]["lists"]
                },
                "list_times_s": {
                    res: [
                        round(r.time - start_wall, 1)
                        for r in logical_lists(records)
                        if r.resource == res
                    ]
                    for res in RESOURCES
                },
                "list_status": dict(Counter(str(r.status) for r in records if r.verb == "list")),
                "watch_status": dict(Counter(str(r.status) for r in records if r.verb == "watch")),
                "exporter_view": {
                    "requests": by_label(
                        own, "pingmesh_discovery_requests_total", "resource", "verb"
                    ),
                    "watch_restarts": restarts,
                    "api_errors": by_label(
                        own, "pingmesh_discovery_api_errors_total", "resource", "code"
                    ),
                    "objects_skipped": by_label(
                        own, "pingmesh_discovery_objects_skipped_total", "resource", "reason"
                    ),
                    "discovery_up": value(own, "pingmesh_discovery_up", default=0.0),
                    "mesh_peers": value(own, "pingmesh_mesh_peers", default=0.0),
                    "selected_peers": value(own, "pingmesh_mesh_selected_peers", default=0.0),
                    "targets": by_label(own, "pingmesh_targets", "kind", "ip_family"),
                    "rounds_skipped": value(
                        own, "pingmesh_probe_rounds_skipped_total", default=0.0
                    ),
                    "socket_drops": value(own, "pingmesh_socket_receive_drops_total", default=0.0),
                    "sent": value(own, "pingmesh_packets_sent_total", default=0.0),
                },
                "per_minute": per_minute(
                    sampler.samples, records, start_wall, int((t_end - start) // 60)
                ),
                "cost_idle": window_cost(sampler.samples, rel(t_idle0), rel(t_win0)),
                "cost_churn": window_cost(
                    sampler.samples, rel(t_win0), rel(min(end, t_win0 + quiet_s))
                ),
                "cost_window": window_cost(sampler.samples, rel(t_win0), rel(end)),
                "memory_end": exporter.memory(),
                "scrapes": scraper.scrapes,
                "scrape_errors": scraper.errors,
                "scrape_summary": {
                    "seconds": summary([s["seconds"] for s in scraper.scrapes]),
                    "render_s": summary([s["render_s"] for s in scraper.scrapes]),
                    "wire_bytes": summary([s["wire_bytes"] for s in scraper.scrapes]),
                    "bytes": summary([s["bytes"] for s in scraper.scrapes]),
                    "discovery_up_min": min(
                        (s["discovery_up"] for s in scraper.scrapes), default=None
                    ),
                    "discovery_down_scrapes": sum(
                        1 for s in scraper.scrapes if s["discovery_up"] != 1
                    ),
                },
                "series": final.series(),
                "samples": sampler.samples,
            }
        )
    finally:
        exporter.stop()
        result["log"] = exporter.log_summary()
    changes = target_changes(log_path)
    add_log_latency(trial_results, changes)
    result["trials"] = trial_results
    result["latency_s"] = trial_summary(trial_results, "appeared", "seconds")
    result["latency_table_s"] = trial_summary(trial_results, "appeared", "table_s")
    result["removal_latency_s"] = trial_summary(trial_results, "removed", "seconds")
    result["removal_latency_table_s"] = trial_summary(trial_results, "removed", "table_s")
    result["target_set_changes"] = len(changes)
    if full_mesh:
        # Every replacement moves a target: time to the prober's table for each, while
        # nothing polls /metrics and during the latency trials (which poll it every 50 ms).
        quiet_end = start_wall + rel(t_win0) + quiet_s
        picks: tuple[tuple[str, Callable[[float], bool]], ...] = (
            ("quiet", lambda w: w < quiet_end),
            ("trials", lambda w: w >= quiet_end),
        )
        for label, pick in picks:
            steps = [
                first_change(changes, w, lambda c: c[3] > 0) for w in churn.step_walls if pick(w)
            ]
            result[f"replacement_to_table_s_{label}"] = summary([x for x in steps if x is not None])
    return result


def spread_trials(
    n: int, fn: Callable[[Exporter], dict[str, Any]], name: str
) -> Callable[[Exporter, float], list[dict[str, Any]]]:
    """n trials evenly over what is left of the window (the last slot ends a little early)."""

    def run(exporter: Exporter, end: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        first = time.monotonic()
        step = max(0.5, (end - first - 2.0) / max(1, n))
        for k in range(n):
            time.sleep(max(0.0, first + k * step - time.monotonic()))
            if time.monotonic() > end - 1.0:
                break
            try:
                got = fn(exporter)
            except (OSError, RuntimeError) as exc:
                got = {"error": f"{type(exc).__name__}: {exc}"}
            got["t_in_window"] = time.monotonic() - first
            out.append(got)
            lat = got.get("appeared", {}).get("seconds")
            print(
                f"[{name}] trial {k + 1}/{n}: {got.get('node', got.get('error'))} "
                f"{'-' if lat is None else f'{lat * 1000:.0f} ms'}",
                flush=True,
            )
        return out

    return run


# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# Report


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f} ms"


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def markdown(result: dict[str, Any]) -> str:
    p = result["plan"]
    out: list[str] = []
    for key, title in (("sampled", "sampled mode (default flags)"), ("full_mesh", "full mesh")):
        ph = result.get(key)
        if not ph or "fake" not in ph:
            continue
        out.append(
            f"**API requests, {title}**: {ph['window_s']:.0f} s from the exporter's "
            f"start ({ph['churn_to_s'] - ph['churn_from_s']:.0f} s of churn), "
            f"{ph['churn']['replacements']} pod replacements, "
            f"{len(ph['churn']['compactions'])} compactions\n"
        )
        out.append(
            "| resource | LISTs | expected (1 + 410s) | list pages | WATCHes | "
            "watch ends (timeout) | 410 Gone | bytes sent | of which LIST |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|")
        restarts = ph["exporter_view"]["watch_restarts"]
        for res in RESOURCES:
            f = ph["fake"][res]
            if not (f["lists"] or f["watches"]):
                continue
            out.append(
                f"| {res} | {f['lists']} | {ph['expected_lists'].get(res, '-')} | "
                f"{f['list_pages']} | {f['watches']} | "
                f"{restarts.get(f'{res}/timeout', 0):.0f} | "
                f"{restarts.get(f'{res}/gone', 0):.0f} | {_mib(f['bytes'])} | "
                f"{_mib(f['list_bytes'])} |"
            )
        out.append("")
        if key == "sampled" and ph["per_minute"]:
            out.append("| minute | bytes sent | pods | services | LISTs (pages) | WATCHes |")
            out.append("|---|---|---|---|---|---|")
            for row in ph["per_minute"]:
                out.append(
                    f"| {row['minute']} | {_mib(row['bytes'])} | "
                    f"{_mib(row['pods_bytes'])} | {_mib(row['services_bytes'])} | "
                    f"{row['lists']} ({row['list_pages']}) | {row['watches']} |"
                )
            out.append("")
    out.append(
        "**Pod change to the prober's targets (exporter log) and to /metrics (polled "
        "every 50 ms)**\n"
    )
    out.append(
        "| mode | change | trials | table: median | table: max | /metrics: median | "
        "/metrics: max | one poll (median) |"
    )
    out.append("|---|---|---|---|---|---|---|---|")
    for key, change, what in (
        ("sampled", "pod of a probed peer deleted: series gone", "removed"),
        ("sampled", "its successor created (new pod IP): series back", "appeared"),
        ("full_mesh", "pod on a brand-new node created", "appeared"),
    ):
        ph = result.get(key)
        if not ph or "trials" not in ph:
            continue
        table = trial_summary(ph["trials"], what, "table_s")
        scrape = trial_summary(ph["trials"], what, "seconds")
        polls = [
            t[what]["poll_seconds"]
            for t in ph["trials"]
            if t.get(what, {}).get("poll_seconds") is not None
        ]
        out.append(
            f"| {key.replace('_', ' ')} | {change} | {scrape['n']} | "
            f"{_ms(table.get('median'))} | {_ms(table.get('max'))} | "
            f"{_ms(scrape.get('median'))} | {_ms(scrape.get('max'))} | "
            f"{_ms(statistics.median(polls) if polls else None)} |"
        )
    fm = result.get("full_mesh") or {}
    for label, when in (
        ("quiet", "nothing polling /metrics"),
        ("trials", "while the trials poll /metrics"),
    ):
        r = fm.get(f"replacement_to_table_s_{label}", {})
        if r.get("n"):
            out.append(
                f"| full mesh | churn replacement (pod IP moves), {when} | {r['n']} | "
                f"{_ms(r['median'])} | {_ms(r['max'])} | | | |"
            )
    out.append("")
    out.append(f"**Series and cost of one exporter with {p['peers']:,} peers**\n")
    out.append(
        "| mode | targets | series | per-target series | /metrics (gzip) | scrape "
        "(median) | CPU s/s, no churn | CPU s/s, churn | CPU s/s, max 5 s | RSS at end | "
        "peak RSS (VmHWM) | ready after |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in ("sampled", "full_mesh"):
        ph = result.get(key)
        if not ph or "series" not in ph:
            continue
        ser = ph["series"]
        per_target = sum(
            v
            for k, v in ser["per_family"].items()
            if k.startswith(
                (
                    "pingmesh_probe_rtt",
                    "pingmesh_probe_sent",
                    "pingmesh_probe_received",
                    "pingmesh_probe_errors",
                    "pingmesh_target_up",
                )
            )
        )
        targets = sum(ph["exporter_view"]["targets"].values())
        sc = ph["scrape_summary"]
        # Sampled: the whole churn window (its trials cost little); full mesh: the churn
        # before the trials, which poll a 30 MB /metrics every 50 ms.
        churn_cost = "cost_window" if key == "sampled" else "cost_churn"
        out.append(
            f"| {key.replace('_', ' ')} | {targets:,.0f} | {ser['total']:,} | "
            f"{per_target:,} | {_mib(ser['bytes'])} "
            f"({_mib(sc['wire_bytes'].get('median', 0))}) | "
            f"{_ms(sc['seconds'].get('median'))} | "
            f"{ph['cost_idle'].get('cpu_per_s', 0):.3f} | "
            f"{ph[churn_cost].get('cpu_per_s', 0):.3f} | "
            f"{ph['cost_window'].get('cpu_per_s_max_5s', 0):.2f} | "
            f"{ph['memory_end']['rss_mib']:.0f} MiB | "
            f"{ph['memory_end']['hwm_mib']:.0f} MiB | {ph['ready_s']:.1f} s |"
        )
    out.append("")
    return "\n".join(out)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(
            peers=args.peers or 1000,
            churn_s=args.churn_minutes * 60 or 25.0,
            churn_rate=args.churn_rate,
            compact_every_s=args.compact_every or 10.0,
            full_mesh_s=args.full_mesh_seconds or 16.0,
            idle_s=5.0,
            sampled_trials=4,
            full_mesh_trials=4,
            bookmark_interval_s=args.bookmark_interval,
            watch_timeout="1m",
            spare_pod_ips=200,
            quick=True,
        )
    return Plan(
        peers=args.peers or 5000,
        churn_s=(args.churn_minutes or 10.0) * 60,
        churn_rate=args.churn_rate,
        compact_every_s=args.compact_every or 180.0,
        full_mesh_s=args.full_mesh_seconds or 120.0,
        idle_s=30.0,
        sampled_trials=20,
        full_mesh_trials=20,
        bookmark_interval_s=args.bookmark_interval,
        watch_timeout="1m",
        spare_pod_ips=1000,
        quick=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else "")
    ap.add_argument("--quick", action="store_true", help="one-minute smoke run, 1,000 peers")
    ap.add_argument("--peers", type=int, default=0, help="peer pods (default 5000)")
    ap.add_argument(
        "--churn-minutes", type=float, default=0.0, help="sampled-mode window (default 10)"
    )
    ap.add_argument("--churn-rate", type=float, default=2.0, help="pod replacements per second")
    ap.add_argument(
        "--compact-every", type=float, default=0.0, help="seconds between compactions (default 180)"
    )
    ap.add_argument(
        "--full-mesh-seconds", type=float, default=0.0, help="full-mesh window (default 120)"
    )
    ap.add_argument(
        "--bookmark-interval",
        type=float,
        default=60.0,
        help="seconds between the fake's bookmarks on a quiet watch",
    )
    ap.add_argument(
        "--phases",
        choices=("both", "sampled", "full-mesh"),
        default="both",
        help="run only one of the two phases",
    )
    ap.add_argument(
        "--report",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="print the Markdown of earlier results instead of running (phases of later files win)",
    )
    args = ap.parse_args(argv)
    if args.report:
        merged: dict[str, Any] = {}
        for path in args.report:
            merged.update(json.loads(path.read_text()))
        print(markdown(merged))
        return 0
    why = require_root()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    plan = make_plan(args)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    result: dict[str, Any] = {"plan": asdict(plan), "machine": machine_facts()}
    started = time.monotonic()
    with Bed() as bed:
        # Pod IPs and host IPs in two dsts: 5,000 + spares each, all answering echo.
        pods_dst = bed.add_dst("podnet")
        nodes_dst = bed.add_dst("nodenet")
        extra_nodes = plan.full_mesh_trials + 10
        pod_ips = pods_dst.add_targets(plan.peers + 1 + plan.spare_pod_ips + extra_nodes)
        host_ips = nodes_dst.add_targets(plan.peers + 1 + extra_nodes)
        result["addresses"] = {
            "pod_prefix": str(pods_dst.v4_prefix),
            "node_prefix": str(nodes_dst.v4_prefix),
            "pod_ips": len(pod_ips),
            "host_ips": len(host_ips),
        }
        # Started from a thread inside src: the exporter reaches it on 127.0.0.1 there.
        fake = KubeFake(bookmark_interval=plan.bookmark_interval_s)
        in_namespace(bed.src, fake.start)
        try:
            kubeconfig = fake.kubeconfig(OUT_DIR / f"discovery-bench-{stamp}.kubeconfig")
            t = time.monotonic()
            cluster = Cluster(fake, pod_ips, host_ips, plan.peers)
            result["populate_s"] = time.monotonic() - t
            print(
                f"{plan.peers} peer pods in the fake, {len(pod_ips) + len(host_ips)} "
                f"addresses in {pods_dst.v4_prefix} and {nodes_dst.v4_prefix}",
                flush=True,
            )
            path = OUT_DIR / f"discovery-bench-{stamp}.json"

            def save() -> None:
                result["total_s"] = time.monotonic() - started
                path.write_text(json.dumps(_jsonable(result), indent=1) + "\n")

            used: set[str] = set()
            if args.phases in ("both", "sampled"):
                result["sampled"] = run_phase(
                    "sampled",
                    bed,
                    fake,
                    cluster,
                    plan,
                    kubeconfig,
                    (),
                    OUT_DIR / f"discovery-bench-{stamp}-sampled.log",
                    plan.churn_s,
                    plan.compact_every_s,
                    expect_targets=2 * min(plan.peers, 20),
                    trials=spread_trials(
                        plan.sampled_trials, lambda e: sampled_trial(e, cluster, used), "sampled"
                    ),
                    quiet_s=15.0,
                    full_mesh=False,
                )
                save()
            if args.phases in ("both", "full-mesh"):
                result["full_mesh"] = run_phase(
                    "full_mesh",
                    bed,
                    fake,
                    cluster,
                    plan,
                    kubeconfig,
                    ("--mesh.full-mesh-max", "10000", "--probe.interval", "10s"),
                    OUT_DIR / f"discovery-bench-{stamp}-full-mesh.log",
                    plan.full_mesh_s,
                    0.0,
                    expect_targets=2 * len([n for n in cluster.pods if n != SELF_NODE]),
                    trials=spread_trials(
                        plan.full_mesh_trials, lambda e: full_mesh_trial(e, cluster), "full_mesh"
                    ),
                    quiet_s=plan.full_mesh_s / 2,
                    full_mesh=True,
                )
            result["fake_server_errors"] = [repr(e) for e in fake.server_errors]
            save()
        finally:
            fake.close()
            with contextlib.suppress(OSError):
                (OUT_DIR / f"discovery-bench-{stamp}.kubeconfig").unlink()
    print(f"\nresults: {path.relative_to(ROOT)}\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
