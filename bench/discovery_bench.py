#!/usr/bin/env python3
"""What Kubernetes discovery costs the API server and the exporter, with thousands of peers.

The API server is a real one: the control plane of ``tests/support/cluster/cluster.py`` (etcd,
kube-apiserver with its watch cache, audit log, Node+RBAC authorization and admission). One
exporter process (``python -m exporter``) runs in the ``src`` namespace of a
``tests/support/netbed.py`` bed, linked to the control plane's bridge, and discovers its peers
through that API server with a bound token of the shipped ServiceAccount (``deploy/base``
Namespace, ServiceAccount and RBAC are applied; ``kubectl create token``). Every peer pod IP and
host IP is a routed /32 on the loopback of a dst namespace of the bed (198.18.0.0/15, clear of
the cluster's 198.19.0.0/16), so the probes the exporter sends never leave the machine.

There are no kubelets and no DaemonSet: the bench writes ``--peers`` (5,000) exporter pods, one
per node, in namespace ``pingmesh``, as the DaemonSet controller and a kubelet would (the
DaemonSet's own pod template, bound with ``spec.nodeName``, then a Running/Ready status with
podIPs and hostIPs through the status subresource; the objects of ``bench/apiserver_bench.py``,
with the bed's addresses). The controller-manager and the scheduler are stopped once the
cluster is up: without kubelets they would only act on these pods (node lifecycle, pod GC of
pods whose Node does not exist), and the exporter does not watch Nodes with its default flags.
While the exporter runs:

* churn: a rolling pod replacement, ``--churn-rate`` (2) per second: delete a pod
  (``gracePeriodSeconds=0``, as the kubelet's final delete), create its successor on the same
  node with a new name, then write its status with a new pod IP (freed pod IPs are reused
  first-in first-out, as an IPAM would): three writes, three watch events;
* every ``--compact-every`` (3 minutes) the watches are interrupted so that their resume must
  fail: kube-apiserver is stopped (every watch ends), one write goes to etcd while it is down
  (the newest revision is then one no watch can have seen), etcd is compacted to it, and the
  API server starts again; its new watch cache begins at that revision, so every resume gets
  410 Gone and the exporter must list again;
* the exporter runs with ``--kubernetes.watch-timeout 1m`` (each watch 1 to 2 minutes), so
  ordinary watch ends also fall inside the window; bookmarks come from the API server itself
  (about once a minute);
* ``/metrics`` is scraped with gzip every 15 s, as Prometheus would.

Each phase starts the exporter, waits until it probes every target, lets it run 30 s without
churn (its cost at rest), then starts the churn. Requests are counted from the exporter's
launch, so its first LIST counts: LISTs and WATCHes per resource from the audit log (the
Cluster logs the exporter's ServiceAccount only: exact counts, status codes); bytes per
resource from the API server's own metrics (``apiserver_response_sizes`` of LISTs,
``apiserver_watch_events_sizes`` of watch events), summed over the API server's lives (its
counters start at zero after each restart). With the controllers stopped the exporter is the
only client that lists or watches pods; Services and EndpointSlices also carry one watch of the
API server's own (few events: nothing changes them).

Phase 1, sampled mode (the default flags: ``--mesh.full-mesh-max 100 --mesh.peers 20``, probe
interval 1 s, Service checks on) for ``--churn-minutes`` (10): requests and bytes per resource
(total and per minute), LISTs not explained by a 410, the exporter's CPU and memory, the
series it exposes. Latency here: delete the pod of a peer this exporter probes
(``pingmesh_peer_ready`` names them), wait until its series are gone, create its successor
with a new IP, and poll /metrics every 50 ms until its series are back.

Phase 2, full mesh (``--mesh.full-mesh-max 10000 --probe.interval 10s``: every peer, pod and
node target, 2 per peer) for ``--full-mesh-seconds`` (120) with the same churn, no
interruption: first a window without anything else (CPU, memory, scrapes), then latency
trials: create a pod on a brand-new node and poll /metrics (uncompressed) every 50 ms until a
``pingmesh_probe_sent_total`` series with that ``target_node`` appears.

Latency is from just before the first write of the change to the end of the first /metrics
response that shows it; the start of that request is recorded too. The exporter's log line
"target set changed", written as the prober's table (which /metrics renders) takes a change,
gives the same latency without the polling's resolution; in full mesh it also times every
churn replacement. Trials that overlap an interruption (from the API server's stop to 30 s
after it is healthy again) are kept in the JSON but left out of the summaries.

Usage: ``python -m bench.discovery_bench [--quick]`` as root, with the cluster binaries built
(``tests/support/cluster/build-components.sh``). ``--quick`` is a short smoke run with 1,000
peers; ``--phases sampled|full-mesh`` runs one phase; ``--report FILE.json ...`` prints the
Markdown of earlier results. Results go to ``bench/out/discovery-bench-<UTC time>.json``
(written after each phase), the exporter's log of each phase next to it; a Markdown summary is
printed. Ctrl-C or SIGTERM stops the exporter and deletes the cluster and the bed.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.apiserver_bench import (
    SMP,
    Rest,
    exporter_identity,
    load_pod_template,
    node_name,
    now_rfc3339,
    pod_object,
    pod_status,
    pod_suffix,
    real_pid,
    versions,
)
from bench.common import (
    ROOT,
    Samples,
    cpu_seconds,
    fetch,
    machine_facts,
    parse,
    status_kib,
    summary,
    value,
)
from tests.support.cluster.cluster import Cluster, binaries
from tests.support.exporter_proc import http_get
from tests.support.netbed import Bed, Namespace, _run, require_root

OUT_DIR = ROOT / "bench" / "out"
PORT = 9871
NAMESPACE = "pingmesh"
SA = "pingmesh-exporter"
SELF_INDEX = 0
SELF_NODE = node_name(SELF_INDEX)
SELF_POD = f"pingmesh-exporter-{pod_suffix(SELF_INDEX)}"
# pod_suffix is a bijection below 27**5: generation g of node i gets the suffix of
# g * GENERATION_STRIDE + i, unique while there are fewer nodes than the stride.
GENERATION_STRIDE = 100_000
# The bed's src on the control plane's bridge (nodes of add_node are 198.19.0.(10+K)).
SRC_ON_CLUSTER = "198.19.0.250"
SAMPLE_EVERY_S = 5.0
SCRAPE_EVERY_S = 15.0
POLL_EVERY_S = 0.05
# A trial this close after an interruption measures the exporter's back-off, not discovery.
AFTER_INTERRUPTION_S = 30.0
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
    watch_timeout: str
    spare_pod_ips: int
    concurrency: int
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
# The bench's side of the cluster: the DaemonSet's pods, the interruptions, the server's counters


@dataclass
class PeerPod:
    index: int
    name: str
    generation: int
    pod_ip: str
    host_ip: str

    @property
    def node(self) -> str:
        return node_name(self.index)


def pod_name(index: int, generation: int) -> str:
    return f"pingmesh-exporter-{pod_suffix(generation * GENERATION_STRIDE + index)}"


class Fleet:
    """The exporter pods in the API server, and the address pools they draw from. Writes go
    through ``lock``, which an interruption holds while the API server is down."""

    def __init__(self, rest: Rest, pod_ips: list[str], host_ips: list[str]) -> None:
        self.rest = rest
        self.template = load_pod_template()
        self.lock = threading.RLock()
        self.pods: dict[str, PeerPod] = {}
        self.free_pod_ips: deque[str] = deque(pod_ips)
        self.free_host_ips: deque[str] = deque(host_ips)
        self.order: deque[str] = deque()
        self.busy: set[str] = set()
        self.added_nodes = 0
        self.next_index = 0

    def populate(self, peers: int, concurrency: int) -> dict[str, Any]:
        pods = []
        for i in range(peers + 1):
            pod = PeerPod(
                i, pod_name(i, 0), 0, self.free_pod_ips.popleft(), self.free_host_ips.popleft()
            )
            self.pods[pod.node] = pod
            if i != SELF_INDEX:
                self.order.append(pod.node)
            pods.append(pod)
        self.next_index = peers + 1
        started = time.monotonic()
        with cf.ThreadPoolExecutor(concurrency, thread_name_prefix="populate") as pool:
            for k, fut in enumerate(cf.as_completed([pool.submit(self._write, p) for p in pods])):
                fut.result()
                if (k + 1) % 1000 == 0:
                    print(f"  pods: {k + 1}/{len(pods)} ({time.monotonic() - started:.0f} s)")
        took = time.monotonic() - started
        return {"pods": len(pods), "seconds": took, "writes_per_s": 2 * len(pods) / took}

    def _write(self, pod: PeerPod) -> None:
        """Create as the DaemonSet controller would, then the status a kubelet writes."""
        obj = pod_object(self.template, pod.index)
        obj["metadata"]["name"] = pod.name
        created = self.rest.call(
            "POST",
            f"/api/v1/namespaces/{NAMESPACE}/pods?fieldManager=kube-controller-manager",
            obj,
        )
        doc = pod_status(created, pod.index, now_rfc3339())
        doc["status"].update(
            hostIP=pod.host_ip,
            hostIPs=[{"ip": pod.host_ip}],
            podIP=pod.pod_ip,
            podIPs=[{"ip": pod.pod_ip}],
        )
        self.rest.call(
            "PATCH",
            f"/api/v1/namespaces/{NAMESPACE}/pods/{pod.name}/status?fieldManager=kubelet",
            doc,
            SMP,
        )

    def _delete(self, node: str) -> None:
        old = self.pods[node]
        self.rest.call(
            "DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{old.name}?gracePeriodSeconds=0"
        )
        self.free_pod_ips.append(old.pod_ip)

    def _create(self, node: str) -> None:
        old = self.pods[node]
        gen = old.generation + 1
        new = PeerPod(
            old.index, pod_name(old.index, gen), gen, self.free_pod_ips.popleft(), old.host_ip
        )
        self.pods[node] = new
        self._write(new)

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
            return node

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
            pod = PeerPod(
                self.next_index,
                pod_name(self.next_index, 0),
                0,
                self.free_pod_ips.popleft(),
                self.free_host_ips.popleft(),
            )
            self.next_index += 1
            self.pods[pod.node] = pod
            self.order.append(pod.node)
            self._write(pod)
            return pod.node


SERVER_METRICS = (
    "apiserver_request_total",
    "apiserver_response_sizes_sum",
    "apiserver_watch_events_sizes_sum",
    "apiserver_watch_events_total",
)


def server_counters(rest: Rest) -> dict[str, float]:
    """Per resource: LIST and WATCH requests completed, LIST response bytes, watch event
    bytes and events, as the API server counts them (every client)."""
    status, raw = rest.raw("GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"API server /metrics answered {status}")
    out: dict[str, float] = {}
    for n, lb, v in parse(raw.decode(errors="replace"), SERVER_METRICS):
        res, verb = lb.get("resource", ""), lb.get("verb", "")
        # The bench's own status writes are the pods/status subresource.
        if res not in RESOURCES or lb.get("subresource"):
            continue
        if n == "apiserver_request_total" and verb in ("LIST", "WATCH"):
            key = f"{res}/{verb.lower()}_requests"
        elif n == "apiserver_response_sizes_sum" and verb == "LIST":
            key = f"{res}/list_bytes"
        elif n == "apiserver_watch_events_sizes_sum":
            key = f"{res}/watch_bytes"
        elif n == "apiserver_watch_events_total":
            key = f"{res}/watch_events"
        else:
            continue
        out[key] = out.get(key, 0.0) + v
    return out


class ServerCounters:
    """The API server's counters and CPU over a phase, across restarts (each new process
    counts from zero: what a life counted is added up when it ends)."""

    def __init__(self, cluster: Cluster, rest: Rest) -> None:
        self.cluster = cluster
        self.rest = rest
        self.lock = threading.Lock()
        self.done: dict[str, float] = {}
        self.base: dict[str, float] = {}
        self.pid = 0
        self.base_cpu = 0.0
        self.last: dict[str, float] = {}

    def _pid(self) -> int:
        popen = self.cluster.processes["kube-apiserver"].proc
        assert popen is not None
        return real_pid(popen.pid, "kube-apiserver")

    def begin(self) -> None:
        """From now on, in this API server's life (at a phase's start, or once a restarted
        server is healthy: its own start-up requests and CPU are not the exporter's)."""
        with self.lock:
            self.pid = self._pid()
            self.base = server_counters(self.rest)
            self.base_cpu = cpu_seconds(self.pid)

    def reset(self) -> None:
        with self.lock:
            self.done = {}

    def end_life(self) -> None:
        with self.lock:
            now = server_counters(self.rest)
            for k, v in now.items():
                self.done[k] = self.done.get(k, 0.0) + v - self.base.get(k, 0.0)
            self.done["apiserver_cpu_s"] = (
                self.done.get("apiserver_cpu_s", 0.0) + cpu_seconds(self.pid) - self.base_cpu
            )
            self.pid = 0

    def read(self, blocking: bool = True) -> dict[str, float]:
        """Totals since the phase's start; the last totals while the server is down."""
        if not self.lock.acquire(blocking=blocking):
            return dict(self.last)
        try:
            if not self.pid:
                return dict(self.last)
            now = server_counters(self.rest)
            out = dict(self.done)
            for k, v in now.items():
                out[k] = out.get(k, 0.0) + v - self.base.get(k, 0.0)
            out["apiserver_cpu_s"] = (
                out.get("apiserver_cpu_s", 0.0) + cpu_seconds(self.pid) - self.base_cpu
            )
            self.last = out
            return dict(out)
        except (OSError, RuntimeError):
            return dict(self.last)
        finally:
            self.lock.release()


