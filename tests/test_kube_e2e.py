"""End to end: the API fake's peer pods carry addresses of the test bed; the exporter process
discovers them through the official client and probes them for real."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import kube_support, netbed_fixtures
from tests.exporter_proc import ExporterProcess, Samples, value
from tests.kube_support import NS, exporter_args
from tests.kubefake import KubeFake
from tests.kubefake_fixtures import make_node, make_pod
from tests.netbed import Bed

pytestmark = pytest.mark.netns
bed = netbed_fixtures.bed
fake_in_src = kube_support.fake_in_src

LABELS = {"app.kubernetes.io/name": "pingmesh-exporter"}


def series(samples: Samples, name: str = "pingmesh_probe_sent_total") -> set[tuple[str, ...]]:
    return {(lb["kind"], lb["target_node"], lb["ip_family"], lb["source_node"])
            for n, lb, _v in samples if n == name and "target_node" in lb}


def wait_for(proc: ExporterProcess, cond: Callable[[Samples], bool],
             timeout: float = 15.0) -> Samples:
    deadline = time.monotonic() + timeout
    samples = proc.scrape()
    while not cond(samples):
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout}s: {sorted(series(samples))}")
        time.sleep(0.2)
        samples = proc.scrape()
    return samples


def peer(name: str, node: str, ips: list[str], host_ips: list[str], **kw: Any) -> dict[str, Any]:
    return make_pod(name, NS, node, ips, host_ips, LABELS, **kw)


def test_mesh_follows_the_cluster(bed: Bed, fake_in_src: KubeFake, tmp_path: Path) -> None:
    fake = fake_in_src
    dst = bed.add_dst("peers")
    a = dst.add_targets(8, 2)
    fake.upsert("pods", peer("pm-0", "node-0", ["198.18.0.1"], ["198.18.0.1"]))  # ourselves
    fake.upsert("pods", peer("pm-1", "node-1", [a[0], a[8]], [a[1]]))  # dual-stack pod
    fake.upsert("pods", peer("pm-2", "node-2", [a[2]], [a[3]]))
    fake.upsert("pods", peer("pm-3", "node-3", [a[4]], [a[5]], ready=False))
    fake.upsert("pods", peer("pm-x", "node-x", [], [], phase="Pending"))
    with ExporterProcess(bed.src, exporter_args(fake, tmp_path)) as proc:
        proc.wait_ready()
        s = wait_for(proc, lambda s: len(series(s)) == 7)
        assert series(s) == {
            ("pod", "node-1", "ipv4", "node-0"), ("pod", "node-1", "ipv6", "node-0"),
            ("node", "node-1", "ipv4", "node-0"),
            ("pod", "node-2", "ipv4", "node-0"), ("node", "node-2", "ipv4", "node-0"),
            ("pod", "node-3", "ipv4", "node-0"), ("node", "node-3", "ipv4", "node-0"),
        }
        s = wait_for(proc, lambda s: value(s, "pingmesh_probe_received_total",
                                           target_node="node-3", kind="pod") > 3)
        assert value(s, "pingmesh_peer_ready", target_node="node-3") == 0
        assert value(s, "pingmesh_peer_ready", target_node="node-2") == 1
        assert value(s, "pingmesh_mesh_peers") == 3
        assert value(s, "pingmesh_mesh_selected_peers") == 3
        assert value(s, "pingmesh_mesh_expected_probers") == 3
        assert value(s, "pingmesh_discovery_up") == 1
        received_before = value(s, "pingmesh_probe_received_total", target_node="node-2",
                                kind="pod")

        # A rollout replaces node-2's pod: new name, new IP, same series.
        fake.delete("pods", NS, "pm-2")
        fake.upsert("pods", peer("pm-2b", "node-2", [a[6]], [a[3]]))
        # node-3 goes away with its node; a terminating pod stops counting.
        fake.delete("pods", NS, "pm-3")
        fake.upsert("pods", peer("pm-1", "node-1", [a[0], a[8]], [a[1]], deleting=True))
        fake.upsert("pods", peer("pm-4", "node-4", [a[7]], [a[9]]))
        s = wait_for(proc, lambda s: {x[1] for x in series(s)} == {"node-2", "node-4"})
        assert ("node", "node-4", "ipv6", "node-0") in series(s)  # host IP from status.hostIPs
        s = wait_for(proc, lambda s: value(s, "pingmesh_probe_received_total",
                                           target_node="node-2", kind="pod")
                     > received_before + 5)
        assert value(s, "pingmesh_probe_received_total", target_node="node-2", kind="pod") \
            == value(s, "pingmesh_probe_sent_total", target_node="node-2", kind="pod")
        assert not any(lb.get("target_node") == "node-3" for _n, lb, _v in s)

    assert fake.count("list", "pods") == 1
    assert fake.count("list", "nodes") == 0  # zones off: no node watch at all
    pod_requests = [r for r in fake.requests if r.resource == "pods"]
    assert all(r.query.get("labelSelector") == "app.kubernetes.io/name=pingmesh-exporter"
               and r.namespace == NS for r in pod_requests)


def test_zones_label_targets_from_node_metadata(bed: Bed, fake_in_src: KubeFake,
                                                tmp_path: Path) -> None:
    fake = fake_in_src
    dst = bed.add_dst("peers")
    a = dst.add_targets(4)
    fake.upsert("nodes", make_node("node-0", {"topology.kubernetes.io/zone": "z-a"}, ["1.0.0.1"]))
    fake.upsert("nodes", make_node("node-1", {"topology.kubernetes.io/zone": "z-b"}, [a[1]]))
    fake.upsert("pods", peer("pm-1", "node-1", [a[0]], [a[1]]))
    fake.upsert("nodes", make_node("node-2", {}, [a[3]]))  # no zone label
    fake.upsert("pods", peer("pm-2", "node-2", [a[2]], [a[3]]))
    with ExporterProcess(bed.src, exporter_args(fake, tmp_path, "--mesh.zones")) as proc:
        proc.wait_ready()
        s = wait_for(proc, lambda s: len(series(s)) == 4)
        zones = {(lb["target_node"], lb["target_zone"]) for n, lb, _v in s
                 if n == "pingmesh_probe_sent_total" and "target_zone" in lb}
        assert zones == {("node-1", "z-b"), ("node-2", "")}
        # The node is deleted: its targets go at once, before its pod is collected.
        fake.delete("nodes", None, "node-2")
        s = wait_for(proc, lambda s: {x[1] for x in series(s)} == {"node-1"})
    metadata = [r for r in fake.requests if r.resource == "nodes"]
    assert metadata and all(r.metadata_only for r in metadata)


def test_forbidden_at_start_exits_naming_the_permission(bed: Bed, fake_in_src: KubeFake,
                                                        tmp_path: Path) -> None:
    fake_in_src.fail_next("pods", 403, count=1000, verb="list")
    args = exporter_args(fake_in_src, tmp_path, "--kubernetes.startup-denial-timeout", "1s")
    with ExporterProcess(bed.src, args) as proc:
        proc.proc.wait(20)
        out = proc.output()
    assert proc.proc.returncode == 1, out
    assert f"list and watch on pods (core API group) in namespace {NS}" in out
    assert "Role pingmesh-exporter" in out


def test_forbidden_while_the_api_server_warms_up_is_waited_out(bed: Bed, fake_in_src: KubeFake,
                                                               tmp_path: Path) -> None:
    fake_in_src.fail_next("pods", 403, count=3, verb="list")
    with ExporterProcess(bed.src, exporter_args(fake_in_src, tmp_path)) as proc:
        proc.wait_ready()
        assert proc.proc.poll() is None
    assert fake_in_src.count("list", "pods", status=403) == 3


def test_api_down_keeps_probing_last_targets(bed: Bed, fake_in_src: KubeFake,
                                             tmp_path: Path) -> None:
    fake = fake_in_src
    dst = bed.add_dst("peers")
    a = dst.add_targets(2)
    fake.upsert("pods", peer("pm-1", "node-1", [a[0]], [a[1]]))
    with ExporterProcess(bed.src, exporter_args(fake, tmp_path)) as proc:
        proc.wait_ready()
        wait_for(proc, lambda s: len(series(s)) == 2)
        fake.stop()
        s = wait_for(proc, lambda s: value(s, "pingmesh_discovery_up") == 0)
        before = value(s, "pingmesh_probe_received_total", kind="pod")
        time.sleep(1)
        s = proc.scrape()
        assert len(series(s)) == 2
        assert value(s, "pingmesh_probe_received_total", kind="pod") > before + 5
        assert value(s, "pingmesh_discovery_api_errors_total", code="connection") >= 1
        assert proc.get("/readyz")[0] == 200  # synced once: stays ready, keeps probing
