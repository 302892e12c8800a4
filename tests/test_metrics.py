"""The /metrics document: valid exposition, consistent histograms, no stale series."""

from __future__ import annotations

import itertools
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import ProbeSettings
from exporter.metrics.document import MetricsDocument, build_registry, wants_protobuf
from exporter.metrics.mtu import FullSize
from exporter.metrics.probe import ProbeCollector
from exporter.metrics.targets import TargetLabels
from exporter.probing.engine import Prober
from exporter.targets import Target, index, static_target
from tests.support.metrics import assert_promtool_clean, parse, value
from tests.test_engine import ScriptedSocket


def _prober(targets: list[Target]) -> Prober:
    prober = Prober(ProbeSettings(), {4: ScriptedSocket(4), 6: ScriptedSocket(6)})
    prober.set_targets(index(targets))
    return prober


def _doc(prober: Prober) -> str:
    registry = build_registry([ProbeCollector(prober)])
    return MetricsDocument(prober, registry, TargetLabels(None)).render().decode()


def test_exposition_parses_and_histograms_are_consistent() -> None:
    prober = _prober(
        [static_target("198.18.0.1", "198.18.0.1"), static_target('we"ird\\name', "2001:db8::1")]
    )
    a, b = prober.states
    for rtt_ns in (40_000, 150_000, 3_000_000, 10_000_000_000):
        a.reply(rtt_ns)
    a.lost()
    a.error("duplicate")
    text = _doc(prober)
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    rtt = fams["pingmesh_probe_rtt_seconds"]
    samples = [s for s in rtt.samples if s.labels.get("target") == "198.18.0.1"]
    buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket")}
    count = next(s.value for s in samples if s.name.endswith("_count"))
    assert buckets["5e-05"] == 1 and buckets["0.0002"] == 2 and buckets["0.0032"] == 3
    assert buckets["6.5536"] == 3 and buckets["+Inf"] == count == 4
    sent = {s.labels["target"]: s.value for s in fams["pingmesh_probe_sent"].samples}
    assert sent == {"198.18.0.1": 5, 'we"ird\\name': 0}
    errs = fams["pingmesh_probe_errors"].samples
    assert [(s.labels["reason"], s.value) for s in errs] == [("duplicate", 1)]
    up = {s.labels["ip_family"]: s.value for s in fams["pingmesh_target_up"].samples}
    assert up == {"ipv4": 1, "ipv6": 0}
    assert "pingmesh_build_info" in fams and "pingmesh_targets" in fams
    assert TargetLabels(None).render(b).endswith('ip_family="ipv6"')


def test_source_network_follows_source_node_on_every_probe_series() -> None:
    t = Target((("kind", "node"), ("target_node", "n2")), 4, "198.18.0.2")
    prober = _prober([t])
    registry = build_registry([ProbeCollector(prober)])
    text = MetricsDocument(prober, registry, TargetLabels("n1", "host")).render().decode()
    per_target = [line for line in text.splitlines() if "target_node=" in line]
    assert len(per_target) > 20 and all(
        line.startswith(line.split("{")[0] + '{source_node="n1",source_network="host",kind=')
        for line in per_target
    )
    assert TargetLabels("n1").render(prober.states[0]).startswith('source_node="n1",kind=')


def test_removed_target_series_disappear() -> None:
    prober = _prober(
        [static_target("198.18.0.1", "198.18.0.1"), static_target("198.18.0.2", "198.18.0.2")]
    )
    assert 'target="198.18.0.2"' in _doc(prober)
    prober.set_targets(index([static_target("198.18.0.1", "198.18.0.1")]))
    text = _doc(prober)
    assert 'target="198.18.0.2"' not in text and 'target="198.18.0.1"' in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_check_metrics_clean() -> None:
    prober = _prober([static_target(f"198.18.0.{i}", f"198.18.0.{i}") for i in range(1, 5)])
    for st in prober.states:
        st.reply(100_000)
        st.error("late")
    assert_promtool_clean(_doc(prober))


