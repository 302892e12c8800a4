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

``Selector`` computes the choices of one node set; ``Ring`` keeps them across changes of
the node set, one node at a time, and answers exactly as a Selector of the nodes it holds:
an exporter that has followed a thousand events and one that just started must agree.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

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


def _free_slot(
    member_keys: list[int], load: list[int], cap: int, point: int, retry: Callable[[int], int]
) -> int:
    """The zone member a seeker's extra goes to: the one after point on the ring, or, while
    that one is full, the one after its next hashed choice; past the last choice, the next
    member along the ring with room (the slots add up to at least the demand)."""
    s = len(member_keys)
    attempt = 0
    while True:
        # Hashed choices, not the next member along the ring: the members that follow a
        # full one are the likeliest to be full too, so walking the ring makes long chains
        # of displaced extras under load.
        j = bisect.bisect_left(member_keys, point) % s
        if load[j] < cap:
            return j
        attempt += 1
        if attempt > _HASHED_CHOICES:
            while load[j] >= cap:
                j = (j + 1) % s
            return j
        point = retry(attempt)


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
            name = self._order[seeker]
            j = _free_slot(member_keys, load, cap, keys[seeker][1], partial(_choice_point, name))
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


# (ring position, first zone choice, name): sorting these is the ring order, and the
# priority order of a zone's seekers.
_Entry = tuple[int, int, str]


class _Cover:
    """One zone's extras handed out so far, in priority order: resumable, and cut back to
    the first seeker a change touches, since earlier seekers never see later ones."""

    __slots__ = ("cap", "load", "picks")

    def __init__(self, cap: int, members: int) -> None:
        self.cap = cap
        self.load = [0] * members
        self.picks: list[int] = []  # member index taken by each seeker, in priority order


class _Coverage:
    """Who misses which zone among their ring successors, and each zone's extras so far.
    Valid for one zone set in the sampled mode; anything else rebuilds it."""

    __slots__ = ("covers", "missing", "seekers", "zones")

    def __init__(self, zones: frozenset[str]) -> None:
        self.zones = zones
        self.missing: dict[str, frozenset[str]] = {}  # only the names that miss a zone
        self.seekers: dict[str, list[_Entry]] = {zone: [] for zone in zones}
        self.covers: dict[str, _Cover] = {}