def etcd_put(cluster: Cluster, key: str, val: str) -> None:
    b64 = base64.b64encode
    cluster.cp.run(
        [
            "curl",
            "-sf",
            "--max-time",
            "5",
            "-X",
            "POST",
            "http://127.0.0.1:2379/v3/kv/put",
            "-d",
            json.dumps({"key": b64(key.encode()).decode(), "value": b64(val.encode()).decode()}),
        ]
    )


API_BLOCK = ["OUTPUT", "-p", "tcp", "-d", "198.19.0.1", "--dport", "6443", "-j", "REJECT"]
API_BLOCK += ["--reject-with", "tcp-reset"]


def interrupt(cluster: Cluster, src: Namespace, counters: ServerCounters, n: int) -> dict[str, Any]:
    """Stop the API server, write to etcd and compact it, start the API server again: every
    watch ends, and its resume asks for a revision older than the new watch cache's first.

    The exporter cannot reach the API server from the stop until the new server's counters
    are read: they then start after the server's own start-up LISTs (of pods too), and every
    request the exporter sends afterwards is counted."""
    t0, w0 = time.monotonic(), time.time()
    counters.end_life()
    src.run(["iptables", "-w", "-I", *API_BLOCK])
    cluster.processes["kube-apiserver"].stop(grace_s=5)
    stopped = time.monotonic() - t0
    etcd_put(cluster, "/pingmesh-bench/interruption", str(n))
    rev = cluster.compact_etcd()
    cluster.start_apiserver()
    try:
        cluster.wait_healthy(timeout=120)
        counters.begin()
    finally:
        src.run(["iptables", "-w", "-D", *API_BLOCK])
    return {
        "mono": t0,
        "wall": w0,
        "stopped_after_s": stopped,
        "down_s": time.monotonic() - t0,
        "healthy_wall": time.time(),
        "compacted_revision": rev,
    }


