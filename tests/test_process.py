"""The exporter process's lifecycle, privileges and HTTP surface, in namespaces."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import pytest

from tests.support.exporter_proc import ExporterProcess
from tests.support.metrics import value
from tests.support.netbed import Bed, Profile
from tests.support.netbed_fixtures import BedFactory

pytestmark = pytest.mark.netns


def test_sigterm_stops_within_a_second(bed: Bed) -> None:
    dst = bed.add_dst("echo")
    targets = dst.add_targets(50, 50)
    args = ["--probe.interval", "100ms"] + [a for t in targets for a in ("--target", t)]
    with ExporterProcess(bed.src, args) as proc:
        proc.wait_ready()
        time.sleep(1)
        took = proc.stop()
        assert proc.proc.returncode == 0
    assert took < 1.0, took


def test_http_endpoints_and_gzip(bed: Bed) -> None:
    dst = bed.add_dst("echo")
    (addr,) = dst.add_targets(1)
    with ExporterProcess(bed.src, ["--target", addr, "--web.telemetry-path", "/m"]) as proc:
        proc.wait_ready()
        code, headers, body = proc.get("/m", headers={"Accept-Encoding": "gzip"})
        assert code == 200 and headers["content-encoding"] == "gzip"
        assert b"pingmesh_build_info" in gzip.decompress(body)
        code, headers, body = proc.get("/m")
        assert code == 200 and "content-encoding" not in headers
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert proc.get("/healthz")[0] == 200
        assert proc.get("/readyz")[0] == 200
        code, _, body = proc.get("/")
        assert code == 200 and b'href="/m"' in body
        assert proc.get("/nope")[0] == 404


def test_a_long_run_of_requests_never_blocks_on_its_own_logs(bed: Bed) -> None:
    """2,000 requests log 2,000 debug lines, three times what a pipe holds: the harness keeps
    the exporter's output where it cannot fill up (tests/support/exporter_proc.py), or the
    exporter would hang in write() after about 580 of them, as a long test module's did."""
    dst = bed.add_dst("echo")
    (addr,) = dst.add_targets(1)
    with ExporterProcess(bed.src, ["--target", addr]) as proc:
        proc.wait_ready()
        for _ in range(2000):  # bounded; each one answered within its 10 s timeout
            assert proc.get("/healthz")[0] == 200
        proc.stop()
        assert proc.output().count("GET /healthz") >= 2000


def test_address_in_use_exits_naming_the_flag(bed: Bed) -> None:
    dst = bed.add_dst("echo")
    (addr,) = dst.add_targets(1)
    with ExporterProcess(bed.src, ["--target", addr]) as first:
        first.wait_ready()
        with ExporterProcess(bed.src, ["--target", addr]) as second:
            second.proc.wait(20)
            assert second.proc.returncode == 1
            assert "--web.listen-address" in second.output()
            assert "in use" in second.output()


def test_unreadable_targets_file_exits_2(bed: Bed, tmp_path: Path) -> None:
    with ExporterProcess(bed.src, ["--targets-file", str(tmp_path / "missing")]) as proc:
        proc.proc.wait(20)
        assert proc.proc.returncode == 2
        assert "--targets-file" in proc.output()


def test_no_privileges_exit_names_both_remedies(bed_factory: BedFactory) -> None:
    bed = bed_factory(unprivileged_ping=False)
    with ExporterProcess(bed.src, ["--target", "198.18.32.1"], no_capabilities=True) as proc:
        proc.proc.wait(20)
        out = proc.output()
    assert proc.proc.returncode == 1, out
    assert "net.ipv4.ping_group_range" in out and "CAP_NET_RAW" in out


def test_datagram_only_without_ping_group_range_fails(bed_factory: BedFactory) -> None:
    bed = bed_factory(unprivileged_ping=False)
    with ExporterProcess(
        bed.src, ["--probe.socket", "datagram", "--target", "198.18.32.1"]
    ) as proc:
        proc.proc.wait(20)
        out = proc.output()
    assert proc.proc.returncode == 1
    assert "ping_group_range" in out and "CAP_NET_RAW" not in out


def test_unprivileged_user_probes_with_datagram_sockets(bed: Bed) -> None:
    dst = bed.add_dst("echo")
    (addr,) = dst.add_targets(1)
    with ExporterProcess(
        bed.src, ["--probe.interval", "50ms", "--target", addr], no_capabilities=True
    ) as proc:
        proc.wait_ready()
        time.sleep(1)
        s = proc.scrape()
    assert value(s, "pingmesh_socket_info", mode="datagram") > 0
    assert value(s, "pingmesh_probe_received_total", target=addr) > 10


