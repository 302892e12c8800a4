"""From the peer pods the API reports to the targets this exporter probes: ``plan()``, a pure
function of the pods and nodes, and ``Planner``, which gives the same plan across a stream
of events at the cost of what each event changes.

Which peers count: other nodes' exporter pods that are Running, not terminating, and have a
pod IP. A peer that is not Ready is still probed (a readiness probe failing says nothing about
its network) and its readiness is exposed on its own. One target per peer node and family for
the pod network and for the node network; labels name the peer's node, never its pod, so a
rollout moves addresses without creating series.

An exporter in the host network (``hostNetwork: true``) and one in the pod network are two
meshes that never mix: each counts only peers of its own network, so a selector that catches
the other DaemonSet's pods cannot make a host-network pod's IP (its node's) a pod target, nor
a pod's IP a host-to-host target. A host-network exporter makes node targets only.

With ``own_node`` the exporter also probes its own node's IPs (``kind="node"``,
``target_node`` = its own node), taken from its own pod's status.hostIPs, which the peer
watch reports anyway: the pod-to-host path, and on a one-node cluster the only mesh target
(from the pod network only: see ``own_node_probed``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from exporter.config import MeshSettings, SourceNetwork
from exporter.objects import NodeMeta, Peer
from exporter.selection import NodeInfo, Ring, Selector
from exporter.targets import Target


@dataclass(frozen=True)
class Identity:
    """This exporter's node and pod."""

    node: str
    pod_name: str | None = None
    network: SourceNetwork = "pod"  # where this exporter runs (--mesh.source-network)

    @property
    def host_network(self) -> bool:
        return self.network == "host"


@dataclass(frozen=True)
class MeshPlan:
    """What this exporter probes, and the coverage figures beside it."""

    targets: tuple[Target, ...]
    peers_total: int  # other nodes with a peer that counts
    selected: tuple[str, ...]  # nodes this exporter probes
    expected_probers: int  # other nodes expected to probe this one
    readiness: tuple[tuple[str, bool], ...]  # (node, ready) of every selected peer
    own_node_targets: int = 0  # of targets, those to this node's own IPs (the last ones)
    # With zones: how many nodes the API knows, and how many of them carry a zone label.
    zone_labels: tuple[int, int] | None = None

    @property
    def alone(self) -> bool:
        """No peer on another node: a one-node cluster (or every other exporter is down)."""
        return self.peers_total == 0


def describe(p: MeshPlan, services: bool) -> tuple[str, ...]:
    """What the plan means to a person: the log lines at a change and the landing page's."""
    probed = (["this node's IPs"] if p.own_node_targets else []) + (
        ["the Services"] if services else []
    )
    what = " and ".join(probed) if probed else "nothing"
    lines: list[str] = []
    if p.alone:
        lines.append(f"one node: no peers to probe; probing {what}")
    else:
        own = " and this node's IPs" if p.own_node_targets else ""
        lines.append(
            f"mesh: {p.peers_total} peer{'' if p.peers_total == 1 else 's'} on other nodes, "
            f"probing {len(p.selected)} of them{own}"
        )
    if p.zone_labels is not None and p.zone_labels[0] and not p.zone_labels[1]:
        lines.append(
            "--mesh.zones: no node has the label topology.kubernetes.io/zone; every "
            'target_zone is "" and peers are chosen as without zones'
        )
    return tuple(lines)


def counts(peer: Peer, me: Identity) -> bool:
    if not peer.node or peer.node == me.node or peer.name == me.pod_name:
        return False
    if peer.host_network != me.host_network:
        return False  # the other mesh's pod (see the module docstring)
    return peer.phase == "Running" and not peer.terminating and bool(peer.pod_ips)


def network_mismatch(me: Identity, own: Peer | None) -> str | None:
    """Why this exporter's own pod contradicts --mesh.source-network, or None. A
    host-network pod left at ``pod`` (or the reverse) counts none of its DaemonSet's pods
    and probes nothing: worth saying once, loudly."""
    if own is None or own.host_network == me.host_network:
        return None
    actual = "host" if own.host_network else "pod"
    return (
        f"flag --mesh.source-network is {me.network!r} but this pod ({own.key}) runs in the "
        f"{actual} network (spec.hostNetwork={str(own.host_network).lower()}): its peers, "
        f"pods of the same network, are not counted; set --mesh.source-network={actual}"
    )


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


def own_node_probed(me: Identity, settings: MeshSettings) -> bool:
    """--mesh.own-node applies to the pod network only: from the host network, the node's own
    IPs are local addresses, and a probe of them never leaves the kernel."""
    return settings.own_node and not me.host_network


