#!/usr/bin/env python3
"""What exporters cost a real kube-apiserver: N exporters' watches over 5,000 nodes and pods.

The cluster is the real one of ``tests/support/cluster/cluster.py`` (etcd, kube-apiserver with its
watch cache and audit log, controller-manager and scheduler, inside a network namespace).
The bench:

* installs the exporter's Namespace, ServiceAccount and RBAC from ``deploy/base`` (not the
  DaemonSet: its controller would adopt the bench's pods and delete them from nodes that have
  no kubelet), and gives the watchers a bound token of that ServiceAccount, so RBAC, the
  service-accounts flow schema of API Priority and Fairness and the audit log all apply;
* restarts the controller-manager without its node-lifecycle controller: no kubelet renews
  the bench's Nodes, and that controller would mark them unreachable after 40 s and then
  every pod on them NotReady (5,000 pod updates in the middle of a measurement);
* creates ``--nodes`` (5,000) Node objects, as a kubelet registers them (labels with one of
  ``--zones`` zones, addresses, capacity, conditions, node info), and one exporter pod per
  node in namespace ``pingmesh``: the DaemonSet's own pod template from
  ``deploy/base/daemonset.yaml``, with what the DaemonSet controller adds (its labels, the
  node affinity, its tolerations) but no ownerReference (there is no DaemonSet to own them),
  bound to its node with ``spec.nodeName``, then a status written as a kubelet would
  (Running, Ready, podIPs, hostIPs, containerStatuses). The pods are created directly, as
  admin, by a pool of ``--concurrency`` threads with keep-alive connections;
* for each N of ``--watchers`` (plus N=0, the cluster without any exporter): starts one
  process (``--child``) that runs N exporters' discovery: the exporter's own
  ``KubeApi`` (each with its own client and connections) and ``Reflector`` for pods
  (namespace + label selector) and node metadata (PartialObjectMetadata), plus the two
  watches of the Service checks: Services, cluster-wide, and, once those are listed, the
  EndpointSlices of the selected Services (with the default flags and no CoreDNS in this
  cluster: ``kubernetes.io/service-name in (kubernetes)``), as ``python -m exporter
  --mesh.zones`` makes them. Only the mesh plan and the checks are left out: recomputed on
  every pod event the plan would cost the one client process N times an exporter's CPU, and
  neither sends a request to the API server. All N start at once, as after an API server
  restart; then
  - sync: until every watcher has listed everything (wall time per LIST and bytes, as the
    watcher read them; API server CPU and peak RSS over the sync), then
    ``--settle-seconds`` for the garbage of the LISTs to be collected;
  - idle: ``--idle-seconds`` with no change (bookmarks only);
  - steady: ``--steady-seconds`` of pod events at ``--rate`` per second, in
    ``--steady-parts`` sub-windows: a status patch of a random pod that flips its Ready
    condition (what a kubelet sends when a readiness probe flaps), by admin through the
    status subresource;
  N=0 is measured again at the end (``--no-control`` skips it), to see the drift;
* runs one real exporter (``python -m exporter --discovery=kubernetes --mesh.zones`` with the
  same token), inside the namespace of a node added with ``cluster.add_node`` (its probes go
  to bench addresses that answer nothing, inside the bed), with 5,000 peers: time to ready,
  CPU and RSS idle and under the same pod events.

Measured: CPU (utime + stime) and RSS from ``/proc`` of kube-apiserver, etcd, the
controller-manager, the scheduler and the watchers' process; busy CPU of the whole machine
from ``/proc/stat`` (the machine is shared: the rest is other work); bytes the watchers read
from their LIST and WATCH response bodies (after de-chunking; no compression is asked for);
and the API server's own ``/metrics`` (``apiserver_watch_events_sizes`` and
``apiserver_watch_events_total`` for pods, open WATCHes, request counts, APF rejections, the
Go heap goal and goroutines). The audit log (the exporter's ServiceAccount only) counts the
LISTs and WATCHes as the server saw them.

Usage: ``python -m bench.apiserver_bench`` as root (about 30 minutes at 5,000 nodes);
``--nodes 200 --watchers 1,5`` is a development run of about 4 minutes; ``--no-exporter``
skips the real exporter; ``--report FILE.json`` prints the Markdown of an earlier result.
Results go to ``bench/out/apiserver-bench-<UTC time>.json`` (the exporter's log next to it).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import contextlib
import datetime as dt
import hashlib
import http.client
import ipaddress
import itertools
import json
import os
import random
import select
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from bench.common import (
    ROOT,
    Samples,
    children,
    cmdline,
    comm,
    cpu_seconds,
    machine_cpu,
    machine_facts,
    parse,
    status_kib,
    summary,
    value,
)

OUT_DIR = ROOT / "bench" / "out"
NAMESPACE = "pingmesh"
SA = "pingmesh-exporter"
SELECTOR = "app.kubernetes.io/name=pingmesh-exporter"
ZONE_LABEL = "topology.kubernetes.io/zone"
SAMPLE_EVERY_S = 0.5
EXPORTER_PORT = 9871
# Bench addresses, clear of the cluster's own (nodes 198.19.0.x, pod ranges 198.19.(16+K).0/24
# of nodes added with add_node, Services 198.19.240.0/20).
HOST_NET = ipaddress.ip_network("198.19.128.0/18")
POD_NET = ipaddress.ip_network("198.19.192.0/19")
MAX_NODES = 8000
EXPORTER_NODE = "node-00000"  # the node of the real exporter, made by add_node
DS_REVISION_HASH = "7d9c6b5f8c"
WATCHED = ("pods", "nodes", "services", "endpointslices")


def node_name(i: int) -> str:
    return f"node-{i:05d}"


def pod_suffix(i: int) -> str:
    # Five characters as a DaemonSet's generateName gives, fixed per index and unique: a
    # multiplier prime to 27**5 makes i -> h a bijection.
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    h = (i * 2654435761 + 1234567) % len(alphabet) ** 5
    out = ""
    for _ in range(5):
        h, r = divmod(h, len(alphabet))
        out += alphabet[r]
    return out


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------
# /proc


def real_pid(pid: int, name: str) -> int:
    """The pid of the program name started under nsenter: nsenter execs it when it enters
    only a network namespace (the same pid), but look among its children in case it forked."""
    todo = [pid]
    for _ in range(50):
        if not todo:
            break
        p = todo.pop(0)
        if comm(p).startswith(name[:15]):
            return p
        todo.extend(children(p))
    raise RuntimeError(f"no {name} process under pid {pid}")


def exec_pid(pid: int, marker: str, timeout: float = 15.0) -> int:
    """The pid of the python program started as ``nsenter ... python ... marker``, once it
    runs: right after the fork the child still shows the parent's name (python too), then
    nsenter's, and only after the second exec the program's own command line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        todo = [pid]
        while todo:
            p = todo.pop(0)
            argv = cmdline(p)
            if marker in argv and comm(p).startswith("python"):
                return p
            todo.extend(children(p))
        time.sleep(0.02)
    raise RuntimeError(f"no process with {marker!r} under pid {pid} after {timeout:.0f}s")


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


