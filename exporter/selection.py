"""Which peers an exporter probes once the cluster is too large for a full mesh.

With at most ``full_mesh_max`` other nodes (or ``peers`` covering all of them) every node
probes every other node. Above that, the choice is a pure function of the node set, so each
exporter computes the same probe graph on its own, from names alone:

* **Ring.** Nodes are ordered on one ring by a BLAKE2b hash of their name (ties, which need a
  64-bit collision, by name). Each node probes the ``peers`` nodes that follow it. This is
  the "k hash rings" design with ring j taken as the j-th successor on a single ring: the k
  picks of a node are distinct by construction, so nobody ever has to skip to a further
  node. With k independently hashed rings a node's successors coincide about C(k, 2) times
  per graph, each time pushing one node down and one up, which measurably breaks a +-2
  in-degree promise (k = 20: in most graphs at n = 1,000, in some at n = 5,000).
* **Zones** (``zones=True``). Coverage is *in addition to* the ``peers`` budget: a node
  whose ``peers`` successors hold no node of some other zone also probes one node of that
  zone. A node without a zone (``None``) covers every zone and nobody has to cover it. The
  extra probes of zone Z are spread over Z's nodes: each node that needs one is homed at the
  first node of Z after a second hash of its name on the ring, and Z's nodes take them in
  ring order, at most ``cap`` each (a queue that overflows into the next node of Z), with
  ``cap = max(2, ceil(U / s))`` for U nodes needing Z and s nodes in Z.

Promises, in the sampled mode (n nodes, k = ``peers``, n - 1 > ``full_mesh_max``, k < n - 1):

1. A node never selects itself and never twice; the result is sorted.
2. In-degree. Without zones (or for a node without a zone) it is exactly k. A node of zone
   Z has in-degree k + e with 0 <= e <= cap(Z). So whenever U <= 2 s for every zone, every
   in-degree lies in [k, k + 2], within +-2 of the mean over the real edges. U / s is about
   (1 - p)**(k + 1) / p for a zone holding a share p of the nodes: 0.13 for six equal zones
   at k = 20, and it stays below 2 down to a share of about 9 % at k = 20. A smaller zone is
   still covered by everyone; its nodes then absorb the excess (this is forced: every other
   node must probe one of them).
3. Churn. Removing or adding one node changes the ring choice of exactly its k ring
   predecessors and nobody else (without zones this is the whole change). With zones, the
   nodes whose extra probe went to, or queued behind, a changed one may change too; the
   tests assert at most k + (number of zones) + 2 changed nodes, which holds with room in
   the regime of promise 2. Everything changes when n crosses ``full_mesh_max`` or when a
   zone appears or disappears (everyone's coverage obligation changes with it).
4. Determinism: the output depends only on the set of (name, zone) pairs, not on their
   order, the process, or the platform. Removing a node and adding it back restores the
   original choice exactly.

Outside the sampled mode, every node probes all others and has in-degree n - 1.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

# The personalisation keeps ring positions unrelated to any other BLAKE2b of the same names.
_PERSON = b"pingmesh-peers"
_SPAN = 1 << 64
_CAPACITY = 2
_KEEP = 2


@dataclass(frozen=True)
class NodeInfo:
    name: str
    zone: str | None = None


@dataclass(frozen=True)
class SelectionSettings:
    full_mesh_max: int = 100
    peers: int = 20
    zones: bool = False

    def __post_init__(self) -> None:
        if self.full_mesh_max < 0:
            raise ValueError(f"full_mesh_max must be >= 0, got {self.full_mesh_max}")
        if self.peers < 1:
            raise ValueError(f"peers must be >= 1, got {self.peers}")


def ring_keys(name: str) -> tuple[int, int]:
    """(ring position, zone-extra home point) of a node name, both 64-bit.

    Public so that tests and tools can rebuild the ring independently.
    """
    # surrogatepass: a name that is not valid UTF-8 text still needs a stable position
    # rather than an exception in the middle of a refresh.
    digest = hashlib.blake2b(
        name.encode("utf-8", "surrogatepass"), digest_size=16, person=_PERSON
    ).digest()
    return int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big")


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

    Building costs one hash per node and one sort; with zones, work proportional to the
    nodes of each zone plus the nodes that need an extra. ``peers_of`` and ``probers_of``
    then cost O(peers) and O(1) and never compute other nodes' choices. Both raise KeyError
    for a name that is not in the node set (``select_peers`` adds it).
    """

    __slots__ = (
        "_arrivals", "_extra", "_full", "_index", "_k", "_order", "_shed", "_shed_count",
        "_sorted",
    )

    def __init__(self, nodes: Iterable[NodeInfo], settings: SelectionSettings) -> None:
        zone_of = _merge(nodes, settings.zones)
        ranked = sorted((ring_keys(name), name) for name in zone_of)
        self._order: tuple[str, ...] = tuple(name for _, name in ranked)
        self._index: dict[str, int] = {name: i for i, name in enumerate(self._order)}
        n = len(self._order)
        self._full = n - 1 <= settings.full_mesh_max or settings.peers >= n - 1
        self._k = max(n - 1, 0) if self._full else settings.peers
        self._sorted: tuple[str, ...] = tuple(sorted(self._order)) if self._full else ()
        # Ring positions throughout: extra[u] are the zone extras u probes, arrivals[y] how
        # many extras y receives, shed[u] the ring successor u gives up for y's sake.
        self._extra: dict[int, list[int]] = {}
        self._arrivals: dict[int, int] = {}
        self._shed: dict[int, int] = {}
        self._shed_count: dict[int, int] = {}
        if settings.zones and not self._full:
            zones = tuple(zone_of[name] for name in self._order)
            members: dict[str, list[int]] = {}
            for pos, zone in enumerate(zones):
                if zone is not None:
                    members.setdefault(zone, []).append(pos)
            homes = tuple(keys[1] for keys, _ in ranked)
            firsts = tuple(keys[0] for keys, _ in ranked)
            for zone in sorted(members):
                self._cover(members[zone], homes, firsts)
            self._relieve(zones, members)

    def _cover(
        self, members: list[int], homes: tuple[int, ...], firsts: tuple[int, ...]
    ) -> None:
        """Give one node of this zone to every node whose ring successors miss the zone.

        ``members`` are the zone's ring positions, ascending.
        """
        n, k, s = len(self._order), self._k, len(members)
        member_keys = [firsts[p] for p in members]
        arrivals: list[list[tuple[int, int]]] = [[] for _ in range(s)]
        demand = 0
        for i, p in enumerate(members):
            nxt = members[i + 1] if i + 1 < s else members[0] + n
            # Only the nodes more than k before the next member miss the zone, so the
            # work is proportional to the demand, not to n.
            for t in range(p + 1, nxt - k):
                seeker = t % n
                # Homed by a second hash rather than by ring position: the nodes missing a
                # zone sit in one long gap of the ring, and homing them by position would
                # pile them all onto the member that ends the gap.
                j = bisect.bisect_left(member_keys, homes[seeker])
                if j == s:
                    j = 0
                arrivals[j].append(((homes[seeker] - member_keys[j - 1]) % _SPAN, seeker))
                demand += 1
        if not demand:
            return
        # Two per member while the demand allows it: a capacity that followed the demand
        # more closely would change, and reshuffle every extra of the zone, whenever one
        # node tipped the demand over a multiple of the zone size.
        cap = max(_CAPACITY, -(-demand // s))
        for queue_at in arrivals:
            queue_at.sort()
        # Members take the extras homed on them in ring order, the overflow queueing on to
        # the next member. The queue has a unique smallest steady state on the circle: one
        # lap from empty reaches it, and it is empty somewhere (just after the minimum of
        # the cumulative demand minus capacity). Handing out from there makes the result
        # independent of where the scan began.
        backlog = 0
        start = 0
        for step in range(2 * s):
            if step >= s and backlog == 0:
                start = step - s
                break
            backlog = max(0, backlog + len(arrivals[step % s]) - cap)
        waiting: deque[int] = deque()
        for step in range(s):
            i = (start + step) % s
            waiting.extend(seeker for _, seeker in arrivals[i])
            member = members[i]
            take = min(cap, len(waiting))
            for _ in range(take):
                self._extra.setdefault(waiting.popleft(), []).append(member)
            if take:
                self._arrivals[member] = take
        if waiting:  # pragma: no cover - excluded by the steady-state argument above
            raise AssertionError("zone extras left unassigned")

    def _relieve(self, zones: tuple[str | None, ...], members: dict[str, list[int]]) -> None:
        """Keep a member that takes more than two extras within two of the base in-degree.

        Only a zone too small for its demand (more than two extras per member) gets here.
        For each extra beyond two, one of the member's k ring predecessors stops probing it
        and probes its own (k+1)-th successor instead. A predecessor qualifies when it keeps
        the zone covered without this member, sheds nothing else, and that successor takes
        no extras: the one-shed limit makes u -> u + k + 1 injective, so a node gains at
        most one this way and only nodes at the base in-degree gain.
        """
        n, k = len(self._order), self._k
        for y in sorted(self._arrivals):
            need = self._arrivals[y] - _KEEP
            if need <= 0:
                continue
            zone = zones[y]
            assert zone is not None
            ring = members[zone]
            # Farthest predecessors first: they are out of reach of the next relieved member
            # along the ring, so neighbouring members rarely compete for the same shedder.
            for d in range(k, 0, -1):
                u = (y - d) % n
                v = (u + k + 1) % n
                if u in self._shed or v in self._arrivals or v in self._extra.get(u, ()):
                    continue
                if zones[u] != zone and _count_between(ring, u, k, n) < 2:
                    continue
                self._shed[u] = y
                self._shed_count[y] = self._shed_count.get(y, 0) + 1
                need -= 1
                if not need:
                    break

    def peers_of(self, name: str) -> tuple[str, ...]:
        """Sorted names of the nodes ``name`` probes."""
        i = self._index[name]
        if self._full:
            return tuple(other for other in self._sorted if other != name)
        n, k = len(self._order), self._k
        picks = [(i + d) % n for d in range(1, k + 1)]
        shed = self._shed.get(i)
        if shed is not None:
            picks.remove(shed)
            picks.append((i + k + 1) % n)
        picks.extend(self._extra.get(i, ()))
        return tuple(sorted(self._order[p] for p in picks))

    def probers_of(self, name: str) -> int:
        """How many other nodes probe ``name``."""
        if name not in self._index:
            raise KeyError(name)
        if self._full:
            return self._k
        y, n, k = self._index[name], len(self._order), self._k
        gained = 1 if (y - k - 1) % n in self._shed else 0
        return k + self._arrivals.get(y, 0) - self._shed_count.get(y, 0) + gained


def _count_between(ring: list[int], u: int, k: int, n: int) -> int:
    """How many of the ascending positions ``ring`` lie in u+1 .. u+k around a ring of n."""
    lo, hi = u + 1, u + k
    if hi < n:
        return bisect.bisect_right(ring, hi) - bisect.bisect_left(ring, lo)
    return (len(ring) - bisect.bisect_left(ring, lo)) + bisect.bisect_right(ring, hi - n)


def _with_self(self_name: str, nodes: Iterable[NodeInfo]) -> list[NodeInfo]:
    listed = list(nodes)
    if all(node.name != self_name for node in listed):
        listed.append(NodeInfo(self_name))
    return listed


def select_peers(
    self_name: str, nodes: Iterable[NodeInfo], settings: SelectionSettings
) -> tuple[str, ...]:
    """Sorted names of the nodes self probes (self excluded). self_name may be absent from
    nodes (then treat as if present).

    Coverage of other zones comes in addition to the ``peers`` budget (see the module
    docstring for the exact promises). An absent self is treated as a node without a zone.
    """
    return Selector(_with_self(self_name, nodes), settings).peers_of(self_name)


def expected_probers(
    self_name: str, nodes: Iterable[NodeInfo], settings: SelectionSettings
) -> int:
    """How many other nodes select self_name (for the receiving side's coverage gauge)."""
    return Selector(_with_self(self_name, nodes), settings).probers_of(self_name)
