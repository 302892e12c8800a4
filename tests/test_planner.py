"""The mesh plan kept across events (exporter/mesh.py's Planner) against ``plan()`` of the
same pods and nodes from scratch, over random sequences of pod and node events."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import MeshSettings, SourceNetwork
from exporter.mesh import Identity, Planner, plan
from exporter.objects import NodeMeta, Peer

ME = Identity("node-00", "pm-me")
NODES = [f"node-{i:02d}" for i in range(40)]


def _pod(i: int, node: str, serial: int) -> Peer:
    return Peer(
        key=f"mon/pm-{i}",
        name=f"pm-{i}",
        node=node,
        pod_ips=(f"198.18.1.{serial % 250}", f"2001:db8::{serial:x}"),
        host_ips=(f"198.18.2.{serial % 250}",),
        phase="Running",
        ready=True,
        terminating=False,
        created=f"2026-01-01T00:00:{serial % 60:02d}Z",
    )


# (kind, pod or node index, zone index, serial)
events = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "pod",
                "delete",
                "ready",
                "ip",
                "phase",
                "terminating",
                "hostnet",
                "node",
                "unnode",
                "relist",
            ]
        ),
        st.integers(0, 59),
        st.integers(0, 4),
        st.integers(0, 10_000),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(
    zoned=st.booleans(),
    own_node=st.booleans(),
    zones=st.sampled_from([1, 2, 3]),
    peers=st.sampled_from([1, 2, 4]),
    full_mesh_max=st.sampled_from([0, 3, 10]),
    network=st.sampled_from(["pod", "host"]),
    seq=events,
)
def test_planner_equals_plan_from_scratch_after_every_event(
    zoned: bool,
    own_node: bool,
    zones: int,
    peers: int,
    full_mesh_max: int,
    network: SourceNetwork,
    seq: list[tuple[str, int, int, int]],
) -> None:
    cfg = MeshSettings(full_mesh_max=full_mesh_max, peers=peers, zones=zoned, own_node=own_node)
    me = replace(ME, network=network)
    planner = Planner(me, cfg)
    pods: dict[str, Peer] = {}
    metas: dict[str, NodeMeta] = {}

    def zone(z: int) -> str | None:
        return None if z == zones else ("" if z == zones + 1 else f"z{z % zones}")

    for kind, i, z, serial in seq:
        node = NODES[i % len(NODES)]
        key = f"mon/pm-{i}"
        old = pods.get(key)
        changed_pods: set[str] = set()
        changed_nodes: set[str] = set()
        if kind == "pod":
            # On its own node, sometimes on self's node, sometimes a second pod on a node.
            where = NODES[(i * 7 + z) % len(NODES)] if z == 4 else node
            pods[key] = _pod(i, where, serial)
        elif kind == "delete":
            pods.pop(key, None)
        elif old is not None and kind == "ready":
            pods[key] = replace(old, ready=not old.ready)
        elif old is not None and kind == "ip":
            pods[key] = replace(old, pod_ips=(f"198.18.3.{serial % 250}",))
        elif old is not None and kind == "phase":
            pods[key] = replace(old, phase="Pending" if old.phase == "Running" else "Running")
        elif old is not None and kind == "terminating":
            pods[key] = replace(old, terminating=True)
        elif old is not None and kind == "hostnet":
            # The other DaemonSet's pod under the same selector: it joins the other mesh.
            pods[key] = replace(old, host_network=not old.host_network)
        elif kind == "node":
            metas[node] = NodeMeta(node, zone(z), None)
            changed_nodes.add(node)
        elif kind == "unnode":
            metas.pop(node, None)
            changed_nodes.add(node)
        changed_pods.add(key)
        if kind == "relist":
            planner.sync_pods(pods, None)
            planner.sync_nodes(metas, None)
        else:
            planner.sync_pods(pods, changed_pods)
            planner.sync_nodes(metas, changed_nodes)
        zone_map = {m.name: m.zone for m in metas.values()} if zoned else None
        assert planner.plan() == plan(me, pods.values(), zone_map, cfg)


def test_a_readiness_or_ip_change_reuses_the_selection() -> None:
    cfg = MeshSettings(full_mesh_max=0, peers=3)
    planner = Planner(ME, cfg)
    pods = {f"mon/pm-{i}": _pod(i, NODES[i], i) for i in range(1, 30)}
    planner.sync_pods(pods, None)
    first = planner.plan()
    probed = next(k for k, p in pods.items() if p.node == first.selected[0])
    pods[probed] = replace(pods[probed], ready=False, pod_ips=("198.18.9.9",))
    planner.sync_pods(pods, {probed})
    second = planner.plan()
    assert second.selected is first.selected  # the ring answered without recomputing
    assert second == plan(ME, pods.values(), None, cfg)
    assert ("pod", "198.18.9.9") in {(t.kind, t.address) for t in second.targets}


def test_a_second_node_joining_forms_the_mesh_and_keeps_the_own_node_targets() -> None:
    planner = Planner(ME, MeshSettings())
    me = replace(_pod(0, ME.node, 1), key="mon/pm-me", name="pm-me")
    planner.sync_pods({me.key: me}, None)
    alone = planner.plan()
    assert alone.alone and [t.kind for t in alone.targets] == ["node"]
    pods = {me.key: me, "mon/pm-1": _pod(1, "node-01", 2)}
    planner.sync_pods(pods, {"mon/pm-1"})
    mesh = planner.plan()
    assert mesh.selected == ("node-01",) and mesh.peers_total == 1
    assert mesh.targets[-1] == alone.targets[0]
    assert mesh == plan(ME, pods.values(), None, MeshSettings())
    del pods["mon/pm-1"]
    planner.sync_pods(pods, {"mon/pm-1"})
    assert planner.plan() == alone
