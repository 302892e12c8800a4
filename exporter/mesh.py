"""From the peer pods the API reports to the targets this exporter probes. Pure functions.

Which peers count: other nodes' exporter pods that are Running, not terminating, and have a
pod IP. A peer that is not Ready is still probed (a readiness probe failing says nothing about
its network) and its readiness is exposed on its own. One target per peer node and family for
the pod network and for the node network; labels name the peer's node, never its pod, so a
rollout moves addresses without creating series.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from exporter.config import MeshSettings
from exporter.objects import Peer
from exporter.selection import NodeInfo, Selector
from exporter.targets import Target


@dataclass(frozen=True)
class Identity:
    """This exporter's node and pod."""

    node: str
    pod_name: str | None = None


@dataclass(frozen=True)
class MeshPlan:
    """What this exporter probes, and the coverage figures beside it."""

    targets: tuple[Target, ...]
    peers_total: int  # other nodes with a peer that counts
    selected: tuple[str, ...]  # nodes this exporter probes
    expected_probers: int  # other nodes expected to probe this one
    readiness: tuple[tuple[str, bool], ...]  # (node, ready) of every selected peer


def counts(peer: Peer, me: Identity) -> bool:
    if not peer.node or peer.node == me.node or peer.name == me.pod_name:
        return False
    return peer.phase == "Running" and not peer.terminating and bool(peer.pod_ips)


def one_per_node(peers: Iterable[Peer], me: Identity) -> dict[str, Peer]:
    """A node briefly runs two exporter pods during a surge rollout: prefer the ready one,
    then the newer, so the choice is the same on every node."""
    best: dict[str, Peer] = {}
    for p in peers:
        if not counts(p, me):
            continue
        cur = best.get(p.node)
        if cur is None or (p.ready, p.created, p.name) > (cur.ready, cur.created, cur.name):
            best[p.node] = p
    return best


def _labels(kind: str, node: str, zone: str | None) -> tuple[tuple[str, str], ...]:
    base = (("kind", kind), ("target_node", node))
    return base if zone is None else (*base, ("target_zone", zone))


def plan(
    me: Identity,
    peers: Iterable[Peer],
    zones: Mapping[str, str | None] | None,
    settings: MeshSettings,
) -> MeshPlan:
    """zones is None when zone awareness is off; else every node the API knows, by name, with
    its zone (None if unlabelled). With zones on, a peer whose node is gone from the API is
    dropped at once instead of waiting for the pod garbage collector."""
    by_node = one_per_node(peers, me)
    if zones is not None:
        by_node = {n: p for n, p in by_node.items() if n in zones}
    zone_of = (lambda n: zones.get(n) or "") if zones is not None else (lambda n: None)
    nodes = [NodeInfo(n, zone_of(n) or None) for n in sorted(by_node)]
    nodes.append(NodeInfo(me.node, zone_of(me.node) or None))
    selector = Selector(nodes, replace(settings, zones=zones is not None))
    chosen = selector.peers_of(me.node)
    targets: list[Target] = []
    for node in chosen:
        peer = by_node[node]
        zone = zone_of(node)
        for kind, ips in (("pod", peer.pod_ips), ("node", peer.host_ips)):
            seen: set[int] = set()
            for ip in ips:
                fam = 6 if ":" in ip else 4  # already validated and canonical
                if fam in seen:
                    continue  # one target per family: the first IP, as the API orders them
                seen.add(fam)
                targets.append(Target(_labels(kind, node, zone), fam, ip))
    return MeshPlan(
        targets=tuple(targets),
        peers_total=len(by_node),
        selected=tuple(chosen),
        expected_probers=selector.probers_of(me.node),
        readiness=tuple((n, by_node[n].ready) for n in chosen),
    )