def own_pod(pods: Iterable[Peer], me: Identity) -> Peer | None:
    """The pod whose status.hostIPs are this node's: this exporter's own pod by name, else
    another one on this node (during a rollout both carry the same node IPs)."""
    best: Peer | None = None
    for p in pods:
        if p.node != me.node or not p.host_ips:
            continue
        if best is None or _own_rank(p, me) > _own_rank(best, me):
            best = p
    return best


def _own_rank(p: Peer, me: Identity) -> tuple[bool, bool, str, str]:
    return (p.name == me.pod_name, not p.terminating, p.created, p.name)


def _own_targets(node: str, pod: Peer | None, zone: str | None) -> tuple[Target, ...]:
    if pod is None:
        return ()
    return tuple(t for t in _targets(node, pod, zone) if t.kind == "node")


def _labels(kind: str, node: str, zone: str | None) -> tuple[tuple[str, str], ...]:
    base = (("kind", kind), ("target_node", node))
    return base if zone is None else (*base, ("target_zone", zone))


def _targets(node: str, peer: Peer, zone: str | None) -> tuple[Target, ...]:
    targets: list[Target] = []
    # A host-network peer's pod IPs are its node's: they make node targets, never pod ones.
    kinds = (
        (("node", peer.host_ips or peer.pod_ips),)
        if peer.host_network
        else (("pod", peer.pod_ips), ("node", peer.host_ips))
    )
    for kind, ips in kinds:
        seen: set[int] = set()
        for ip in ips:
            fam = 6 if ":" in ip else 4  # already validated and canonical
            if fam in seen:
                continue  # one target per family: the first IP, as the API orders them
            seen.add(fam)
            targets.append(Target(_labels(kind, node, zone), fam, ip))
    return tuple(targets)


def plan(
    me: Identity,
    peers: Iterable[Peer],
    zones: Mapping[str, str | None] | None,
    settings: MeshSettings,
) -> MeshPlan:
    """zones is None when zone awareness is off; else every node the API knows, by name, with
    its zone (None if unlabelled). With zones on, a peer whose node is gone from the API is
    dropped at once instead of waiting for the pod garbage collector."""
    peers = list(peers)
    by_node = one_per_node(peers, me)
    if zones is not None:
        by_node = {n: p for n, p in by_node.items() if n in zones}
    zone_of = (lambda n: zones.get(n) or "") if zones is not None else (lambda n: None)
    nodes = [NodeInfo(n, zone_of(n) or None) for n in sorted(by_node)]
    nodes.append(NodeInfo(me.node, zone_of(me.node) or None))
    selector = Selector(nodes, replace(settings, zones=zones is not None))
    chosen = selector.peers_of(me.node)
    targets = [t for node in chosen for t in _targets(node, by_node[node], zone_of(node))]
    own = (
        _own_targets(me.node, own_pod(peers, me), zone_of(me.node))
        if own_node_probed(me, settings)
        else ()
    )
    return MeshPlan(
        targets=(*targets, *own),
        peers_total=len(by_node),
        selected=tuple(chosen),
        expected_probers=selector.probers_of(me.node),
        readiness=tuple((n, by_node[n].ready) for n in chosen),
        own_node_targets=len(own),
        zone_labels=None
        if zones is None
        else (len(zones), sum(1 for z in zones.values() if z is not None)),
    )


_ABSENT = object()


