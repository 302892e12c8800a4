"""On a real cluster: the shipped manifests install, the exporter's RBAC is exactly what it
uses, every peer's targets appear, and the API server sees no storm.

The API server, controllers, scheduler and kube-proxy are real (tests/support/cluster/cluster.py);
the nodes run the kubelet stand-in (tests/support/cluster/standin.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.support.cluster.cluster import EXPORTER_SA, ROOT, Cluster
from tests.support.cluster.fixtures import (
    FAST_ARGS,
    expected_mesh,
    install_exporter,
    make_cluster,
    mesh_is,
    pod_on,
    probe_series,
    scrape,
    settle,
    wait_metrics,
    wait_ready_pods,
)
from tests.support.metrics import value
from tests.test_deploy import granted, render

pytestmark = pytest.mark.netns

ZONES = {"node-a": "zone-1", "node-b": "zone-1", "node-c": "zone-2"}


@pytest.fixture(scope="module")
def three() -> Iterator[Cluster]:
    """Three stand-in nodes in two zones with the exporter installed by `kubectl apply -k`."""
    with make_cluster() as c:
        for name, zone in ZONES.items():
            node = c.add_node(name, {"topology.kubernetes.io/zone": zone})
            c.start_standin(node, extra_args=FAST_ARGS)
        install_exporter(c, "-k")
        wait_ready_pods(c, 3)
        yield c


def test_restricted_pod_security_admits_one_pod_per_node(three: Cluster) -> None:
    ns = three.get_json("namespace", "pingmesh")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = wait_ready_pods(three, 3)
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(ZONES)
    for pod in pods:
        # Created by the real DaemonSet controller, bound by the real scheduler.
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"
        assert pod["spec"]["securityContext"]["runAsUser"] == 65534


def test_the_rendered_file_is_the_same_install(three: Cluster) -> None:
    # Applying the all-in-one file over the kustomize install changes nothing.
    rendered = str(ROOT / "deploy" / "pingmesh-exporter.yaml")
    out = three.kubectl("apply", "-f", rendered, "--dry-run=server", "-o", "name").stdout
    assert "daemonset.apps/pingmesh-exporter" in out
    diff = three.kubectl("diff", "-f", rendered, check=False)
    assert diff.returncode == 0, diff.stdout


@pytest.mark.parametrize(
    ("verb", "resource", "namespace", "allowed"),
    [
        ("list", "pods", "pingmesh", True),
        ("watch", "pods", "pingmesh", True),
        ("list", "pods", "default", False),
        ("get", "pods", "pingmesh", False),
        ("delete", "pods", "pingmesh", False),
        ("list", "nodes", "", True),
        ("watch", "nodes", "", True),
        ("get", "nodes", "", False),
        ("patch", "nodes", "", False),
        ("list", "services", "", True),
        ("watch", "endpointslices.discovery.k8s.io", "", True),
        ("list", "secrets", "pingmesh", False),
        ("list", "configmaps", "pingmesh", False),
        ("create", "pods", "pingmesh", False),
    ],
)
def test_rbac_grants_exactly_what_is_used(
    three: Cluster, verb: str, resource: str, namespace: str, allowed: bool
) -> None:
    args = ["auth", "can-i", verb, resource, f"--as={EXPORTER_SA}"]
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    out = three.kubectl(*args, check=False)
    assert out.stdout.strip() == ("yes" if allowed else "no"), out.stdout + out.stderr


def test_every_request_is_granted_and_every_grant_is_used(three: Cluster) -> None:
    """What the exporters asked of the real API server (its audit log) is exactly what the
    shipped Role and ClusterRole grant: nothing denied, nothing granted in vain."""
    wait_metrics(
        three,
        "node-a",
        lambda s: value(s, "pingmesh_discovery_up", source="kubernetes") == 1,
        "discovery up",
    )
    used = set()
    for ev in three.audit_events():
        ref = ev.get("objectRef") or {}
        used.add(
            (ref.get("namespace") or "*", ref.get("apiGroup", ""), ref["resource"], ev["verb"])
        )
        assert (ev.get("responseStatus") or {}).get("code", 200) < 400, ev
    want = granted(render(ROOT / "deploy"))
    # The exporter lists by a streaming watch-list (kubeapi.KubeApi.list): the API server
    # audits it as a watch. The list grants are for its fallback, the paginated LIST of a
    # server that does not stream lists; this one does, so they go unused.
    fallback = {(scope, g, r, v) for scope, g, r, v in want if v == "list"}
    assert used - want == set(), f"used, not granted: {used - want}"
    assert want - used <= fallback, f"granted, unused: {want - used - fallback}"


def test_every_peer_is_discovered_and_answers(three: Cluster) -> None:
    nodes = list(three.nodes.values())
    for node in nodes:
        want = expected_mesh(nodes, node.name)
        s = wait_metrics(
            three,
            node.name,
            mesh_is(want),
            f"the whole mesh up from {node.name}",
            timeout=60,
        )
        assert value(s, "pingmesh_discovery_up", source="kubernetes") == 1
        assert value(s, "pingmesh_mesh_peers") == 2
        zones = {
            lb["target_node"]: lb.get("target_zone") for n, lb, _v in s if n == "pingmesh_target_up"
        }
        assert zones == ZONES  # every peer's, and its own node's (--mesh.own-node)


def test_no_periodic_list_and_no_watch_storm(three: Cluster) -> None:
    """Over a quiet minute the three exporters send no LIST and only the WATCHes their
    server-side timeouts call for (defect: a metadata-only node watch asked for a *List*
    media type, and the real server ended it at the first event: hundreds per second)."""
    # A node event during the window: the node watch must see it, and survive it.
    three.kubectl("label", "node", "node-c", "pingmesh.test/touched=1", "--overwrite")
    since = time.time()
    settle(60)
    counts = {
        r: (
            three.list_count(since=since, resource=r),
            three.audit_count(since=since, verb="watch", resource=r),
        )
        for r in ("pods", "nodes", "services", "endpointslices")
    }
    print(f"quiet minute, 3 exporters, (LISTs, WATCHes) per resource: {counts}")
    for resource, (lists, watches) in counts.items():
        assert lists == 0, resource
        # Each exporter's watch lasts 5-10 min: at most one new watch per watch of the
        # resource and exporter in a minute (so at most 2 in 10 minutes), even when one had
        # just ended. Nodes have two watches each: metadata (--mesh.zones) and the own Node.
        per_exporter = 2 if resource == "nodes" else 1
        assert watches <= 3 * per_exporter, f"{watches} {resource} WATCHes in 60 s from 3 exporters"


def test_a_zone_relabel_reaches_every_exporter(three: Cluster) -> None:
    three.kubectl("label", "node", "node-c", "topology.kubernetes.io/zone=zone-3", "--overwrite")
    try:
        for source in ("node-a", "node-b"):
            wait_metrics(
                three,
                source,
                lambda s: any(
                    n == "pingmesh_target_up"
                    and lb.get("target_node") == "node-c"
                    and lb.get("target_zone") == "zone-3"
                    for n, lb, _v in s
                ),
                f"node-c in zone-3 seen from {source}",
            )
    finally:
        three.kubectl(
            "label", "node", "node-c", "topology.kubernetes.io/zone=zone-2", "--overwrite"
        )


def test_rollout_restart_keeps_the_label_sets(three: Cluster) -> None:
    before = {n: probe_series(scrape(three.nodes[n], pod_on(three, n))) for n in ZONES}
    old = {p["metadata"]["uid"] for p in three.pods()}
    three.kubectl("-n", "pingmesh", "rollout", "restart", "daemonset/pingmesh-exporter")
    three.kubectl(
        "-n",
        "pingmesh",
        "rollout",
        "status",
        "daemonset/pingmesh-exporter",
        "--timeout=180s",
        timeout=200,
    )
    pods = wait_ready_pods(three, 3)
    assert not old & {p["metadata"]["uid"] for p in pods}
    for n in ZONES:
        s = wait_metrics(
            three,
            n,
            mesh_is(before[n]),
            f"{n}'s mesh back after the rollout",
            timeout=60,
        )
        assert probe_series(s) == before[n]


def test_a_node_added_joins_and_a_node_deleted_leaves(three: Cluster) -> None:
    node = three.add_node("node-d", {"topology.kubernetes.io/zone": "zone-2"})
    three.start_standin(node, extra_args=FAST_ARGS)
    wait_ready_pods(three, 4)
    nodes = list(three.nodes.values())
    for source in ZONES:
        want = expected_mesh(nodes, source)
        wait_metrics(
            three,
            source,
            mesh_is(want),
            f"node-d probed from {source}",
            60,
        )
    # The Node object goes (its pod is left for the pod garbage collector): with zones on,
    # the exporters drop its targets at once, not when the pod is collected.
    started = time.monotonic()
    three.remove_node("node-d")
    for source in ZONES:
        wait_metrics(
            three,
            source,
            lambda s: not any(lb.get("target_node") == "node-d" for _n, lb, _v in s),
            f"node-d's series gone from {source}",
            timeout=20,
        )
    assert time.monotonic() - started < 20
