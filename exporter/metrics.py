"""The /metrics document: per-target probe families rendered straight from the prober's
current target table, plus the exporter's own metrics through a prometheus_client registry.

Rendering from the live table means a target that leaves takes its series with it, and
writing the per-target lines directly keeps a scrape of thousands of targets cheap enough not
to starve the probing loop (prometheus_client's generic path is several times slower).
"""

from __future__ import annotations

import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate
from typing import NamedTuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.probing.engine import Prober
from exporter.probing.stats import TargetState
from exporter.targets import family_label
from exporter.textformat import format_le

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

RTT = "pingmesh_probe_rtt_seconds"
SENT = "pingmesh_probe_sent_total"
RECEIVED = "pingmesh_probe_received_total"
ERRORS = "pingmesh_probe_errors_total"
UP = "pingmesh_target_up"


def _icmplib_version() -> str:
    try:
        from importlib.metadata import version

        return version("icmplib")
    except Exception:
        return "unknown"


CHUNK_TARGETS = 250  # targets per chunk of a streamed /metrics response


class _Snapshot(NamedTuple):
    labels: str
    buckets: list[int]
    rtt_sum_ns: int
    received: int
    sent: int
    up: int
    errors: dict[str, int]


def snapshot(st: TargetState) -> _Snapshot:
    """One target's figures, read in the order that keeps them consistent while the probing
    loop keeps counting: every counter only grows and histogram count <= received <= sent
    holds at every instant, so reading the histogram, then received, then sent can never
    show more replies than requests."""
    buckets = st.buckets[:]
    rtt_sum = st.rtt_sum_ns
    received = st.received
    sent = st.sent
    return _Snapshot(st.label_text, buckets, rtt_sum, received, sent, st.up, dict(st.errors))


def render_target_chunks(
    states: Iterable[TargetState], buckets: tuple[float, ...]
) -> Iterator[str]:
    """Exposition text of every per-target family, in chunks of a few hundred targets, so a
    scrape of thousands of targets never holds the whole document in memory. All families
    come from one snapshot per target, so they agree with each other."""
    snaps = [snapshot(st) for st in states]
    chunks = [snaps[i : i + CHUNK_TARGETS] for i in range(0, len(snaps), CHUNK_TARGETS)]
    suffixes = [f',le="{format_le(b)}"}} ' for b in buckets] + [',le="+Inf"} ']
    yield (
        f"# HELP {RTT} Round-trip time of echo replies received within the timeout, from "
        f"kernel timestamps.\n# TYPE {RTT} histogram\n"
    )
    for chunk in chunks:
        lines: list[str] = []
        for sn in chunk:
            head = f"{RTT}_bucket{{{sn.labels}"
            cumulative = list(accumulate(sn.buckets))
            lines += [
                f"{head}{suffix}{v}\n" for suffix, v in zip(suffixes, cumulative, strict=True)
            ]
            lines.append(
                f"{RTT}_sum{{{sn.labels}}} {sn.rtt_sum_ns / 1e9!r}\n"
                f"{RTT}_count{{{sn.labels}}} {cumulative[-1]}\n"
            )
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


