"""The per-target probe families, written straight from the prober's current target table.

Rendering from the live table means a target that leaves takes its series with it, and
writing the per-target lines directly keeps a scrape of thousands of targets cheap enough not
to starve the probing loop (prometheus_client's generic path is several times slower).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate
from typing import Generic, NamedTuple, TypeVar

from exporter.metrics.text import format_le, label_text, source_labels
from exporter.probing.stats import TargetState
from exporter.targets import family_label

RTT = "pingmesh_probe_rtt_seconds"
SENT = "pingmesh_probe_sent_total"
RECEIVED = "pingmesh_probe_received_total"
ERRORS = "pingmesh_probe_errors_total"
UP = "pingmesh_target_up"

S = TypeVar("S")  # a prober's per-target state: ICMP's TargetState, TCP's TcpTargetState
T = TypeVar("T")

CHUNK_TARGETS = 250  # targets per chunk of a streamed /metrics response


class PerTarget(Generic[S, T]):
    """Something made once per target, when a scrape first sees the target, and kept while
    the target is probed. Keyed by the prober's state object, which lives exactly as long as
    the target's series."""

    def __init__(self, make: Callable[[S], T]) -> None:
        self.make = make
        self._known: dict[S, T] = {}

    def of(self, states: Sequence[S]) -> list[T]:
        """The values of states, in order; forgets targets that have left."""
        known = self._known
        out = []
        for st in states:
            value = known.get(st)
            if value is None:
                value = known[st] = self.make(st)
            out.append(value)
        if len(known) > len(states):
            self._known = dict(zip(states, out, strict=True))
        return out


class TargetLabels(PerTarget[TargetState, str]):
    """Each target's label text, with this exporter's source_node and source_network first."""

    def __init__(self, source_node: str | None, source_network: str | None = None) -> None:
        super().__init__(self.render)
        self.source = source_labels(source_node, source_network)

    def pairs(self, st: TargetState) -> tuple[tuple[str, str], ...]:
        t = st.target
        return (*self.source, *t.labels, ("ip_family", family_label(t.family)))

    def render(self, st: TargetState) -> str:
        return label_text(self.pairs(st))


class _Snapshot(NamedTuple):
    """One target's figures, read once for every family of one scrape."""

    labels: str
    buckets: list[int]
    rtt_sum_ns: int
    received: int
    sent: int
    up: int
    errors: dict[str, int]


def snapshot(st: TargetState, labels: str) -> _Snapshot:
    """One target's figures, read in the order that keeps them consistent while the probing
    loop keeps counting: every counter only grows and histogram count <= received <= sent
    holds at every instant, so reading the histogram, then received, then sent can never
    show more replies than requests."""
    buckets = st.buckets[:]
    rtt_sum = st.rtt_sum_ns
    received = st.received
    sent = st.sent
    # tuple.__new__ straight: the named tuple's own __new__ is a Python function, and it
    # cost a sixth of a render at 5,000 targets.
    return _new_tuple(_Snapshot, (labels, buckets, rtt_sum, received, sent, st.up, dict(st.errors)))


_new_tuple = tuple.__new__


def render_target_chunks(
    states: Sequence[TargetState], buckets: tuple[float, ...], labels: TargetLabels
) -> Iterator[str]:
    """Exposition text of every per-target family, in chunks of a few hundred targets, so a
    scrape of thousands of targets never holds the whole document in memory. All families
    come from one snapshot per target, so they agree with each other."""
    snaps = [snapshot(st, text) for st, text in zip(states, labels.of(states), strict=True)]
    chunks = [snaps[i : i + CHUNK_TARGETS] for i in range(0, len(snaps), CHUNK_TARGETS)]
    # One %-format per target: the bucket lines' fixed text is laid out once per scrape, and
    # one call formatting twenty-two values costs about half of twenty-two f-strings.
    les = [format_le(b) for b in buckets] + ["+Inf"]
    template = "".join(f'%s,le="{le}"}} %d\n' for le in les) + (
        f"{RTT}_sum{{%s}} %r\n{RTT}_count{{%s}} %d\n"
    )
    yield (
        f"# HELP {RTT} Round-trip time of echo replies received within the timeout, from "
        f"kernel timestamps.\n# TYPE {RTT} histogram\n"
    )
    width = 2 * len(les)
    for chunk in chunks:
        lines: list[str] = []
        for sn in chunk:
            head = f"{RTT}_bucket{{{sn.labels}"
            # The arguments interleave the line head with the cumulative counts; a slice
            # assignment lays the counts in (in C), where a nested comprehension cost a
            # quarter of the render.
            args: list[object] = [head, 0] * len(les)
            args[1:width:2] = accumulate(sn.buckets)
            args += (sn.labels, sn.rtt_sum_ns / 1e9, sn.labels, args[width - 1])
            lines.append(template % tuple(args))
        yield "".join(lines)
    for name, help_text, field in (
        (SENT, "Echo requests whose outcome is known (reply, error or timeout).", 4),
        (RECEIVED, "Echo requests answered by a valid reply within the timeout.", 3),
        (UP, "1 when one of the last probes (--probe.up-window) got a reply.", 5),
    ):
        kind = "gauge" if name == UP else "counter"
        yield f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"
        for chunk in chunks:
            yield "".join([f"{name}{{{sn.labels}}} {sn[field]}\n" for sn in chunk])
    yield (
        f"# HELP {ERRORS} ICMP errors, send failures and invalid replies, by reason.\n"
        f"# TYPE {ERRORS} counter\n"
    )
    for chunk in chunks:
        yield "".join(
            [
                f'{ERRORS}{{{sn.labels},reason="{reason}"}} {sn.errors[reason]}\n'
                for sn in chunk
                if sn.errors
                for reason in sorted(sn.errors)
            ]
        )