class Churn(threading.Thread):
    """Rolling replacement at a fixed rate; interruptions on a fixed schedule."""

    def __init__(
        self,
        fleet: Fleet,
        cluster: Cluster,
        src: Namespace,
        counters: ServerCounters,
        rate: float,
        compact_every_s: float,
        start: float,
        end: float,
    ) -> None:
        super().__init__(name="churn", daemon=True)
        self.fleet = fleet
        self.cluster = cluster
        self.src = src
        self.counters = counters
        self.rate = rate
        self.compact_every_s = compact_every_s
        self.start_at = start
        self.end_at = end
        self.stop_event = threading.Event()
        self.interruptions: list[dict[str, Any]] = []
        self.steps = 0
        self.late_steps = 0
        self.errors: list[str] = []
        self.step_walls: list[float] = []  # time.time() just before each replacement

    def run(self) -> None:
        next_compact = (
            self.start_at + self.compact_every_s if self.compact_every_s > 0 else float("inf")
        )
        k = 0
        while True:
            due = self.start_at + k / self.rate
            if due >= self.end_at or self.stop_event.wait(max(0.0, due - time.monotonic())):
                return
            k += 1
            if time.monotonic() - due > 1.0:
                self.late_steps += 1
            try:
                if time.monotonic() >= next_compact:
                    with self.fleet.lock:
                        got = interrupt(
                            self.cluster, self.src, self.counters, len(self.interruptions) + 1
                        )
                    got["t"] = got.pop("mono") - self.start_at
                    self.interruptions.append(got)
                    print(
                        f"[churn] API server restarted, compacted to {got['compacted_revision']}"
                        f" ({got['down_s']:.1f} s down)",
                        flush=True,
                    )
                    next_compact += self.compact_every_s
                    # The steps that fell due while the server was down are skipped, not
                    # sent in a burst.
                    k = max(k, int((time.monotonic() - self.start_at) * self.rate))
                    continue
                self.step_walls.append(time.time())
                self.fleet.replace_next()
                self.steps += 1
            except (OSError, RuntimeError) as exc:
                if len(self.errors) < 50:
                    self.errors.append(f"{time.monotonic() - self.start_at:.1f}s: {exc}"[:300])


