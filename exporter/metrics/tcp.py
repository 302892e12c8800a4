"""The TCP probes' figures: results, connect time and lossy flows per target (with the
labels of the ICMP target it shares), written straight from the TCP prober's live table like
the echo's per-target families, and the prober's own counts through a collector.

Rendering from the live table means a target that leaves takes its series with it. Through
prometheus_client's generic path the per-target families of 1,000 targets took about half a
second a scrape (bench/tcp_bench.py); written directly they cost what the echo's do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.metrics.targets import PerTarget
from exporter.metrics.text import format_le, label_text
from exporter.probing.tcp import TcpProber
from exporter.probing.tcpstats import TcpTargetState
from exporter.targets import Labels, family_label

PROBE = "pingmesh_tcp_probe_total"
CONNECT = "pingmesh_tcp_connect_seconds"
LOSSY = "pingmesh_tcp_lossy_flows"

PROBE_HELP = (
    "TCP connects to the target, by result (ok, refused, timeout, reset, unreachable, error)."
)
CONNECT_HELP = "TCP handshake time of successful connects (the kernel's SYN to SYN-ACK round trip)."
LOSSY_HELP = (
    "Flows (source ports) of the target with a failed connect among their last "
    "--probe.up-window probes."
)

CHUNK_TARGETS = 250


def label_pairs(source: Labels, st: TcpTargetState) -> Labels:
    t = st.target
    return (*source, *t.labels, ("ip_family", family_label(t.family)))


class TcpLabels(PerTarget[TcpTargetState, str]):
    """Each target's label text, with this exporter's own labels (TargetLabels.source:
    source_node, source_network) first, as on the ICMP target it shares."""

    def __init__(self, source: Labels) -> None:
        super().__init__(lambda st: label_text(label_pairs(source, st)))


def _snapshot(st: TcpTargetState) -> tuple[list[int], int, dict[str, int], int]:
    """Read in the order that keeps them consistent while probing goes on: the histogram,
    then the results (its count never exceeds the ok results)."""
    return st.buckets[:], st.seconds_sum_ns, dict(st.results), st.lossy_flows


def text_chunks(
    states: Sequence[TcpTargetState], buckets: tuple[float, ...], labels: TcpLabels
) -> Iterator[str]:
    """Exposition text of the per-target TCP families, a few hundred targets a chunk."""
    if not states:
        return
    rows = [(text, _snapshot(st)) for st, text in zip(states, labels.of(states), strict=True)]
    chunks = [rows[i : i + CHUNK_TARGETS] for i in range(0, len(rows), CHUNK_TARGETS)]
    les = [format_le(b) for b in buckets] + ["+Inf"]
    template = "".join(f'%s,le="{le}"}} %d\n' for le in les) + (
        f"{CONNECT}_sum{{%s}} %r\n{CONNECT}_count{{%s}} %d\n"
    )
    width = 2 * len(les)
    yield f"# HELP {CONNECT} {CONNECT_HELP}\n# TYPE {CONNECT} histogram\n"
    for chunk in chunks:
        lines: list[str] = []
        for text, (counts, sum_ns, _, _) in chunk:
            args: list[object] = [f"{CONNECT}_bucket{{{text}", 0] * len(les)
            args[1:width:2] = accumulate(counts)
            args += (text, sum_ns / 1e9, text, args[width - 1])
            lines.append(template % tuple(args))
        yield "".join(lines)
    yield f"# HELP {PROBE} {PROBE_HELP}\n# TYPE {PROBE} counter\n"
    for chunk in chunks:
        yield "".join(
            [
                f'{PROBE}{{{text},result="{result}"}} {results[result]}\n'
                for text, (_, _, results, _) in chunk
                for result in sorted(results)
            ]
        )
    yield f"# HELP {LOSSY} {LOSSY_HELP}\n# TYPE {LOSSY} gauge\n"
    for chunk in chunks:
        yield "".join([f"{LOSSY}{{{text}}} {lossy}\n" for text, (_, _, _, lossy) in chunk])


class TcpLabelBytes(PerTarget[TcpTargetState, bytes]):
    """Each target's labels as a serialized Metric message, merged into each of its series."""

    def __init__(self, source: Labels) -> None:
        super().__init__(self.serialize)
        self.source = source

    def serialize(self, st: TcpTargetState) -> bytes:
        from exporter.metrics.proto import metrics_pb2 as pb

        pairs = [pb.LabelPair(name=k, value=v) for k, v in label_pairs(self.source, st)]
        data: bytes = pb.Metric(label=pairs).SerializeToString()
        return data


def protobuf_chunks(
    states: Sequence[TcpTargetState],
    buckets: tuple[float, ...],
    labels: TcpLabelBytes,
    classic: bool,
) -> Iterator[bytes]:
    """The per-target TCP families as delimited MetricFamily messages; the connect time a
    native histogram, with the classic buckets unless told otherwise. Imported only with the
    protobuf runtime, like exporter.metrics.protobuf."""
    if not states:
        return
    from exporter.metrics import protobuf
    from exporter.metrics.families import Native
    from exporter.metrics.proto import metrics_pb2 as pb

    rows = [(st, lb, _snapshot(st)) for st, lb in zip(states, labels.of(states), strict=True)]
    template = pb.Metric(
        histogram=pb.Histogram(bucket=[pb.Bucket(upper_bound=b) for b in buckets])
    ).SerializeToString()
    connect: Any = pb.MetricFamily(name=CONNECT, help=CONNECT_HELP, type=pb.HISTOGRAM)
    for st, lb, (counts, sum_ns, _, _) in rows:
        m = connect.metric.add()
        m.MergeFromString(lb)
        native, zero = st.native.copy()
        h = m.histogram
        if classic:
            m.MergeFromString(template)
            for bucket, running in zip(h.bucket, accumulate(counts), strict=False):
                bucket.cumulative_count = running
        native_count = protobuf.set_native(h, Native(st.native.schema, native, zero))
        h.sample_count = max(sum(counts), native_count)
        h.sample_sum = sum_ns / 1e9
    yield protobuf.delimited(connect)
    probe: Any = pb.MetricFamily(name=PROBE, help=PROBE_HELP, type=pb.COUNTER)
    lossy: Any = pb.MetricFamily(name=LOSSY, help=LOSSY_HELP, type=pb.GAUGE)
    for _, lb, (_, _, results, flows) in rows:
        for result in sorted(results):
            m = probe.metric.add()
            m.MergeFromString(lb)
            m.label.add(name="result", value=result)
            m.counter.value = results[result]
        m = lossy.metric.add()
        m.MergeFromString(lb)
        m.gauge.value = flows
    if probe.metric:
        yield protobuf.delimited(probe)
    yield protobuf.delimited(lossy)


class TcpCollector(Collector):
    """The TCP prober's own counts (the per-target families are written directly)."""

    def __init__(self, prober: TcpProber) -> None:
        self.prober = prober

    def collect(self) -> Iterator[Metric]:
        p = self.prober
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
