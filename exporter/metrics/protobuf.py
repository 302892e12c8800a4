"""The protobuf exposition: length-delimited io.prometheus.client.MetricFamily messages, made
with the protobuf runtime from Prometheus' own schema.

It is what a Prometheus that scrapes native histograms asks for. The RTT and the Service
histograms then carry their exponential buckets (one series each in Prometheus instead of one
per classic bucket), with the classic buckets beside them unless told otherwise. Imported only
when a scraper first asks for it: the runtime costs about 3 MiB.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client.core import Metric

from exporter.histogram import ZERO_THRESHOLD, spans
from exporter.metrics.families import DualHistogramFamily, Native
from exporter.metrics.proto import metrics_pb2 as pb
from exporter.metrics.targets import (
    ERRORS,
    RECEIVED,
    RTT,
    SENT,
    UP,
    PerTarget,
    TargetLabels,
    snapshot,
)
from exporter.probing.stats import TargetState

CONTENT_TYPE = (
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
)

_TYPES = {
    "counter": pb.COUNTER,
    "gauge": pb.GAUGE,
    "histogram": pb.HISTOGRAM,
    "gaugehistogram": pb.GAUGE_HISTOGRAM,
    "summary": pb.SUMMARY,
    "info": pb.GAUGE,
    "stateset": pb.GAUGE,
    "unknown": pb.UNTYPED,
}


def delimited(message: Any) -> bytes:
    """One message as the delimited encoding frames it: its size as a varint, then itself."""
    body: bytes = message.SerializeToString()
    size, head = len(body), bytearray()
    while True:
        byte = size & 0x7F
        size >>= 7
        if size:
            head.append(byte | 0x80)
        else:
            head.append(byte)
            return bytes(head) + body


def _set_native(h: Any, native: Native) -> int:
    """Writes the exponential buckets into a Histogram message; returns their count."""
    h.schema = native.schema
    h.zero_threshold = ZERO_THRESHOLD
    h.zero_count = native.zero_count
    runs, deltas = spans(native.counts)
    if not runs:
        # An empty native histogram still needs a span, or it would read as a classic one.
        h.positive_span.add(offset=0, length=0)
    for offset, length in runs:
        h.positive_span.add(offset=offset, length=length)
    h.positive_delta.extend(deltas)
    return sum(native.counts.values()) + native.zero_count


# For the other per-target families written directly (exporter.metrics.tcp).
set_native = _set_native


def _classic(h: Any, cumulative: Sequence[tuple[float, int]]) -> None:
    for bound, count in cumulative:
        if bound != float("inf"):
            h.bucket.add(cumulative_count=count, upper_bound=bound)


def family(metric: Metric, classic: bool) -> Any:
    """One of prometheus_client's families as a MetricFamily message."""
    mf = pb.MetricFamily(help=metric.documentation, type=_TYPES.get(metric.type, pb.UNTYPED))
    name = metric.name
    if metric.type == "counter":
        mf.name = name + "_total"
        wanted = {name + "_total"}
    elif metric.type == "info":
        mf.name = name + "_info"
        wanted = {name + "_info"}
    else:
        mf.name = name
        wanted = {name}
    if metric.type in ("histogram", "gaugehistogram"):
        _histograms(mf, metric, classic)
        return mf
    for s in metric.samples:
        if s.name not in wanted:
            continue  # _created samples: the text format's, not this one's
        m = mf.metric.add()
        for k, v in s.labels.items():
            m.label.add(name=k, value=v)
        if metric.type == "counter":
            m.counter.value = s.value
        elif mf.type == pb.GAUGE:
            m.gauge.value = s.value
        else:
            m.untyped.value = s.value
    return mf


def _histograms(mf: Any, metric: Metric, classic: bool) -> None:
    base = metric.name
    series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for s in metric.samples:
        labels = tuple((k, v) for k, v in s.labels.items() if k != "le")
        entry = series.setdefault(labels, {"buckets": [], "count": 0, "sum": 0.0})
        if s.name == base + "_bucket":
            entry["buckets"].append((float(s.labels["le"]), int(s.value)))
        elif s.name == base + "_count":
            entry["count"] = int(s.value)
        elif s.name == base + "_sum":
            entry["sum"] = s.value
    natives = metric.native if isinstance(metric, DualHistogramFamily) else {}
    for labels, entry in series.items():
        m = mf.metric.add()
        for k, v in labels:
            m.label.add(name=k, value=v)
        h = m.histogram
        count = entry["count"]
        native = natives.get(tuple(v for _, v in labels))
        if native is not None:
            count = max(count, _set_native(h, native))
        if classic or native is None:
            _classic(h, entry["buckets"])
        h.sample_count = count
        h.sample_sum = entry["sum"]