# --------------------------------------------------------------------------------------------
# Sampling while a phase runs


class Sampler(threading.Thread):
    """Every 5 s: the exporter's CPU and memory, the API server's counters."""

    def __init__(self, exporter: Exporter, counters: ServerCounters, start: float) -> None:
        super().__init__(name="sampler", daemon=True)
        self.exporter = exporter
        self.counters = counters
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
                # Not while an interruption holds the counters: the exporter's CPU must not
                # wait for the API server.
                "server": self.counters.read(blocking=False),
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


@dataclass
class AuditRecord:
    wall: float
    verb: str
    resource: str
    page: bool  # a continuation of a paged LIST
    code: int | None = None
    gone_event: bool = False


def audit_records(cluster: Cluster, since: float) -> list[AuditRecord]:
    """The exporter's LISTs and WATCHes as the API server logged them, with the status each
    ended with (a WATCH that ends normally is a 200)."""
    from tests.support.cluster.cluster import _rfc3339

    received: dict[str, AuditRecord] = {}
    for ev in cluster.audit_events():
        verb = ev.get("verb")
        if verb not in ("list", "watch"):
            continue
        res = (ev.get("objectRef") or {}).get("resource", "")
        aid = ev.get("auditID", "")
        if ev.get("stage") == "RequestReceived":
            t = _rfc3339(ev.get("requestReceivedTimestamp", ""))
            if t >= since:
                received[aid] = AuditRecord(t, verb, res, "continue=" in ev.get("requestURI", ""))
        elif aid in received:
            received[aid].code = (ev.get("responseStatus") or {}).get("code")
    return sorted(received.values(), key=lambda r: r.wall)