class Meter:
    """CPU and RSS of named processes, sampled every half second in a thread; a window is the
    difference of two snapshots, with the peak RSS of each process in between."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self.lock = threading.Lock()
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meter", daemon=True)
        self._thread.start()

    def add(self, name: str, pid: int) -> None:
        with self.lock:
            self.pids[name] = pid

    def remove(self, name: str) -> None:
        with self.lock:
            self.pids.pop(name, None)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            pids = dict(self.pids)
        busy, total = machine_cpu()
        snap: dict[str, Any] = {
            "t": time.monotonic(),
            "busy": busy,
            "total": total,
            "load": loadavg(),
            "cpu": {},
            "rss": {},
        }
        for name, pid in pids.items():
            with contextlib.suppress(OSError, IndexError, ValueError):
                snap["cpu"][name] = cpu_seconds(pid)
                snap["rss"][name] = status_kib(pid, "VmRSS") / 1024
        return snap

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            s = self.snapshot()
            with self.lock:
                self.samples.append(s)
                if len(self.samples) > 20000:
                    del self.samples[:10000]

    def window(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        dt_s = b["t"] - a["t"]
        with self.lock:
            inside = [s for s in self.samples if a["t"] <= s["t"] <= b["t"]] + [a, b]
        out: dict[str, Any] = {
            "seconds": dt_s,
            "cpu_s": {},
            "cpu_per_s": {},
            "rss_mib": {},
            "peak_rss_mib": {},
        }
        for name in b["cpu"]:
            # A process started inside the window (the watchers' process) counts from 0.
            used = b["cpu"][name] - a["cpu"].get(name, 0.0)
            out["cpu_s"][name] = used
            out["cpu_per_s"][name] = used / dt_s if dt_s > 0 else 0.0
            out["rss_mib"][name] = b["rss"][name]
            out["peak_rss_mib"][name] = max(s["rss"].get(name, 0.0) for s in inside)
        busy = b["busy"] - a["busy"]
        out["machine_busy_per_s"] = busy / dt_s if dt_s > 0 else 0.0
        out["machine_rest_per_s"] = out["machine_busy_per_s"] - sum(out["cpu_per_s"].values())
        loads = [s["load"] for s in inside]
        out["load_min"], out["load_max"] = min(loads), max(loads)
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


# --------------------------------------------------------------------------------------------
# A small REST client for the bench's own writes (admin), its sockets in the cluster's network


class _NsHTTPS(http.client.HTTPSConnection):
    def __init__(self, ns: Any, host: str, port: int, ctx: ssl.SSLContext, timeout: float) -> None:
        super().__init__(host, port, context=ctx, timeout=timeout)
        self._ns = ns
        self._ctx = ctx

    def connect(self) -> None:
        sock = self._ns.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect((self.host, self.port))
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self.host)


class Rest:
    """JSON over keep-alive HTTPS, one connection per thread, a few retries on 429/5xx."""

    def __init__(self, ns: Any, server: str, ca: Path, token: str, timeout: float = 60.0) -> None:
        host_port = server.split("://", 1)[1]
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.ns = ns
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.token = token
        self.timeout = timeout
        self.local = threading.local()
        self.retries = 0

    def _conn(self) -> _NsHTTPS:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = _NsHTTPS(self.ns, self.host, self.port, self.ctx, self.timeout)
            self.local.conn = conn
        return conn

    def raw(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            "User-Agent": "pingmesh-apiserver-bench",
        }
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in range(3):
            conn = self._conn()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        ok: Sequence[int] = (200, 201),
    ) -> Any:
        delay = 0.2
        for attempt in range(8):
            status, raw = self.raw(method, path, body, content_type)
            if status in ok:
                return json.loads(raw) if raw else None
            if status in (429, 500, 503, 504) and attempt < 7:
                self.retries += 1
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            raise RuntimeError(f"{method} {path}: {status} {raw[:300]!r}")
        raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# Objects: Nodes as a kubelet registers them, pods as the DaemonSet controller and a kubelet
# make them


def load_pod_template() -> dict[str, Any]:
    import yaml

    ds = yaml.safe_load((ROOT / "deploy" / "base" / "daemonset.yaml").read_text())
    template: dict[str, Any] = ds["spec"]["template"]
    return template


DS_TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
]


def host_ip(i: int) -> str:
    return "198.19.0.11" if i == 0 else str(HOST_NET[i + 1])


def pod_ip(i: int) -> str:
    return "198.19.17.2" if i == 0 else str(POD_NET[i + 1])


def node_labels(i: int, zones: int) -> dict[str, str]:
    name = node_name(i)
    return {
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": "bench-2x8",
        "topology.kubernetes.io/region": "bench-1",
        ZONE_LABEL: f"bench-1{chr(ord('a') + i % zones) if zones <= 26 else i % zones}",
    }


def node_status(i: int, t: str) -> dict[str, Any]:
    cap = {
        "cpu": "2",
        "ephemeral-storage": "101430960Ki",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
        "memory": "8129576Ki",
        "pods": "110",
    }
    conds = [
        {
            "type": k,
            "status": "False",
            "reason": r,
            "message": m,
            "lastHeartbeatTime": t,
            "lastTransitionTime": t,
        }
        for k, r, m in (
            (
                "MemoryPressure",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        )
    ]
    conds.append(
        {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": t,
            "lastTransitionTime": t,
        }
    )
    return {
        "addresses": [
            {"type": "InternalIP", "address": host_ip(i)},
            {"type": "Hostname", "address": node_name(i)},
        ],
        "capacity": cap,
        "allocatable": {**cap, "cpu": "1930m", "memory": "7313960Ki"},
        "conditions": conds,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "architecture": "amd64",
            "bootID": hashlib.md5(f"b{i}".encode()).hexdigest(),
            "containerRuntimeVersion": "containerd://1.7.24",
            "kernelVersion": "6.18.44",
            "kubeProxyVersion": "",
            "kubeletVersion": "v1.34.4",
            "machineID": hashlib.md5(f"m{i}".encode()).hexdigest(),
            "operatingSystem": "linux",
            "osImage": "Debian GNU/Linux 12 (bookworm)",
            "systemUUID": hashlib.md5(f"u{i}".encode()).hexdigest(),
        },
    }


def node_object(i: int, zones: int, t: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node_name(i),
            "labels": node_labels(i, zones),
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {},
        "status": node_status(i, t),
    }


def pod_object(template: dict[str, Any], i: int) -> dict[str, Any]:
    node = node_name(i)
    spec = json.loads(json.dumps(template["spec"]))
    spec["nodeName"] = node
    spec["tolerations"] = list(spec.get("tolerations") or []) + DS_TOLERATIONS
    spec["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
                ]
            }
        }
    }
    meta = template.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"pingmesh-exporter-{pod_suffix(i)}",
            "namespace": NAMESPACE,
            "generateName": "pingmesh-exporter-",
            "labels": {
                **meta.get("labels", {}),
                "controller-revision-hash": DS_REVISION_HASH,
                "pod-template-generation": "1",
            },
            "annotations": dict(meta.get("annotations", {})),
        },
        "spec": spec,
    }


def pod_conditions(t: str, ready: bool) -> list[dict[str, Any]]:
    r = "True" if ready else "False"
    return [
        {"type": k, "status": s, "lastProbeTime": None, "lastTransitionTime": t}
        for k, s in (
            ("PodReadyToStartContainers", "True"),
            ("Initialized", "True"),
            ("Ready", r),
            ("ContainersReady", r),
            ("PodScheduled", "True"),
        )
    ]


def pod_status(created: dict[str, Any], i: int, t: str) -> dict[str, Any]:
    vol = next(
        (
            v["name"]
            for v in created["spec"].get("volumes") or []
            if v["name"].startswith("kube-api-access-")
        ),
        None,
    )
    digest = hashlib.sha256(b"pingmesh-exporter:0.1.0").hexdigest()
    cid = hashlib.sha256(f"c{i}".encode()).hexdigest()
    cs: dict[str, Any] = {
        "name": "exporter",
        "state": {"running": {"startedAt": t}},
        "lastState": {},
        "ready": True,
        "restartCount": 0,
        "image": "docker.io/library/pingmesh-exporter:0.1.0",
        "imageID": f"docker.io/library/pingmesh-exporter@sha256:{digest}",
        "containerID": f"containerd://{cid}",
        "started": True,
    }
    if vol:
        cs["volumeMounts"] = [
            {
                "name": vol,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                "readOnly": True,
                "recursiveReadOnly": "Disabled",
            }
        ]
    return {
        "status": {
            "phase": "Running",
            "conditions": pod_conditions(t, True),
            "hostIP": host_ip(i),
            "hostIPs": [{"ip": host_ip(i)}],
            "podIP": pod_ip(i),
            "podIPs": [{"ip": pod_ip(i)}],
            "startTime": t,
            "containerStatuses": [cs],
        }
    }


SMP = "application/strategic-merge-patch+json"


def populate(
    rest: Rest, nodes: int, zones: int, concurrency: int, start: int = 0
) -> dict[str, Any]:
    """Every Node (but the exporter's, made by add_node: only its status), then every pod and
    its status, from index start (a cluster grown in steps). Returns timings."""
    template = load_pod_template()
    t = now_rfc3339()
    out: dict[str, Any] = {"concurrency": concurrency}

    def one_node(i: int) -> None:
        if i == 0:
            rest.call(
                "PATCH",
                f"/api/v1/nodes/{node_name(0)}/status?fieldManager=kubelet",
                {"status": node_status(0, t)},
                SMP,
            )
        else:
            rest.call("POST", "/api/v1/nodes?fieldManager=kubelet", node_object(i, zones, t))

    def one_pod(i: int) -> None:
        created = rest.call(
            "POST",
            f"/api/v1/namespaces/{NAMESPACE}/pods?fieldManager=kube-controller-manager",
            pod_object(template, i),
        )
        rest.call(
            "PATCH",
            f"/api/v1/namespaces/{NAMESPACE}/pods/"
            f"{created['metadata']['name']}/status?fieldManager=kubelet",
            pod_status(created, i, t),
            SMP,
        )

    for what, fn, writes in (("nodes", one_node, 1), ("pods", one_pod, 2)):
        started = time.monotonic()
        done = 0
        with cf.ThreadPoolExecutor(concurrency, thread_name_prefix=f"populate-{what}") as pool:
            futures = [pool.submit(fn, i) for i in range(start, nodes)]
            for fut in cf.as_completed(futures):
                fut.result()
                done += 1
                if done % 1000 == 0:
                    print(
                        f"  {what}: {done}/{nodes} ({time.monotonic() - started:.0f} s)", flush=True
                    )
        took = time.monotonic() - started
        made = nodes - start
        out[what] = {
            "objects": made,
            "writes": made * writes,
            "seconds": took,
            "writes_per_s": made * writes / took,
        }
        print(f"{made} {what} in {took:.1f} s ({made * writes / took:.0f} writes/s)", flush=True)
    out["retries"] = rest.retries
    out["seconds"] = out["nodes"]["seconds"] + out["pods"]["seconds"]
    return out


# --------------------------------------------------------------------------------------------
# The API server's /metrics

WANTED = (
    "apiserver_watch_events_sizes_sum",
    "apiserver_watch_events_sizes_count",
    "apiserver_watch_events_total",
    "apiserver_longrunning_requests",
    "apiserver_request_total",
    "apiserver_flowcontrol_rejected_requests_total",
    "go_memstats_heap_inuse_bytes",
    "go_memstats_next_gc_bytes",
    "go_goroutines",
    "go_memstats_stack_inuse_bytes",
    "apiserver_watch_cache_events_received_total",
    "apiserver_terminated_watchers_total",
)


def apiserver_metrics(rest: Rest) -> Samples:
    status, raw = rest.raw("GET", "/metrics")
    if status != 200:
        return []
    return parse(raw.decode(errors="replace"), WANTED)


def wait_quiet(rest: Rest, quiet_s: float = 15.0, timeout: float = 600.0) -> dict[str, Any]:
    """Until no pod or node has changed for quiet_s: after the population the controllers
    still write (the TTL controller annotates every Node as the cluster grows), and those
    writes are events that must not fall in a measured window."""
    started = time.monotonic()

    def changes() -> float:
        m = apiserver_metrics(rest)
        return value(
            m, "apiserver_watch_cache_events_received_total", default=0.0, resource="pods"
        ) + value(m, "apiserver_watch_cache_events_received_total", default=0.0, resource="nodes")

    last = changes()
    quiet_since = time.monotonic()
    while time.monotonic() - started < timeout:
        time.sleep(2.5)
        now = changes()
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return {"seconds": time.monotonic() - started, "quiet": True}
    return {"seconds": time.monotonic() - started, "quiet": False}


def metrics_delta(a: list[Any], b: list[Any]) -> dict[str, Any]:
    def d(name: str, **lb: str) -> float:
        return value(b, name, default=0.0, **lb) - value(a, name, default=0.0, **lb)

    out: dict[str, Any] = {}
    for res in ("pods", "nodes"):
        size_sum = d("apiserver_watch_events_sizes_sum", resource=res)
        size_n = d("apiserver_watch_events_sizes_count", resource=res)
        out[res] = {
            "watch_events": d("apiserver_watch_events_total", resource=res),
            "watch_event_bytes": size_sum,
            "watch_events_sized": size_n,
            "mean_event_bytes": size_sum / size_n if size_n else None,
            "lists": d("apiserver_request_total", verb="LIST", resource=res),
            "watches": d("apiserver_request_total", verb="WATCH", resource=res),
        }
    out["apf_rejected"] = d("apiserver_flowcontrol_rejected_requests_total")
    out["terminated_watchers"] = d("apiserver_terminated_watchers_total")
    return out


def metrics_level(s: list[Any]) -> dict[str, Any]:
    return {
        "watches_pods": value(
            s, "apiserver_longrunning_requests", default=0.0, verb="WATCH", resource="pods"
        ),
        "watches_nodes": value(
            s, "apiserver_longrunning_requests", default=0.0, verb="WATCH", resource="nodes"
        ),
        "watches_all": value(s, "apiserver_longrunning_requests", default=0.0, verb="WATCH"),
        "heap_inuse_mib": value(s, "go_memstats_heap_inuse_bytes", default=0.0) / 2**20,
        # The heap goal is twice the heap marked live by the last GC (GOGC=100, the
        # default): half of it is the live heap, without the garbage a LIST left behind.
        "live_heap_mib": value(s, "go_memstats_next_gc_bytes", default=0.0) / 2 / 2**20,
        "stack_mib": value(s, "go_memstats_stack_inuse_bytes", default=0.0) / 2**20,
        "goroutines": value(s, "go_goroutines", default=0.0),
    }


# --------------------------------------------------------------------------------------------
# The watchers' process (--child): N exporters' discovery, as the exporter builds it


def child_main(args: argparse.Namespace) -> int:
    import asyncio

    from bench.counting import LOCK, CountingApi, Counts
    from exporter.config import parse_settings
    from exporter.discovery.api import Resource
    from exporter.discovery.kubeapi import load_configuration
    from exporter.discovery.objects import (
        SERVICE_NAME_LABEL,
        parse_endpoint_slice,
        parse_node_meta,
        parse_pod,
        parse_service,
    )
    from exporter.discovery.reflector import Reflector

    out_lock = threading.Lock()

    def emit(doc: dict[str, Any]) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(doc) + "\n")
            sys.stdout.flush()

    class Watcher:
        def __init__(self, i: int) -> None:
            argv = [
                "--discovery=kubernetes",
                "--kubeconfig",
                args.kubeconfig,
                "--kubernetes.namespace",
                NAMESPACE,
                "--kubernetes.node-name",
                node_name(i + 1),
                "--mesh.zones",
            ]
            s = parse_settings(argv, environ={})
            k = s.kubernetes
            self.counts = Counts()
            self.api = CountingApi(load_configuration(k), self.counts)
            timing = {
                "request_timeout": k.request_timeout,
                "watch_timeout": k.watch_timeout,
                "retry_max_delay": k.retry_max_delay,
                "startup_denial_timeout": k.startup_denial_timeout,
            }

            def noop() -> None:
                pass

            self.pods = Reflector(
                self.api, Resource("pods", NAMESPACE, k.peer_selector), parse_pod, noop, **timing
            )
            self.nodes = Reflector(
                self.api, Resource("nodes", metadata_only=True), parse_node_meta, noop, **timing
            )
            self.services = Reflector(self.api, Resource("services"), parse_service, noop, **timing)
            self.slices = Reflector(
                self.api,
                Resource("endpointslices", label_selector=f"{SERVICE_NAME_LABEL} in (kubernetes)"),
                parse_endpoint_slice,
                noop,
                **timing,
            )
            self.started = time.monotonic()
            self.synced_after: float | None = None

        async def run_services(self) -> None:
            # The exporter opens the EndpointSlice watch once the Services are listed and
            # it knows which are selected.
            task = asyncio.create_task(self.services.run())
            await self.services.synced.wait()
            await asyncio.gather(task, self.slices.run())

        @property
        def reflectors(self) -> list[Any]:
            return [self.pods, self.nodes, self.services, self.slices]

        def ready(self) -> bool:
            return all(r.synced.is_set() for r in self.reflectors)

        def snapshot(self) -> dict[str, Any]:
            with LOCK:
                c = self.counts
                doc: dict[str, Any] = {
                    "bytes": dict(c.bytes),
                    "events": dict(c.events),
                    "pages": dict(c.pages),
                    "lists": {k: list(v) for k, v in c.lists.items()},
                    "list_items": dict(c.list_items),
                }
            doc["store"] = {r.resource.name: len(r.store) for r in self.reflectors}
            doc["reflectors"] = {
                r.resource.name: {
                    "requests": dict(r.stats.requests),
                    "errors": dict(r.stats.errors),
                    "restarts": dict(r.stats.restarts),
                }
                for r in self.reflectors
            }
            doc["synced_after"] = self.synced_after
            return doc

    async def run() -> None:
        watchers = [Watcher(i) for i in range(args.child)]
        loop = asyncio.get_running_loop()
        quit_ev = asyncio.Event()

        def command(line: str) -> None:
            cmd = line.strip()
            if cmd == "stats":
                emit({"stats": [w.snapshot() for w in watchers], "t": time.time()})
            elif cmd in ("quit", ""):
                quit_ev.set()

        def stdin_reader() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(command, line)
                if line.strip() == "quit":
                    return
            loop.call_soon_threadsafe(command, "")

        threading.Thread(target=stdin_reader, name="stdin", daemon=True).start()
        tasks = []
        for w in watchers:
            tasks.append(asyncio.create_task(w.pods.run()))
            tasks.append(asyncio.create_task(w.nodes.run()))
            tasks.append(asyncio.create_task(w.run_services()))
        emit({"started": len(watchers), "t": time.time()})
        pending = set(range(len(watchers)))
        while pending and not quit_ev.is_set():
            for i in list(pending):
                if watchers[i].ready():
                    watchers[i].synced_after = time.monotonic() - watchers[i].started
                    pending.discard(i)
            if not pending:
                emit({"synced": [w.snapshot() for w in watchers], "t": time.time()})
                break
            await asyncio.sleep(0.05)
        await quit_ev.wait()
        emit({"final": [w.snapshot() for w in watchers], "t": time.time()})
        for t in tasks:
            t.cancel()

    asyncio.run(run())
    sys.stdout.flush()
    os._exit(0)  # watch threads are blocked in reads; the API server sees the sockets close


class Child:
    """The watchers' process, inside the cluster's network namespace, talking JSON lines."""

    # Whose --child runs there (imported from cwd, the repository root).
    module = "bench.apiserver_bench"

    def __init__(self, ns_path: Path, n: int, kubeconfig: Path, log: Path) -> None:
        self.n = n
        self._err: IO[bytes] = open(log, "ab")  # noqa: SIM115 - closed in stop()
        argv = [
            "nsenter",
            f"--net={ns_path}",
            sys.executable,
            "-m",
            self.module,
            "--child",
            str(n),
            "--kubeconfig",
            str(kubeconfig),
        ]
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            start_new_session=True,
        )
        self.pid = exec_pid(self.proc.pid, "--child")
        self._buf = b""

    def read(self, key: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                doc: dict[str, Any] = json.loads(line)
                if key in doc:
                    return doc
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"watchers' process: no {key!r} after {timeout:.0f}s")
            r, _, _ = select.select([fd], [], [], min(left, 1.0))
            if r:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    time.sleep(0.5)
                    raise RuntimeError(
                        f"watchers' process exited ({self.proc.poll()}) before {key!r}"
                    )
                self._buf += chunk

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        self.proc.stdin.flush()

    def stats(self) -> list[dict[str, Any]]:
        self.send("stats")
        return list(self.read("stats", 60)["stats"])

    def stop(self) -> list[dict[str, Any]] | None:
        final = None
        with contextlib.suppress(Exception):
            self.send("quit")
            final = list(self.read("final", 30)["final"])
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._err.close()
        return final


# --------------------------------------------------------------------------------------------
# Pod events at a fixed rate


class Churn:
    """rate status patches per second, each flipping a random pod's Ready (and
    ContainersReady) condition, by a small pool so one slow answer does not shift the rest."""

    def __init__(self, rest: Rest, pods: list[str], seed: int = 7) -> None:
        self.rest = rest
        self.pods = pods
        self.ready = dict.fromkeys(pods, True)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def run(self, rate: float, seconds: float) -> dict[str, Any]:
        n = int(rate * seconds)
        lat: list[float] = []
        errors: list[str] = []
        started = time.monotonic()

        def one(name: str, ready: bool) -> None:
            t0 = time.monotonic()
            patch = {
                "status": {
                    "conditions": [
                        {
                            "type": k,
                            "status": "True" if ready else "False",
                            "lastTransitionTime": now_rfc3339(),
                        }
                        for k in ("Ready", "ContainersReady")
                    ]
                }
            }
            try:
                self.rest.call(
                    "PATCH",
                    f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/status?fieldManager=kubelet",
                    patch,
                    SMP,
                )
                with self.lock:
                    lat.append(time.monotonic() - t0)
            except Exception as exc:
                with self.lock:
                    errors.append(repr(exc)[:200])

        with cf.ThreadPoolExecutor(4, thread_name_prefix="churn") as pool:
            futures = []
            for k in range(n):
                time.sleep(max(0.0, started + k / rate - time.monotonic()))
                name = self.rng.choice(self.pods)
                self.ready[name] = not self.ready[name]
                futures.append(pool.submit(one, name, self.ready[name]))
            for f in futures:
                f.result()
        took = time.monotonic() - started
        lat.sort()
        return {
            "events": len(lat),
            "errors": errors,
            "seconds": took,
            "rate": len(lat) / took if took else 0.0,
            "latency_median_s": statistics.median(lat) if lat else None,
            "latency_p99_s": lat[int(0.99 * (len(lat) - 1))] if lat else None,
            "latency_max_s": lat[-1] if lat else None,
        }


def steady_parts(
    churn: Churn, meter: Meter, args: argparse.Namespace
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The churn in a thread, and meter snapshots at the edges of --steady-parts equal
    sub-windows (their spread is the noise of the per-event figures)."""
    got: list[dict[str, Any]] = []
    thread = threading.Thread(
        target=lambda: got.append(churn.run(args.rate, args.steady_seconds)),
        name="churn-run",
        daemon=True,
    )
    snaps = [meter.snapshot()]
    start = snaps[0]["t"]
    thread.start()
    part = args.steady_seconds / args.steady_parts
    for k in range(1, args.steady_parts + 1):
        time.sleep(max(0.0, start + k * part - time.monotonic()))
        snaps.append(meter.snapshot())
    thread.join(args.steady_seconds + 120)
    time.sleep(1.0)  # the last events reach the watchers
    if not got:
        raise RuntimeError("the churn did not finish")
    return got[0], snaps


