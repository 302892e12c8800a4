"""Peer selection: full mesh, the sampled ring, zone coverage, in-degree balance, churn and
determinism (exporter/selection.py).

The ring is rebuilt here from the public API alone: with ``peers=1`` and no full mesh every
node selects exactly its ring successor. Zone demand (how many nodes need an extra in a
zone) is then counted by brute force from that ring, independently of the module's own
gap arithmetic.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from exporter.config import MeshSettings
from exporter.selection import (
    NodeInfo,
    Selector,
    expected_probers,
    select_peers,
)

Graph = dict[str, tuple[str, ...]]

# Realistic zone layouts: the default budget, up to six zones of about equal size, up to a
# fifth of the nodes without a zone. A zone's demand (nodes that miss it among their ring
# successors) is dominated by the few longest gaps of the ring, so it varies: with six zones
# and a fifth unzoned the largest demand is about half the zone size even at 5,000 nodes,
# and on small clusters one long gap can push it much higher. The tests therefore check
# each promise against the demand counted by brute force: +-2 needs demand <= 2 * size,
# the churn bound demand <= size / 2.
ZONE_PEERS = MeshSettings().peers
MAX_UNZONED = 0.2


def _names(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"node-{rng.getrandbits(40):010x}-{i}" for i in range(n)]


def _zoned(n: int, zones: int, unzoned: float, seed: int) -> list[NodeInfo]:
    """n nodes, ``unzoned`` of them without a zone, the others spread round-robin over
    ``zones`` zones in a shuffled order (sizes differ by at most one)."""
    rng = random.Random(seed ^ 0x5EED)
    names = _names(n, seed)
    rng.shuffle(names)
    bare = round(n * unzoned) if zones else n
    nodes = [NodeInfo(name) for name in names[:bare]]
    nodes += [NodeInfo(name, f"zone-{i % zones}") for i, name in enumerate(names[bare:])]
    rng.shuffle(nodes)
    return nodes


def _weighted(n: int, weights: Sequence[int], unzoned: float, seed: int) -> list[NodeInfo]:
    """n nodes with independently drawn zones, zone i with probability proportional to
    weights[i]: any sizes, including zones of one node."""
    rng = random.Random(seed)
    zones = [f"zone-{i}" for i in range(len(weights))]
    return [
        NodeInfo(name, None if rng.random() < unzoned else rng.choices(zones, weights)[0])
        for name in _names(n, seed)
    ]


def _graph(nodes: Sequence[NodeInfo], cfg: MeshSettings) -> Graph:
    selector = Selector(nodes, cfg)
    return {node.name: selector.peers_of(node.name) for node in nodes}


def _in_degree(graph: Graph) -> Counter[str]:
    counts: Counter[str] = Counter({name: 0 for name in graph})
    counts.update(target for chosen in graph.values() for target in chosen)
    return counts


def _ring(names: Sequence[str]) -> list[str]:
    successor = Selector([NodeInfo(name) for name in names], MeshSettings(0, 1))
    ring = [min(names)]
    while len(ring) < len(names):
        (nxt,) = successor.peers_of(ring[-1])
        ring.append(nxt)
    return ring


def _demand(nodes: Sequence[NodeInfo], k: int) -> dict[str, int]:
    """Per zone: how many nodes do not find it among their k ring successors."""
    zone_of = {node.name: node.zone for node in nodes}
    ring = _ring(list(zone_of))
    zones = {zone for zone in zone_of.values() if zone is not None}
    demand = dict.fromkeys(zones, 0)
    for i, name in enumerate(ring):
        seen = {zone_of[ring[(i + d) % len(ring)]] for d in range(1, k + 1)}
        for zone in zones - seen - {zone_of[name]}:
            demand[zone] += 1
    return demand


def _demand_ratio(nodes: Sequence[NodeInfo], k: int) -> float:
    """The largest demand / size over the zones (0 without zones)."""
    size = Counter(node.zone for node in nodes)
    return max((u / size[zone] for zone, u in _demand(nodes, k).items()), default=0.0)


def _check_basic(graph: Graph, cfg: MeshSettings) -> None:
    n = len(graph)
    for name, chosen in graph.items():
        assert name not in chosen
        assert len(set(chosen)) == len(chosen)
        assert list(chosen) == sorted(chosen)
        assert set(chosen) <= graph.keys()
        if n - 1 <= cfg.full_mesh_max or cfg.peers >= n - 1:
            assert len(chosen) == n - 1
        else:
            assert len(chosen) >= cfg.peers


def _check_probers(nodes: Sequence[NodeInfo], cfg: MeshSettings, graph: Graph) -> None:
    selector = Selector(nodes, cfg)
    indeg = _in_degree(graph)
    for name in graph:
        assert selector.probers_of(name) == indeg[name]


def _check_coverage(nodes: Sequence[NodeInfo], graph: Graph) -> None:
    zone_of = {node.name: node.zone for node in nodes}
    zones = {zone for zone in zone_of.values() if zone is not None}
    for name, chosen in graph.items():
        missing = zones - {zone_of[target] for target in chosen} - {zone_of[name]}
        assert not missing, (name, zone_of[name], missing)


def _check_within_two(graph: Graph) -> None:
    indeg = _in_degree(graph)
    mean = sum(indeg.values()) / len(indeg)
    low, high = min(indeg.values()), max(indeg.values())
    assert mean - 2 <= low and high <= mean + 2, (low, mean, high)


# --- full mesh and its threshold ---------------------------------------------------------


@pytest.mark.parametrize("n,full_mesh_max", [(2, 1), (10, 9), (50, 100), (101, 100)])
def test_full_mesh_up_to_full_mesh_max(n: int, full_mesh_max: int) -> None:
    cfg = MeshSettings(full_mesh_max=full_mesh_max, peers=5, zones=True)
    nodes = _zoned(n, 3, 0.0, seed=n)
    graph = _graph(nodes, cfg)
    names = sorted(graph)
    for name, chosen in graph.items():
        assert chosen == tuple(other for other in names if other != name)
        assert Selector(nodes, cfg).probers_of(name) == n - 1


@pytest.mark.parametrize("zones", [False, True])
def test_sampled_just_above_full_mesh_max(zones: bool) -> None:
    cfg = MeshSettings(full_mesh_max=100, peers=20, zones=zones)
    nodes = _zoned(102, 3 if zones else 0, 0.0, seed=102)
    graph = _graph(nodes, cfg)
    _check_basic(graph, cfg)
    assert min(len(chosen) for chosen in graph.values()) == 20
    if not zones:
        assert {len(chosen) for chosen in graph.values()} == {20}


@pytest.mark.parametrize("peers", [9, 10, 50])
def test_budget_covering_everyone_is_a_full_mesh(peers: int) -> None:
    names = _names(10, 3)
    graph = _graph([NodeInfo(name) for name in names], MeshSettings(0, peers))
    for name, chosen in graph.items():
        assert chosen == tuple(sorted(set(names) - {name}))


def test_tiny_node_sets() -> None:
    cfg = MeshSettings(full_mesh_max=0, peers=3, zones=True)
    assert select_peers("a", [], cfg) == ()
    assert expected_probers("a", [], cfg) == 0
    assert select_peers("a", [NodeInfo("b", "z")], cfg) == ("b",)
    assert expected_probers("a", [NodeInfo("b", "z")], cfg) == 1
    assert select_peers("a", [NodeInfo("a")], cfg) == ()


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="peers"):
        MeshSettings(peers=0)
    with pytest.raises(ValueError, match="full_mesh_max"):
        MeshSettings(full_mesh_max=-1)


# --- determinism and the API ---------------------------------------------------------------


def test_input_order_and_repetition_do_not_matter() -> None:
    cfg = MeshSettings(full_mesh_max=10, peers=6, zones=True)
    nodes = _zoned(300, 4, 0.1, seed=7)
    reference = _graph(nodes, cfg)
    rng = random.Random(1)
    for _ in range(5):
        shuffled = nodes + rng.sample(nodes, 40)
        rng.shuffle(shuffled)
        assert _graph(shuffled, cfg) == reference
        from_iterator = Selector(iter(shuffled), cfg)
        assert {name: from_iterator.peers_of(name) for name in reference} == reference


def test_conflicting_zones_for_one_name_resolve_the_same_everywhere() -> None:
    cfg = MeshSettings(full_mesh_max=0, peers=3, zones=True)
    base = [NodeInfo(f"n{i}", f"z{i % 3}") for i in range(30)]
    variants = [NodeInfo("n0", None), NodeInfo("n0", "z2"), NodeInfo("n0", "z1")]
    graphs = {
        tuple(sorted(_graph([*order, *base], cfg).items()))
        for order in (variants, variants[::-1], variants[1:] + variants[:1])
    }
    assert len(graphs) == 1
    # the smallest known zone wins, so n0 counts as z0 whatever order the entries came in
    assert graphs == {tuple(sorted(_graph(base, cfg).items()))}


def test_names_are_not_hashed_with_python_hash() -> None:
    # Fixed expectation: the same on every process, interpreter and platform.
    names = [f"node-{i}" for i in range(12)]
    cfg = MeshSettings(full_mesh_max=0, peers=2)
    assert select_peers("node-0", [NodeInfo(name) for name in names], cfg) == ("node-1", "node-5")


def test_absent_self_is_treated_as_present() -> None:
    cfg = MeshSettings(full_mesh_max=5, peers=4, zones=True)
    nodes = _zoned(60, 3, 0.0, seed=11)
    with_self = Selector([*nodes, NodeInfo("me")], cfg)
    chosen = select_peers("me", nodes, cfg)
    assert chosen == with_self.peers_of("me")
    assert "me" not in chosen
    assert {node.zone for node in nodes if node.name in chosen} == {"zone-0", "zone-1", "zone-2"}
    assert expected_probers("me", nodes, cfg) == with_self.probers_of("me")


@pytest.mark.parametrize("zones", [False, True])
def test_module_functions_agree_with_selector(zones: bool) -> None:
    cfg = MeshSettings(full_mesh_max=20, peers=7, zones=zones)
    nodes = _zoned(200, 5, 0.2, seed=5)
    selector = Selector(nodes, cfg)
    for node in nodes[::7]:
        assert select_peers(node.name, nodes, cfg) == selector.peers_of(node.name)
        assert expected_probers(node.name, nodes, cfg) == selector.probers_of(node.name)


def test_unknown_name_raises_key_error() -> None:
    selector = Selector(_zoned(50, 2, 0.0, seed=2), MeshSettings(0, 5, True))
    with pytest.raises(KeyError):
        selector.peers_of("nope")
    with pytest.raises(KeyError):
        selector.probers_of("nope")


# --- properties without zones: exact -------------------------------------------------------


def _log_spaced(lo: int, hi: int, count: int = 60) -> list[int]:
    return sorted({round(lo * (hi / lo) ** (i / (count - 1))) for i in range(count)})


# Drawn from lists: Hypothesis' own integer draws crowd the low end of a range, and these
# properties matter as much on a thousand nodes and six zones as on ten nodes and one.
sizes = st.sampled_from(_log_spaced(10, 1500))
churn_sizes = st.sampled_from(_log_spaced(ZONE_PEERS + 3, 1500))
zone_counts = st.sampled_from(range(1, 7))
unzoned_shares = st.sampled_from([0.0, 0.05, 0.1, 0.15, MAX_UNZONED])
budgets = st.sampled_from(range(1, 31))
seeds = st.integers(0, 2**32)


@settings(max_examples=100, deadline=None)
@given(n=sizes, peers=budgets, seed=seeds)
def test_without_zones_every_in_degree_is_exactly_peers(n: int, peers: int, seed: int) -> None:
    cfg = MeshSettings(full_mesh_max=0, peers=peers)
    nodes = [NodeInfo(name) for name in _names(n, seed)]
    graph = _graph(nodes, cfg)
    _check_basic(graph, cfg)
    expected = min(peers, n - 1)
    assert set(_in_degree(graph).values()) == {expected}
    assert {len(chosen) for chosen in graph.values()} == {expected}
    _check_probers(nodes, cfg, graph)


@settings(max_examples=60, deadline=None)
@given(n=sizes, peers=budgets, seed=seeds, data=st.data())
def test_without_zones_a_change_moves_exactly_the_ring_predecessors(
    n: int, peers: int, seed: int, data: st.DataObject
) -> None:
    peers = min(peers, n - 3)  # stay sampled after the removal
    cfg = MeshSettings(full_mesh_max=0, peers=peers)
    nodes = [NodeInfo(name) for name in _names(n, seed)]
    before = _graph(nodes, cfg)
    ring = _ring(list(before))
    for i, name in enumerate(ring):
        assert before[name] == tuple(sorted(ring[(i + d) % n] for d in range(1, peers + 1)))
    gone = data.draw(st.sampled_from(nodes))
    at = ring.index(gone.name)
    predecessors = {ring[(at - d) % n] for d in range(1, peers + 1)}
    after = _graph([node for node in nodes if node != gone], cfg)
    assert {name for name in after if after[name] != before[name]} == predecessors
    assert _graph([*[node for node in nodes if node != gone], gone], cfg) == before


# --- properties with zones -------------------------------------------------------------------


def _check_zone_in_degrees(nodes: Sequence[NodeInfo], k: int, graph: Graph) -> None:
    """Nodes without a zone exactly k; a zone's nodes k to k + max(2, ceil(demand / size));
    so within +-2 of the mean whenever every demand is at most twice its zone's size."""
    indeg = _in_degree(graph)
    size = Counter(node.zone for node in nodes)
    demand = _demand(nodes, k)
    for node in nodes:
        if node.zone is None:
            assert indeg[node.name] == k
        else:
            cap = max(2, math.ceil(demand[node.zone] / size[node.zone]))
            assert k <= indeg[node.name] <= k + cap
    if all(demand[zone] <= 2 * size[zone] for zone in demand):
        _check_within_two(graph)


