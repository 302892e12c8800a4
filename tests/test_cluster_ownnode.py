"""/readyz on a cordoned node, on the real cluster: the shipped DaemonSet on two stand-in
nodes (whose kubelet stand-in runs the pod's real readinessProbe against /readyz), a cordon
and an uncordon by PATCH of spec.unschedulable, as `kubectl cordon` sends it.

Also what the mesh makes of it: the peer keeps probing the unready exporter pod (readiness
says nothing about the network) and shows its readiness in pingmesh_peer_ready; and what the
API server saw: one full-Node watch per exporter, by field selector on its own node."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster.cluster import Cluster
from tests.support.cluster.fixtures import (
    FAST_ARGS,
    SELECTOR,
    http_get,
    install_exporter,
    make_cluster,
    scrape,
    up_targets,
    wait_ready_pods,
)
from tests.support.metrics import value

pytestmark = pytest.mark.netns

NODES = ("node-a", "node-b")


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Cluster]:
    with make_cluster(dual_stack=False) as c:
        for name in NODES:
            c.start_standin(c.add_node(name), extra_args=FAST_ARGS)
        install_exporter(c)
        wait_ready_pods(c, len(NODES))
        yield c


def exporter_pod(c: Cluster, node: str) -> dict[str, Any]:
    """The exporter pod on node, Ready or not."""
    pods = [p for p in c.pods("pingmesh", SELECTOR) if p["spec"]["nodeName"] == node]
    assert len(pods) == 1, f"{len(pods)} exporter pods on {node}"
    return pods[0]


def pod_ready(pod: dict[str, Any]) -> bool:
    conds = {k["type"]: k["status"] for k in pod["status"].get("conditions") or []}
    return conds.get("Ready") == "True"


def readyz(c: Cluster, node: str) -> tuple[int, str]:
    pod = exporter_pod(c, node)
    status, body = http_get(c.nodes[node].ns, pod["status"]["podIP"], 9871, "/readyz")
    return status, body.decode()


def cordon(c: Cluster, node: str, on: bool) -> None:
    # What `kubectl cordon` / `uncordon` send: a patch of spec.unschedulable.
    c.kubectl("patch", "node", node, "-p", json.dumps({"spec": {"unschedulable": on}}))


def test_readyz_turns_503_while_cordoned_and_200_after(two_nodes: Cluster) -> None:
    c = two_nodes
    assert readyz(c, "node-a")[0] == 200
    cordon(c, "node-a", True)
    try:
        started = time.monotonic()
        _status, body = c.wait_for(
            lambda: (lambda r: r if r[0] == 503 else None)(readyz(c, "node-a")),
            "node-a's /readyz 503 after the cordon",
            timeout=20,
            interval=0.1,
        )
        took = time.monotonic() - started
        assert "node node-a is cordoned" in body
        assert took < 5, f"the watch took {took:.1f}s to see the cordon"
        # The other node's exporter is not cordoned: still ready.
        assert readyz(c, "node-b")[0] == 200
        # The kubelet (stand-in) runs the shipped readinessProbe: the pod turns unready.
        c.wait_for(
            lambda: not pod_ready(exporter_pod(c, "node-a")),
            "node-a's exporter pod NotReady",
            timeout=30,
        )
        # The peer keeps probing it (and its node) and says it is not ready.
        pod_b = exporter_pod(c, "node-b")

        def peer_sees_unready() -> bool:
            s = scrape(c.nodes["node-b"], pod_b)
            return value(s, "pingmesh_peer_ready", default=-1.0, target_node="node-a") == 0.0 and (
                "pod",
                "node-a",
                "ipv4",
            ) in up_targets(s)

        c.wait_for(peer_sees_unready, "node-b probing the unready pod on node-a", timeout=30)
        s_a = scrape(c.nodes["node-a"], exporter_pod(c, "node-a"))
        assert value(s_a, "pingmesh_node_unschedulable", source_node="node-a") == 1.0
    finally:
        cordon(c, "node-a", False)
    c.wait_for(
        lambda: readyz(c, "node-a")[0] == 200, "node-a's /readyz 200 after uncordon", timeout=20
    )
    c.wait_for(
        lambda: pod_ready(exporter_pod(c, "node-a")), "node-a's exporter pod Ready", timeout=30
    )
    s_a = scrape(c.nodes["node-a"], exporter_pod(c, "node-a"))
    assert value(s_a, "pingmesh_node_unschedulable", source_node="node-a") == 0.0


def own_node_stats(c: Cluster, node: str) -> str:
    """node's exporter's own-Node requests and errors, as its /metrics says them."""
    s = scrape(c.nodes[node], exporter_pod(c, node))
    return "\n".join(
        f"{node}: {name}{labels} {v}"
        for name, labels, v in s
        if labels.get("resource") == "own_node"
    )


def test_one_full_node_watch_by_field_selector_per_exporter(two_nodes: Cluster) -> None:
    c = two_nodes
    pod_a = exporter_pod(c, "node-a")
    s = scrape(c.nodes["node-a"], pod_a)
    assert value(s, "pingmesh_discovery_requests_total", resource="own_node", verb="list") == 1
    assert value(s, "pingmesh_discovery_api_errors_total", default=0.0, resource="own_node") == 0
    # What the server saw: besides the shipped --mesh.zones' metadata watch of all nodes
    # (no selector), one watch-list and watches of each exporter's own Node, selected by the
    # server with the field selector.
    uris = [
        ev["requestURI"]
        for ev in c.audit_events()
        if ev.get("stage") == "RequestReceived"
        and (ev.get("objectRef") or {}).get("resource") == "nodes"
        and "system:serviceaccount:pingmesh:" in (ev.get("user") or {}).get("username", "")
    ]
    own = [u for u in uris if "fieldSelector=" in u]
    for node in NODES:
        mine = [u for u in own if u.endswith(f"&fieldSelector=metadata.name%3D{node}")]
        # Seen once in a full cluster run, not since: no request of node-b's own watch in
        # the audit log. What its exporter says it did tells the next failure more.
        said = "\n".join(uris) + "\n" + own_node_stats(c, node)
        assert sum("sendInitialEvents=true" in u for u in mine) == 1, said
        assert any("resourceVersion=" in u for u in mine), said
    assert len(own) == sum(
        u.endswith(f"&fieldSelector=metadata.name%3D{n}") for u in own for n in NODES
    ), "\n".join(own)


def test_a_cordoned_node_holds_a_rollout_until_uncordoned(two_nodes: Cluster) -> None:
    """What the unready pod costs: the real DaemonSet controller counts it as unavailable,
    so it takes one of maxUnavailable's slots (10%, at least 1: with two nodes, the only
    one). The cordoned node's old pod is replaced at once (an unavailable pod is), the
    other node's waits until the cordon is lifted. README ("Readiness on a cordoned node")."""
    c = two_nodes
    old = {p["spec"]["nodeName"]: p["metadata"]["uid"] for p in c.pods("pingmesh", SELECTOR)}
    cordon(c, "node-a", True)
    try:
        c.wait_for(
            lambda: not pod_ready(exporter_pod(c, "node-a")),
            "node-a's exporter pod NotReady",
            timeout=30,
        )
        c.kubectl("-n", "pingmesh", "rollout", "restart", "daemonset/pingmesh-exporter")
        c.wait_for(
            lambda: exporter_pod(c, "node-a")["metadata"]["uid"] != old["node-a"],
            "node-a's pod replaced",
            timeout=60,
        )
        # A quiet period the controller would have acted in (it reacts to pod events at
        # once): node-b's pod must still be the old one, held by the unready new pod.
        time.sleep(10)
        assert exporter_pod(c, "node-b")["metadata"]["uid"] == old["node-b"]
        assert not pod_ready(exporter_pod(c, "node-a"))  # cordoned: unready, new or old
    finally:
        cordon(c, "node-a", False)
    c.kubectl(
        "-n",
        "pingmesh",
        "rollout",
        "status",
        "daemonset/pingmesh-exporter",
        "--timeout=120s",
        timeout=140,
    )
    assert exporter_pod(c, "node-b")["metadata"]["uid"] != old["node-b"]
    wait_ready_pods(c, len(NODES))
