#!/usr/bin/env python3
"""Cost and shape of the peer selection (``exporter/selection.py``) on large node sets.

For each node count: the time to build a Selector and answer one ``peers_of`` (what an
exporter does on each node-list change), one ``probers_of`` on a built Selector, the
in-degree min/mean/max over every node's real choice, and how many other nodes change
their choice when one node is removed and when one is added. Times are the best of a few
runs, in milliseconds. Node names look like cloud node names; zones, when on, are spread
round-robin over three or six zones, with every tenth node left without a zone.

Usage: ``python -m bench.selection_bench [--quick]``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from collections.abc import Callable

from exporter.config import MeshSettings
from exporter.selection import NodeInfo, Selector

REPEATS = 5


def _nodes(n: int, zones: int, seed: int) -> list[NodeInfo]:
    rng = random.Random(seed)
    out: list[NodeInfo] = []
    for i in range(n):
        name = f"ip-10-{rng.randrange(256)}-{rng.randrange(256)}-{i}.eu-west-1.compute.internal"
        zone = None if zones == 0 or i % 10 == 9 else f"eu-west-1{'abcdef'[i % zones]}"
        out.append(NodeInfo(name, zone))
    return out


def _best_ms(action: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def _graph(nodes: list[NodeInfo], settings: MeshSettings) -> dict[str, tuple[str, ...]]:
    selector = Selector(nodes, settings)
    return {node.name: selector.peers_of(node.name) for node in nodes}


def _changed(before: dict[str, tuple[str, ...]], after: dict[str, tuple[str, ...]]) -> int:
    return sum(1 for name, peers in after.items() if name in before and before[name] != peers)


def measure(n: int, zones: int, peers: int) -> dict[str, str]:
    settings = MeshSettings(peers=peers, zones=zones > 0)
    nodes = _nodes(n, zones, seed=n * 10 + zones)
    me = nodes[n // 2].name
    build = _best_ms(lambda: Selector(nodes, settings).peers_of(me))
    selector = Selector(nodes, settings)
    peers_ms = _best_ms(lambda: selector.peers_of(me))
    probers_ms = _best_ms(lambda: selector.probers_of(me))

    graph = _graph(nodes, settings)
    indeg = Counter(target for chosen in graph.values() for target in chosen)
    degrees = [indeg[node.name] for node in nodes]
    victim = nodes[random.Random(n).randrange(n)]
    removed = [node for node in nodes if node != victim]
    added = [
        *nodes,
        NodeInfo(
            "ip-10-255-255-255-new.eu-west-1.compute.internal", "eu-west-1a" if zones else None
        ),
    ]
    return {
        "n": f"{n:,}",
        "zones": str(zones) if zones else "off",
        "build + peers_of ms": f"{build:.1f}",
        "peers_of ms": f"{peers_ms:.3f}",
        "probers_of ms": f"{probers_ms:.4f}",
        "in-degree min/mean/max": f"{min(degrees)} / {sum(degrees) / n:.2f} / {max(degrees)}",
        "changed on removal": str(_changed(graph, _graph(removed, settings))),
        "changed on addition": str(_changed(graph, _graph(added, settings))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 nodes only")
    args = parser.parse_args()
    sizes = [1_000] if args.quick else [1_000, 2_000, 5_000]
    peers = MeshSettings().peers
    rows = [measure(n, zones, peers) for n in sizes for zones in (0, 3, 6)]
    header = list(rows[0])
    print(f"peers = {peers}, full_mesh_max = {MeshSettings().full_mesh_max}")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row[column] for column in header) + " |")


if __name__ == "__main__":
    main()