def test_one_scrape_never_shows_more_replies_than_requests() -> None:
    """Probing goes on while a scrape renders: every target's figures in one document must
    still satisfy histogram count <= received <= sent."""
    import threading

    prober = _prober([static_target(f"198.18.1.{i}", f"198.18.1.{i}") for i in range(1, 101)])
    states = list(prober.states)
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            for st in states:
                st.reply(100_000)  # sent == received between any two probes

    worker = threading.Thread(target=probe)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the two threads often
    worker.start()
    try:
        for _ in range(10):
            fams = {f.name: f for f in text_string_to_metric_families(_doc(prober))}
            sent = {s.labels["target"]: s.value for s in fams["pingmesh_probe_sent"].samples}
            received = {
                s.labels["target"]: s.value for s in fams["pingmesh_probe_received"].samples
            }
            count = {
                s.labels["target"]: s.value
                for s in fams["pingmesh_probe_rtt_seconds"].samples
                if s.name.endswith("_count")
            }
            assert all(count[t] <= received[t] <= sent[t] for t in sent)
    finally:
        stop.set()
        worker.join()
        sys.setswitchinterval(switch)


PROTOBUF_ACCEPT = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
    "encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;q=0.5,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


def _families(data: bytes) -> dict[str, Any]:
    """The delimited MetricFamily messages of a protobuf document, by name."""
    from exporter.metrics.proto import metrics_pb2 as pb

    out, pos = {}, 0
    while pos < len(data):
        size = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        mf = pb.MetricFamily()
        mf.ParseFromString(data[pos : pos + size])
        pos += size
        out[mf.name] = mf
    return out


@pytest.mark.parametrize(
    "accept,protobuf",
    [
        (PROTOBUF_ACCEPT, True),
        ("", False),
        ("*/*", False),
        ("text/plain;version=0.0.4", False),
        # Prometheus without native histograms: OpenMetrics first, which is not served.
        ("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4", False),
        ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily", False),
        (
            "text/plain;q=0.9,application/vnd.google.protobuf;"
            "proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5",
            False,
        ),
        (
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
            "encoding=delimited;q=0",
            False,
        ),
    ],
)
def test_negotiation(accept: str, protobuf: bool) -> None:
    assert wants_protobuf(accept) is protobuf


@pytest.mark.parametrize("classic", [True, False])
def test_protobuf_document_has_native_histograms(classic: bool) -> None:
    prober = _prober([static_target("a", "198.18.0.1"), static_target("b", "2001:db8::1")])
    a, _ = prober.states
    for rtt in (300_000, 310_000, 3_000_000):
        a.reply(rtt)
    a.lost()
    a.error("late")
    registry = build_registry([ProbeCollector(prober)])
    doc = MetricsDocument(prober, registry, TargetLabels("node-1"), classic)
    content_type, pieces = doc.negotiate(PROTOBUF_ACCEPT)
    assert content_type.startswith("application/vnd.google.protobuf")
    fams = _families(b"".join(pieces))
    rtt = fams["pingmesh_probe_rtt_seconds"]
    series = {tuple((lp.name, lp.value) for lp in m.label): m.histogram for m in rtt.metric}
    h = series[
        (("source_node", "node-1"), ("kind", "static"), ("target", "a"), ("ip_family", "ipv4"))
    ]
    assert h.schema == 3 and h.sample_count == 3
    assert h.sample_sum == pytest.approx(3.61e-3)
    assert sum(s.length for s in h.positive_span) == len(h.positive_delta)
    assert sum(itertools.accumulate(h.positive_delta)) == 3
    assert (len(h.bucket) > 0) is classic
    if classic:
        assert [b.cumulative_count for b in h.bucket if b.upper_bound == 0.0032] == [3]
    empty = series[
        (("source_node", "node-1"), ("kind", "static"), ("target", "b"), ("ip_family", "ipv6"))
    ]
    assert empty.sample_count == 0 and len(empty.positive_span) == 1  # still native
    assert fams["pingmesh_probe_sent_total"].metric[0].counter.value == 4
    last = fams["pingmesh_probe_errors_total"].metric[0].label[-1]
    assert (last.name, last.value) == ("reason", "late")
    assert fams["pingmesh_targets"].metric[0].gauge.value == 1
    assert "process_cpu_seconds_total" in fams or sys.platform != "linux"
    # The text format of the same document keeps the classic buckets only.
    text = doc.render().decode()
    assert 'pingmesh_probe_rtt_seconds_bucket{source_node="node-1"' in text


