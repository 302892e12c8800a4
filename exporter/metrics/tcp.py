"""The TCP probes' figures: results, connect time and lossy flows per target (with the
labels of the ICMP target it shares), and the prober's own counts."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.metrics.families import DualHistogramFamily, Native
from exporter.metrics.text import format_le, source_labels
from exporter.probing.tcp import TcpProber
from exporter.targets import family_label

PROBE = "pingmesh_tcp_probe"
CONNECT = "pingmesh_tcp_connect_seconds"
LOSSY = "pingmesh_tcp_lossy_flows"


class TcpCollector(Collector):
    """Rendered from the TCP prober's live table, so a target that leaves takes its series."""

    def __init__(self, prober: TcpProber, source_node: str | None) -> None:
        self.prober = prober
        self.source = source_labels(source_node)

    def collect(self) -> Iterator[Metric]:
        p = self.prober
        # Samples carry their own label sets: the target source decides which kinds of
        # targets (and so which label names) are probed.
        total = CounterMetricFamily(
            PROBE,
            "TCP connects to the target, by result (ok, refused, timeout, reset, unreachable, "
            "error).",
            labels=[],
        )
        connect = DualHistogramFamily(
            CONNECT,
            "TCP handshake time of successful connects (the kernel's SYN to SYN-ACK round trip).",
            labels=[],
        )
        lossy = GaugeMetricFamily(
            LOSSY,
            "Flows (source ports) of the target with a failed connect among their last "
            "--probe.up-window probes.",
            labels=[],
        )
        les = [format_le(b) for b in p.buckets] + ["+Inf"]
        for st in p.states:
            t = st.target
            labels = dict((*self.source, *t.labels, ("ip_family", family_label(t.family))))
            # Read in the order that keeps them consistent: histogram, then results.
            native_counts, zero_count = st.native.copy()
            buckets = st.buckets[:]
            seconds_sum = st.seconds_sum_ns / 1e9
            results = dict(st.results)
            acc = 0
            for le, n in zip(les, buckets, strict=True):
                acc += n
                connect.add_sample(f"{CONNECT}_bucket", {**labels, "le": le}, acc)
            connect.add_sample(f"{CONNECT}_count", labels, acc)
            connect.add_sample(f"{CONNECT}_sum", labels, seconds_sum)
            connect.native[tuple(labels.values())] = Native(
                st.native.schema, native_counts, zero_count
            )
            for result in sorted(results):
                total.add_sample(f"{PROBE}_total", {**labels, "result": result}, results[result])
            lossy.add_sample(LOSSY, labels, st.lossy_flows)
        yield from (total, connect, lossy)

        yield GaugeMetricFamily(
            "pingmesh_tcp_flows",
            "Source ports each TCP target is probed over, in turn (--probe.flows).",
            value=p.flows,
        )
        connects = CounterMetricFamily(
            "pingmesh_tcp_connects", "TCP connects started, all targets.", labels=["ip_family"]
        )
        changes = CounterMetricFamily(
            "pingmesh_tcp_flow_port_changes",
            "Flows that had to take a new source port because theirs was taken.",
            labels=["ip_family"],
        )
        for fam in (4, 6):
            fl = family_label(fam)
            connects.add_metric([fl], p.connects[fam])
            changes.add_metric([fl], p.port_changes[fam])
        yield from (connects, changes)
        yield GaugeMetricFamily(
            "pingmesh_tcp_connects_in_flight",
            "TCP connects waiting for an answer.",
            value=p.in_flight,
        )
