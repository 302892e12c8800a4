"""Host network mode on a real cluster: `kubectl apply -k deploy/overlays/host-network`
installs the pod-network DaemonSet and a host-network one side by side; each probes only its
own mesh (the host one node targets only, from the node's own namespace), their series say
which network they come from, the real Pod Security admission holds the namespaces apart,
and the host exporter's socket follows the node's net.ipv4.ping_group_range.

The nodes run the kubelet stand-in (tests/support/cluster/standin.py), which runs a
hostNetwork pod in the node's namespace with the node's addresses, as the kubelet does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster.cluster import HOST_EXPORTER_SA, ROOT, Cluster
from tests.support.cluster.fixtures import (
    FAST_ARGS,
    SELECTOR,
    expected_mesh,
    http_get,
    install_exporter,
    make_cluster,
    probe_series,
    scrape,
    up_targets,
    wait_metrics,
    wait_ready_pods,
)
from tests.support.metrics import Samples, value
from tests.test_deploy import granted, render

pytestmark = pytest.mark.netns

HOST_NS = "pingmesh-host"
HOST_SELECTOR = f"{SELECTOR},app.kubernetes.io/component=host-network"
HOST_PORT = 9872
NODES = ("node-a", "node-b", "node-c")
# node-c's ping_group_range admits every group (as systemd sets it); the others keep the
# kernel's default "1 0", which admits none: datagram ICMP there is refused.
PING_OPEN = "node-c"


@pytest.fixture(scope="module")
def both() -> Iterator[Cluster]:
    with make_cluster() as c:
        for name in NODES:
            node = c.add_node(name, {"topology.kubernetes.io/zone": "zone-1"})
            if name == PING_OPEN:
                node.ns.sysctls({"net.ipv4.ping_group_range": "0 2147483647"})
            c.start_standin(node, extra_args=FAST_ARGS)
        install_exporter(c, overlay="overlays/host-network")
        wait_ready_pods(c, len(NODES))
        wait_ready_pods(c, len(NODES), selector=HOST_SELECTOR, namespace=HOST_NS)
        yield c


def host_pod_on(cluster: Cluster, node: str) -> dict[str, Any]:
    pods = [
        p
        for p in wait_ready_pods(cluster, len(NODES), selector=HOST_SELECTOR, namespace=HOST_NS)
        if p["spec"]["nodeName"] == node
    ]
    assert len(pods) == 1, f"{len(pods)} host-network pods on {node}"
    return pods[0]


def wait_scrape(
    cluster: Cluster, node: str, host: bool, cond: Any, what: str, timeout: float = 60.0
) -> Samples:
    """wait_metrics on the host-network exporter (``host``) or the pod-network one."""
    if host:
        return wait_metrics(cluster, node, cond, what, timeout, host_pod_on, HOST_PORT)
    return wait_metrics(cluster, node, cond, what, timeout)


def networks(samples: Samples) -> set[str]:
    return {
        lb.get("source_network", "")
        for n, lb, _v in samples
        if n.startswith(("pingmesh_probe_", "pingmesh_target_up")) and "target_node" in lb
    }


def test_both_daemonsets_run_and_pod_security_holds_them_apart(both: Cluster) -> None:
    labels = both.get_json("namespace", HOST_NS)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    base = both.get_json("namespace", "pingmesh")["metadata"]["labels"]
    assert base["pod-security.kubernetes.io/enforce"] == "restricted"
    node_ips = {n.name: set(n.ips) for n in both.nodes.values()}
    for pod in wait_ready_pods(both, 3, selector=HOST_SELECTOR, namespace=HOST_NS):
        assert pod["spec"]["hostNetwork"] is True
        assert pod["metadata"]["ownerReferences"][0]["name"] == "pingmesh-exporter-host"
        assert {i["ip"] for i in pod["status"]["podIPs"]} == node_ips[pod["spec"]["nodeName"]]
    for pod in wait_ready_pods(both, 3):
        assert not pod["spec"].get("hostNetwork")
        assert pod["status"]["podIP"] not in node_ips[pod["spec"]["nodeName"]]
    # The same DaemonSet in the restricted namespace is refused by the real admission: the
    # reason the host-network exporter has a namespace of its own.
    (ds,) = [
        d
        for d in render(ROOT / "deploy" / "overlays" / "host-network")
        if d["kind"] == "DaemonSet" and d["metadata"]["namespace"] == HOST_NS
    ]
    pod = {**ds["spec"]["template"], "apiVersion": "v1", "kind": "Pod"}
    pod["metadata"] = {"name": "hostnet-probe", "namespace": "pingmesh"}
    pod["spec"] = {**pod["spec"], "nodeName": "node-a"}
    refused = both.kubectl(
        "create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False
    )
    assert refused.returncode != 0
    assert 'violates PodSecurity "restricted' in refused.stderr
    assert "host namespaces (hostNetwork=true)" in refused.stderr


def test_the_host_network_exporter_probes_the_nodes_only(both: Cluster) -> None:
    nodes = list(both.nodes.values())
    for node in nodes:
        # Node targets of the peers only: from the host, its own node's IPs are local.
        want = {t for t in expected_mesh(nodes, node.name, own_node=False) if t[1] == "node"}
        s = wait_scrape(
            both,
            node.name,
            True,
            lambda s, want=want: probe_series(s) == want and len(up_targets(s)) == len(want),
            f"host to host mesh up from {node.name}",
        )
        assert networks(s) == {"host"}
        assert value(s, "pingmesh_mesh_peers") == 2
        # Every target answered over the node network, with replies counted.
        for n, lb, v in s:
            if n == "pingmesh_probe_received_total" and "target_node" in lb:
                assert v > 0, lb
        assert value(s, "pingmesh_targets", kind="pod", default=0) == 0
    # The mesh page from the host network: the peers' views come from their node IPs, on
    # the host exporter's own port.
    first = nodes[0]
    code, page = http_get(
        first.ns, host_pod_on(both, first.name)["status"]["podIP"], HOST_PORT, "/mesh"
    )
    text = page.decode()
    assert code == 200 and "no view from" not in text, text
    assert 'data-kind="node"' in text and 'data-kind="pod"' not in text
    for source in NODES:
        for target in NODES:
            if source != target:
                assert f'data-s="{source}" data-t="{target}"' in text, (source, target)


def test_the_pod_network_exporter_still_probes_pods_and_nodes(both: Cluster) -> None:
    nodes = list(both.nodes.values())
    for node in nodes:
        want = expected_mesh(nodes, node.name)
        s = wait_scrape(
            both,
            node.name,
            False,
            lambda s, want=want: probe_series(s) == want and len(up_targets(s)) == len(want),
            f"pod mesh up from {node.name}",
        )
        assert networks(s) == {"pod"}
        # Its peers are the two other pod-network pods, not the three host-network ones.
        assert value(s, "pingmesh_mesh_peers") == 2


def test_raw_sockets_only_where_the_node_refuses_datagram_icmp(both: Cluster) -> None:
    for node in NODES:
        s = scrape(both.nodes[node], host_pod_on(both, node), HOST_PORT)
        modes = {lb["mode"] for n, lb, _v in s if n == "pingmesh_socket_info"}
        assert modes == ({"datagram"} if node == PING_OPEN else {"raw"}), (node, modes)


def test_the_host_exporter_uses_exactly_its_grants(both: Cluster) -> None:
    wait_scrape(
        both,
        "node-a",
        True,
        lambda s: value(s, "pingmesh_discovery_up", source="kubernetes") == 1,
        "host discovery up",
    )
    used = set()
    for ev in both.audit_events():
        if (ev.get("user") or {}).get("username") != HOST_EXPORTER_SA:
            continue
        ref = ev.get("objectRef") or {}
        used.add(
            (ref.get("namespace") or "*", ref.get("apiGroup", ""), ref["resource"], ev["verb"])
        )
        assert (ev.get("responseStatus") or {}).get("code", 200) < 400, ev
    docs = render(ROOT / "deploy" / "overlays" / "host-network")
    roles = [
        d
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
        and (d["metadata"].get("namespace") == HOST_NS or d["metadata"]["name"].endswith("-host"))
    ]
    want = granted(roles)
    fallback = {(scope, g, r, v) for scope, g, r, v in want if v == "list"}
    assert used - want == set(), f"used, not granted: {used - want}"
    assert want - used <= fallback, f"granted, unused: {want - used - fallback}"
    for verb, resource, allowed in (
        ("watch", "pods", True),
        ("list", "services", False),
        ("watch", "endpointslices.discovery.k8s.io", False),
    ):
        out = both.kubectl(
            "auth", "can-i", verb, resource, f"--as={HOST_EXPORTER_SA}", "-n", HOST_NS, check=False
        )
        assert out.stdout.strip() == ("yes" if allowed else "no"), (verb, resource)
