"""The exporter's own view: every target's last minute (up, loss, RTT quantiles) and the
Service checks, as frozen values read from the same state /metrics renders from; and the
view as JSON (`/api/v1/view`, version VERSION), both ways, the reading side defensive
because it reads what a peer sent."""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from exporter import __version__
from exporter.probing.engine import Prober
from exporter.probing.stats import LOST, TargetState, recent_size
from exporter.services.checker import GOOD, ServiceChecker
from exporter.targets import family_label

VERSION = 1
CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class Recent:
    """The figures of one target's last outcomes (pure: from the ring's values)."""

    probes: int
    received: int
    loss: float | None  # a ratio, 0 to 1; None before the first outcome
    rtt_p50_seconds: float | None  # None without a timed reply
    rtt_p99_seconds: float | None


def quantile(ordered: Sequence[int], q: float) -> int:
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summarize(values: Sequence[int]) -> Recent:
    """Loss and RTT quantiles of a ring's outcomes: RTTs in nanoseconds, LOST, UNTIMED (a
    reply whose RTT was not trusted counts as received, without a sample)."""
    rtts = sorted(v for v in values if v >= 0)
    lost = values.count(LOST)
    probes = len(values)
    return Recent(
        probes,
        probes - lost,
        lost / probes if probes else None,
        quantile(rtts, 0.5) / 1e9 if rtts else None,
        quantile(rtts, 0.99) / 1e9 if rtts else None,
    )


@dataclass(frozen=True)
class TargetView:
    """One target as the page shows it."""

    kind: str
    name: str  # target_node, else the static target's name, else the address
    ip_family: str
    address: str
    labels: tuple[tuple[str, str], ...]
    up: bool
    recent: Recent


@dataclass(frozen=True)
class ServiceView:
    """One Service check (a ClusterIP and port) and its latest result."""

    namespace: str
    service: str
    ip_family: str
    port: int
    protocol: str
    up: bool
    last_result: str
    checks: int


@dataclass(frozen=True)
class View:
    """One exporter's view. `instance` is random per process: a view fetched from oneself
    is recognised by it."""

    version: int
    exporter_version: str
    instance: str
    node: str | None
    host: str
    source_network: str | None
    addresses: tuple[str, ...]
    generated_unix: float
    interval_seconds: float
    window_seconds: float
    targets: tuple[TargetView, ...]
    services: tuple[ServiceView, ...]
    notes: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.node or self.host


def target_name(labels: Iterable[tuple[str, str]], address: str) -> str:
    found = dict(labels)
    return found.get("target_node") or found.get("target") or address


def target_view(st: TargetState) -> TargetView:
    t = st.target
    # The ring is read before `up`: an outcome written in between shows in up only.
    values = st.recent_values()
    return TargetView(
        t.kind,
        target_name(t.labels, t.address),
        family_label(t.family),
        st.address,
        tuple((k, v) for k, v in t.labels if k != "kind"),
        bool(st.up),
        summarize(values),
    )


def service_views(checker: ServiceChecker | None) -> tuple[ServiceView, ...]:
    if checker is None:
        return ()
    out = []
    for st in sorted(list(checker.states.values()), key=lambda s: s.check.key):
        c = st.check
        out.append(
            ServiceView(
                c.namespace,
                c.service,
                family_label(c.family),
                c.port,
                c.protocol,
                st.last in GOOD,
                st.last,
                sum(dict(st.results).values()),
            )
        )
    return tuple(out)


class ViewSource(Protocol):
    """Whatever makes a view: the Viewer, or a fixed view in tests and benchmarks."""

    def view(self) -> View: ...


class Viewer:
    """Makes the view on demand, from HTTP threads, as a scrape reads the same objects."""

    def __init__(
        self,
        prober: Prober,
        checker: ServiceChecker | None = None,
        node: str | None = None,
        source_network: str | None = None,
        addresses: Sequence[str] = (),
        notes: Callable[[], Sequence[str]] = lambda: (),
    ) -> None:
        self.prober = prober
        self.checker = checker
        self.node = node
        self.source_network = source_network
        self.addresses = tuple(addresses)
        self.notes = notes
        self.instance = os.urandom(8).hex()
        self.host = socket.gethostname()

    def view(self) -> View:
        interval = self.prober.settings.interval
        targets = sorted(
            (target_view(st) for st in self.prober.states),
            key=lambda t: (t.kind, t.name, t.ip_family),
        )
        return View(
            VERSION,
            __version__,
            self.instance,
            self.node,
            self.host,
            self.source_network,
            self.addresses,
            time.time(),
            interval,
            recent_size(interval) * interval,
            tuple(targets),
            service_views(self.checker),
            tuple(self.notes()),
        )


def to_json(view: View) -> bytes:
    doc: dict[str, Any] = {
        "version": view.version,
        "exporter_version": view.exporter_version,
        "instance": view.instance,
        "node": view.node,
        "host": view.host,
        "source_network": view.source_network,
        "addresses": list(view.addresses),
        "generated_unix": view.generated_unix,
        "interval_seconds": view.interval_seconds,
        "window_seconds": view.window_seconds,
        "targets": [
            {
                "kind": t.kind,
                "name": t.name,
                "ip_family": t.ip_family,
                "address": t.address,
                "labels": dict(t.labels),
                "up": t.up,
                "probes": t.recent.probes,
                "received": t.recent.received,
                "loss_ratio": t.recent.loss,
                "rtt_p50_seconds": t.recent.rtt_p50_seconds,
                "rtt_p99_seconds": t.recent.rtt_p99_seconds,
            }
            for t in view.targets
        ],
        "services": [
            {
                "namespace": s.namespace,
                "service": s.service,
                "ip_family": s.ip_family,
                "port": s.port,
                "protocol": s.protocol,
                "up": s.up,
                "last_result": s.last_result,
                "checks": s.checks,
            }
            for s in view.services
        ],
        "notes": list(view.notes),
    }
    return json.dumps(doc, separators=(",", ":")).encode()


