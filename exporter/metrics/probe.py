"""The prober's own figures: targets, sockets, packets, rounds. The per-target series are
exporter.metrics.targets'."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.probing.engine import Prober
from exporter.targets import family_label


class ProbeCollector(Collector):
    """The probing loop's own health, computed at scrape time from the prober's state."""

    def __init__(self, prober: Prober) -> None:
        self.prober = prober
        self._counted: tuple[object, Counter[tuple[str, str]]] = ((), Counter())

    def _by_kind(self) -> Counter[tuple[str, str]]:
        """Targets by kind and family, counted again only when the target set changed (the
        prober makes a new states tuple then): at 5,000 targets the count cost a fifth of a
        render."""
        states = self.prober.states
        seen, counts = self._counted
        if seen is not states:
            counts = Counter((s.target.kind, family_label(s.target.family)) for s in states)
            self._counted = (states, counts)
        return counts

    def collect(self) -> Iterator[Metric]:
        p = self.prober
        by_kind = self._by_kind()
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
