"""A real node: kubelet, containerd, runc and the CNI plugins, running the image built from
the project's own Dockerfile (offline, over a local Python base), with the DaemonSet's real
securityContext. Beside it a stand-in node, so the two exporters probe each other."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster.cluster import Cluster
from tests.support.cluster.fixtures import (
    FAST_ARGS,
    expected_mesh,
    install_with_image,
    make_cluster,
    mesh_is,
    pod_on,
    probe_series,
    scrape,
    wait_metrics,
    wait_ready_pods,
)
from tests.support.cluster.kubelet import build_images, process_rss_bytes

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def real() -> Iterator[Cluster]:
    images = build_images()
    with make_cluster() as c:
        c.start_kubelet(c.add_node("node-real"))
        c.start_standin(c.add_node("node-standin"), extra_args=FAST_ARGS)
        install_with_image(c, images.exporter_image, c.dir / "overlay")
        wait_ready_pods(c, 2, timeout=180)
        yield c


def container(c: Cluster) -> Any:
    kn = c.nodes["node-real"].kubelet
    got = [x for x in kn.containers() if x.name == "exporter"]
    assert len(got) == 1, got
    return got[0]


def test_the_pod_runs_under_the_real_security_context(real: Cluster) -> None:
    pod = pod_on(real, "node-real")
    assert pod["status"]["containerStatuses"][0]["ready"] is True
    proc = Path(f"/proc/{container(real).pid}")
    status = (proc / "status").read_text()
    fields = dict(re.findall(r"^(\w+):\s*(.*)$", status, re.M))
    assert fields["Uid"].split()[:2] == ["65534", "65534"]
    assert fields["Gid"].split()[:2] == ["65534", "65534"]
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0
    assert fields["NoNewPrivs"] == "1"
    assert fields["Seccomp"] == "2"  # a filter: RuntimeDefault
    mounts = (proc / "mounts").read_text().splitlines()
    root = next(m.split() for m in mounts if m.split()[1] == "/")
    assert "ro" in root[3].split(",")


def test_the_mesh_forms_between_a_real_and_a_standin_node(real: Cluster) -> None:
    nodes = list(real.nodes.values())
    for name in real.nodes:
        want = expected_mesh(nodes, name)
        wait_metrics(
            real,
            name,
            mesh_is(want),
            f"{name}'s mesh",
            timeout=90,
        )
    rss = process_rss_bytes(container(real).pid)
    print(f"exporter RSS in its container: {rss / 2**20:.1f} MiB")


def test_a_deleted_pod_comes_back_ready(real: Cluster) -> None:
    old = pod_on(real, "node-real")
    real.kubectl("delete", "pod", "-n", "pingmesh", old["metadata"]["name"], timeout=120)
    pods = wait_ready_pods(real, 2, timeout=120)
    new = next(p for p in pods if p["spec"]["nodeName"] == "node-real")
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    s = scrape(real.nodes["node-real"], new)
    assert probe_series(s) == expected_mesh(list(real.nodes.values()), "node-real")
