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


def source_labels(source_node: str | None) -> tuple[tuple[str, str], ...]:
    """The label every probe and check series of this exporter carries, when the node is
    known (in Kubernetes); a static exporter has none."""
    return (("source_node", source_node),) if source_node else ()
