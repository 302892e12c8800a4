"""The /metrics document: valid exposition, consistent histograms, no stale series."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import ProbeSettings
from exporter.metrics import MetricsDocument, build_registry
from exporter.probing.engine import Prober
from exporter.targets import Target, index, static_target
from tests.test_engine import ScriptedSocket


def _prober(targets: list[Target]) -> Prober:
    prober = Prober(ProbeSettings(), {4: ScriptedSocket(4), 6: ScriptedSocket(6)})
    prober.set_targets(index(targets))
    return prober


def _doc(prober: Prober) -> str:
    return MetricsDocument(prober, build_registry(prober)).render().decode()


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
    assert b.label_text.endswith('ip_family="ipv6"')


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
    proc = subprocess.run(
        ["promtool", "check", "metrics"],
        input=_doc(prober),
        text=True,
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


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