def encode(metrics: Iterable[Metric], classic: bool) -> bytes:
    return b"".join(delimited(family(m, classic)) for m in metrics)


class LabelBytes(PerTarget[TargetState, bytes]):
    """Each target's labels as a serialized Metric message holding only them, merged into
    each of its series at every scrape, which the runtime does in a fraction of the time of
    adding the pairs one by one."""

    def __init__(self, labels: TargetLabels) -> None:
        super().__init__(self.serialize)
        self.labels = labels

    def serialize(self, st: TargetState) -> bytes:
        pairs = [pb.LabelPair(name=k, value=v) for k, v in self.labels.pairs(st)]
        data: bytes = pb.Metric(label=pairs).SerializeToString()
        return data


def target_chunks(
    states: Sequence[TargetState],
    buckets: tuple[float, ...],
    labels: LabelBytes,
    classic: bool,
) -> Iterator[bytes]:
    """The per-target families, each a MetricFamily message framed on its own, so the
    response streams one family at a time. All families come from one snapshot per target."""
    rows = [(st, lb, snapshot(st, "")) for st, lb in zip(states, labels.of(states), strict=True)]
    # The classic bounds, set once, so each scrape only writes the counts.
    template = pb.Metric(
        histogram=pb.Histogram(bucket=[pb.Bucket(upper_bound=b) for b in buckets])
    ).SerializeToString()
    rtt = pb.MetricFamily(
        name=RTT,
        help="Round-trip time of echo replies received within the timeout, from kernel timestamps.",
        type=pb.HISTOGRAM,
    )
    for st, lb, sn in rows:
        m = rtt.metric.add()
        m.MergeFromString(lb)
        counts, zero = st.native.copy()
        h = m.histogram
        if classic:
            m.MergeFromString(template)
            running = 0
            for bucket, n in zip(h.bucket, sn.buckets, strict=False):
                running += n
                bucket.cumulative_count = running
        native_count = _set_native(h, Native(st.native.schema, counts, zero))
        # Both bucket sets were read while probing went on; the larger count holds them both.
        h.sample_count = max(sum(sn.buckets), native_count)
        h.sample_sum = sn.rtt_sum_ns / 1e9
    yield delimited(rtt)
    for name, help_text, kind, field in (
        (
            SENT,
            "Echo requests whose outcome is known (reply, error or timeout).",
            pb.COUNTER,
            "sent",
        ),
        (
            RECEIVED,
            "Echo requests answered by a valid reply within the timeout.",
            pb.COUNTER,
            "received",
        ),
        (UP, "1 when one of the last probes (--probe.up-window) got a reply.", pb.GAUGE, "up"),
    ):
        mf = pb.MetricFamily(name=name, help=help_text, type=kind)
        for _, lb, sn in rows:
            m = mf.metric.add()
            m.MergeFromString(lb)
            value: int = getattr(sn, field)
            if kind == pb.COUNTER:
                m.counter.value = value
            else:
                m.gauge.value = value
        yield delimited(mf)
    errors = pb.MetricFamily(
        name=ERRORS,
        help="ICMP errors, send failures and invalid replies, by reason.",
        type=pb.COUNTER,
    )
    for _, lb, sn in rows:
        for reason in sorted(sn.errors):
            m = errors.metric.add()
            m.MergeFromString(lb)
            m.label.add(name="reason", value=reason)
            m.counter.value = sn.errors[reason]
    if errors.metric:
        yield delimited(errors)


# ----- full-size (MTU) probes ----------------------------------------------------------------


def mtu_chunks(states: Sequence[TargetState], labels: LabelBytes) -> Iterator[bytes]:
    """The full-size probes' four families (exporter.metrics.mtu), one message each."""
    from exporter.metrics import mtu

    rows = [(lb, mtu.snapshot(st)) for st, lb in zip(states, labels.of(states), strict=True)]
    for name, kind, help_text in mtu.FAMILIES:
        mf = pb.MetricFamily(name=name, help=help_text, type=_TYPES[kind])
        for lb, sn in rows:
            if name == mtu.ERRORS:
                for reason in sorted(sn.errors):
                    m = mf.metric.add()
                    m.MergeFromString(lb)
                    m.label.add(name="reason", value=reason)
                    m.counter.value = sn.errors[reason]
            elif name == mtu.PATH_MTU:
                if sn.path_mtu:
                    m = mf.metric.add()
                    m.MergeFromString(lb)
                    m.gauge.value = sn.path_mtu
            else:
                m = mf.metric.add()
                m.MergeFromString(lb)
                m.counter.value = sn.sent if name == mtu.SENT else sn.received
        if mf.metric:
            yield delimited(mf)