# --------------------------------------------------------------------------------------------
# Aggregating the watchers' counters


def _total(stats: list[dict[str, Any]], table: str, key: str) -> int:
    return sum(int(w[table].get(key, 0)) for w in stats)


def counters_delta(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"bytes": {}, "events": {}}
    keys_b = {k for w in b for k in w["bytes"]}
    for k in sorted(keys_b):
        out["bytes"][k] = _total(b, "bytes", k) - _total(a, "bytes", k)
    keys_e = {k for w in b for k in w["events"]}
    for k in sorted(keys_e):
        out["events"][k] = _total(b, "events", k) - _total(a, "events", k)
    return out


def reflector_totals(stats: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, dict[str, int]] = {}
    for w in stats:
        for res, r in w["reflectors"].items():
            slot = out.setdefault(res, {})
            for table in ("requests", "errors", "restarts"):
                for k, v in r[table].items():
                    slot[f"{table}/{k}"] = slot.get(f"{table}/{k}", 0) + int(v)
    return out


# --------------------------------------------------------------------------------------------
# One N


def run_watchers(
    n: int,
    *,
    cluster: Any,
    rest: Rest,
    meter: Meter,
    churn: Churn,
    kubeconfig: Path,
    args: argparse.Namespace,
    log: Path,
) -> dict[str, Any]:
    print(f"\n== {n} watchers ==", flush=True)
    res: dict[str, Any] = {"watchers": n}
    audit_since = time.time()
    child: Child | None = None
    try:
        m0 = apiserver_metrics(rest)
        s0 = meter.snapshot()
        if n:
            child = Child(cluster.cp.path, n, kubeconfig, log)
            meter.add("watchers", child.pid)
            synced = child.read("synced", args.sync_timeout)
            s1 = meter.snapshot()
            m1 = apiserver_metrics(rest)
            stats1: list[dict[str, Any]] = synced["synced"]
            res["sync"] = {
                "cost": meter.window(s0, s1),
                "apiserver": metrics_delta(m0, m1),
                "synced_after_s": summary([w["synced_after"] for w in stats1]),
                "list_s": {
                    r: summary([x for w in stats1 for x in w["lists"].get(r, [])]) for r in WATCHED
                },
                "list_bytes_per_watcher": {
                    r: statistics.fmean(w["bytes"].get(f"{r}/list", 0) for w in stats1)
                    for r in WATCHED
                },
                "list_pages_per_watcher": {
                    r: statistics.fmean(w["pages"].get(r, 0) for w in stats1) for r in WATCHED
                },
                "store": stats1[0]["store"],
                "apiserver_level": metrics_level(m1),
                "reflectors": reflector_totals(stats1),
            }
            print(
                f"synced in {s1['t'] - s0['t']:.1f} s; pods LIST "
                f"{res['sync']['list_bytes_per_watcher']['pods'] / 2**20:.1f} MiB in "
                f"{res['sync']['list_pages_per_watcher']['pods']:.0f} page(s), median "
                f"{res['sync']['list_s']['pods'].get('median', 0):.2f} s; store "
                f"{stats1[0]['store']}",
                flush=True,
            )
            time.sleep(args.settle_seconds)
        else:
            stats1 = []
            time.sleep(min(args.settle_seconds, 5.0))
        # Idle: bookmarks only.
        a = meter.snapshot()
        ma = apiserver_metrics(rest)
        ca = child.stats() if child else []
        time.sleep(args.idle_seconds)
        b = meter.snapshot()
        mb = apiserver_metrics(rest)
        cb = child.stats() if child else []
        res["idle"] = {
            "cost": meter.window(a, b),
            "apiserver": metrics_delta(ma, mb),
            "apiserver_level": metrics_level(mb),
            "watchers": counters_delta(ca, cb) if child else None,
        }
        print(
            f"idle {args.idle_seconds:.0f} s: apiserver "
            f"{res['idle']['cost']['cpu_per_s'].get('kube-apiserver', 0):.3f} CPU s/s, "
            f"{res['idle']['cost']['rss_mib'].get('kube-apiserver', 0):.0f} MiB",
            flush=True,
        )
        # Steady: pod events at a fixed rate.
        c = meter.snapshot()
        mc = apiserver_metrics(rest)
        cc = child.stats() if child else []
        ch, parts = steady_parts(churn, meter, args)
        d = meter.snapshot()
        md = apiserver_metrics(rest)
        cd = child.stats() if child else []
        res["steady"] = {
            "cost": meter.window(c, d),
            "apiserver": metrics_delta(mc, md),
            "apiserver_level": metrics_level(md),
            "churn": ch,
            "parts": [meter.window(x, y) for x, y in itertools.pairwise(parts)],
            "watchers": counters_delta(cc, cd) if child else None,
        }
        print(
            f"steady {ch['events']} events at {ch['rate']:.1f}/s: apiserver "
            f"{res['steady']['cost']['cpu_per_s'].get('kube-apiserver', 0):.3f} CPU s/s; "
            f"patch median {ch['latency_median_s'] * 1000:.0f} ms",
            flush=True,
        )
        if child:
            res["reflectors_end"] = reflector_totals(cd)
        res["audit"] = {
            f"{verb}/{r}": cluster.audit_count(since=audit_since, verb=verb, resource=r)
            for verb in ("list", "watch")
            for r in WATCHED
        }
        res["audit"]["429"] = cluster.audit_count(
            since=audit_since, stage="ResponseComplete", code=429
        )
        res["audit"]["410"] = cluster.audit_count(
            since=audit_since, stage="ResponseComplete", code=410
        )
    finally:
        if child is not None:
            meter.remove("watchers")
            child.stop()
    time.sleep(3.0)  # the server closes the watches
    return res