@settings(max_examples=150, deadline=None)
@given(
    n=sizes,
    zones=zone_counts,
    unzoned=unzoned_shares,
    full_mesh_max=st.sampled_from([0, 10, 30]),
    seed=seeds,
)
def test_zone_promises_on_realistic_layouts(
    n: int, zones: int, unzoned: float, full_mesh_max: int, seed: int
) -> None:
    cfg = MeshSettings(full_mesh_max=full_mesh_max, peers=ZONE_PEERS, zones=True)
    nodes = _zoned(n, zones, unzoned, seed)
    graph = _graph(nodes, cfg)
    _check_basic(graph, cfg)
    _check_coverage(nodes, graph)
    _check_probers(nodes, cfg, graph)
    if n - 1 <= max(full_mesh_max, ZONE_PEERS):
        assert set(_in_degree(graph).values()) == {n - 1}
    else:
        _check_zone_in_degrees(nodes, ZONE_PEERS, graph)


@pytest.mark.parametrize("n", [1_000, 2_000, 5_000])
@pytest.mark.parametrize("zones,unzoned", [(0, 0.0), (3, 0.0), (6, 0.2)])
def test_zone_promises_on_large_clusters(n: int, zones: int, unzoned: float) -> None:
    cfg = MeshSettings(peers=ZONE_PEERS, zones=True)
    nodes = _zoned(n, zones, unzoned, seed=n + zones)
    assert _demand_ratio(nodes, ZONE_PEERS) <= 2  # the balance regime, by a wide margin
    graph = _graph(nodes, cfg)
    _check_basic(graph, cfg)
    _check_coverage(nodes, graph)
    _check_within_two(graph)
    _check_zone_in_degrees(nodes, ZONE_PEERS, graph)
    _check_probers(nodes, cfg, graph)


