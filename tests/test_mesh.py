"""Which peers count and which targets they make: pure functions, no cluster."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from exporter.config import KubernetesSettings, MeshSettings
from exporter.discovery.kubernetes import KubernetesDiscovery
from exporter.discovery.objects import parse_node_meta, parse_pod
from exporter.http import _landing
from exporter.mesh import Identity, describe, network_mismatch, own_pod, plan
from exporter.objects import Peer, Skip
from exporter.targets import Target
from tests.support.fakeapi import FakeApi
from tests.support.kubeobjects import make_node, make_pod

ME = Identity("node-0", "pm-0")


def peer(
    node: str,
    ips: tuple[str, ...] = ("198.18.1.1",),
    host_ips: tuple[str, ...] = ("198.18.2.1",),
    **kw: object,
) -> Peer:
    base = Peer(
        key=f"ns/pm-{node}",
        name=f"pm-{node}",
        node=node,
        pod_ips=ips,
        host_ips=host_ips,
        phase="Running",
        ready=True,
        terminating=False,
        created="2026-01-01T00:00:00Z",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_parse_pod_from_api_json() -> None:
    obj = make_pod(
        "pm-1",
        "mon",
        "node-1",
        ["198.18.1.1", "2001:db8::1"],
        ["198.18.2.1"],
        {"app": "x"},
        ready=False,
    )
    p = parse_pod(obj)
    assert isinstance(p, Peer)
    assert (p.node, p.pod_ips, p.host_ips, p.ready, p.phase) == (
        "node-1",
        ("198.18.1.1", "2001:db8::1"),
        ("198.18.2.1",),
        False,
        "Running",
    )
    obj["status"].pop("hostIPs")
    obj["status"]["hostIP"] = "198.18.2.9"
    assert parse_pod(obj).host_ips == ("198.18.2.9",)  # type: ignore[union-attr]


def test_parse_pod_host_network() -> None:
    obj = make_pod("pm-1", "mon", "node-1", ["198.18.2.1"], ["198.18.2.1"], host_network=True)
    assert parse_pod(obj).host_network is True  # type: ignore[union-attr]
    obj["spec"]["hostNetwork"] = "yes"  # not a boolean: not believed
    assert parse_pod(obj).host_network is False  # type: ignore[union-attr]
    plain = parse_pod(make_pod("pm-2", "mon", "node-1", ["198.18.1.1"]))
    assert isinstance(plain, Peer) and plain.host_network is False


def test_parse_pod_malformed() -> None:
    assert parse_pod({"metadata": {}}) == Skip("malformed")
    assert parse_pod({"metadata": {"name": "a"}, "spec": [], "status": {}}) == Skip("malformed")
    assert parse_pod("junk") == Skip("malformed")
    odd = parse_pod(
        {
            "metadata": {"name": "a"},
            "spec": {"nodeName": "n"},
            "status": {"podIPs": [{"ip": "300.1.1.1"}, {"ip": "198.18.0.1"}, 5]},
        }
    )
    assert isinstance(odd, Peer) and odd.pod_ips == ("198.18.0.1",) and odd.bad_ips == 2


def test_parse_node_meta() -> None:
    meta = parse_node_meta(make_node("n1", {"topology.kubernetes.io/zone": "z1"}, []))
    assert meta == parse_node_meta(
        {"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}}}
    )
    assert parse_node_meta({}) == Skip("malformed")


def test_who_counts() -> None:
    peers = [
        peer("node-0"),  # self by node
        replace(peer("node-9"), name="pm-0"),  # self by pod name
        peer("node-1"),
        peer("node-2", phase="Pending"),
        peer("node-3", terminating=True),
        peer("node-4", ips=()),
        peer("node-5", ready=False),  # probed, readiness reported
        peer(""),  # not scheduled
    ]
    p = plan(ME, peers, None, MeshSettings())
    assert p.selected == ("node-1", "node-5")
    assert p.readiness == (("node-1", True), ("node-5", False))
    assert p.peers_total == 2


def test_targets_dual_stack_and_labels_without_pod_identity() -> None:
    peers = [
        peer(
            "node-1",
            ips=("198.18.1.1", "2001:db8::1", "198.18.1.99"),
            host_ips=("198.18.2.1", "2001:db8:2::1"),
        )
    ]
    p = plan(ME, peers, None, MeshSettings())
    got = {(t.kind, dict(t.labels)["target_node"], t.family, t.address) for t in p.targets}
    assert got == {
        ("pod", "node-1", 4, "198.18.1.1"),
        ("pod", "node-1", 6, "2001:db8::1"),
        ("node", "node-1", 4, "198.18.2.1"),
        ("node", "node-1", 6, "2001:db8:2::1"),
    }
    for t in p.targets:
        assert "pm-" not in repr(t.labels) and "198.18" not in repr(t.labels)


def test_rollout_keeps_identity() -> None:
    before = plan(ME, [peer("node-1", ips=("198.18.1.1",))], None, MeshSettings())
    after = plan(
        ME, [replace(peer("node-1", ips=("198.18.1.7",)), name="pm-new")], None, MeshSettings()
    )
    assert [t.key for t in before.targets] == [t.key for t in after.targets]
    assert before.targets[0].address != after.targets[0].address


def test_two_pods_on_a_node_prefer_ready_then_newer() -> None:
    old = peer("node-1", ips=("198.18.1.1",), created="2026-01-01T00:00:00Z")
    new = replace(
        peer("node-1", ips=("198.18.1.2",), created="2026-02-01T00:00:00Z"),
        name="pm-b",
        key="ns/pm-b",
    )
    pod_addr = [
        t.address for t in plan(ME, [old, new], None, MeshSettings()).targets if t.kind == "pod"
    ]
    assert pod_addr == ["198.18.1.2"]
    pod_addr = [
        t.address
        for t in plan(ME, [old, replace(new, ready=False)], None, MeshSettings()).targets
        if t.kind == "pod"
    ]
    assert pod_addr == ["198.18.1.1"]


def test_zone_labels_when_enabled() -> None:
    p = plan(
        ME,
        [peer("node-1"), peer("node-2"), peer("node-3")],
        {"node-0": "a", "node-1": "b", "node-2": None},
        MeshSettings(zones=True),
    )
    zones = {dict(t.labels)["target_node"]: dict(t.labels)["target_zone"] for t in p.targets}
    assert zones == {"node-1": "b", "node-2": ""}  # node-3 is gone from the API
    assert all(
        "target_zone" not in dict(t.labels)
        for t in plan(ME, [peer("node-1")], None, MeshSettings()).targets
    )


def test_sampled_above_full_mesh_max() -> None:
    peers = [
        peer(f"node-{i}", ips=(f"198.18.1.{i}",), host_ips=(f"198.18.2.{i}",))
        for i in range(1, 201)
    ]
    p = plan(ME, peers, None, MeshSettings(full_mesh_max=100, peers=20))
    assert p.peers_total == 200
    assert len(p.selected) == 20
    assert len(p.targets) == 40
    assert 10 <= p.expected_probers <= 30
    full = plan(ME, peers[:100], None, MeshSettings(full_mesh_max=100, peers=20))
    assert len(full.selected) == 100 == full.expected_probers


HOST_ME = replace(ME, network="host")


def host_peer(
    node: str,
    ips: tuple[str, ...] = ("198.18.2.1",),
    host_ips: tuple[str, ...] | None = None,
    **kw: object,
) -> Peer:
    """A host-network exporter pod: its pod IPs are its node's."""
    return peer(
        node, ips=ips, host_ips=ips if host_ips is None else host_ips, host_network=True, **kw
    )


