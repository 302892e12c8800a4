"""Pytest fixtures and helpers for tests on the real cluster of cluster.py.

Without root or without the built binaries the fixtures skip with the reason; under CI they
fail instead (a CI run that skipped the cluster would prove nothing).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster.cluster import (
    CLUSTER_DOMAIN,
    DNS_SERVICE_IPS,
    ROOT,
    Cluster,
    ClusterError,
    Node,
    binaries,
)
from tests.support.metrics import Samples, parse
from tests.support.netbed import Namespace, require_root
from tests.support.netbed_fixtures import skip_or_fail

MANIFESTS = Path(__file__).resolve().with_name("manifests")
PINGMESH = "pingmesh"
SELECTOR = "app.kubernetes.io/name=pingmesh-exporter"
# Tests wait seconds, not the production back-off's half minute.
FAST_ARGS = ("--kubernetes.retry-max-delay=2s",)


def ensure_cluster_possible() -> None:
    reason = require_root() or binaries()
    if reason is not None:
        skip_or_fail(reason)


def make_cluster(**kw: Any) -> Cluster:
    ensure_cluster_possible()
    return Cluster(**kw)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A dual-stack cluster, iptables kube-proxy, shared by one test module."""
    with make_cluster() as c:
        yield c


def install_dns(cluster: Cluster) -> None:
    docs = list(yaml.safe_load_all((MANIFESTS / "coredns.yaml").read_text()))
    for doc in docs:
        if doc["kind"] == "Service" and not cluster.dual_stack:
            doc["spec"].update(ipFamilyPolicy="SingleStack", clusterIPs=[DNS_SERVICE_IPS[0]])
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))


def install_exporter(cluster: Cluster, how: str = "-k", overlay: str = "") -> None:
    """The shipped manifests, exactly as the README says: `kubectl apply -k deploy`, or
    `kubectl apply -f deploy/pingmesh-exporter.yaml`; with ``overlay``, `kubectl apply -k
    deploy/<overlay>`."""
    target = ROOT / "deploy" if how == "-k" else ROOT / "deploy" / "pingmesh-exporter.yaml"
    cluster.kubectl("apply", how, str(target / overlay if overlay else target))


def apply_overlay(
    cluster: Cluster,
    overlay: Path,
    base: Path = ROOT / "deploy",
    components: Sequence[Path] = (),
    image: str | None = None,
) -> None:
    """An overlay of one's own over ``base`` (deploy/ or one of its overlays), as the README
    shows them: with the ``components`` given and, with ``image``, the `images:` entry that
    `kustomize edit set image pingmesh-exporter=<image>` writes; applied with `kubectl apply
    -k` (kubectl's own kustomize). Paths in it are relative, as kustomize wants."""
    overlay.mkdir()
    doc: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(base, overlay)],
    }
    if components:
        doc["components"] = [os.path.relpath(c, overlay) for c in components]
    if image is not None:
        name, _, tag = image.rpartition(":")
        doc["images"] = [{"name": "pingmesh-exporter", "newName": name, "newTag": tag}]
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    cluster.kubectl("apply", "-k", str(overlay))


def install_with_image(cluster: Cluster, image: str, overlay: Path) -> None:
    """The README's quick start: deploy/ with the image set (see apply_overlay)."""
    apply_overlay(cluster, overlay, image=image)


def ready_pods(
    cluster: Cluster, selector: str = SELECTOR, namespace: str = PINGMESH
) -> list[dict[str, Any]]:
    out = []
    for pod in cluster.pods(namespace, selector):
        conds = {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}
        if conds.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp"):
            out.append(pod)
    return out


def wait_ready_pods(
    cluster: Cluster,
    n: int,
    timeout: float = 90.0,
    selector: str = SELECTOR,
    namespace: str = PINGMESH,
) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]] | None:
        pods = ready_pods(cluster, selector, namespace)
        nodes = {p["spec"]["nodeName"] for p in pods}
        return pods if len(pods) == n and len(nodes) == n else None

    got: list[dict[str, Any]] = cluster.wait_for(
        enough, f"{n} Ready pods of {selector}", timeout, interval=0.5
    )
    return got