class SelfCollector(Collector):
    """The exporter's own health, computed at scrape time from the prober's state."""

    def __init__(self, prober: Prober, extra: Callable[[], Iterable[Metric]] | None = None) -> None:
        self.prober = prober
        self.extra = extra

    def collect(self) -> Iterator[Metric]:
        p = self.prober
        info = GaugeMetricFamily(
            "pingmesh_build_info",
            "Build information; always 1.",
            labels=["version", "python_version", "icmplib_version"],
        )
        info.add_metric([__version__, platform.python_version(), _icmplib_version()], 1)
        yield info

        by_kind: Counter[tuple[str, str]] = Counter(
            (s.target.kind, family_label(s.target.family)) for s in p.states
        )
        targets = GaugeMetricFamily(
            "pingmesh_targets", "Targets being probed.", labels=["kind", "ip_family"]
        )
        for (kind, fam), n in sorted(by_kind.items()):
            targets.add_metric([kind, fam], n)
        yield targets

        yield GaugeMetricFamily(
            "pingmesh_probe_interval_seconds",
            "Time between two probes of one target.",
            value=p.settings.interval,
        )
        yield GaugeMetricFamily(
            "pingmesh_probe_timeout_seconds",
            "Replies later than this count as lost.",
            value=p.settings.timeout,
        )

        packets = CounterMetricFamily(
            "pingmesh_packets_sent",
            "Echo requests handed to the kernel, all targets.",
            labels=["ip_family"],
        )
        drops = CounterMetricFamily(
            "pingmesh_socket_receive_drops",
            "Packets the kernel dropped because the exporter's receive "
            "buffer was full (SO_RXQ_OVFL).",
            labels=["ip_family"],
        )
        unmatched = CounterMetricFamily(
            "pingmesh_unmatched_packets",
            "ICMP packets that matched no request in flight.",
            labels=["ip_family", "reason"],
        )
        sock_info = GaugeMetricFamily(
            "pingmesh_socket_info",
            "Open ICMP sockets; value is the receive buffer in bytes.",
            labels=["ip_family", "mode"],
        )
        in_flight = GaugeMetricFamily(
            "pingmesh_probes_in_flight", "Echo requests waiting for a reply.", labels=["ip_family"]
        )
        for family, ch in p.channels.items():
            if ch.sock is None:
                continue
            fl = family_label(family)
            packets.add_metric([fl], ch.packets_sent)
            drops.add_metric([fl], ch.sock.drops)
            for reason, n in sorted(dict(ch.unmatched).items()):
                unmatched.add_metric([fl, reason], n)
            sock_info.add_metric([fl, ch.sock.mode], ch.sock.rcvbuf)
            in_flight.add_metric([fl], len(ch.to_expire))
        yield from (packets, drops, unmatched, sock_info, in_flight)

        r = p.rounds
        yield CounterMetricFamily(
            "pingmesh_probe_rounds", "Completed probe rounds.", value=r.rounds
        )
        yield CounterMetricFamily(
            "pingmesh_probe_rounds_skipped",
            "Rounds skipped because the loop fell behind.",
            value=r.skipped,
        )
        yield GaugeMetricFamily(
            "pingmesh_last_round_duration_seconds",
            "Time from the first to the last send of the last round.",
            value=r.last_duration_s,
        )
        yield GaugeMetricFamily(
            "pingmesh_last_round_max_lag_seconds",
            "Largest delay of a send behind its schedule in the last round.",
            value=r.last_max_lag_s,
        )
        yield GaugeMetricFamily(
            "pingmesh_last_round_end_timestamp_seconds",
            "Unix time at which the last round ended.",
            value=r.last_end_unix,
        )
        if self.extra is not None:
            yield from self.extra()


class MetricsDocument:
    """Builds the whole /metrics text; called from HTTP server threads."""

    def __init__(self, prober: Prober, registry: CollectorRegistry) -> None:
        self.prober = prober
        self.registry = registry
        self.last_render_seconds = 0.0
        registry.register(_RenderCollector(self))

    def chunks(self) -> Iterator[bytes]:
        """The document in pieces, for a streamed response. The render time counts only the
        time spent here, not compressing or writing to the client in between."""
        busy = 0.0
        started = time.perf_counter()
        data = generate_latest(self.registry)
        for chunk in render_target_chunks(self.prober.states, self.prober.buckets):
            busy += time.perf_counter() - started
            yield data
            started = time.perf_counter()
            data = chunk.encode()
        busy += time.perf_counter() - started
        self.last_render_seconds = busy
        yield data

    def render(self) -> bytes:
        return b"".join(self.chunks())


def build_registry(
    prober: Prober, extra: Callable[[], Iterable[Metric]] | None = None
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SelfCollector(prober, extra))
    if sys.platform.startswith("linux"):
        ProcessCollector(registry=registry)
    return registry


class _RenderCollector(Collector):
    def __init__(self, doc: MetricsDocument) -> None:
        self.doc = doc

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "pingmesh_metrics_render_seconds",
            "Time the previous /metrics render took.",
            value=self.doc.last_render_seconds,
        )