def request_totals(records: Sequence[AuditRecord]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for res in RESOURCES:
        mine = [r for r in records if r.resource == res]
        out[res] = {
            "lists": sum(1 for r in mine if r.verb == "list" and not r.page),
            "list_pages": sum(1 for r in mine if r.verb == "list"),
            "watches": sum(1 for r in mine if r.verb == "watch"),
            "codes": dict(Counter(f"{r.verb}/{r.code}" for r in mine)),
        }
    return out


def per_minute(
    samples: Sequence[dict[str, Any]],
    records: Sequence[AuditRecord],
    start_wall: float,
    minutes: int,
) -> list[dict[str, Any]]:
    """Bytes the API server sent per minute (from the cumulative samples) and requests."""

    def at(t: float) -> dict[str, float]:
        # Counted from the exporter's launch: nothing was sent at 0 s (the first sample is
        # only taken once it probes every target).
        return {} if t <= 0 else min(samples, key=lambda s: abs(s["t"] - t))["server"]

    def sent(s: dict[str, float], res: str) -> float:
        return s.get(f"{res}/list_bytes", 0.0) + s.get(f"{res}/watch_bytes", 0.0)

    rows = []
    for m in range(minutes):
        a, b = at(60.0 * m), at(60.0 * (m + 1))
        lo, hi = start_wall + 60.0 * m, start_wall + 60.0 * (m + 1)
        inside = [r for r in records if lo <= r.wall < hi]
        row: dict[str, Any] = {"minute": m + 1}
        for res in ("pods", "services", "endpointslices"):
            row[f"{res}_bytes"] = sent(b, res) - sent(a, res)
        row["bytes"] = sum(row[f"{res}_bytes"] for res in ("pods", "services", "endpointslices"))
        row["lists"] = sum(1 for r in inside if r.verb == "list" and not r.page)
        row["list_pages"] = sum(1 for r in inside if r.verb == "list")
        row["watches"] = sum(1 for r in inside if r.verb == "watch")
        rows.append(row)
    return rows


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


def sampled_trial(exporter: Exporter, fleet: Fleet, used: set[str]) -> dict[str, Any]:
    """Delete a probed peer's pod, wait for its series to go, create the successor with a new
    pod IP, time until the series are back."""
    selected = exporter.fetch(compressed=True).selected_nodes()
    candidates = [n for n in selected if n not in used and n in fleet.pods] or [
        n for n in selected if n in fleet.pods
    ]
    if not candidates:
        return {"error": f"no selected peer to replace (selected: {selected})"}
    node = candidates[0]
    used.add(node)
    fleet.reserve(node)
    try:
        # The lock first: an interruption in progress must not be timed as latency.
        with fleet.lock:
            t0, w0 = time.monotonic(), time.time()
            fleet.delete(node)
        gone = poll_until(exporter, lambda s: not s.shows_target(node), t0, 60.0, True)
        gone["wall"] = w0
        with fleet.lock:
            t1, w1 = time.monotonic(), time.time()
            fleet.recreate(node)
        back = poll_until(exporter, lambda s: s.shows_target(node), t1, 60.0, True)
        back["wall"] = w1
        return {"node": node, "removed": gone, "appeared": back}
    finally:
        fleet.release(node)


def full_mesh_trial(exporter: Exporter, fleet: Fleet) -> dict[str, Any]:
    with fleet.lock:
        t0, w0 = time.monotonic(), time.time()
        node = fleet.add_node()
    got = poll_until(exporter, lambda s: s.shows_target(node), t0, 60.0, False)
    got["wall"] = w0
    return {"node": node, "appeared": got}


def mark_interrupted(trials: list[dict[str, Any]], interruptions: Sequence[dict[str, Any]]) -> None:
    spans = [(i["wall"], i["healthy_wall"] + AFTER_INTERRUPTION_S) for i in interruptions]
    for t in trials:
        for what in ("removed", "appeared"):
            got = t.get(what)
            if not got or got.get("seconds") is None:
                continue
            a, b = got["wall"], got["wall"] + got["seconds"]
            if any(a < hi and lo < b for lo, hi in spans):
                t["overlaps_interruption"] = True


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


def clean_trials(trials: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in trials if not t.get("overlaps_interruption")]


@dataclass
class Bench:
    """What every phase shares."""

    bed: Bed
    cluster: Cluster
    rest: Rest
    counters: ServerCounters
    fleet: Fleet
    plan: Plan
    kubeconfig: Path
    running: list[Any] = field(default_factory=list)  # threads to stop on the way out


def run_phase(
    name: str,
    b: Bench,
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
    plan = b.plan
    args = exporter_args(b.kubeconfig, plan, *extra)
    print(f"[{name}] starting the exporter: {' '.join(args)}", flush=True)
    b.counters.reset()
    b.counters.begin()
    exporter = Exporter(b.bed.src, args, log_path)
    start_wall = time.time()
    result: dict[str, Any] = {"args": args}
    trial_results: list[dict[str, Any]] = []
    churn: Churn | None = None
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
        start = exporter.started
        t_idle0 = time.monotonic()
        t_win0 = t_idle0 + plan.idle_s
        end = t_win0 + window_s
        sampler = Sampler(exporter, b.counters, start)
        scraper = Scraper(exporter, t_idle0)
        churn = Churn(
            b.fleet, b.cluster, b.bed.src, b.counters, plan.churn_rate, compact_every_s, t_win0, end
        )
        b.running[:] = [sampler, scraper, churn]
        for t in b.running:
            t.start()
        print(
            f"[{name}] {plan.idle_s:.0f}s without churn, then {window_s:.0f}s of churn "
            f"({plan.churn_rate}/s"
            + (f", interruption every {compact_every_s:.0f}s)" if compact_every_s else ")"),
            flush=True,
        )
        time.sleep(max(0.0, min(end, t_win0 + quiet_s) - time.monotonic()))
        trial_results = trials(exporter, end)
        time.sleep(max(0.0, end - time.monotonic()))
        churn.stop_event.set()
        churn.join(180)
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
        server = b.counters.read()
        # The audit log is written as requests end; give it the last lines.
        time.sleep(1)
        records = audit_records(b.cluster, start_wall - 1.0)
        totals = request_totals(records)
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
                    "errors": churn.errors,
                    "interruptions": churn.interruptions,
                },
                "requests": totals,
                "server": {
                    res: {
                        k.split("/", 1)[1]: v for k, v in server.items() if k.startswith(f"{res}/")
                    }
                    for res in RESOURCES
                },
                "apiserver_cpu_s": server.get("apiserver_cpu_s", 0.0),
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
                        round(r.wall - start_wall, 1)
                        for r in records
                        if r.resource == res and r.verb == "list" and not r.page
                    ]
                    for res in RESOURCES
                },
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
        for t in b.running:
            t.stop_event.set()
        if churn is not None and churn.is_alive():
            churn.join(180)
        b.running.clear()
        exporter.stop()
        result["log"] = exporter.log_summary()
    changes = target_changes(log_path)
    add_log_latency(trial_results, changes)
    mark_interrupted(trial_results, churn.interruptions if churn else [])
    kept = clean_trials(trial_results)
    result["trials"] = trial_results
    result["trials_overlapping_interruption"] = len(trial_results) - len(kept)
    result["latency_s"] = trial_summary(kept, "appeared", "seconds")
    result["latency_table_s"] = trial_summary(kept, "appeared", "table_s")
    result["removal_latency_s"] = trial_summary(kept, "removed", "seconds")
    result["removal_latency_table_s"] = trial_summary(kept, "removed", "table_s")
    result["target_set_changes"] = len(changes)
    if full_mesh and churn is not None:
        # Every replacement moves a target: time to the prober's table for each, while
        # nothing polls /metrics and during the latency trials (which poll it every 50 ms).
        quiet_end = start_wall + result.get("churn_from_s", 0.0) + quiet_s
        picks: tuple[tuple[str, Callable[[float], bool]], ...] = (
            ("quiet", lambda w: w < quiet_end),
            ("trials", lambda w: w >= quiet_end),
        )
        for label, pick in picks:
            steps = [
                first_change(changes, w, lambda c: c[1] + c[3] > 0)
                for w in churn.step_walls
                if pick(w)
            ]
            result[f"replacement_to_table_s_{label}"] = summary([x for x in steps if x is not None])
    return result