def test_generated_messages_match_the_pinned_schema() -> None:
    """make regenerates metrics_pb2 when generate.sh changes; this catches a stale copy."""
    proto = Path(__file__).resolve().parent.parent / "exporter" / "metrics" / "proto"
    pinned = re.search(r"^CLIENT_MODEL_VERSION=(\S+)", (proto / "generate.sh").read_text(), re.M)
    assert pinned is not None
    assert (proto / "metrics_pb2.version").read_text().strip() == pinned.group(1)


def _mtu_document(mtu: Prober, node: str | None = "node-a") -> MetricsDocument:
    small = _prober([])
    registry = build_registry([ProbeCollector(small)])
    full_size = FullSize(mtu, TargetLabels(node))
    return MetricsDocument(small, registry, TargetLabels(node), full_size=full_size)


def _mtu_doc(mtu: Prober, node: str | None = "node-a") -> str:
    return _mtu_document(mtu, node).render().decode()


def _mtu_prober(targets: list[Target]) -> Prober:
    sockets = {4: ScriptedSocket(4), 6: ScriptedSocket(6)}
    prober = Prober(ProbeSettings(), sockets, sizer=lambda t: 1500)
    prober.set_targets(index(targets))
    return prober


def test_full_size_families_per_target_and_path_mtu_only_once_known() -> None:
    mtu = _mtu_prober(
        [
            static_target("198.18.0.1", "198.18.0.1"),
            static_target("198.18.0.2", "198.18.0.2"),
            static_target("198.18.0.3", "198.18.0.3"),
        ]
    )
    a, b, c = sorted(mtu.states, key=lambda s: s.address)
    a.reply(100_000)
    b.lost()
    b.error("packet_too_big")
    b.too_big(1400)
    c.lost()
    s = parse(_mtu_doc(mtu))
    assert value(s, "pingmesh_mtu_probe_sent_total", target="198.18.0.1") == 1
    assert value(s, "pingmesh_mtu_probe_received_total", target="198.18.0.1") == 1
    assert value(s, "pingmesh_path_mtu_bytes", target="198.18.0.1", source_node="node-a") == 1500
    assert value(s, "pingmesh_path_mtu_bytes", target="198.18.0.2") == 1400
    assert value(s, "pingmesh_mtu_probe_errors_total", target="198.18.0.2") == 1
    assert value(s, "pingmesh_path_mtu_bytes", target="198.18.0.3", default=-1) == -1
    assert value(s, "pingmesh_mtu_probe_sent_total", target="198.18.0.3") == 1
    # The small echoes' families hold none of these targets.
    assert value(s, "pingmesh_probe_sent_total", target="198.18.0.1", default=-1) == -1
    mtu.set_targets(index([static_target("198.18.0.1", "198.18.0.1")]))
    text = _mtu_doc(mtu)
    assert 'target="198.18.0.2"' not in text and 'target="198.18.0.1"' in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_check_metrics_clean_with_full_size_probes() -> None:
    mtu = _mtu_prober([static_target(f"198.18.0.{i}", f"198.18.0.{i}") for i in range(1, 4)])
    for st in mtu.states:
        st.reply(None)
        st.error("packet_too_big")
    assert_promtool_clean(_mtu_doc(mtu))


def test_protobuf_document_carries_the_full_size_families() -> None:
    mtu = _mtu_prober([static_target("198.18.0.1", "198.18.0.1")])
    mtu.states[0].reply(None)
    mtu.states[0].error("packet_too_big")
    fams = _families(_mtu_document(mtu, None).render(PROTOBUF_ACCEPT))
    assert fams["pingmesh_mtu_probe_sent_total"].metric[0].counter.value == 1
    assert fams["pingmesh_mtu_probe_received_total"].metric[0].counter.value == 1
    (err,) = fams["pingmesh_mtu_probe_errors_total"].metric
    assert {(lp.name, lp.value) for lp in err.label} == {
        ("kind", "static"),
        ("target", "198.18.0.1"),
        ("ip_family", "ipv4"),
        ("reason", "packet_too_big"),
    }
    assert fams["pingmesh_path_mtu_bytes"].metric[0].gauge.value == 1500
    text = parse(_mtu_doc(mtu, None))
    assert value(text, "pingmesh_mtu_probe_errors_total", reason="packet_too_big") == 1
