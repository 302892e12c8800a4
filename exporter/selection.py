"""Which peers an exporter probes once the cluster is too large for a full mesh.

With at most ``full_mesh_max`` other nodes (or ``peers`` covering all of them) every node
probes every other node. Above that, the choice is a pure function of the set of nodes, so
each exporter computes the same probe graph on its own, from names and zones alone:

* **Ring.** Nodes sit on one ring, ordered by a BLAKE2b hash of their name (ties, which
  take a 64-bit collision, by name). Each node probes the k = ``peers`` nodes that follow
  it. This is the design of k hash rings with ring j taken as the j-th successor on one
  ring: a node's k picks are distinct by construction, so nobody skips to a further node
  and every in-degree is exactly k. With k independently hashed rings a node's successors
  coincide about k(k-1)/2 times per graph, each time moving one node down and one up; at
  k = 20 that broke a +-2 in-degree spread in 20 of 20 graphs of 150 nodes, 14 of 20 of
  1,000 and 1 of 6 of 5,000.
* **Zones** (``zones=True``), *in addition to* the ``peers`` budget: a node whose k ring
  successors hold no node of some other zone also probes one node of that zone. Nodes
  without a zone (``None``) cover every zone; nobody has to cover them. The U extras a
  zone of s nodes must take (its demand) are spread with at most
  ``cap = max(2, ceil(U / s))`` per node: in priority order (ring position), each node
  that needs the zone takes the zone node that follows a hash of its name on the ring or,
  when that one is full, the one after a further hash of its name, and so on.

Promises in the sampled mode (n nodes, n - 1 > ``full_mesh_max``, k < n - 1):

1. A node never selects itself nor anyone twice; the result is sorted.
2. In-degree (proved). A node without a zone (every node, without zones) is probed by
   exactly k others; a node of zone Z by k + e with 0 <= e <= cap(Z). Whenever U <= 2 s
   for every zone, all in-degrees therefore lie in [k, k + 2], within +-2 of the mean of
   the real edges. U / s averages (1 - p)**(k + 1) / p for a zone holding a share p of the
   nodes, but the few longest gaps of the ring dominate it: at k = 20 the average is 0.13
   for six equal zones and 0.37 when a fifth of the nodes have no zone (the largest of the
   six then reaches 0.4 to 0.7); it passes 2 at a share of about 8 %, or on a small cluster
   with an unlucky long gap. Such a zone is still covered by everyone and its nodes take
   the excess. Below about n / (k + 3) nodes no choice at all could keep a zone near the
   mean (every other node must probe one of its nodes); between that and U <= 2 s, moving
   ring probes away from the zone's nodes could, and this design does not try.
3. Churn. Removing or adding a node changes the ring picks of exactly its k ring
   predecessors; without zones nobody else changes (proved). With zones, the nodes whose
   extra was that node change too (at most cap), and nodes that start or stop needing a
   zone can push lower-priority extras of that zone along a short chain. Measured over
   random graphs of 23 to 5,000 nodes, 1 to 6 zones and k from 10 to 20, about 7,500
   removals and additions with U <= s / 2 for every zone: never more than
   k + (number of zones) + 2 other nodes changed, and that only once. Nearer saturation
   chains grow (a zone with U = 2 s on 121 nodes: 33 changes), and everything changes
   when n crosses ``full_mesh_max`` or a zone appears or disappears (every node's duty to
   cover it changes).
4. Determinism: the result depends only on the set of (name, zone) pairs: not on their
   order or repetition, nor on the process or the platform. Removing a node and adding it
   back restores every choice exactly.

Outside the sampled mode every node probes all others and has in-degree n - 1.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from exporter.config import MeshSettings

# The personalisation keeps these positions unrelated to any other BLAKE2b of the same names.
_PERSON = b"pingmesh-peers"
# Two extras per node rather than one: with one, a zone's extras would fill every slot as
# soon as the demand neared the zone size, and one change would then push extras along a
# long chain. Fixed rather than derived from the demand while the demand allows it, so that
# one node tipping the demand over a multiple of the zone size reshuffles nothing.
_CAPACITY = 2
# After this many hashed choices, the next zone node along the ring: the choices only need
# to end somewhere, and the slots add up to at least the demand.
_HASHED_CHOICES = 32


@dataclass(frozen=True)
class NodeInfo:
    """A node as the selection sees it: name and zone."""

    name: str
    zone: str | None = None


def _encode(name: str) -> bytes:
    # surrogatepass: a name that is not valid text still needs a stable position, not an
    # exception in the middle of a refresh.
    return name.encode("utf-8", "surrogatepass")


def _ring_keys(name: str) -> tuple[int, int]:
    """(ring position, first zone choice) of a name, both 64-bit."""
    digest = hashlib.blake2b(_encode(name), digest_size=16, person=_PERSON).digest()
    return int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big")


def _choice_point(name: str, attempt: int) -> int:
    digest = hashlib.blake2b(
        _encode(name), digest_size=8, person=_PERSON, salt=attempt.to_bytes(16, "big")
    ).digest()
    return int.from_bytes(digest, "big")


def _merge(nodes: Iterable[NodeInfo], zones: bool) -> dict[str, str | None]:
    """One zone per name, whatever the order or repetition of the input."""
    zone_of: dict[str, str | None] = {}
    for node in nodes:
        zone = node.zone if zones else None
        if node.name not in zone_of:
            zone_of[node.name] = zone
            continue
        # A repeated name with different zones must resolve the same way on every node,
        # whatever order each one received the list in: a known zone beats none, and the
        # smallest known zone wins.
        known = zone_of[node.name]
        if zone is not None and (known is None or zone < known):
            zone_of[node.name] = zone
    return zone_of


class Selector:
    """Pre-computes the rings for one node set so that select_peers and expected_probers for
    many nodes are cheap; select_peers(...) and expected_probers(...) above may build one
    internally.

    Building costs one hash per node and one sort; with zones, a pass over each zone's
    ring positions plus work proportional to the nodes that need an extra. ``peers_of``
    and ``probers_of`` then cost O(peers) and O(1) and never compute other nodes' choices.
    Both raise KeyError for a name outside the node set (``select_peers`` adds self).
    """

    __slots__ = ("_arrivals", "_extra", "_full", "_index", "_k", "_order", "_sorted")

    def __init__(self, nodes: Iterable[NodeInfo], settings: MeshSettings) -> None:
        zone_of = _merge(nodes, settings.zones)
        ranked = sorted((_ring_keys(name), name) for name in zone_of)
        self._order: tuple[str, ...] = tuple(name for _, name in ranked)
        self._index: dict[str, int] = {name: i for i, name in enumerate(self._order)}
        n = len(self._order)
        self._full = n - 1 <= settings.full_mesh_max or settings.peers >= n - 1
        self._k = max(n - 1, 0) if self._full else settings.peers
        self._sorted: tuple[str, ...] = tuple(sorted(self._order)) if self._full else ()
        # By ring position: the zone nodes a node probes beyond its ring successors, and
        # how many such extras a zone node takes.
        self._extra: dict[int, list[int]] = {}
        self._arrivals: dict[int, int] = {}
        if settings.zones and not self._full:
            members: dict[str, list[int]] = {}
            for pos, name in enumerate(self._order):
                zone = zone_of[name]
                if zone is not None:
                    members.setdefault(zone, []).append(pos)
            keys = tuple(key for key, _ in ranked)
            for zone in sorted(members):
                self._cover(members[zone], keys)

    def _cover(self, members: list[int], keys: tuple[tuple[int, int], ...]) -> None:
        """Give one node of this zone (ring positions ``members``, ascending) to every node
        whose k ring successors miss it."""
        n, k, s = len(self._order), self._k, len(members)
        seekers: list[int] = []
        for i, p in enumerate(members):
            nxt = members[i + 1] if i + 1 < s else members[0] + n
            # Only the nodes more than k before the next member miss the zone, so this
            # costs the zone size plus the demand, not n.
            seekers.extend(t % n for t in range(p + 1, nxt - k))
        if not seekers:
            return
        cap = max(_CAPACITY, -(-len(seekers) // s))
        member_keys = [keys[p][0] for p in members]
        load = [0] * s
        # Ring positions are ascending in ring key, so this is the priority order. A node
        # added or removed only disturbs the choices of lower-priority seekers, and only
        # those that wanted the slot it took or freed.
        for seeker in sorted(seekers):
            point = keys[seeker][1]
            attempt = 0
            while True:
                # Hashed choices, not the next member along the ring: the members that
                # follow a full one are the likeliest to be full too, so walking the ring
                # makes long chains of displaced extras under load.
                j = bisect.bisect_left(member_keys, point) % s
                if load[j] < cap:
                    break
                attempt += 1
                if attempt > _HASHED_CHOICES:
                    while load[j] >= cap:
                        j = (j + 1) % s
                    break
                point = _choice_point(self._order[seeker], attempt)
            load[j] += 1
            self._extra.setdefault(seeker, []).append(members[j])
            self._arrivals[members[j]] = load[j]

    def peers_of(self, name: str) -> tuple[str, ...]:
        """Sorted names of the nodes ``name`` probes."""
        i = self._index[name]
        if self._full:
            return tuple(other for other in self._sorted if other != name)
        order, n = self._order, len(self._order)
        picks = [order[(i + d) % n] for d in range(1, self._k + 1)]
        picks.extend(order[p] for p in self._extra.get(i, ()))
        picks.sort()
        return tuple(picks)

    def probers_of(self, name: str) -> int:
        """How many other nodes probe ``name``."""
        if name not in self._index:
            raise KeyError(name)
        if self._full:
            return self._k
        return self._k + self._arrivals.get(self._index[name], 0)


def _with_self(self_name: str, nodes: Iterable[NodeInfo]) -> list[NodeInfo]:
    listed = list(nodes)
    if all(node.name != self_name for node in listed):
        listed.append(NodeInfo(self_name))
    return listed


def select_peers(
    self_name: str, nodes: Iterable[NodeInfo], settings: MeshSettings
) -> tuple[str, ...]:
    """Sorted names of the nodes self probes (self excluded). self_name may be absent from
    nodes (then treat as if present).

    Zone coverage comes in addition to the ``peers`` budget: the k ring successors are
    always probed, plus one node of each other zone they miss. An absent self counts as a
    node without a zone. The module docstring states the promises.
    """
    return Selector(_with_self(self_name, nodes), settings).peers_of(self_name)


def expected_probers(self_name: str, nodes: Iterable[NodeInfo], settings: MeshSettings) -> int:
    """How many other nodes select self_name (for the receiving side's coverage gauge)."""
    return Selector(_with_self(self_name, nodes), settings).probers_of(self_name)