class Planner:
    """The mesh plan kept across pod and node events: ``plan()`` always equals
    ``plan(me, pods, zones, settings)`` of the pods and nodes set so far, but an event costs
    what it changes, not the cluster. Only a change of the node set (or of a node's zone)
    touches the selection, through a ``Ring``; a peer's readiness or IPs only rebuild its
    own targets, and only if this node probes it. Deterministic and free of I/O."""

    def __init__(self, me: Identity, settings: MeshSettings) -> None:
        self.me = me
        self.zoned = settings.zones
        self.own_node = own_node_probed(me, settings)
        self._ring = Ring(settings)
        self._pods: dict[str, Peer] = {}  # every pod set, by key, counted or not
        self._on_node: dict[str, dict[str, Peer]] = {}  # the counted pods, by node
        self._best: dict[str, Peer] = {}  # one_per_node of the counted pods
        self._node_zone: dict[str, str | None] = {}  # with zones: every node the API knows
        self._node_key: dict[str, str] = {}  # node store key -> node name
        self._with_zone = 0  # nodes of _node_zone whose zone is not None
        self._own_pods: dict[str, Peer] = {}  # every pod on this node, self included
        self._dirty: set[str] = {me.node}  # nodes whose place in the ring may have changed
        self._built: dict[str, tuple[Peer, str | None, tuple[Target, ...]]] = {}
        self._chosen: tuple[tuple[str, ...], int] | None = None  # while the ring stays

    # ----- events ---------------------------------------------------------------------------

    def set_pod(self, key: str, pod: Peer | None) -> None:
        """A pod added, changed (``pod``) or deleted (None)."""
        old = self._pods.pop(key, None)
        if pod is not None:
            self._pods[key] = pod
        self._own_pods.pop(key, None)
        if pod is not None and pod.node == self.me.node:
            self._own_pods[key] = pod
        for node in {p.node for p in (old, pod) if p is not None}:
            on_node = self._on_node.get(node, {})
            on_node.pop(key, None)
            if pod is not None and pod.node == node and counts(pod, self.me):
                on_node[key] = pod
            if on_node:
                self._on_node[node] = on_node
                best = max(on_node.values(), key=lambda p: (p.ready, p.created, p.name))
                if self._best.get(node) is not best:
                    self._best[node] = best
                    self._dirty.add(node)
            else:
                self._on_node.pop(node, None)
                if self._best.pop(node, None) is not None:
                    self._dirty.add(node)

    def set_node(self, key: str, meta: NodeMeta | None) -> None:
        """With zones: a Node added, relabelled (``meta``) or deleted (None)."""
        old = self._node_key.pop(key, None)
        if old is not None:
            self._with_zone -= self._node_zone.pop(old, None) is not None
            self._dirty.add(old)
        if meta is not None:
            self._node_key[key] = meta.name
            self._with_zone -= self._node_zone.get(meta.name) is not None
            self._node_zone[meta.name] = meta.zone
            self._with_zone += meta.zone is not None
            self._dirty.add(meta.name)

    def sync_pods(self, store: Mapping[str, Peer], keys: Iterable[str] | None) -> None:
        """Take the pods of ``keys`` from ``store``: the keys a watch touched, or None after
        a new list (then every key, and those gone from the store)."""
        for key in set(store) | set(self._pods) if keys is None else keys:
            pod = store.get(key)
            if self._pods.get(key, _ABSENT) != pod:
                self.set_pod(key, pod)

    def sync_nodes(self, store: Mapping[str, NodeMeta], keys: Iterable[str] | None) -> None:
        """As ``sync_pods``, for the Node metadata."""
        for key in set(store) | set(self._node_key) if keys is None else keys:
            meta, known = store.get(key), self._node_key.get(key)
            if meta is None:
                if known is not None:
                    self.set_node(key, None)
            elif known != meta.name or self._node_zone.get(known, _ABSENT) != meta.zone:
                self.set_node(key, meta)

    # ----- the plan -------------------------------------------------------------------------

    def _zone(self, node: str) -> str | None:
        """The zone label value: "" for a node without one, None with zones off."""
        return (self._node_zone.get(node) or "") if self.zoned else None

    def plan(self) -> MeshPlan:
        added: list[NodeInfo] = []
        removed: list[str] = []
        for node in sorted(self._dirty):
            member = node == self.me.node or (
                node in self._best and (not self.zoned or node in self._node_zone)
            )
            if member:
                added.append(NodeInfo(node, self._zone(node) or None))
            else:
                removed.append(node)
                self._built.pop(node, None)
        self._dirty.clear()
        if self._ring.update(added, removed) or self._chosen is None:
            self._chosen = self._ring.peers_of(self.me.node), self._ring.probers_of(self.me.node)
        chosen, probers = self._chosen
        targets: list[Target] = []
        for node in chosen:
            peer, zone = self._best[node], self._zone(node)
            built = self._built.get(node)
            if built is None or built[0] is not peer or built[1] != zone:
                built = self._built[node] = (peer, zone, _targets(node, peer, zone))
            targets.extend(built[2])
        # Only what is probed stays built: a full mesh of 5,000 is the most it can hold.
        if len(self._built) > len(chosen):
            self._built = {node: self._built[node] for node in chosen}
        own: tuple[Target, ...] = ()
        if self.own_node:  # a pod or two on this node: cheap enough to build every time
            own = _own_targets(
                self.me.node, own_pod(self._own_pods.values(), self.me), self._zone(self.me.node)
            )
        return MeshPlan(
            targets=(*targets, *own),
            peers_total=len(self._ring) - 1,
            selected=chosen,
            expected_probers=probers,
            readiness=tuple((n, self._best[n].ready) for n in chosen),
            own_node_targets=len(own),
            zone_labels=(len(self._node_zone), self._with_zone) if self.zoned else None,
        )
