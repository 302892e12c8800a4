"""The incremental selection (exporter/selection.py's Ring) against a Selector built from
scratch: the same answers for every node after every change, whatever the sequence.

Every node computes its choices on its own, so an exporter that kept a Ring across events
and one that just started must agree exactly; any difference is a mesh with holes."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import MeshSettings
from exporter.selection import NodeInfo, Ring, Selector

POOL = [f"node-{i:03d}" for i in range(120)]


def _assert_same(ring: Ring, nodes: dict[str, str | None], cfg: MeshSettings) -> None:
    assert len(ring) == len(nodes)
    if not nodes:
        return
    selector = Selector([NodeInfo(name, zone) for name, zone in nodes.items()], cfg)
    # Asked in a shuffled order: the ring's lazy zone work must not depend on who asks first.
    for name in random.Random(len(nodes)).sample(sorted(nodes), len(nodes)):
        assert ring.peers_of(name) == selector.peers_of(name), name
        assert ring.probers_of(name) == selector.probers_of(name), name


# One step: (kind, node index, zone index, batch size) with kinds add / remove / move
# (a node relabelled into another zone) / batch (several adds and removes at once).
steps = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "move", "batch"]),
        st.integers(0, len(POOL) - 1),
        st.integers(0, 6),
        st.integers(1, 40),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=120, deadline=None)
@given(
    start=st.integers(0, 110),
    zones=st.sampled_from([0, 1, 2, 3, 5, 30]),
    peers=st.sampled_from([1, 2, 3, 5, 8]),
    full_mesh_max=st.sampled_from([0, 3, 20]),
    seed=st.integers(0, 2**32),
    events=steps,
)
def test_ring_agrees_with_selector_after_every_change(
    start: int,
    zones: int,
    peers: int,
    full_mesh_max: int,
    seed: int,
    events: list[tuple[str, int, int, int]],
) -> None:
    cfg = MeshSettings(full_mesh_max=full_mesh_max, peers=peers, zones=zones > 0)
    rng = random.Random(seed)

    def zone(z: int) -> str | None:
        # A seventh of the nodes without a zone, the rest spread over the zones.
        return None if zones == 0 or z == 6 else f"zone-{z % zones}"

    nodes = {name: zone(rng.randrange(7)) for name in rng.sample(POOL, start)}
    ring = Ring(cfg, [NodeInfo(name, z) for name, z in nodes.items()])
    _assert_same(ring, nodes, cfg)
    for kind, index, z, size in events:
        name = POOL[index]
        if kind == "add" or kind == "move":
            nodes[name] = zone(z) if cfg.zones else None
            ring.update([NodeInfo(name, zone(z))])
        elif kind == "remove":
            nodes.pop(name, None)
            ring.update(removed=[name])
        else:
            gone = rng.sample(sorted(nodes), min(size // 2, len(nodes)))
            fresh = {n: zone(rng.randrange(7)) for n in rng.sample(POOL, size)}
            for n in gone:
                del nodes[n]
            nodes.update((n, z if cfg.zones else None) for n, z in fresh.items())
            ring.update([NodeInfo(n, z) for n, z in fresh.items()], gone)
        _assert_same(ring, nodes, cfg)


@pytest.mark.parametrize("zones", [0, 3, 30])
def test_ring_agrees_with_selector_on_a_large_cluster(zones: int) -> None:
    """Default settings, 1,500 nodes, single additions and removals: the regime a Ring is
    for, with the incremental coverage (not the rebuild) doing the work."""
    cfg = MeshSettings(zones=zones > 0)
    rng = random.Random(zones)
    names = [f"ip-10-{rng.randrange(256)}-{rng.randrange(256)}-{i}" for i in range(1_500)]
    nodes = {name: f"z{i % zones}" if zones and i % 10 else None for i, name in enumerate(names)}
    ring = Ring(cfg, [NodeInfo(name, zone) for name, zone in nodes.items()])
    asked = rng.sample(names, 40)
    for step in range(30):
        victim = rng.choice([name for name in names if name not in asked])
        if victim in nodes and step % 3:
            del nodes[victim]
            ring.update(removed=[victim])
        else:
            nodes[victim] = f"z{step % zones}" if zones else None
            ring.update([NodeInfo(victim, nodes[victim])])
        selector = Selector([NodeInfo(name, zone) for name, zone in nodes.items()], cfg)
        for name in asked:
            assert ring.peers_of(name) == selector.peers_of(name)
            assert ring.probers_of(name) == selector.probers_of(name)


def test_ring_input_rules_match_selector() -> None:
    cfg = MeshSettings(full_mesh_max=0, peers=2, zones=True)
    # Repetition and conflicting zones resolve as Selector resolves them.
    listed = [NodeInfo("a", "z2"), NodeInfo("a", None), NodeInfo("a", "z1"), NodeInfo("b", "z1")]
    listed += [NodeInfo(f"n{i}", f"z{i % 3}") for i in range(12)]
    ring, selector = Ring(cfg, listed), Selector(listed, cfg)
    for name in ("a", "b", "n0"):
        assert ring.peers_of(name) == selector.peers_of(name)
    assert "a" in ring and "zz" not in ring
    with pytest.raises(KeyError):
        ring.peers_of("zz")
    with pytest.raises(KeyError):
        ring.probers_of("zz")
    ring.update(removed=["zz", "a", "a"])  # absent and repeated names are no-ops
    assert "a" not in ring and len(ring) == len(listed) - 3
    empty = Ring(cfg)
    assert len(empty) == 0
    empty.update([NodeInfo("solo")])
    assert empty.peers_of("solo") == () and empty.probers_of("solo") == 0