# --------------------------------------------------------------------------------------------
# One real exporter


def run_exporter(
    *,
    node: Any,
    rest: Rest,
    meter: Meter,
    churn: Churn,
    kubeconfig: Path,
    args: argparse.Namespace,
    log_path: Path,
) -> dict[str, Any]:
    from tests.support.exporter_proc import http_get

    print("\n== one real exporter ==", flush=True)
    argv = [
        "nsenter",
        f"--net={node.ns.path}",
        sys.executable,
        "-m",
        "exporter",
        "--discovery=kubernetes",
        "--kubeconfig",
        str(kubeconfig),
        "--kubernetes.node-name",
        EXPORTER_NODE,
        "--kubernetes.namespace",
        NAMESPACE,
        "--kubernetes.pod-name",
        f"pingmesh-exporter-{pod_suffix(0)}",
        "--mesh.zones",
        "--web.listen-address",
        f"127.0.0.1:{EXPORTER_PORT}",
        "--log.format=json",
    ]
    out: dict[str, Any] = {"argv": argv[3:]}
    with open(log_path, "wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            pid = exec_pid(proc.pid, "exporter")
            meter.add("exporter", pid)
            s0 = meter.snapshot()
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"exporter exited with {proc.returncode}: {log_path}")
                with contextlib.suppress(OSError):
                    if http_get(node.ns, EXPORTER_PORT, "/readyz", timeout=5)[0] == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"exporter not ready after 180 s: {log_path}")
                time.sleep(0.1)
            out["ready_s"] = time.monotonic() - started
            s1 = meter.snapshot()
            out["start"] = meter.window(s0, s1)
            time.sleep(args.exporter_settle_seconds)
            a = meter.snapshot()
            time.sleep(args.idle_seconds)
            b = meter.snapshot()
            out["idle"] = meter.window(a, b)
            ch = churn.run(args.rate, args.steady_seconds)
            time.sleep(1.0)
            c = meter.snapshot()
            out["steady"] = meter.window(b, c)
            out["steady"]["churn"] = ch
            out["hwm_mib"] = status_kib(pid, "VmHWM") / 1024
            code, _, body = http_get(node.ns, EXPORTER_PORT, "/metrics", timeout=60)
            samples = parse(body.decode()) if code == 200 else []

            out["metrics"] = {
                "mesh_peers": value(samples, "pingmesh_mesh_peers", default=0.0),
                "selected_peers": value(samples, "pingmesh_mesh_selected_peers", default=0.0),
                "targets": len(
                    {
                        (lb.get("kind"), lb.get("target_node"), lb.get("ip_family"))
                        for n, lb, _ in samples
                        if n == "pingmesh_target_up"
                    }
                ),
                "requests": {
                    f"{lb.get('resource')}/{lb.get('verb')}": v
                    for n, lb, v in samples
                    if n == "pingmesh_discovery_requests_total"
                },
                "api_errors": {
                    f"{lb.get('resource')}/{lb.get('code')}": v
                    for n, lb, v in samples
                    if n == "pingmesh_discovery_api_errors_total"
                },
                "discovery_up": value(samples, "pingmesh_discovery_up", default=0.0),
            }
            print(
                f"exporter ready after {out['ready_s']:.1f} s; idle "
                f"{out['idle']['cpu_per_s'].get('exporter', 0):.3f} CPU s/s, "
                f"{out['idle']['rss_mib'].get('exporter', 0):.0f} MiB; under events "
                f"{out['steady']['cpu_per_s'].get('exporter', 0):.3f} CPU s/s; peers "
                f"{out['metrics']['mesh_peers']:.0f}",
                flush=True,
            )
        finally:
            meter.remove("exporter")
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
    return out


# --------------------------------------------------------------------------------------------
# --memory: one real exporter's RSS in sampled mode, and which LIST request bounds it