def test_a_pod_network_exporter_ignores_host_network_pods() -> None:
    peers = [peer("node-1"), host_peer("node-2"), host_peer("node-1", key="ns/h-1", name="h-1")]
    p = plan(ME, peers, None, MeshSettings())
    assert p.selected == ("node-1",) and p.peers_total == 1
    got = {(t.kind, dict(t.labels)["target_node"], t.address) for t in p.targets}
    # node-1's host pod (ready, newer or not) never displaces its pod-network peer.
    assert got == {("pod", "node-1", "198.18.1.1"), ("node", "node-1", "198.18.2.1")}


def test_a_host_network_exporter_probes_only_the_nodes_of_host_network_peers() -> None:
    peers = [
        host_peer("node-1", ("198.18.2.1", "2001:db8:2::1")),
        peer("node-2", ips=("198.18.1.2",), host_ips=("198.18.2.2",)),  # a pod-network pod
        host_peer("node-3", ("198.18.2.3",), host_ips=()),  # hostIPs not reported yet
        host_peer("node-0"),  # itself, by node
    ]
    p = plan(HOST_ME, peers, None, MeshSettings())
    assert p.selected == ("node-1", "node-3") and p.peers_total == 2
    got = {(t.kind, dict(t.labels)["target_node"], t.family, t.address) for t in p.targets}
    assert got == {
        ("node", "node-1", 4, "198.18.2.1"),
        ("node", "node-1", 6, "2001:db8:2::1"),
        ("node", "node-3", 4, "198.18.2.3"),
    }
    # No pod target, and no address of the pod-network pod, from the host network.
    assert "198.18.1.2" not in {t.address for t in p.targets}


def test_host_network_targets_keep_the_pod_networks_label_set() -> None:
    """From the host the node targets are the same label sets as from a pod: the two
    exporters' series differ only by source_network, so rules can set them side by side."""
    pod_side = plan(ME, [peer("node-1", host_ips=("198.18.2.1",))], None, MeshSettings())
    host_side = plan(HOST_ME, [host_peer("node-1")], None, MeshSettings())
    assert [t for t in pod_side.targets if t.kind == "node"] == list(host_side.targets)


def test_a_pod_in_the_other_network_than_its_flag_says_is_named() -> None:
    own = host_peer("node-0", key="ns/pm-0", name="pm-0")
    said = network_mismatch(ME, own)
    assert said is not None
    assert "--mesh.source-network" in said and "--mesh.source-network=host" in said
    assert network_mismatch(HOST_ME, own) is None
    assert network_mismatch(ME, peer("node-0", key="ns/pm-0", name="pm-0")) is None
    assert network_mismatch(HOST_ME, peer("node-0")) is not None
    assert network_mismatch(ME, None) is None


