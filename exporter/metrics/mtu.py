"""The full-size (MTU) probes' per-target families: sent, received, errors by reason, and the
path MTU once known; at most four series a target.

Written straight from the full-size prober's live target table, like the small echoes'
families (exporter.metrics.targets): a target that leaves takes its series with it, and the
render costs a few microseconds a target instead of prometheus_client's tens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from exporter.metrics.targets import TargetLabels
from exporter.probing.engine import Prober
from exporter.probing.stats import MtuState, TargetState

SENT = "pingmesh_mtu_probe_sent_total"
RECEIVED = "pingmesh_mtu_probe_received_total"
ERRORS = "pingmesh_mtu_probe_errors_total"
PATH_MTU = "pingmesh_path_mtu_bytes"

# (name, type, help), in the order they are written.
FAMILIES = (
    (SENT, "counter", "Full-size echo requests (don't fragment) whose outcome is known."),
    (RECEIVED, "counter", "Full-size echo requests answered within the timeout."),
    (
        ERRORS,
        "counter",
        "Full-size probes' ICMP errors (packet_too_big: a router's MTU is smaller), send "
        "failures and invalid replies, by reason.",
    ),
    (
        PATH_MTU,
        "gauge",
        "The MTU a router reported, else the probed size once a full-size reply came back; "
        "absent while not known.",
    ),
)


@dataclass
class FullSize:
    """The full-size prober and its own label cache: TargetLabels keys on state objects,
    and these are not the small echoes'."""

    prober: Prober
    labels: TargetLabels
    label_bytes: object = field(default=None)  # protobuf.LabelBytes, made on first use


class Snapshot(NamedTuple):
    """One target's full-size figures, read once for both formats' families."""

    sent: int
    received: int
    errors: dict[str, int]
    path_mtu: int


def snapshot(st: TargetState) -> Snapshot:
    """received before sent: a scrape never shows more replies than requests."""
    received = st.received
    sent = st.sent
    path_mtu = st.path_mtu if isinstance(st, MtuState) else 0
    return Snapshot(sent, received, dict(st.errors), path_mtu)


def render_text(states: Sequence[TargetState], labels: TargetLabels) -> Iterator[str]:
    """The four families in the text format."""
    rows = [(text, snapshot(st)) for st, text in zip(states, labels.of(states), strict=True)]
    for name, kind, help_text in FAMILIES:
        head = f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"
        if name == ERRORS:
            lines = [
                f'{name}{{{text},reason="{reason}"}} {sn.errors[reason]}\n'
                for text, sn in rows
                for reason in sorted(sn.errors)
            ]
        elif name == PATH_MTU:
            lines = [f"{name}{{{text}}} {sn.path_mtu}\n" for text, sn in rows if sn.path_mtu]
        else:
            field_ = 0 if name == SENT else 1
            lines = [f"{name}{{{text}}} {sn[field_]}\n" for text, sn in rows]
        yield head + "".join(lines)