# The API server's own account of where a list was served from: the watch cache
# (apiserver_cache_list_*), etcd (apiserver_storage_list_*, etcd_requests_total), and the
# consistent reads the cache served or passed on (apiserver_watch_cache_consistent_read_total).
LIST_METRICS = (
    "apiserver_cache_list_total",
    "apiserver_cache_list_fetched_objects_total",
    "apiserver_cache_list_returned_objects_total",
    "apiserver_storage_list_total",
    "apiserver_storage_list_fetched_objects_total",
    "apiserver_storage_list_returned_objects_total",
    "apiserver_watch_cache_consistent_read_total",
    "etcd_requests_total",
    "apiserver_request_total",
    "apiserver_watch_list_duration_seconds_count",
)
LIST_VARIANTS = {
    "rv0": "resourceVersion=0&limit=500",
    "consistent": "limit=500",
    "consistent100": "limit=100",
    "watchlist": (
        "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
        "&allowWatchBookmarks=true&timeoutSeconds=600"
    ),
}


def list_metrics(rest: Rest) -> Samples:
    status, raw = rest.raw("GET", "/metrics")
    return parse(raw.decode(errors="replace"), LIST_METRICS) if status == 200 else []


def samples_delta(a: Samples, b: Samples) -> dict[str, float]:
    """Every sample that moved, as name{labels} -> delta."""
    before = {(n, tuple(sorted(lb.items()))): v for n, lb, v in a}
    out = {}
    for n, lb, v in b:
        key = (n, tuple(sorted(lb.items())))
        d = v - before.get(key, 0.0)
        if d:
            out[n + "{" + ",".join(f"{k}={x}" for k, x in key[1]) + "}"] = d
    return out