class ViewError(ValueError):
    """A peer's reply is not a view this exporter reads."""


def _get(
    doc: dict[str, Any], key: str, kind: type | tuple[type, ...], optional: bool = False
) -> Any:
    value = doc.get(key)
    if value is None and optional:
        return None
    # bool is an int: a count or a ratio that is true/false is still wrong.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _types(kind)):
        raise ViewError(f"field {key!r}: expected {_names(kind)}, got {type(value).__name__}")
    return value


def _types(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _names(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in _types(kind))


def _ratio(doc: dict[str, Any], key: str) -> float | None:
    value = _get(doc, key, (int, float), optional=True)
    if value is not None and not (0 <= value <= 1):
        raise ViewError(f"field {key!r}: {value} is not a ratio")
    return None if value is None else float(value)


def _seconds(doc: dict[str, Any], key: str) -> float | None:
    value = _get(doc, key, (int, float), optional=True)
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ViewError(f"field {key!r}: {value} is not a duration")
    return None if value is None else float(value)


def _target_checked(raw: Any) -> TargetView:
    """One target, each field checked with a message naming it."""
    if not isinstance(raw, dict):
        raise ViewError("a target is not an object")
    labels = _get(raw, "labels", dict)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ViewError("a target's labels are not strings")
    probes = _get(raw, "probes", int)
    received = _get(raw, "received", int)
    if not 0 <= received <= probes:
        raise ViewError(f"received {received} of {probes} probes")
    return TargetView(
        _get(raw, "kind", str),
        _get(raw, "name", str),
        _get(raw, "ip_family", str),
        _get(raw, "address", str),
        tuple(sorted(labels.items())),
        _get(raw, "up", bool),
        Recent(
            probes,
            received,
            _ratio(raw, "loss_ratio"),
            _seconds(raw, "rtt_p50_seconds"),
            _seconds(raw, "rtt_p99_seconds"),
        ),
    )


def _target(raw: Any) -> TargetView:
    """One target: the checks of _target_checked in a few exact type tests (a 100-node
    /mesh reads 10,000 of them), falling back to it for the message when one fails."""
    try:
        labels = raw["labels"]
        probes, received = raw["probes"], raw["received"]
        loss, p50, p99 = raw["loss_ratio"], raw["rtt_p50_seconds"], raw["rtt_p99_seconds"]
        kind, name, family, address, up = (
            raw["kind"],
            raw["name"],
            raw["ip_family"],
            raw["address"],
            raw["up"],
        )
        good = (
            type(raw) is dict
            and str is type(kind) is type(name) is type(family) is type(address)
            and type(up) is bool
            and int is type(probes) is type(received)
            and 0 <= received <= probes
            and type(labels) is dict
            and all(type(k) is str and type(v) is str for k, v in labels.items())
            and (loss is None or (type(loss) in (int, float) and 0 <= loss <= 1))
            and all(
                v is None or (type(v) in (int, float) and 0 <= v < math.inf) for v in (p50, p99)
            )
        )
    except (KeyError, TypeError):
        good = False
    if not good:
        return _target_checked(raw)
    return TargetView(
        kind,
        name,
        family,
        address,
        tuple(sorted(labels.items())),
        up,
        Recent(
            probes,
            received,
            None if loss is None else float(loss),
            None if p50 is None else float(p50),
            None if p99 is None else float(p99),
        ),
    )


def from_json(data: bytes) -> View:
    """A peer's view; ViewError when it is not one (or of a version this reads not)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ViewError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ViewError("not a JSON object")
    version = _get(doc, "version", int)
    if version != VERSION:
        raise ViewError(f"view version {version}; this exporter reads version {VERSION}")
    targets = [_target(raw) for raw in _get(doc, "targets", list)]
    services = []
    for raw in doc.get("services") or []:
        if not isinstance(raw, dict):
            raise ViewError("a service is not an object")
        services.append(
            ServiceView(
                _get(raw, "namespace", str),
                _get(raw, "service", str),
                _get(raw, "ip_family", str),
                _get(raw, "port", int),
                _get(raw, "protocol", str),
                _get(raw, "up", bool),
                _get(raw, "last_result", str),
                _get(raw, "checks", int),
            )
        )
    addresses = _get(doc, "addresses", list)
    notes = doc.get("notes") or []
    if not all(isinstance(a, str) for a in [*addresses, *notes]):
        raise ViewError("addresses and notes must be strings")
    return View(
        version,
        _get(doc, "exporter_version", str),
        _get(doc, "instance", str),
        _get(doc, "node", str, optional=True),
        _get(doc, "host", str),
        _get(doc, "source_network", str, optional=True),
        tuple(addresses),
        float(_get(doc, "generated_unix", (int, float))),
        float(_get(doc, "interval_seconds", (int, float))),
        float(_get(doc, "window_seconds", (int, float))),
        tuple(targets),
        tuple(services),
        tuple(notes),
    )