def test_discovery_warns_once_when_its_own_pod_contradicts_the_flag(
    caplog: pytest.LogCaptureFixture,
) -> None:
    k = KubernetesSettings(namespace="ns", node_name="node-0", pod_name="pm-0")
    found: list[list[Target]] = []
    d = KubernetesDiscovery(k, MeshSettings(), FakeApi(), found.append)
    d.pods.store["ns/pm-0"] = host_peer("node-0", key="ns/pm-0", name="pm-0")
    d.pods.store["ns/pm-1"] = host_peer("node-1", key="ns/pm-1", name="pm-1")
    with caplog.at_level(logging.WARNING, logger="exporter.discovery.kubernetes"):
        d.recompute()
        d.recompute()
    warned = [r.getMessage() for r in caplog.records if "--mesh.source-network" in r.getMessage()]
    assert len(warned) == 1 and "ns/pm-0" in warned[0]
    assert found == [[], []]  # the host-network peer is not counted from the pod network


def own(node: str = "node-0", **kw: object) -> Peer:
    """This exporter's own pod (ME's name), on ME's node unless told."""
    return replace(peer(node, host_ips=("198.18.2.100", "2001:db8:2::100")), name="pm-0", **kw)  # type: ignore[arg-type]


def test_one_node_probes_its_own_node_ips() -> None:
    p = plan(ME, [own()], None, MeshSettings())
    assert p.alone and p.peers_total == 0 and p.selected == ()
    got = {(t.kind, dict(t.labels)["target_node"], t.family, t.address) for t in p.targets}
    assert got == {("node", "node-0", 4, "198.18.2.100"), ("node", "node-0", 6, "2001:db8:2::100")}
    assert p.own_node_targets == 2
    assert describe(p, services=True) == (
        "one node: no peers to probe; probing this node's IPs and the Services",
    )
    off = plan(ME, [own()], None, MeshSettings(own_node=False))
    assert off.targets == () and off.own_node_targets == 0
    assert describe(off, services=True) == ("one node: no peers to probe; probing the Services",)
    assert describe(off, services=False) == ("one node: no peers to probe; probing nothing",)


def test_own_node_targets_stay_beside_the_mesh_and_keep_their_series() -> None:
    alone = plan(ME, [own()], None, MeshSettings())
    mesh = plan(ME, [own(), peer("node-1")], None, MeshSettings())
    assert not mesh.alone and mesh.selected == ("node-1",)
    assert [t.key for t in mesh.targets[-2:]] == [t.key for t in alone.targets]
    assert mesh.own_node_targets == 2
    assert describe(mesh, services=True) == (
        "mesh: 1 peer on other nodes, probing 1 of them and this node's IPs",
    )
    # The own pod replaced in a rollout: the same series, from the new pod's hostIPs.
    rolled = plan(
        ME, [replace(own(), name="pm-new", created="2026-03-01T00:00:00Z")], None, MeshSettings()
    )
    assert [t.key for t in rolled.targets] == [t.key for t in alone.targets]


def test_own_pod_preferred_by_name_then_not_terminating() -> None:
    mine = own(host_ips=("198.18.2.100",))
    other = replace(peer("node-0", host_ips=("198.18.2.200",)), name="pm-b", key="ns/pm-b")
    assert own_pod([other, mine], ME) is mine
    assert own_pod([other, replace(mine, node="node-9")], ME) is other  # not on this node
    assert own_pod([replace(mine, host_ips=())], ME) is None  # no hostIPs yet: no target
    assert plan(ME, [replace(mine, host_ips=())], None, MeshSettings()).targets == ()


def test_own_node_zone_and_zones_without_labels() -> None:
    p = plan(ME, [own(), peer("node-1")], {"node-0": "a", "node-1": "b"}, MeshSettings(zones=True))
    assert {dict(t.labels)["target_zone"] for t in p.targets if t.labels[1][1] == "node-0"} == {"a"}
    assert p.zone_labels == (2, 2) and len(describe(p, True)) == 1
    bare = plan(
        ME, [own(), peer("node-1")], {"node-0": None, "node-1": None}, MeshSettings(zones=True)
    )
    assert bare.zone_labels == (2, 0)
    assert {dict(t.labels)["target_zone"] for t in bare.targets} == {""}
    # Nothing is lost without labels: the same peers as without zones, and a warning.
    assert bare.selected == plan(ME, [own(), peer("node-1")], None, MeshSettings()).selected
    assert describe(bare, True)[1].startswith("--mesh.zones: no node has the label")


def test_landing_page_shows_the_mesh_state_escaped() -> None:
    page = _landing("/metrics", describe(plan(ME, [own()], None, MeshSettings()), True)).decode()
    assert "one node: no peers to probe; probing this node&#x27;s IPs and the Services" in page
    assert '<p class="status">' not in _landing("/metrics").decode()