def trial_summary(trials: Sequence[dict[str, Any]], what: str, key: str) -> dict[str, Any]:
    return summary([t[what][key] for t in trials if t.get(what, {}).get(key) is not None])


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
        if not ph or "requests" not in ph:
            continue
        out.append(
            f"**API requests, {title}**: {ph['window_s']:.0f} s from the exporter's "
            f"start ({ph['churn_to_s'] - ph['churn_from_s']:.0f} s of churn), "
            f"{ph['churn']['replacements']} pod replacements, "
            f"{len(ph['churn']['interruptions'])} interruptions (API server restart after an "
            f"etcd compaction); API server CPU {ph['apiserver_cpu_s']:.0f} s over the window, "
            "restarts excluded\n"
        )
        out.append(
            "| resource | LISTs | expected (1 + 410s) | WATCHes | watch ends (timeout) | "
            "410 Gone (in the watch stream) | other statuses (None: cut by the stop) | "
            "bytes sent | "
            "of which LIST |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|")
        restarts = ph["exporter_view"]["watch_restarts"]
        for res in RESOURCES:
            f = ph["requests"][res]
            s = ph["server"].get(res, {})
            if not (f["lists"] or f["watches"]):
                continue
            other = ", ".join(
                f"{k} x{v}"
                for k, v in sorted(f["codes"].items())
                if not k.endswith("/200") and not k.endswith("/410")
            )
            gone_codes = sum(v for k, v in f["codes"].items() if k.endswith("/410"))
            sent = s.get("list_bytes", 0.0) + s.get("watch_bytes", 0.0)
            out.append(
                f"| {res} | {f['lists']}"
                + (f" ({f['list_pages']} pages)" if f["list_pages"] != f["lists"] else "")
                + f" | {ph['expected_lists'].get(res, '-')} | {f['watches']} | "
                f"{restarts.get(f'{res}/timeout', 0):.0f} | "
                f"{restarts.get(f'{res}/gone', 0):.0f}"
                + (f" ({gone_codes} answered 410)" if gone_codes else "")
                + " | "
                f"{other or '-'} | {_mib(sent)} | {_mib(s.get('list_bytes', 0.0))} |"
            )
        out.append("")
        if key == "sampled" and ph["per_minute"]:
            out.append(
                "| minute | bytes sent | pods | services + endpointslices | LISTs | WATCHes |"
            )
            out.append("|---|---|---|---|---|---|")
            for row in ph["per_minute"]:
                out.append(
                    f"| {row['minute']} | {_mib(row['bytes'])} | "
                    f"{_mib(row['pods_bytes'])} | "
                    f"{_mib(row['services_bytes'] + row['endpointslices_bytes'])} | "
                    f"{row['lists']} | {row['watches']} |"
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
        kept = clean_trials(ph["trials"])
        table = trial_summary(kept, what, "table_s")
        scrape = trial_summary(kept, what, "seconds")
        polls = [
            t[what]["poll_seconds"] for t in kept if t.get(what, {}).get("poll_seconds") is not None
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
                f"| full mesh | churn replacement (new pod IP in the table), {when} | "
                f"{r['n']} | {_ms(r['median'])} | {_ms(r['max'])} | | | |"
            )
    skipped = {k: result[k].get("trials_overlapping_interruption", 0) for k in ("sampled",)}
    if skipped.get("sampled"):
        out.append(
            f"\n{skipped['sampled']} sampled trial(s) overlapped an interruption and are left out."
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
            churn_s=args.churn_minutes * 60 or 60.0,
            churn_rate=args.churn_rate,
            compact_every_s=args.compact_every or 25.0,
            full_mesh_s=args.full_mesh_seconds or 16.0,
            idle_s=5.0,
            sampled_trials=4,
            full_mesh_trials=4,
            watch_timeout="1m",
            spare_pod_ips=200,
            concurrency=args.concurrency,
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
        watch_timeout="1m",
        spare_pod_ips=1000,
        concurrency=args.concurrency,
        quick=False,
    )


def link_bed(bed: Bed, cluster: Cluster) -> None:
    """A veth from the bed's src to the control plane's bridge: the exporter reaches the API
    server on its own address, the probes keep to the bed's routes."""
    _run(
        [
            "ip", "link", "add", "pmdb0", "netns", bed.src.name, "type", "veth",
            "peer", "name", "pmdb1", "netns", cluster.cp.name,
        ]
    )  # fmt: skip
    cluster.cp.ip_batch(["link set pmdb1 master br0", "link set pmdb1 up"])
    bed.src.ip_batch(["link set pmdb0 up", f"address add {SRC_ON_CLUSTER}/24 dev pmdb0"])


def prepare_cluster(cluster: Cluster, kubeconfig_path: Path) -> Path:
    """The controllers stopped, the exporter's Namespace, ServiceAccount and RBAC applied,
    a bound token of that ServiceAccount."""
    for name in ("kube-controller-manager", "kube-scheduler"):
        cluster.processes[name].stop()
    return exporter_identity(cluster, kubeconfig_path)


def wait_authorized(cluster: Cluster, kubeconfig: Path) -> None:
    """Until the exporter's token may list its pods (RBAC caches sync after a start)."""

    def allowed() -> bool:
        proc = cluster.kubectl(
            "auth", "can-i", "watch", "pods", "-n", NAMESPACE, kubeconfig=kubeconfig, check=False
        )
        return proc.stdout.strip() == "yes"

    cluster.wait_for(allowed, "RBAC for the exporter's ServiceAccount", timeout=60, interval=1.0)


@contextlib.contextmanager
def interrupts_once() -> Iterator[None]:
    """SIGTERM takes the way of Ctrl-C, through every cleanup; a second signal of either
    kind is ignored, so that it cannot cut the cleanup short."""

    def handler(signum: int, frame: Any) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else "")
    ap.add_argument("--quick", action="store_true", help="short smoke run, 1,000 peers")
    ap.add_argument("--peers", type=int, default=0, help="peer pods (default 5000)")
    ap.add_argument(
        "--churn-minutes", type=float, default=0.0, help="sampled-mode window (default 10)"
    )
    ap.add_argument("--churn-rate", type=float, default=2.0, help="pod replacements per second")
    ap.add_argument(
        "--compact-every",
        type=float,
        default=0.0,
        help="seconds between interruptions: etcd compaction and API server restart (default 180)",
    )
    ap.add_argument(
        "--full-mesh-seconds", type=float, default=0.0, help="full-mesh window (default 120)"
    )
    ap.add_argument("--concurrency", type=int, default=16, help="threads that create the pods")
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
    why = require_root() or binaries()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    plan = make_plan(args)
    if plan.peers + 1 + plan.spare_pod_ips + plan.full_mesh_trials + 10 > 8000:
        ap.error("--peers: too many for one dst's /19 of addresses")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = OUT_DIR / f"discovery-bench-{stamp}.json"
    result: dict[str, Any] = {"plan": asdict(plan), "machine": machine_facts(versions=versions())}
    started = time.monotonic()

    def save() -> None:
        result["total_s"] = time.monotonic() - started
        path.write_text(json.dumps(_jsonable(result), indent=1) + "\n")

    with interrupts_once(), Bed() as bed, Cluster(dual_stack=False) as cluster:
        # Pod IPs and host IPs in two dsts: peers + spares each, all answering echo.
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
        link_bed(bed, cluster)
        kubeconfig = prepare_cluster(cluster, cluster.dir / "kubeconfig-exporter")
        wait_authorized(cluster, kubeconfig)
        rest = Rest(cluster.cp, cluster.server, cluster.pki.ca, cluster.pki.tokens["admin"])
        fleet = Fleet(rest, pod_ips, host_ips)
        result["populate"] = fleet.populate(plan.peers, plan.concurrency)
        print(
            f"{plan.peers + 1} exporter pods in the API server in "
            f"{result['populate']['seconds']:.0f} s, {len(pod_ips) + len(host_ips)} addresses "
            f"in {pods_dst.v4_prefix} and {nodes_dst.v4_prefix}",
            flush=True,
        )
        b = Bench(bed, cluster, rest, ServerCounters(cluster, rest), fleet, plan, kubeconfig)
        try:
            used: set[str] = set()
            if args.phases in ("both", "sampled"):
                result["sampled"] = run_phase(
                    "sampled",
                    b,
                    (),
                    OUT_DIR / f"discovery-bench-{stamp}-sampled.log",
                    plan.churn_s,
                    plan.compact_every_s,
                    expect_targets=2 * min(plan.peers, 20),
                    trials=spread_trials(
                        plan.sampled_trials, lambda e: sampled_trial(e, fleet, used), "sampled"
                    ),
                    quiet_s=15.0,
                    full_mesh=False,
                )
                save()
            if args.phases in ("both", "full-mesh"):
                result["full_mesh"] = run_phase(
                    "full_mesh",
                    b,
                    ("--mesh.full-mesh-max", "10000", "--probe.interval", "10s"),
                    OUT_DIR / f"discovery-bench-{stamp}-full-mesh.log",
                    plan.full_mesh_s,
                    0.0,
                    expect_targets=2 * len([n for n in fleet.pods if n != SELF_NODE]),
                    trials=spread_trials(
                        plan.full_mesh_trials, lambda e: full_mesh_trial(e, fleet), "full_mesh"
                    ),
                    quiet_s=plan.full_mesh_s / 2,
                    full_mesh=True,
                )
            result["apiserver_log_tail"] = cluster.processes["kube-apiserver"].tail(20)
            save()
        finally:
            # The threads must not write to, or restart, an API server being torn down.
            for t in b.running:
                t.stop_event.set()
            for t in b.running:
                t.join(180)
    print(f"\nresults: {path.relative_to(ROOT)}\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