def test_raw_fallback_measures_and_counts_errors(bed_factory: BedFactory) -> None:
    """Without ping_group_range, auto mode falls back to raw sockets (root has CAP_NET_RAW);
    replies, duplicates, misdirected and ICMP errors are handled as in datagram mode."""
    bed = bed_factory(unprivileged_ping=False)
    dst = bed.add_dst("impaired", kernel_echo=False)
    dup4, err4, dup6, err6 = dst.add_targets(2, 2)
    bed.start_responder(
        dst,
        [
            Profile(prefix=f"{dup4}/32", duplicate=0.5),
            Profile(prefix=f"{dup6}/128", duplicate=0.5),
            Profile(prefix=f"{err4}/32", unreachable=0.3),
            Profile(prefix=f"{err6}/128", unreachable=0.3),
        ],
    )
    args = ["--probe.interval", "20ms", "--probe.timeout", "200ms"]
    with ExporterProcess(
        bed.src, args + [a for t in (dup4, err4, dup6, err6) for a in ("--target", t)]
    ) as proc:
        proc.wait_ready()
        time.sleep(3)
        s = proc.scrape()
    assert value(s, "pingmesh_socket_info", mode="raw") > 0
    for addr in (dup4, dup6):
        sent = value(s, "pingmesh_probe_sent_total", target=addr)
        received = value(s, "pingmesh_probe_received_total", target=addr)
        dups = value(s, "pingmesh_probe_errors_total", target=addr, reason="duplicate")
        assert sent == received > 80
        assert 0.3 * sent < dups < 0.7 * sent
    for addr in (err4, err6):
        sent = value(s, "pingmesh_probe_sent_total", target=addr)
        received = value(s, "pingmesh_probe_received_total", target=addr)
        unreach = value(s, "pingmesh_probe_errors_total", target=addr, reason="unreachable")
        assert sent > 80
        assert abs((sent - received) - unreach) <= 3, (addr, sent, received, unreach)
        assert 0.15 < unreach / sent < 0.45


def test_target_removed_from_file_takes_its_series(bed: Bed, tmp_path: Path) -> None:
    dst = bed.add_dst("echo")
    a, b = dst.add_targets(1, 1)
    targets = tmp_path / "targets"
    targets.write_text(f"# two targets\n{a}\n{b}\nnot a host!\n")
    with ExporterProcess(
        bed.src,
        [
            "--probe.interval",
            "50ms",
            "--targets-file",
            str(targets),
            "--static.refresh-interval",
            "1s",
        ],
    ) as proc:
        proc.wait_ready()
        time.sleep(0.5)
        s = proc.scrape()
        assert value(s, "pingmesh_probe_sent_total", target=b) > 0
        assert value(s, "pingmesh_discovery_errors_total", reason="invalid_line") >= 1
        # Replaced in one rename, as a ConfigMap volume or a config tool does: written in
        # place, a refresh between the truncation and the write reads no targets, and a
        # comes back as a new target whose counters start again (the failure seen once).
        staged = tmp_path / "targets.new"
        staged.write_text(f"{a}\n")
        staged.replace(targets)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            s = proc.scrape()
            if not any(lb.get("target") == b for _n, lb, _v in s):
                break
            time.sleep(0.2)
        assert not any(lb.get("target") == b for _n, lb, _v in s)
        assert value(s, "pingmesh_probe_sent_total", target=a) > 0
        assert value(s, "pingmesh_targets") == 1


def test_unreachable_network_is_a_send_failure_not_a_crash(bed: Bed) -> None:
    dst = bed.add_dst("echo")
    (addr,) = dst.add_targets(1)
    # 198.19.255.1 has no route in the bed: sendto fails at once, nothing leaves the host.
    with ExporterProcess(
        bed.src, ["--probe.interval", "50ms", "--target", addr, "--target", "198.19.255.1"]
    ) as proc:
        proc.wait_ready()
        time.sleep(1)
        s = proc.scrape()
        assert proc.proc.poll() is None
    assert value(s, "pingmesh_probe_errors_total", target="198.19.255.1", reason="send_failed") > 5
    assert value(s, "pingmesh_probe_received_total", target=addr) > 10