def one_list_request(rest: Rest, path: str, query: str, accept: str) -> dict[str, Any]:
    """One list as the variant asks, read the way the exporter reads it: page by page, or a
    watch-list line by line up to its initial-events-end bookmark."""
    out: dict[str, Any] = {"pages": 0, "bytes": 0, "max_page_bytes": 0, "objects": 0}
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {rest.token}", "Accept": accept}
    conn = _NsHTTPS(rest.ns, rest.host, rest.port, rest.ctx, 120.0)
    try:
        if "watch=true" in query:
            conn.request("GET", f"{path}?{query}", headers=headers)
            resp = conn.getresponse()
            out["status"] = resp.status
            for _ in range(10_000_000):
                line = resp.readline()
                if not line:
                    out["error"] = "stream ended before the initial-events-end bookmark"
                    break
                out["bytes"] += len(line)
                out["max_page_bytes"] = max(out["max_page_bytes"], len(line))
                ev = json.loads(line)
                if ev["type"] == "ADDED":
                    out["objects"] += 1
                    continue
                ann = (ev["object"].get("metadata") or {}).get("annotations") or {}
                if ev["type"] == "BOOKMARK" and ann.get("k8s.io/initial-events-end") == "true":
                    out["resource_version"] = ev["object"]["metadata"]["resourceVersion"]
                    break
                out["error"] = f"{ev['type']} before the end of the initial events"
                break
        else:
            cont = ""
            for _ in range(100_000):
                q = query + (f"&continue={cont}" if cont else "")
                conn.request("GET", f"{path}?{q}", headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                out["status"] = resp.status
                if resp.status != 200:
                    out["error"] = body[:300].decode(errors="replace")
                    break
                doc = json.loads(body)
                out["pages"] += 1
                out["bytes"] += len(body)
                out["max_page_bytes"] = max(out["max_page_bytes"], len(body))
                out["objects"] += len(doc.get("items") or [])
                cont = (doc.get("metadata") or {}).get("continue") or ""
                if not cont:
                    out["resource_version"] = doc["metadata"].get("resourceVersion")
                    break
    finally:
        conn.close()
    out["seconds"] = time.monotonic() - started
    return out


def list_probe(rest: Rest) -> dict[str, Any]:
    """Each way of listing the exporter's two big resources, with the API server's metrics
    before and after (nothing else lists in between: the cluster is quiet)."""
    from exporter.discovery.kubeapi import METADATA_LIST, METADATA_OBJECT

    targets = {
        "pods": (
            f"/api/v1/namespaces/{NAMESPACE}/pods",
            f"labelSelector={SELECTOR}",
            "application/json",
            "application/json",
        ),
        "nodes (metadata)": ("/api/v1/nodes", "", METADATA_LIST, METADATA_OBJECT),
    }
    out: dict[str, Any] = {}
    for what, (path, sel, accept_list, accept_watch) in targets.items():
        for variant, query in LIST_VARIANTS.items():
            q = "&".join(x for x in (sel.replace("=", "%3D", 1), query) if x)
            accept = accept_watch if variant == "watchlist" else accept_list
            a = list_metrics(rest)
            r = one_list_request(
                rest, path, q.replace("labelSelector%3D", "labelSelector="), accept
            )
            time.sleep(1.0)
            r["apiserver"] = samples_delta(a, list_metrics(rest))
            out[f"{what}: {variant}"] = r
            print(
                f"  {what} {variant}: {r['objects']} objects, {r['pages']} pages, largest "
                f"{r['max_page_bytes'] / 2**20:.2f} MiB, {r['seconds']:.2f} s, "
                f"{r.get('error', 'ok')}; etcd/cache: "
                + ", ".join(
                    f"{k}={v:.0f}"
                    for k, v in r["apiserver"].items()
                    if k.startswith(("apiserver_cache_list_total", "apiserver_storage_list_total"))
                    or ("etcd_requests_total" in k and "list" in k.lower())
                    or "consistent_read" in k
                ),
                flush=True,
            )
    return out


def exporter_argv(node: Any, kubeconfig: Path) -> list[str]:
    """python -m exporter as the DaemonSet runs it (sampled mode: default --mesh.peers)."""
    return [
        "--discovery=kubernetes",
        "--kubeconfig",
        str(kubeconfig),
        "--kubernetes.node-name",
        EXPORTER_NODE,
        "--kubernetes.namespace",
        NAMESPACE,
        "--kubernetes.pod-name",
        f"pingmesh-exporter-{pod_suffix(0)}",
        "--web.listen-address",
        f"127.0.0.1:{EXPORTER_PORT}",
        "--log.format=json",
    ]


def static_argv() -> list[str]:
    return [
        "--discovery=static",
        "--target",
        "198.18.0.1,198.18.0.2",
        "--web.listen-address",
        f"127.0.0.1:{EXPORTER_PORT}",
        "--log.format=json",
    ]


def memory_exporter(
    *, node: Any, argv: list[str], tree: Path, python: str, settle_s: float, log_path: Path
) -> dict[str, Any]:
    """One exporter process from tree: time to /readyz, RSS at ready, RSS sampled every 0.1 s
    for settle_s, RSS at the end (settled) and VmHWM (peak)."""
    from tests.support.exporter_proc import http_get

    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = ["nsenter", f"--net={node.ns.path}", python, "-m", "exporter", *argv]
    if (tree / "opt" / "pingmesh").is_dir():
        # An image's file tree: its own Python and site-packages, as the image's user, with
        # the environment of the image (bytecode compiled at build time, none written).
        env = {"PATH": "/opt/pingmesh/bin:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
        cmd = [
            "nsenter",
            f"--net={node.ns.path}",
            shutil.which("chroot") or "/usr/sbin/chroot",  # the image's PATH below lacks it
            "--userspec=65534:65534",
            str(tree),
            "/opt/pingmesh/bin/python",
            "-m",
            "exporter",
            *argv,
        ]
    out: dict[str, Any] = {"tree": str(tree), "python": python, "argv": argv}
    with open(log_path, "wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=tree,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            pid = exec_pid(proc.pid, "exporter")
            rss: list[tuple[float, float]] = []
            for _ in range(int(180 / 0.05)):
                if proc.poll() is not None:
                    raise RuntimeError(f"exporter exited with {proc.returncode}: {log_path}")
                with contextlib.suppress(OSError, ValueError):
                    rss.append((time.monotonic() - started, status_kib(pid, "VmRSS") / 1024))
                with contextlib.suppress(OSError):
                    if http_get(node.ns, EXPORTER_PORT, "/readyz", timeout=5)[0] == 200:
                        break
                time.sleep(0.05)
            else:
                raise RuntimeError(f"exporter not ready after 180 s: {log_path}")
            out["ready_s"] = time.monotonic() - started
            out["rss_ready_mib"] = status_kib(pid, "VmRSS") / 1024
            out["hwm_ready_mib"] = status_kib(pid, "VmHWM") / 1024
            until = time.monotonic() + settle_s
            while time.monotonic() < until:
                rss.append((time.monotonic() - started, status_kib(pid, "VmRSS") / 1024))
                time.sleep(0.1)
            out["rss_settled_mib"] = status_kib(pid, "VmRSS") / 1024
            out["hwm_mib"] = status_kib(pid, "VmHWM") / 1024
            out["rss_max_sampled_mib"] = max(r for _, r in rss)
            out["rss_timeline"] = rss[:: max(1, len(rss) // 200)]
            code, _, body = http_get(node.ns, EXPORTER_PORT, "/metrics", timeout=60)
            samples = parse(body.decode()) if code == 200 else []
            out["metrics"] = {
                "mesh_peers": value(samples, "pingmesh_mesh_peers", default=0.0),
                "selected_peers": value(samples, "pingmesh_mesh_selected_peers", default=0.0),
                "targets": len(
                    {
                        (
                            lb.get("kind"),
                            lb.get("target_node"),
                            lb.get("target"),
                            lb.get("ip_family"),
                        )
                        for n, lb, _ in samples
                        if n == "pingmesh_target_up"
                    }
                ),
                "discovery_up": value(samples, "pingmesh_discovery_up", default=0.0),
            }
            print(
                f"  {tree.name or tree}: ready {out['ready_s']:.2f} s at "
                f"{out['rss_ready_mib']:.1f} MiB; settled {out['rss_settled_mib']:.1f} MiB, "
                f"peak {out['hwm_mib']:.1f} MiB; peers {out['metrics']['mesh_peers']:.0f}, "
                f"targets {out['metrics']['targets']}",
                flush=True,
            )
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
    return out


def memory_profile(
    *,
    node: Any,
    argv: list[str],
    tree: Path,
    settle_s: float,
    out_json: Path,
    log_path: Path,
    import_kubernetes: bool,
) -> dict[str, Any]:
    """bench/rss_profile.py over the exporter of tree (its steps and tracemalloc snapshot);
    import_kubernetes prices the official client's import as a step of its own."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    flags = ["--import-kubernetes"] if import_kubernetes else []
    cmd = [
        "nsenter",
        f"--net={node.ns.path}",
        sys.executable,
        str(ROOT / "bench" / "rss_profile.py"),
        str(out_json),
        str(settle_s),
        *flags,
        "--",
        *argv,
    ]
    try:
        with open(log_path, "wb") as log:
            subprocess.run(
                cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=400
            )
        return dict(json.loads(out_json.read_text()))
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        # A profile is an attribution aid: its failure must not cost the run's figures.
        return {"error": f"{type(exc).__name__}: {exc}", "steps": []}


def memory_main(args: argparse.Namespace) -> int:
    from tests.support.cluster.cluster import Cluster, binaries
    from tests.support.netbed import require_root

    why = require_root() or binaries()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = OUT_DIR / f"memory-bench-{stamp}.json"
    trees = {"after": ROOT}
    if args.before_tree:
        trees = {"before": args.before_tree.resolve(), "after": ROOT}
    if args.image_rootfs:
        trees["image"] = args.image_rootfs.resolve()
    result: dict[str, Any] = {
        "plan": {"peers": args.memory, "settle_s": args.exporter_settle_seconds or 20.0},
        "machine": machine_facts(versions=versions()),
        "trees": {k: str(v) for k, v in trees.items()},
        "sizes": [],
    }
    settle = args.exporter_settle_seconds or 20.0

    def save() -> None:
        path.write_text(json.dumps(_jsonable(result), indent=1) + "\n")

    with Cluster(dual_stack=False) as cluster:
        restart_controller_manager(cluster)
        kubeconfig = exporter_identity(cluster, cluster.dir / "kubeconfig-bench-sa")
        node0 = cluster.add_node(EXPORTER_NODE, node_labels(0, args.zones))
        rest = Rest(cluster.cp, cluster.server, cluster.pki.ca, cluster.pki.tokens["admin"])
        if "image" in trees:
            # As the DaemonSet's securityContext.sysctls does: datagram ICMP for its user.
            node0.ns.run(["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"])
            # The same kubeconfig inside the image's tree, with the CA inline (the cluster's
            # directory is outside the chroot), readable by the image's user.
            doc = json.loads(kubeconfig.read_text())
            ca = base64.b64encode(cluster.pki.ca.read_bytes()).decode()
            doc["clusters"][0]["cluster"] = {
                "server": cluster.server,
                "certificate-authority-data": ca,
            }
            inside = trees["image"] / "tmp" / "kubeconfig-bench-sa"
            inside.write_text(json.dumps(doc))
            os.chown(inside, 65534, 65534)
            inside.chmod(0o600)
        # Start-up in static mode first: no API server involved.
        result["static"] = {
            name: memory_exporter(
                node=node0,
                argv=static_argv(),
                tree=tree,
                python=sys.executable,
                settle_s=5.0,
                log_path=OUT_DIR / f"memory-bench-{stamp}-static-{name}.log",
            )
            for name, tree in trees.items()
        }
        save()
        made = 0
        for peers in args.memory:
            nodes = peers + 1
            print(f"\n== {peers} peers ({nodes} nodes and pods) ==", flush=True)
            size: dict[str, Any] = {"peers": peers, "nodes": nodes}
            size["populate"] = populate(rest, nodes, args.zones, args.concurrency, start=made)
            made = nodes
            size["quiet"] = wait_quiet(rest)
            size["list_requests"] = list_probe(rest)
            for name, tree in trees.items():
                argv = exporter_argv(node0, kubeconfig)
                if name == "image":
                    argv = exporter_argv(node0, Path("/tmp/kubeconfig-bench-sa"))
                size[name] = memory_exporter(
                    node=node0,
                    argv=argv,
                    tree=tree,
                    python=sys.executable,
                    settle_s=settle,
                    log_path=OUT_DIR / f"memory-bench-{stamp}-{peers}-{name}.log",
                )
                save()
            # Not the old tree: under tracemalloc its exporter spun at 100 % CPU for minutes
            # before serving (two runs), so it gave no snapshot.
            profiled = {"after": ROOT} if args.profile else {}
            for name, tree in profiled.items():
                size[f"{name}_profile"] = memory_profile(
                    node=node0,
                    argv=exporter_argv(node0, kubeconfig),
                    tree=tree,
                    settle_s=settle,
                    out_json=OUT_DIR / f"memory-bench-{stamp}-{peers}-{name}-profile.json",
                    log_path=OUT_DIR / f"memory-bench-{stamp}-{peers}-{name}-profile.log",
                    import_kubernetes=name == "before",
                )
                steps = size[f"{name}_profile"]["steps"]
                print(
                    f"  profile {name}: "
                    + "; ".join(f"{s['step']} {s['rss_mib']:.1f}" for s in steps),
                    flush=True,
                )
            result["sizes"].append(size)
            save()
    print(f"\nresults: {path.relative_to(ROOT)}")
    return 0


# --------------------------------------------------------------------------------------------
# Set-up of the cluster


def restart_controller_manager(cluster: Any) -> None:
    """Without the node-lifecycle controller (see the module docstring)."""
    argv = list(cluster._kcm_argv)
    argv = [a if not a.startswith("--controllers=") else a + ",-nodelifecycle" for a in argv]
    cluster.processes["kube-controller-manager"].stop()
    cluster._kcm_argv = argv
    cluster._proc("kube-controller-manager", argv)


def exporter_identity(cluster: Any, path: Path) -> Path:
    """The shipped Namespace, ServiceAccount and RBAC applied, and a kubeconfig at path with a
    bound token of that ServiceAccount: the exporter's own identity, as the DaemonSet has it."""
    for f in ("namespace.yaml", "serviceaccount.yaml", "rbac.yaml"):
        cluster.kubectl("apply", "-f", str(ROOT / "deploy" / "base" / f))
    cluster.wait_for(
        lambda: (
            cluster.kubectl("get", "serviceaccount", SA, "-n", NAMESPACE, check=False).returncode
            == 0
        ),
        "the exporter's ServiceAccount",
        timeout=30,
    )
    return exporter_kubeconfig(cluster, path)


def exporter_kubeconfig(cluster: Any, path: Path) -> Path:
    token = cluster.kubectl("create", "token", SA, "-n", NAMESPACE, "--duration=6h").stdout.strip()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "bench",
        "clusters": [
            {
                "name": "bench",
                "cluster": {"server": cluster.server, "certificate-authority": str(cluster.pki.ca)},
            }
        ],
        "users": [{"name": SA, "user": {"token": token}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": SA}}],
    }
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    return path


def versions() -> dict[str, str]:
    from tests.support.cluster.cluster import BIN

    out = {}
    for c in ("kube-apiserver", "etcd"):
        with contextlib.suppress(OSError):
            out[c] = (BIN / f".{c}.version").read_text().strip()
    return out


# --------------------------------------------------------------------------------------------
# Report


def fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least-squares a + b*N over the points (N, y)."""
    pts = [(x, y) for x, y in points if y is not None]
    if len(pts) < 2:
        return None
    mx = statistics.fmean(x for x, _ in pts)
    my = statistics.fmean(y for _, y in pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx == 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in pts) / sxx
    return my - b * mx, b


def _mib(n: float | None) -> str:
    if n is None:
        return "-"
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def _num(x: float) -> str:
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 0.1:
        return f"{x:.3g}"
    return f"{x:.2g}"


def derived(r: dict[str, Any], rate_fallback: float) -> dict[str, Any]:
    """The figures of one N that the tables show."""
    n = r["watchers"]
    idle, steady = r["idle"], r["steady"]
    ic, sc = idle["cost"], steady["cost"]
    events = steady["churn"]["events"] or 1
    rate = steady["churn"]["rate"] or rate_fallback
    api_i = ic["cpu_per_s"].get("kube-apiserver", 0.0)
    api_s = sc["cpu_per_s"].get("kube-apiserver", 0.0)
    per_part = [
        (p["cpu_per_s"].get("kube-apiserver", 0.0) - api_i) / rate * 1000
        for p in steady.get("parts", [])
    ]
    out: dict[str, Any] = {
        "n": n,
        "api_idle": api_i,
        "api_steady": api_s,
        "api_ms_per_event": (api_s - api_i) / rate * 1000,
        "api_ms_per_event_parts": per_part,
        "goroutines": steady["apiserver_level"]["goroutines"],
        "stack_mib": steady["apiserver_level"].get("stack_mib"),
        "api_rss_idle": ic["rss_mib"].get("kube-apiserver"),
        "api_rss_end": sc["rss_mib"].get("kube-apiserver"),
        "api_heap_idle": idle["apiserver_level"]["heap_inuse_mib"],
        "api_live_end": steady["apiserver_level"]["live_heap_mib"],
        "api_live_idle": idle["apiserver_level"]["live_heap_mib"],
        "etcd_idle": ic["cpu_per_s"].get("etcd", 0.0),
        "etcd_steady": sc["cpu_per_s"].get("etcd", 0.0),
        "etcd_rss": sc["rss_mib"].get("etcd"),
        "others_steady": sc["cpu_per_s"].get("kube-controller-manager", 0.0)
        + sc["cpu_per_s"].get("kube-scheduler", 0.0),
        "watchers_cpu_steady": sc["cpu_per_s"].get("watchers"),
        "rest_idle": ic["machine_rest_per_s"],
        "rest_steady": sc["machine_rest_per_s"],
        "load": (min(ic["load_min"], sc["load_min"]), max(ic["load_max"], sc["load_max"])),
        "patch_median_ms": (steady["churn"]["latency_median_s"] or 0) * 1000,
        "patch_p99_ms": (steady["churn"]["latency_p99_s"] or 0) * 1000,
        "events": steady["churn"]["events"],
        "rate": rate,
        "metric_pod_event_bytes": steady["apiserver"]["pods"]["mean_event_bytes"],
        "metric_pod_events": steady["apiserver"]["pods"]["watch_events"],
        "watches_pods": idle["apiserver_level"]["watches_pods"],
    }
    if n:
        w = steady["watchers"]
        pod_bytes = w["bytes"].get("pods/watch", 0)
        out["bytes_per_event_per_watcher"] = pod_bytes / events / n
        out["bytes_per_event_all"] = pod_bytes / events
        out["events_delivered"] = w["events"].get("pods/MODIFIED", 0)
        wi = idle["watchers"]
        idle_s = ic["seconds"]
        out["idle_bytes_per_watcher_min"] = (
            sum(wi["bytes"].get(f"{x}/watch", 0) for x in WATCHED) / n / idle_s * 60
        )
        out["bookmarks_per_watcher_min"] = (
            sum(wi["events"].get(f"{x}/BOOKMARK", 0) for x in WATCHED) / n / idle_s * 60
        )
        s = r["sync"]
        out["sync_s"] = s["cost"]["seconds"]
        out["list_pods_s"] = s["list_s"]["pods"]
        out["list_nodes_s"] = s["list_s"]["nodes"]
        out["list_bytes"] = s["list_bytes_per_watcher"]
        out["list_pages"] = s["list_pages_per_watcher"]
        # Over the sync, less what the API server spends idle over as long (measured after).
        out["sync_api_cpu_s"] = (
            s["cost"]["cpu_s"].get("kube-apiserver", 0.0) - api_i * s["cost"]["seconds"]
        )
        out["sync_api_peak_rss"] = s["cost"]["peak_rss_mib"].get("kube-apiserver")
        out["sync_etcd_cpu_s"] = s["cost"]["cpu_s"].get("etcd", 0.0)
        out["sync_watchers_cpu_s"] = s["cost"]["cpu_s"].get("watchers", 0.0)
        out["sync_watchers_peak_rss"] = s["cost"]["peak_rss_mib"].get("watchers")
        out["store"] = s["store"]
        end = r.get("reflectors_end", {})
        out["gone"] = sum(v.get("restarts/gone", 0) for v in end.values())
        out["errors"] = sum(
            x for v in end.values() for k, x in v.items() if k.startswith("errors/")
        )
        out["errors_429"] = sum(v.get("errors/429", 0) for v in end.values())
        out["errors_conn"] = sum(v.get("errors/connection", 0) for v in end.values())
        out["watch_timeouts"] = sum(v.get("restarts/timeout", 0) for v in end.values())
        out["relists"] = sum(v.get("requests/list", 0) for v in end.values()) - 4 * n
    out["audit"] = r.get("audit", {})
    return out


def markdown(result: dict[str, Any]) -> str:
    runs = [derived(r, result["plan"]["rate"]) for r in result.get("runs", []) if "steady" in r]
    plan = result["plan"]
    out: list[str] = []
    pop = result.get("populate")
    if pop:
        out.append(
            f"**Population**: {plan['nodes']:,} Nodes in {pop['nodes']['seconds']:.0f} s "
            f"({pop['nodes']['writes_per_s']:.0f} writes/s), {plan['nodes']:,} pods "
            f"(create + status) in {pop['pods']['seconds']:.0f} s "
            f"({pop['pods']['writes_per_s']:.0f} writes/s), {pop['concurrency']} "
            f"threads, {pop['retries']} retries; the controllers were done writing "
            f"{result.get('quiet_after_populate', {}).get('seconds', 0):.0f} s later\n"
        )
    if not runs:
        return "\n".join(out)
    seen: set[int] = set()
    labels = []
    for r in runs:
        labels.append(f"N = {r['n']}" + (" (again)" if r["n"] in seen else ""))
        seen.add(r["n"])
    head = "| | " + " | ".join(labels) + " |"
    out.append(head)
    out.append("|---|" + "---:|" * len(runs))

    def row(label: str, fn: Callable[[dict[str, Any]], str]) -> None:
        cells = []
        for r in runs:
            try:
                cells.append(fn(r))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("-")
        out.append(f"| {label} | " + " | ".join(cells) + " |")

    row("all N synced after (wall)", lambda r: f"{r['sync_s']:.1f} s")
    row(
        "pods LIST per watcher: median / max",
        lambda r: f"{r['list_pods_s']['median']:.2f} s / {r['list_pods_s']['max']:.2f} s",
    )
    row(
        "pods LIST: bytes of the complete LIST (requests per watcher)",
        lambda r: f"{_mib(r['list_bytes']['pods'])} ({r['list_pages']['pods']:.2f})",
    )
    row(
        "nodes metadata LIST: median time, bytes (requests per watcher)",
        lambda r: (
            f"{r['list_nodes_s']['median']:.2f} s, {_mib(r['list_bytes']['nodes'])} "
            f"({r['list_pages']['nodes']:.2f})"
        ),
    )
    row(
        "API server CPU over the sync (less idle), per watcher",
        lambda r: f"{r['sync_api_cpu_s']:.1f} s, {r['sync_api_cpu_s'] / r['n']:.2f} s",
    )
    row("API server peak RSS during the sync", lambda r: f"{r['sync_api_peak_rss']:.0f} MiB")
    row("etcd CPU over the sync", lambda r: f"{r['sync_etcd_cpu_s']:.2f} s")
    row(
        "watchers' process: CPU over the sync, peak RSS",
        lambda r: f"{r['sync_watchers_cpu_s']:.1f} s, {r['sync_watchers_peak_rss']:.0f} MiB",
    )
    row("open pod WATCHes at the API server (all clients)", lambda r: f"{r['watches_pods']:.0f}")
    row("**idle**: API server CPU s/s", lambda r: f"{r['api_idle']:.3f}")
    row(
        "API server RSS, end of idle / end of steady",
        lambda r: f"{r['api_rss_idle']:.0f} / {r['api_rss_end']:.0f} MiB",
    )
    row(
        "API server live heap (heap goal / 2), end of idle / end of steady",
        lambda r: f"{r['api_live_idle']:.0f} / {r['api_live_end']:.0f} MiB",
    )
    row(
        "API server goroutines, goroutine stacks",
        lambda r: f"{r['goroutines']:,.0f}, {r['stack_mib']:.0f} MiB",
    )
    row(
        "idle: bytes per watcher per minute (bookmarks per minute)",
        lambda r: f"{r['idle_bytes_per_watcher_min']:.0f} B ({r['bookmarks_per_watcher_min']:.1f})",
    )
    row("**steady**: API server CPU s/s", lambda r: f"{r['api_steady']:.3f}")
    row("API server CPU per pod event", lambda r: f"{r['api_ms_per_event']:.2f} ms")
    row(
        "the same in each sub-window of the steady window",
        lambda r: " / ".join(f"{x:.1f}" for x in r["api_ms_per_event_parts"]) + " ms",
    )
    row(
        "bytes per pod event per watcher (read by the watchers)",
        lambda r: f"{r['bytes_per_event_per_watcher']:,.0f} B",
    )
    row("bytes per pod event, all watchers", lambda r: _mib(r["bytes_per_event_all"]))
    row(
        "pod events delivered / sent",
        lambda r: f"{r['events_delivered'] // r['n']:,} / {r['events']:,} per watcher",
    )
    row(
        "API server metric: mean pod watch event size (every watcher)",
        lambda r: f"{r['metric_pod_event_bytes']:,.0f} B",
    )
    row(
        "status patch latency median / p99",
        lambda r: f"{r['patch_median_ms']:.0f} / {r['patch_p99_ms']:.0f} ms",
    )
    row("etcd CPU s/s idle / steady", lambda r: f"{r['etcd_idle']:.3f} / {r['etcd_steady']:.3f}")
    row("controller-manager + scheduler CPU s/s, steady", lambda r: f"{r['others_steady']:.3f}")
    row("watchers' process CPU s/s, steady", lambda r: f"{r['watchers_cpu_steady']:.3f}")
    row(
        "rest of the machine, busy CPU s/s idle / steady",
        lambda r: f"{r['rest_idle']:.2f} / {r['rest_steady']:.2f}",
    )
    row(
        "load average (1 min) during idle + steady",
        lambda r: f"{r['load'][0]:.1f}-{r['load'][1]:.1f}",
    )
    row("LISTs beyond one per watch, 410s", lambda r: f"{r['relists']}, {r['gone']}")
    row(
        "failed requests: 429 (APF) / connection (cut, timed out)",
        lambda r: f"{r['errors_429']} / {r['errors_conn']}",
    )
    row("watches ended by the server (resumed without a LIST)", lambda r: f"{r['watch_timeouts']}")
    row(
        "audit: LIST / WATCH requests (pods, nodes)",
        lambda r: (
            f"{r['audit']['list/pods'] + r['audit']['list/nodes']} / "
            f"{r['audit']['watch/pods'] + r['audit']['watch/nodes']}"
        ),
    )
    out.append("")

    ext = extrapolate(runs, plan.get("extrapolate_to", 5000))
    if ext:
        out.append(
            f"**Extrapolated to {ext['to']:,} watchers** (least-squares line a + b*N "
            f"over N = {', '.join(str(n) for n in sorted({r['n'] for r in runs}))}, "
            f"{len(runs)} points)\n"
        )
        out.append(f"| figure | a (N = 0) | b (per watcher) | at N = {ext['to']:,} |")
        out.append("|---|---:|---:|---:|")
        for key, label, unit in (
            ("api_idle", "API server CPU s/s, idle", ""),
            ("api_ms_per_event", "API server CPU per pod event", " ms"),
            ("api_rss_end", "API server RSS, end of steady", " MiB"),
            ("api_live_end", "API server live heap, end of steady", " MiB"),
            ("goroutines", "API server goroutines", ""),
            ("stack_mib", "API server goroutine stacks", " MiB"),
        ):
            f = ext["fits"].get(key)
            if f:
                out.append(
                    f"| {label} | {_num(f['a'])}{unit} | {_num(f['b'])}{unit} | "
                    f"{_num(f['at'])}{unit} |"
                )
        for label, v in ext["products"].items():
            out.append(f"| {label} | | | {v} |")
        out.append("")
    ex = result.get("exporter")
    if ex:
        m = ex.get("metrics", {})
        out.append(
            f"**One real exporter** (`python -m exporter --mesh.zones`, default flags "
            f"otherwise) with {m.get('mesh_peers', 0):,.0f} peers\n"
        )
        out.append(
            "| ready after | targets | CPU s/s idle | CPU s/s under "
            f"{ex['steady']['churn']['rate']:.0f} pod events/s | RSS idle | peak RSS "
            "(VmHWM) | discovery requests |"
        )
        out.append("|---:|---:|---:|---:|---:|---:|---|")
        reqs = ", ".join(f"{k} {v:.0f}" for k, v in sorted(m.get("requests", {}).items()))
        out.append(
            f"| {ex['ready_s']:.1f} s | {m.get('targets', 0)} | "
            f"{ex['idle']['cpu_per_s'].get('exporter', 0):.3f} | "
            f"{ex['steady']['cpu_per_s'].get('exporter', 0):.3f} | "
            f"{ex['idle']['rss_mib'].get('exporter', 0):.0f} MiB | "
            f"{ex['hwm_mib']:.0f} MiB | {reqs} |"
        )
        out.append("")
    return "\n".join(out)


def extrapolate(runs: list[dict[str, Any]], to: int) -> dict[str, Any] | None:
    if len(runs) < 2:
        return None
    fits: dict[str, Any] = {}
    for key in (
        "api_idle",
        "api_ms_per_event",
        "api_rss_end",
        "api_live_end",
        "goroutines",
        "stack_mib",
    ):
        f = fit([(r["n"], r[key]) for r in runs if r.get(key) is not None])
        if f:
            fits[key] = {"a": f[0], "b": f[1], "at": f[0] + f[1] * to}
    watched = [r for r in runs if r["n"]]
    products: dict[str, str] = {}
    if watched:
        big = max(watched, key=lambda r: r["n"])
        per = big["bytes_per_event_per_watcher"]
        products[
            "bytes the API server writes per pod event (bytes per watcher at the largest "
            f"N, {per:,.0f} B, times {to:,})"
        ] = _mib(per * to)
        lb = big["list_bytes"]
        per_list = lb["pods"] + lb["nodes"] + lb.get("services", 0) + lb.get("endpointslices", 0)
        products[
            f"a re-list by every exporter at once (LIST bytes per watcher {_mib(per_list)} "
            f"times {to:,})"
        ] = _mib(per_list * to)
        cpu_list = big["sync_api_cpu_s"] / big["n"]
        products[
            f"API server CPU for that re-list ({cpu_list:.2f} CPU-s per watcher's sync "
            f"times {to:,})"
        ] = f"{cpu_list * to:,.0f} CPU-s"
        idle_b = big["idle_bytes_per_watcher_min"]
        products[f"idle bookmark traffic ({idle_b:.0f} B per watcher per minute times {to:,})"] = (
            _mib(idle_b * to) + " per minute"
        )
    if "api_ms_per_event" in fits:
        ms = fits["api_ms_per_event"]["at"]
        products[
            f"pod events per second that one API server core can fan out at {to:,} "
            "watchers (1,000 ms / CPU per event)"
        ] = f"{1000 / ms:.1f}" if ms > 0 else "-"
    return {"to": to, "fits": fits, "products": products}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------


def parse_watchers(text: str) -> list[int]:
    out = sorted({int(x) for x in text.split(",") if x.strip()})
    if any(n < 1 for n in out):
        raise argparse.ArgumentTypeError("watcher counts are positive integers")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else "")
    ap.add_argument("--nodes", type=int, default=5000, help="Nodes, one exporter pod each")
    ap.add_argument("--zones", type=int, default=10, help="zones the Nodes are spread over")
    ap.add_argument(
        "--watchers",
        type=parse_watchers,
        default=[1, 10, 50],
        help="comma-separated watcher counts (N=0 is always measured too)",
    )
    ap.add_argument("--rate", type=float, default=10.0, help="pod events per second, steady")
    ap.add_argument(
        "--idle-seconds",
        type=float,
        default=0.0,
        help="idle window (default 60, or 10 below 1,000 nodes)",
    )
    ap.add_argument(
        "--steady-seconds",
        type=float,
        default=0.0,
        help="steady window (default 120, or 15 below 1,000 nodes)",
    )
    ap.add_argument(
        "--steady-parts",
        type=int,
        default=3,
        help="sub-windows of the steady window, for the spread of the figures",
    )
    ap.add_argument(
        "--settle-seconds",
        type=float,
        default=0.0,
        help="wait after the sync, for the garbage of the LISTs to be collected "
        "(default 60, or 3 below 1,000 nodes)",
    )
    ap.add_argument(
        "--no-control", action="store_true", help="do not measure N=0 again after the largest N"
    )
    ap.add_argument(
        "--exporter-settle-seconds",
        type=float,
        default=0.0,
        help="wait after the real exporter is ready (default 30, or 5)",
    )
    ap.add_argument("--sync-timeout", type=float, default=900.0)
    ap.add_argument("--concurrency", type=int, default=64, help="threads that populate")
    ap.add_argument("--extrapolate-to", type=int, default=5000)
    ap.add_argument("--no-exporter", action="store_true", help="skip the real exporter")
    ap.add_argument(
        "--report",
        type=Path,
        metavar="JSON",
        help="print the Markdown of an earlier result instead of running",
    )
    ap.add_argument(
        "--memory",
        type=parse_watchers,
        metavar="PEERS",
        help="instead: one real exporter's RSS in sampled mode at these peer counts "
        "(comma-separated, ascending), the LIST requests compared, and a profile",
    )
    ap.add_argument(
        "--before-tree",
        type=Path,
        help="with --memory: also measure the exporter of this source tree (git archive)",
    )
    ap.add_argument(
        "--image-rootfs",
        type=Path,
        help="with --memory: also measure the exporter of this extracted image file tree "
        "(chroot, its /opt/pingmesh Python, as 65534)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="with --memory: also run bench/rss_profile.py (tracemalloc) at each size",
    )
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--kubeconfig", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args)
    if args.report:
        print(markdown(json.loads(args.report.read_text())))
        return 0
    if args.memory:
        return memory_main(args)
    if not 2 <= args.nodes <= MAX_NODES:
        ap.error(f"--nodes: 2 to {MAX_NODES}")
    small = args.nodes < 1000
    args.idle_seconds = args.idle_seconds or (10.0 if small else 60.0)
    args.steady_seconds = args.steady_seconds or (15.0 if small else 120.0)
    args.settle_seconds = args.settle_seconds or (3.0 if small else 60.0)
    args.exporter_settle_seconds = args.exporter_settle_seconds or (5.0 if small else 30.0)

    from tests.support.cluster.cluster import Cluster, binaries
    from tests.support.netbed import require_root

    why = require_root() or binaries()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = OUT_DIR / f"apiserver-bench-{stamp}.json"
    result: dict[str, Any] = {
        "plan": {
            "nodes": args.nodes,
            "zones": args.zones,
            "watchers": [0, *args.watchers, *([] if args.no_control else [0])],
            "rate": args.rate,
            "idle_s": args.idle_seconds,
            "steady_s": args.steady_seconds,
            "steady_parts": args.steady_parts,
            "settle_s": args.settle_seconds,
            "concurrency": args.concurrency,
            "extrapolate_to": args.extrapolate_to,
        },
        "machine": machine_facts(versions=versions()),
        "runs": [],
    }
    started = time.monotonic()

    def save() -> None:
        result["total_s"] = time.monotonic() - started
        path.write_text(json.dumps(_jsonable(result), indent=1) + "\n")

    load0 = loadavg()
    result["load_before"] = load0
    print(f"load average before: {load0:.2f}", flush=True)
    with Cluster(dual_stack=False) as cluster:
        restart_controller_manager(cluster)
        kubeconfig = exporter_identity(cluster, cluster.dir / "kubeconfig-bench-sa")
        node0 = cluster.add_node(EXPORTER_NODE, node_labels(0, args.zones))
        rest = Rest(cluster.cp, cluster.server, cluster.pki.ca, cluster.pki.tokens["admin"])
        pids = {}
        for name in ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler"):
            popen = cluster.processes[name].proc
            assert popen is not None
            pids[name] = real_pid(popen.pid, name)
        result["pids"] = pids
        meter = Meter(pids)
        try:
            a = meter.snapshot()
            result["populate"] = populate(rest, args.nodes, args.zones, args.concurrency)
            b = meter.snapshot()
            result["populate"]["cost"] = meter.window(a, b)
            result["quiet_after_populate"] = wait_quiet(rest)
            print(
                f"controllers quiet {result['quiet_after_populate']['seconds']:.0f} s after "
                "the population",
                flush=True,
            )
            pods = [f"pingmesh-exporter-{pod_suffix(i)}" for i in range(args.nodes)]
            churn = Churn(rest, pods)
            save()
            for n in [0, *args.watchers, *([] if args.no_control else [0])]:
                for attempt in (1, 2):
                    try:
                        result["runs"].append(
                            run_watchers(
                                n,
                                cluster=cluster,
                                rest=rest,
                                meter=meter,
                                churn=churn,
                                kubeconfig=kubeconfig,
                                args=args,
                                log=OUT_DIR / f"apiserver-bench-{stamp}-watchers.log",
                            )
                        )
                        break
                    except RuntimeError as exc:
                        # The watchers' process died (the machine is shared): once more.
                        print(f"N={n}, attempt {attempt}: {exc}", flush=True)
                        result.setdefault("failed_runs", []).append(
                            {"watchers": n, "attempt": attempt, "error": str(exc)}
                        )
                save()
            if not args.no_exporter:
                result["exporter"] = run_exporter(
                    node=node0,
                    rest=rest,
                    meter=meter,
                    churn=churn,
                    kubeconfig=kubeconfig,
                    args=args,
                    log_path=OUT_DIR / f"apiserver-bench-{stamp}-exporter.log",
                )
            result["apiserver_log_tail"] = cluster.processes["kube-apiserver"].tail(40)
            save()
        finally:
            meter.close()
    save()
    print(f"\nresults: {path.relative_to(ROOT)} ({result['total_s']:.0f} s)\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