@settings(max_examples=150, deadline=None)
@given(
    n=st.sampled_from(_log_spaced(10, 400)),
    weights=st.lists(st.sampled_from(range(1, 21)), min_size=1, max_size=6),
    unzoned=st.sampled_from([0.0, 0.1, 0.5]),
    peers=st.sampled_from(range(1, 21)),
    seed=seeds,
)
def test_zone_bounds_for_any_zone_sizes(
    n: int, weights: list[int], unzoned: float, peers: int, seed: int
) -> None:
    """Coverage always; the in-degree bound of the module docstring, whatever the sizes."""
    cfg = MeshSettings(full_mesh_max=0, peers=peers, zones=True)
    nodes = _weighted(n, weights, unzoned, seed)
    graph = _graph(nodes, cfg)
    _check_basic(graph, cfg)
    _check_coverage(nodes, graph)
    _check_probers(nodes, cfg, graph)
    if peers < n - 1:
        _check_zone_in_degrees(nodes, peers, graph)


def test_a_tiny_zone_is_covered_by_everyone_and_takes_the_excess() -> None:
    cfg = MeshSettings(full_mesh_max=0, peers=20, zones=True)
    nodes = [*_zoned(500, 3, 0.0, seed=3), NodeInfo("lonely", "zone-tiny")]
    graph = _graph(nodes, cfg)
    _check_coverage(nodes, graph)
    indeg = _in_degree(graph)
    assert indeg["lonely"] == len(nodes) - 1
    assert all(20 <= indeg[node.name] <= 22 for node in nodes if node.name != "lonely")


