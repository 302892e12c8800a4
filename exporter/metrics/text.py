"""The text exposition format's small pieces, shared by every collector that writes series
itself rather than through prometheus_client."""

from __future__ import annotations

from collections.abc import Iterable


def format_le(bound: float) -> str:
    return repr(float(round(bound, 9)))


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_text(pairs: Iterable[tuple[str, str]]) -> str:
    """``a="x",b="y"``: the inside of a series' braces."""
    return ",".join(f'{k}="{escape(v)}"' for k, v in pairs)


def source_labels(
    source_node: str | None, source_network: str | None = None
) -> tuple[tuple[str, str], ...]:
    """The labels every probe series of this exporter carries, when they are known (in
    Kubernetes): its node, and the network it probes from (``pod`` or ``host``: two
    DaemonSets on one node probe the same node IPs, from two places). A static exporter has
    neither."""
    pairs = (("source_node", source_node),) if source_node else ()
    return (*pairs, ("source_network", source_network)) if source_network else pairs
