"""The cluster matrix (pure): which peers to ask for their views, and the views assembled
into one cell per (source, target) pair and kind, coloured by loss and latency."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from exporter.metrics.view import TargetView, View

# Worst first: a cell of several targets (IP families) takes the worst of their states.
STATES = ("down", "lossy", "slow", "nodata", "ok")


@dataclass(frozen=True)
class Peer:
    """A peer exporter to ask: the name its target carries and where its view is."""

    name: str
    address: str


def peers_of(view: View, kinds: Sequence[str]) -> tuple[Peer, ...]:
    """One peer per target name among targets of these kinds (an exporter answers on each of
    its addresses: IPv4 is asked where there is one), never one of this exporter's own
    addresses."""
    own = set(view.addresses)
    chosen: dict[str, TargetView] = {}
    for t in view.targets:
        if t.kind not in kinds or t.address in own:
            continue
        have = chosen.get(t.name)
        if have is None or (have.ip_family != "ipv4" and t.ip_family == "ipv4"):
            chosen[t.name] = t
    return tuple(Peer(name, t.address) for name, t in sorted(chosen.items()))


@dataclass(frozen=True)
class Row:
    """A source: its view, or why there is none."""

    name: str
    address: str | None  # None: this exporter itself
    view: View | None
    error: str | None
    seconds: float


@dataclass(frozen=True)
class Cell:
    """One (source, target) pair of one kind: the worst of its targets (IP families)."""

    source: str
    target: str
    kind: str
    state: str
    up: bool
    loss: float | None
    rtt_p50_seconds: float | None
    rtt_p99_seconds: float | None
    families: tuple[str, ...]


@dataclass(frozen=True)
class Matrix:
    """Rows (sources) and columns (targets) by name, and the cells that exist, by
    (source, target, kind)."""

    rows: tuple[Row, ...]
    columns: tuple[str, ...]
    kinds: tuple[str, ...]
    cells: Mapping[tuple[str, str, str], Cell]
    slow_seconds: float

    def cell(self, source: str, target: str, kind: str) -> Cell | None:
        return self.cells.get((source, target, kind))


def classify(up: bool, loss: float | None, p99: float | None, slow_seconds: float) -> str:
    """A target's colour: `nodata` before its first outcome, `down` when it is not up or lost
    everything, `lossy` with any loss, `slow` when its p99 RTT is above slow_seconds."""
    if loss is None:
        return "nodata"
    if not up or loss >= 1:
        return "down"
    if loss > 0:
        return "lossy"
    if p99 is not None and p99 > slow_seconds:
        return "slow"
    return "ok"


def _worst(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _cell(source: str, target: str, kind: str, ts: Sequence[TargetView], slow: float) -> Cell:
    if len(ts) == 1:  # most cells: one IP family
        t, r = ts[0], ts[0].recent
        state = classify(t.up, r.loss, r.rtt_p99_seconds, slow)
        return Cell(
            source,
            target,
            kind,
            state,
            t.up,
            r.loss,
            r.rtt_p50_seconds,
            r.rtt_p99_seconds,
            (t.ip_family,),
        )
    states = [classify(t.up, t.recent.loss, t.recent.rtt_p99_seconds, slow) for t in ts]
    return Cell(
        source,
        target,
        kind,
        min(states, key=STATES.index),
        all(t.up for t in ts),
        _worst([t.recent.loss for t in ts]),
        _worst([t.recent.rtt_p50_seconds for t in ts]),
        _worst([t.recent.rtt_p99_seconds for t in ts]),
        tuple(sorted(t.ip_family for t in ts)),
    )


def assemble(
    own: View, peers: Sequence[tuple[Peer, View | None, str | None, float]], slow_seconds: float
) -> Matrix:
    """The matrix of this exporter's view and its peers' (a peer's view, or the error that
    kept it away, and the seconds it took). A target is named by the exporter that answers
    on its address, so a static target's column is the peer's node, like a pod target's."""
    rows = [Row(own.name, None, own, None, 0.0)]
    for peer, view, error, seconds in peers:
        if view is not None and view.instance == own.instance:
            continue  # this exporter, reached by one of its addresses
        name = view.name if view is not None else peer.name
        rows.append(Row(name, peer.address, view, error, seconds))
    names: dict[str, str] = {}
    for row in rows:
        if row.view is not None:
            for address in row.view.addresses:
                names.setdefault(address, row.name)
        if row.address is not None and row.view is not None:
            names[row.address] = row.name
    grouped: dict[tuple[str, str, str], list[TargetView]] = {}
    for row in rows:
        for t in row.view.targets if row.view is not None else ():
            column = names.get(t.address, t.name)
            grouped.setdefault((row.name, column, t.kind), []).append(t)
    cells = {key: _cell(*key, ts, slow_seconds) for key, ts in grouped.items()}
    columns = sorted({r.name for r in rows} | {k[1] for k in cells})
    kinds = sorted({k[2] for k in cells}, key=lambda k: (k not in ("pod", "node"), k))
    rows.sort(key=lambda r: r.name)
    return Matrix(tuple(rows), tuple(columns), tuple(kinds), cells, slow_seconds)