def http_get(
    ns: Namespace, host: str, port: int, path: str, timeout: float = 10.0
) -> tuple[int, bytes]:
    """GET from inside a namespace (over the pod network when ns is a node)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            sock = ns.socket(family, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect((host, port))
            self.sock = sock

    conn = Conn(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def scrape(node: Node, pod: dict[str, Any], port: int = 9871) -> Samples:
    """An exporter pod's /metrics, fetched from its node over the pod network (from the
    node itself for a host-network pod, whose pod IP is the node's)."""
    status, body = http_get(node.ns, pod["status"]["podIP"], port, "/metrics")
    if status != 200:
        raise ClusterError(f"/metrics of {pod['metadata']['name']} answered {status}")
    return parse(body.decode())


def pod_on(cluster: Cluster, node: str) -> dict[str, Any]:
    pods = [p for p in ready_pods(cluster) if p["spec"]["nodeName"] == node]
    if len(pods) != 1:
        raise ClusterError(f"{len(pods)} Ready exporter pods on {node}")
    return pods[0]


def wait_metrics(
    cluster: Cluster,
    node: str,
    cond: Callable[[Samples], Any],
    what: str,
    timeout: float = 30.0,
    pod: Callable[[Cluster, str], dict[str, Any]] = pod_on,
    port: int = 9871,
) -> Samples:
    """Scrapes the exporter pod on ``node`` (``pod`` finds it: the pod-network DaemonSet's
    by default) until ``cond`` holds; the last scrape is in the failure."""
    last: list[Samples] = [[]]

    def check() -> Any:
        try:
            last[0] = scrape(cluster.nodes[node], pod(cluster, node), port)
        except (ClusterError, OSError):
            return None
        return last[0] if cond(last[0]) else None

    try:
        got: Samples = cluster.wait_for(check, what, timeout, interval=0.5)
    except ClusterError as exc:
        raise AssertionError(f"{exc}\nlast scrape: {summary(last[0])}") from None
    return got


def summary(samples: Samples) -> str:
    keep = (
        "pingmesh_target_up",
        "pingmesh_service_up",
        "pingmesh_discovery_up",
        "pingmesh_mesh_peers",
    )
    return "\n".join(f"{n}{lb} {v}" for n, lb, v in samples if n in keep)


def probe_series(samples: Samples, name: str = "pingmesh_probe_sent_total") -> set[tuple[str, ...]]:
    return {
        (lb["source_node"], lb["kind"], lb["target_node"], lb["ip_family"])
        for n, lb, _v in samples
        if n == name and "target_node" in lb
    }


def mesh_is(want: set[tuple[str, ...]]) -> Callable[[Samples], bool]:
    """A wait_metrics condition: the probe series are exactly ``want`` and every target is up."""

    def check(s: Samples) -> bool:
        return probe_series(s) == want and len(up_targets(s)) == len(want)

    return check


def expected_mesh(
    nodes: Sequence[Node], source: str, own_node: bool = True
) -> set[tuple[str, ...]]:
    """Every peer's pod and node targets, and (--mesh.own-node, the default) the source's
    own node IPs."""
    out: set[tuple[str, ...]] = set()
    for n in nodes:
        if n.name == source:
            if own_node:
                for fam in ("ipv4", "ipv6") if n.dual_stack else ("ipv4",):
                    out.add((source, "node", source, fam))
            continue
        for kind in ("pod", "node"):
            for fam in ("ipv4", "ipv6") if n.dual_stack else ("ipv4",):
                out.add((source, kind, n.name, fam))
    return out


def up_targets(samples: Samples) -> set[tuple[str, str, str]]:
    return {
        (lb["kind"], lb["target_node"], lb["ip_family"])
        for n, lb, v in samples
        if n == "pingmesh_target_up" and v == 1.0 and "target_node" in lb
    }


def settle(seconds: float) -> None:
    """A quiet period the test measures over (audit counts), not a wait for a condition."""
    time.sleep(seconds)


__all__ = ["CLUSTER_DOMAIN", "FAST_ARGS", "cluster"]