# --- churn -------------------------------------------------------------------------------------


def _changed(before: Graph, after: Graph) -> set[str]:
    return {name for name in after if name in before and after[name] != before[name]}


def _check_churn(nodes: list[NodeInfo], cfg: MeshSettings, gone: NodeInfo) -> None:
    zones = {node.zone for node in nodes if node.zone is not None}
    bound = cfg.peers + len(zones) + 2
    before = _graph(nodes, cfg)
    rest = [node for node in nodes if node != gone]
    after = _graph(rest, cfg)
    assert len(_changed(before, after)) <= bound
    assert _graph([*rest, gone], cfg) == before
    newcomer = NodeInfo("newcomer", gone.zone)
    assert len(_changed(before, _graph([*nodes, newcomer], cfg))) <= bound


@settings(max_examples=150, deadline=None)
@given(n=churn_sizes, zones=zone_counts, unzoned=unzoned_shares, seed=seeds, data=st.data())
def test_one_node_changes_few_choices(
    n: int, zones: int, unzoned: float, seed: int, data: st.DataObject
) -> None:
    """At most peers + zones + 2 other nodes change while every zone's demand is at most
    half its size (measured: at most peers + zones). Closer to saturation a change can
    reshuffle a zone's extras (n=121, six zones, a demand of twice the size: 33 changes)."""
    cfg = MeshSettings(full_mesh_max=0, peers=ZONE_PEERS, zones=True)
    nodes = _zoned(n, zones, unzoned, seed)
    assume(_demand_ratio(nodes, ZONE_PEERS) <= 0.5)
    size = Counter(node.zone for node in nodes)
    # The last node of a zone takes the zone with it, and every node's duty to cover it.
    gone = data.draw(st.sampled_from([node for node in nodes if size[node.zone] > 1]))
    _check_churn(nodes, cfg, gone)


@pytest.mark.parametrize("n", [1_000, 2_000, 5_000])
@pytest.mark.parametrize("zones", [0, 3, 6])
def test_one_node_changes_few_choices_on_large_clusters(n: int, zones: int) -> None:
    cfg = MeshSettings(peers=ZONE_PEERS, zones=zones > 0)
    nodes = _zoned(n, zones, 0.1, seed=n * 7 + zones)
    assert _demand_ratio(nodes, ZONE_PEERS) <= 0.5
    gone = nodes[random.Random(n).randrange(n)]
    _check_churn(nodes, cfg, gone)
