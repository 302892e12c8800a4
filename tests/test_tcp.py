"""TCP probes without sockets: results, handshake RTT, flows, the target source, the
collector's series and the settings that turn them on."""

from __future__ import annotations

import errno
import shutil
import struct
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import tcp_source
from exporter.config import ProbeSettings, parse_settings
from exporter.metrics.document import MetricsDocument, build_registry
from exporter.metrics.targets import TargetLabels
from exporter.metrics.tcp import TcpCollector
from exporter.probing.engine import Prober
from exporter.probing.tcp import TcpProber, every_target, of_kinds
from exporter.probing.tcpstats import (
    RESULTS,
    TCP_INFO_LEN,
    Flow,
    TcpTargetState,
    classify,
    handshake_rtt_ns,
    lossy_flows,
)
from exporter.targets import Target, index, static_target
from tests.support.metrics import assert_promtool_clean
from tests.test_metrics import PROTOBUF_ACCEPT, _families


def _pod(node: str, address: str) -> Target:
    return Target((("kind", "pod"), ("target_node", node)), 6 if ":" in address else 4, address)


def _node(node: str, address: str) -> Target:
    return Target((("kind", "node"), ("target_node", node)), 4, address)


@pytest.mark.parametrize(
    ("err", "result"),
    [
        (0, "ok"),
        (errno.ECONNREFUSED, "refused"),
        (errno.ECONNRESET, "reset"),
        (errno.ECONNABORTED, "reset"),
        (errno.EHOSTUNREACH, "unreachable"),
        (errno.ENETUNREACH, "unreachable"),
        (errno.ETIMEDOUT, "timeout"),
        (errno.EACCES, "error"),
        (errno.EADDRNOTAVAIL, "error"),
    ],
)
def test_classify(err: int, result: str) -> None:
    assert classify(err) == result
    assert result in RESULTS


def _tcp_info(rtt_us: int, total_retrans: int) -> bytes:
    fields = [0] * 24
    fields[15], fields[23] = rtt_us, total_retrans
    return bytes(8) + struct.pack("=24I", *fields)


def test_handshake_rtt_from_tcp_info() -> None:
    assert len(_tcp_info(0, 0)) == TCP_INFO_LEN
    assert handshake_rtt_ns(_tcp_info(87, 0)) == 87_000
    # A retransmitted SYN: the sample is not the connect's time.
    assert handshake_rtt_ns(_tcp_info(87, 1)) is None
    assert handshake_rtt_ns(_tcp_info(0, 0)) is None
    assert handshake_rtt_ns(b"\0" * 40) is None  # an old kernel's shorter struct


def test_a_flow_is_lossy_while_a_failure_is_in_its_window() -> None:
    f = Flow(port=40000)
    assert not f.lossy()  # never probed
    f = f.after(True, 3).after(False, 3)
    assert f.lossy() and f.port == 40000
    f = f.after(True, 3).after(True, 3)
    assert f.lossy()  # the failure is the third-last probe
    f = f.after(True, 3)
    assert not f.lossy()
    assert f.on_port(40001) == Flow(40001, f.history, f.probes)
    assert lossy_flows([Flow(1, 0b10, 2), Flow(2, 0b11, 2), Flow(3, 0b0, 1)]) == 2


def test_flows_are_taken_in_turn_and_counted_per_target() -> None:
    st = TcpTargetState(static_target("a", "198.18.0.1"), 9871, 4, [1_000, 1_000_000], 2, 3)
    order = [st.take_flow() for _ in range(9)]
    assert order == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    for flow in range(4):
        st.record(flow, "ok", 500)
    st.record(1, "timeout", None)
    assert st.results == {"ok": 4, "timeout": 1}
    assert st.buckets == [4, 0, 0] and st.seconds_sum_ns == 2_000
    assert st.lossy_flows == 1
    st.record(1, "ok", 2_000)
    assert st.lossy_flows == 1  # window 2: still one failure among its last two
    st.record(1, "ok", 2_000)
    assert st.lossy_flows == 0


def test_target_sources() -> None:
    table = index(
        [
            _pod("n1", "198.18.0.1"),
            _node("n1", "198.18.1.1"),
            _pod("n2", "2001:db8::1"),
            static_target("s", "198.18.2.1"),
        ]
    )
    pods = list(of_kinds(9871, "pod")(table))
    assert [(t.target.address, t.port) for t in pods] == [
        ("198.18.0.1", 9871),
        ("2001:db8::1", 9871),
    ]
    # A host-network DaemonSet's peers are its node targets, on its own port.
    nodes = list(of_kinds(9872, "node")(table))
    assert [(t.target.address, t.port) for t in nodes] == [("198.18.1.1", 9872)]
    assert len(list(every_target(1)(table))) == 4


def _prober(flows: int = 2) -> TcpProber:
    settings = ProbeSettings(flows=flows, tcp="true")
    return TcpProber(settings, of_kinds(9871, "pod"))