class Ring:
    """The selection of a node set that changes one node at a time: every answer is the
    one ``Selector`` gives for the nodes the ring holds at that moment.

    A Selector answers for one node set and is rebuilt on every change, which costs a
    hash per node and a sort. A Ring keeps the hashes, the ring order and the zone
    coverage across changes: adding or removing a node costs O(log n) plus O(peers**2)
    for its predecessors' zone duties; a zone's extras are handed out only when asked
    for, from the first seeker a change touched on, up to the seeker asked about.
    ``peers_of`` costs O(peers) on a ring without pending zone work.
    """

    __slots__ = (
        "_coverage",
        "_entry",
        "_member_pos",
        "_members",
        "_names",
        "_points",
        "_ring",
        "_settings",
        "_zone",
    )

    # A batch of more changes than the ring over this many is cheaper to re-cover from
    # scratch than change by change; a single change never is.
    _REBUILD_SHARE = 64

    def __init__(self, settings: MeshSettings, nodes: Iterable[NodeInfo] = ()) -> None:
        self._settings = settings
        self._zone: dict[str, str | None] = {}
        self._entry: dict[str, _Entry] = {}
        self._ring: list[_Entry] = []
        self._names: list[str] = []  # sorted, for the full mesh
        self._members: dict[str, list[_Entry]] = {}  # by zone, in ring order; no empty zone
        self._member_pos: dict[str, list[int]] = {}  # their ring positions, for bisect
        self._points: dict[str, list[int]] = {}  # hashed zone choices after the first
        self._coverage: _Coverage | None = None
        self.update(nodes)

    def __len__(self) -> int:
        return len(self._ring)

    def __contains__(self, name: object) -> bool:
        return name in self._entry

    def update(self, added: Iterable[NodeInfo] = (), removed: Iterable[str] = ()) -> bool:
        """Take out the names of ``removed``, then put in the nodes of ``added``; a name
        already held with another zone moves to it. Names absent or unchanged are no-ops.
        Whether anything changed."""
        gone = [name for name in dict.fromkeys(removed) if name in self._entry]
        fresh = _merge(added, self._settings.zones)
        gone_set = set(gone)
        moved = [
            name
            for name, zone in fresh.items()
            if name in self._entry and name not in gone_set and self._zone[name] != zone
        ]
        new = [name for name in fresh if name not in self._entry or name in gone_set]
        changes = len(gone) + len(moved) + len(new)
        if not changes:
            return False
        if changes * 4 > len(self._ring):
            zone_of = dict(self._zone)
            for name in gone:
                del zone_of[name]
            zone_of.update((name, fresh[name]) for name in (*moved, *new))
            self._rebuild(zone_of)
            return True
        if self._coverage is not None and changes > max(1, len(self._ring) // self._REBUILD_SHARE):
            self._coverage = None
        for name in (*gone, *moved):
            self._remove(name)
        for name in (*moved, *new):
            if name not in self._entry:
                self._add(name, fresh[name])
        return True

    # ----- changes ------------------------------------------------------------------------

    def _rebuild(self, zone_of: dict[str, str | None]) -> None:
        """One sort instead of an insertion per node, for a first fill or a large batch."""
        entries = {name: self._entry.get(name) or (*_ring_keys(name), name) for name in zone_of}
        self._zone, self._entry = zone_of, entries
        self._ring = sorted(entries.values())
        self._names = sorted(zone_of)
        self._members, self._member_pos = {}, {}
        for entry in self._ring:
            zone = zone_of[entry[2]]
            if zone is not None:
                self._members.setdefault(zone, []).append(entry)
                self._member_pos.setdefault(zone, []).append(entry[0])
        self._points = {name: p for name, p in self._points.items() if name in zone_of}
        self._coverage = None

    def _sampled(self) -> bool:
        n, s = len(self._ring), self._settings
        return not (n - 1 <= s.full_mesh_max or s.peers >= n - 1)

    def _live_coverage(self) -> _Coverage | None:
        """The coverage to update in place, or None once it no longer applies."""
        coverage = self._coverage
        if coverage is not None and (not self._sampled() or coverage.zones != self._members.keys()):
            coverage = self._coverage = None
        return coverage

    def _add(self, name: str, zone: str | None) -> None:
        entry = (*_ring_keys(name), name)
        self._entry[name] = entry
        self._zone[name] = zone
        i = bisect.bisect_left(self._ring, entry)
        self._ring.insert(i, entry)
        bisect.insort(self._names, name)
        if zone is not None:
            members = self._members.setdefault(zone, [])
            j = bisect.bisect_left(members, entry)
            members.insert(j, entry)
            self._member_pos.setdefault(zone, []).insert(j, entry[0])
        coverage = self._live_coverage()
        if coverage is None:
            return
        if zone is not None:
            coverage.covers.pop(zone, None)  # its members moved: every choice may change
        self._recheck(coverage, [*self._predecessors(i), name])

    def _remove(self, name: str) -> None:
        entry = self._entry.pop(name)
        zone = self._zone.pop(name)
        self._points.pop(name, None)
        i = bisect.bisect_left(self._ring, entry)
        del self._ring[i]
        del self._names[bisect.bisect_left(self._names, name)]
        if zone is not None:
            members = self._members[zone]
            j = bisect.bisect_left(members, entry)
            del members[j]
            del self._member_pos[zone][j]
            if not members:
                del self._members[zone], self._member_pos[zone]
        coverage = self._live_coverage()
        if coverage is None:
            return
        if zone is not None:
            coverage.covers.pop(zone, None)
        for other in coverage.missing.pop(name, ()):
            self._unseek(coverage, other, entry)
        self._recheck(coverage, self._predecessors(i))

    def _predecessors(self, i: int) -> list[str]:
        """The nodes whose ring successors include position i (k < n - 1 when sampled)."""
        ring, n = self._ring, len(self._ring)
        return [ring[(i - d) % n][2] for d in range(1, self._settings.peers + 1)]

    def _missing(self, coverage: _Coverage, name: str) -> frozenset[str]:
        ring, n, zone_of = self._ring, len(self._ring), self._zone
        i = bisect.bisect_left(ring, self._entry[name])
        seen = {zone_of[ring[(i + d) % n][2]] for d in range(1, self._settings.peers + 1)}
        seen.add(zone_of[name])
        return coverage.zones.difference(seen)

    def _recheck(self, coverage: _Coverage, names: list[str]) -> None:
        for name in names:
            new = self._missing(coverage, name)
            old = coverage.missing.get(name, frozenset())
            if new == old:
                continue
            entry = self._entry[name]
            for zone in old - new:
                self._unseek(coverage, zone, entry)
            for zone in new - old:
                seekers = coverage.seekers[zone]
                at = bisect.bisect_left(seekers, entry)
                seekers.insert(at, entry)
                self._cut(coverage, zone, at)
            if new:
                coverage.missing[name] = new
            else:
                del coverage.missing[name]

    def _unseek(self, coverage: _Coverage, zone: str, entry: _Entry) -> None:
        seekers = coverage.seekers[zone]
        at = bisect.bisect_left(seekers, entry)
        del seekers[at]
        self._cut(coverage, zone, at)

    @staticmethod
    def _cut(coverage: _Coverage, zone: str, at: int) -> None:
        cover = coverage.covers.get(zone)
        if cover is not None and at < len(cover.picks):
            load = cover.load
            for j in cover.picks[at:]:
                load[j] -= 1
            del cover.picks[at:]

    # ----- coverage -----------------------------------------------------------------------

    def _current_coverage(self) -> _Coverage:
        coverage = self._live_coverage()
        if coverage is not None:
            return coverage
        coverage = _Coverage(frozenset(self._members))
        ring, n, k = self._ring, len(self._ring), self._settings.peers
        index = {entry[2]: i for i, entry in enumerate(ring)}
        missing: dict[str, set[str]] = {}
        for zone in sorted(coverage.zones):
            at = [index[entry[2]] for entry in self._members[zone]]
            seekers: list[int] = []
            for i, p in enumerate(at):
                nxt = at[i + 1] if i + 1 < len(at) else at[0] + n
                seekers.extend(t % n for t in range(p + 1, nxt - k))
            seekers.sort()
            coverage.seekers[zone] = [ring[t] for t in seekers]
            for t in seekers:
                missing.setdefault(ring[t][2], set()).add(zone)
        coverage.missing = {name: frozenset(zones) for name, zones in missing.items()}
        self._coverage = coverage
        return coverage

    def _point(self, name: str, attempt: int) -> int:
        points = self._points.setdefault(name, [])
        while len(points) < attempt:
            points.append(_choice_point(name, len(points) + 1))
        return points[attempt - 1]

    def _cover(self, coverage: _Coverage, zone: str, upto: int) -> _Cover:
        """The zone's extras handed out to its first ``upto`` seekers, as Selector does."""
        seekers, pos = coverage.seekers[zone], self._member_pos[zone]
        s = len(pos)
        cap = max(_CAPACITY, -(-len(seekers) // s))
        cover = coverage.covers.get(zone)
        if cover is None or cover.cap != cap:
            cover = coverage.covers[zone] = _Cover(cap, s)
        load, picks = cover.load, cover.picks
        for t in range(len(picks), upto):
            seeker = seekers[t]
            j = _free_slot(pos, load, cap, seeker[1], partial(self._point, seeker[2]))
            load[j] += 1
            picks.append(j)
        return cover

    # ----- answers ------------------------------------------------------------------------

    def peers_of(self, name: str) -> tuple[str, ...]:
        """Sorted names of the nodes ``name`` probes; KeyError outside the ring."""
        entry = self._entry[name]
        if not self._sampled():
            return tuple(other for other in self._names if other != name)
        ring, n = self._ring, len(self._ring)
        i = bisect.bisect_left(ring, entry)
        picks = [ring[(i + d) % n][2] for d in range(1, self._settings.peers + 1)]
        if self._settings.zones and self._members:
            coverage = self._current_coverage()
            for zone in coverage.missing.get(name, ()):
                at = bisect.bisect_left(coverage.seekers[zone], entry)
                cover = self._cover(coverage, zone, at + 1)
                picks.append(self._members[zone][cover.picks[at]][2])
        picks.sort()
        return tuple(picks)

    def probers_of(self, name: str) -> int:
        """How many other nodes probe ``name``; KeyError outside the ring."""
        entry = self._entry[name]
        if not self._sampled():
            return len(self._ring) - 1
        zone = self._zone[name]
        if zone is None:
            return self._settings.peers
        coverage = self._current_coverage()
        cover = self._cover(coverage, zone, len(coverage.seekers[zone]))
        at = bisect.bisect_left(self._members[zone], entry)
        return self._settings.peers + cover.load[at]


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
