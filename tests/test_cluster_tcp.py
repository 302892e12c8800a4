"""On a real cluster: the shipped NetworkPolicy component applies, and with it in place the
exporters' TCP probes reach every peer pod on its metrics port beside the echo, IPv4 and IPv6,
and only the pod targets get them.

The fixture's pod network (veth pairs and routes, real kube-proxy) has no policy engine: the
API server admits and stores the NetworkPolicy, nothing enforces it. What this proves is that
the policy is valid and selects what it means to, and that the mesh's own traffic is what it
allows; what an enforcing CNI does with ICMP under it is in the README."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypedDict

import pytest

from tests.support.cluster.cluster import ROOT, Cluster
from tests.support.cluster.fixtures import (
    FAST_ARGS,
    apply_overlay,
    make_cluster,
    wait_metrics,
    wait_ready_pods,
)
from tests.support.metrics import Samples, value

pytestmark = pytest.mark.netns

NODES = ("node-a", "node-b", "node-c")


class Labels(TypedDict):
    kind: str
    target_node: str
    ip_family: str


@pytest.fixture(scope="module")
def policed() -> Iterator[Cluster]:
    with make_cluster() as c:
        for name in NODES:
            c.start_standin(c.add_node(name), extra_args=FAST_ARGS)
        # The README's way: the base plus the component, from a kustomization of one's own.
        apply_overlay(c, c.dir / "overlay", components=[ROOT / "deploy" / "networkpolicy"])
        wait_ready_pods(c, len(NODES))
        yield c


def test_the_policy_selects_the_exporter_pods(policed: Cluster) -> None:
    policy = policed.get_json("networkpolicy", "pingmesh-exporter", "-n", "pingmesh")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    pods = policed.pods("pingmesh", ",".join(f"{k}={v}" for k, v in selector.items()))
    assert len(pods) == len(NODES)
    ports = [p for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])]
    assert ports == [{"protocol": "TCP", "port": 9871}]


def _tcp_ok(s: Samples, source: str) -> dict[tuple[str, str, str], float]:
    return {
        (lb["kind"], lb["target_node"], lb["ip_family"]): v
        for n, lb, v in s
        if n == "pingmesh_tcp_probe_total" and lb.get("result") == "ok"
        if lb.get("source_node") == source
    }


@pytest.mark.parametrize("source", NODES)
def test_tcp_reaches_every_peer_pod_beside_the_echo(policed: Cluster, source: str) -> None:
    peers = [n for n in NODES if n != source]
    want = {("pod", p, fam) for p in peers for fam in ("ipv4", "ipv6")}

    def meshed(s: Samples) -> bool:
        ok = _tcp_ok(s, source)
        return set(ok) == want and all(v >= 3 for v in ok.values())

    s = wait_metrics(policed, source, meshed, f"TCP from {source} to every peer pod", timeout=60)
    for _kind, peer, fam in want:
        labels: Labels = {"kind": "pod", "target_node": peer, "ip_family": fam}
        failed = sum(
            v
            for n, lb, v in s
            if n == "pingmesh_tcp_probe_total"
            and lb.get("result") != "ok"
            and all(lb.get(k) == w for k, w in labels.items())
        )
        assert failed == 0
        assert value(s, "pingmesh_tcp_connect_seconds_count", **labels) > 0
        assert value(s, "pingmesh_tcp_lossy_flows", **labels) == 0
        assert value(s, "pingmesh_probe_received_total", **labels) > 0
    # Node targets are probed by ICMP only: no exporter listens on a node IP.
    assert not any(n == "pingmesh_tcp_probe_total" and lb.get("kind") == "node" for n, lb, _ in s)