def test_set_targets_keeps_state_across_moves_and_drops_leavers() -> None:
    p = _prober()
    try:
        p.set_targets(index([_pod("n1", "198.18.0.1"), _pod("n2", "198.18.0.2")]))
        first = {st.target.key: st for st in p.states}
        assert len(first) == 2
        st1 = first[_pod("n1", "x").key]
        st1.record(0, "ok", 1_000)
        p.set_targets(index([_pod("n1", "198.18.0.9"), _node("n3", "198.18.0.3")]))
        assert [st.target.address for st in p.states] == ["198.18.0.9"]
        assert p.states[0] is st1 and st1.dest == ("198.18.0.9", 9871)
        assert first[_pod("n2", "x").key].removed
    finally:
        p.close()


def _doc(prober: TcpProber, accept: str = "") -> bytes:
    icmp = Prober(ProbeSettings(), {})
    registry = build_registry([TcpCollector(prober)])
    labels = TargetLabels("node-a", "pod")
    return MetricsDocument(icmp, registry, labels, True, prober).render(accept)


def test_collector_series_per_target_and_none_for_leavers() -> None:
    p = _prober(flows=4)
    try:
        p.set_targets(index([_pod("n1", "198.18.0.1"), _pod("n2", "2001:db8::2")]))
        a, b = sorted(p.states, key=lambda s: s.target.family)
        a.record(0, "ok", 80_000)
        a.record(1, "refused", None)
        b.record(0, "timeout", None)
        fams = {f.name: f for f in text_string_to_metric_families(_doc(p).decode())}
        total = {
            (s.labels["target_node"], s.labels["result"]): s.value
            for s in fams["pingmesh_tcp_probe"].samples
        }
        assert total == {("n1", "ok"): 1, ("n1", "refused"): 1, ("n2", "timeout"): 1}
        sample = fams["pingmesh_tcp_probe"].samples[0]
        assert sample.labels["source_node"] == "node-a" and sample.labels["kind"] == "pod"
        # The exporter's own labels, as on the ICMP series of the same target.
        assert sample.labels["source_network"] == "pod"
        hist = fams["pingmesh_tcp_connect_seconds"].samples
        count = {s.labels["target_node"]: s.value for s in hist if s.name.endswith("_count")}
        assert count == {"n1": 1, "n2": 0}
        lossy = {s.labels["target_node"]: s.value for s in fams["pingmesh_tcp_lossy_flows"].samples}
        assert lossy == {"n1": 1, "n2": 1}
        assert fams["pingmesh_tcp_flows"].samples[0].value == 4
        p.set_targets(index([_pod("n1", "198.18.0.1")]))
        text = _doc(p).decode()
        assert 'target_node="n2"' not in text
    finally:
        p.close()


def test_connect_seconds_is_a_native_histogram_in_protobuf() -> None:
    p = _prober()
    try:
        p.set_targets(index([_pod("n1", "198.18.0.1")]))
        p.states[0].record(0, "ok", 80_000)
        fams: dict[str, Any] = _families(_doc(p, PROTOBUF_ACCEPT))
        h = fams["pingmesh_tcp_connect_seconds"].metric[0].histogram
        assert h.sample_count == 1 and h.schema == 3 and sum(h.positive_delta) == 1
        assert len(h.bucket) == len(ProbeSettings().rtt_buckets)  # classic ones beside
        assert fams["pingmesh_tcp_probe_total"].metric[0].counter.value == 1
        labels = {lp.name: lp.value for lp in fams["pingmesh_tcp_lossy_flows"].metric[0].label}
        assert labels == {
            "source_node": "node-a",
            "source_network": "pod",
            "kind": "pod",
            "target_node": "n1",
            "ip_family": "ipv4",
        }
    finally:
        p.close()


def test_tcp_is_on_by_default_only_with_kubernetes() -> None:
    assert not parse_settings([], {}).probe.tcp_enabled
    kube = parse_settings(
        ["--discovery=kubernetes"], {"NODE_NAME": "n", "POD_NAMESPACE": "pingmesh"}
    )
    assert kube.probe.tcp_enabled
    assert parse_settings(["--probe.tcp=true"], {}).probe.tcp_enabled
    off = parse_settings(
        ["--discovery=kubernetes", "--probe.tcp=false"], {"NODE_NAME": "n", "POD_NAMESPACE": "p"}
    )
    assert not off.probe.tcp_enabled


def test_the_source_network_picks_what_tcp_connects_to() -> None:
    """From the pod network the peer exporters are the pod targets; from the host network
    they listen on their nodes' IPs, on the host DaemonSet's port."""
    table = index([_pod("n1", "198.18.0.1"), _node("n1", "198.18.1.1")])
    env = {"NODE_NAME": "n", "POD_NAMESPACE": "pingmesh"}
    pod = parse_settings(["--discovery=kubernetes"], env)
    host = parse_settings(
        ["--discovery=kubernetes", "--mesh.source-network=host", "--web.listen-address=:9872"],
        env,
    )
    assert [(t.target.kind, t.port) for t in tcp_source(pod)(table)] == [("pod", 9871)]
    assert [(t.target.kind, t.port) for t in tcp_source(host)(table)] == [("node", 9872)]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_the_text_document_passes_promtool() -> None:
    p = _prober(flows=2)
    try:
        p.set_targets(index([_pod("n1", "198.18.0.1"), _pod("n2", "2001:db8::2")]))
        p.states[0].record(0, "ok", 80_000)
        p.states[1].record(0, "reset", None)
        assert_promtool_clean(_doc(p))
    finally:
        p.close()
