"""Host network mode under a real kubelet, containerd and runc, with the image built from the
project's Dockerfile: the host-network pod runs in the node's own network namespace as root
holding NET_RAW and nothing else, probes host to host with a stand-in node beside it, and a
non-root container whose securityContext adds NET_RAW holds no capability at all (no ambient
capabilities in Kubernetes): the reason the overlay runs as root."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster.cluster import ROOT, Cluster
from tests.support.cluster.fixtures import (
    FAST_ARGS,
    apply_overlay,
    expected_mesh,
    make_cluster,
    probe_series,
    scrape,
    up_targets,
    wait_ready_pods,
)
from tests.support.cluster.kubelet import Images, build_images
from tests.test_cluster_hostnet import HOST_NS, HOST_PORT, HOST_SELECTOR, networks

pytestmark = pytest.mark.netns

CAP_NET_RAW = 13


@pytest.fixture(scope="module")
def images() -> Images:
    return build_images()


@pytest.fixture(scope="module")
def real(images: Images) -> Iterator[Cluster]:
    with make_cluster() as c:
        c.start_kubelet(c.add_node("node-real"))
        c.start_standin(c.add_node("node-standin"), extra_args=FAST_ARGS)
        # The README's install with the image set, over the host network overlay.
        apply_overlay(
            c,
            c.dir / "overlay",
            base=ROOT / "deploy" / "overlays" / "host-network",
            image=images.exporter_image,
        )
        wait_ready_pods(c, 2, timeout=180)
        wait_ready_pods(c, 2, timeout=180, selector=HOST_SELECTOR, namespace=HOST_NS)
        yield c


def _container(c: Cluster, namespace: str, pod: str = "") -> Any:
    kn = c.nodes["node-real"].kubelet
    got = [
        x
        for x in kn.containers()
        if x.namespace == namespace and x.name == "exporter" and (not pod or x.pod == pod)
    ]
    assert len(got) == 1, got
    return got[0]


def _status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(re.findall(r"^(\w+):\s*(.*)$", text, re.M))


def _host_pod(c: Cluster, node: str) -> dict[str, Any]:
    pods = wait_ready_pods(c, 2, timeout=60, selector=HOST_SELECTOR, namespace=HOST_NS)
    (pod,) = [p for p in pods if p["spec"]["nodeName"] == node]
    return pod


def test_the_host_pod_runs_in_the_nodes_namespace_as_root_with_net_raw_only(
    real: Cluster,
) -> None:
    pid = _container(real, HOST_NS).pid
    node_ns = os.stat(real.nodes["node-real"].ns.path)
    pod_ns = os.stat(f"/proc/{pid}/ns/net")
    assert (pod_ns.st_dev, pod_ns.st_ino) == (node_ns.st_dev, node_ns.st_ino)
    fields = _status(pid)
    assert fields["Uid"].split()[:2] == ["0", "0"]
    assert int(fields["CapEff"], 16) == 1 << CAP_NET_RAW
    assert int(fields["CapPrm"], 16) == 1 << CAP_NET_RAW
    assert int(fields["CapBnd"], 16) == 1 << CAP_NET_RAW
    assert int(fields["CapAmb"], 16) == 0
    assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"
    # The pod-network exporter beside it is unchanged: 65534, no capability.
    base = _status(_container(real, "pingmesh").pid)
    assert base["Uid"].split()[0] == "65534" and int(base["CapEff"], 16) == 0


def test_host_to_host_between_a_real_and_a_standin_node(real: Cluster) -> None:
    nodes = list(real.nodes.values())
    for node in nodes:
        want = {t for t in expected_mesh(nodes, node.name, own_node=False) if t[1] == "node"}

        def check(node: Any = node, want: Any = want) -> Any:
            try:
                s = scrape(node, _host_pod(real, node.name), HOST_PORT)
            except OSError:
                return None
            return s if probe_series(s) == want and len(up_targets(s)) == len(want) else None

        s = real.wait_for(check, f"host mesh up from {node.name}", timeout=90, interval=0.5)
        assert networks(s) == {"host"}
        ping_range = node.ns.get_sysctl("net.ipv4.ping_group_range").split()
        admits_root = int(ping_range[0]) <= 0 <= int(ping_range[1])
        modes = {lb["mode"] for n, lb, _v in s if n == "pingmesh_socket_info"}
        assert modes == ({"datagram"} if admits_root else {"raw"}), (node.name, ping_range)


def test_a_non_root_container_holds_no_added_capability(real: Cluster, images: Images) -> None:
    """The same container as user 65534 with NET_RAW added: runc puts NET_RAW in its
    bounding set only, so raw sockets are refused and the exporter exits 1 naming the
    capability."""
    image = images.exporter_image
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "nonroot-raw", "namespace": HOST_NS},
        "spec": {
            "nodeName": "node-real",
            "hostNetwork": True,
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 65534, "runAsGroup": 65534, "runAsNonRoot": True},
            "containers": [
                {
                    "name": "exporter",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "args": [
                        "--discovery=static",
                        "--probe.socket=raw",
                        "--target=198.19.0.1",
                        "--web.listen-address=127.0.0.1:9873",
                    ],
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"], "add": ["NET_RAW"]},
                    },
                }
            ],
        },
    }
    real.kubectl("apply", "-f", "-", input=json.dumps(pod))
    try:

        def ended() -> Any:
            got = real.get_json("pod", "-n", HOST_NS, "nonroot-raw")
            statuses = got["status"].get("containerStatuses") or [{}]
            return statuses[0].get("state", {}).get("terminated")

        term = real.wait_for(ended, "the non-root exporter to exit", timeout=90, interval=0.5)
        assert term["exitCode"] == 1, term
        assert "CAP_NET_RAW" in term.get("message", ""), term
    finally:
        real.kubectl("delete", "pod", "-n", HOST_NS, "nonroot-raw", "--wait=false", check=False)
