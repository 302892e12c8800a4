"""On a real cluster: the chart installs with `helm install` (the README's command, the real
helm client against the real API server), one Ready pod per node serves the mesh's metrics
with the values given, and `helm uninstall` removes it.

The API server, controllers, scheduler and kube-proxy are real (tests/support/cluster/cluster.py);
the nodes run the kubelet stand-in (tests/support/cluster/standin.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster.cluster import ROOT, Cluster
from tests.support.cluster.fixtures import (
    FAST_ARGS,
    SELECTOR,
    expected_mesh,
    make_cluster,
    mesh_is,
    wait_metrics,
    wait_ready_pods,
)
from tests.support.cluster.process import nsenter
from tests.support.helm import by_key, helm_bin, helm_env, operator_crds, template
from tests.support.metrics import Samples, value
from tests.test_helm import EVERYTHING

pytestmark = pytest.mark.netns

# As README "Helm chart" has it, from the clone's root.
INSTALL = ("helm", "install", "pingmesh-exporter", "deploy/helm/pingmesh-exporter")
VALUES: dict[str, Any] = {
    "podMonitor": {"enabled": True},
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "extraArgs": ["--log.level=debug"],
    "extraEnv": [{"name": "PINGMESH_PROBE_UP_WINDOW", "value": "5"}],
    "podAnnotations": {"example.com/installed-by": "helm"},
}
ZONES = {"node-a": "zone-1", "node-b": "zone-2"}
HOST_NS = "pingmesh-host"
HOST_SELECTOR = f"{SELECTOR},app.kubernetes.io/component=host-network"
HOST_PORT = 9872


def helm(cluster: Cluster, *args: str, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
    """helm as the cluster's admin, in the control plane's network namespace, from the
    clone's root (so the chart's path is the README's)."""
    argv = [str(helm_bin()), f"--kubeconfig={cluster.admin_kubeconfig}", *args]
    proc = subprocess.run(
        nsenter(cluster.cp.path, argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=helm_env(cluster.dir / "helm"),
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, f"helm {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two stand-in nodes in two zones, the Prometheus Operator's CRDs, and the chart
    installed with VALUES by `helm install --wait` (Helm's own wait for the DaemonSet's
    pods)."""
    values = tmp_path_factory.mktemp("helm") / "values.yaml"
    values.write_text(yaml.safe_dump(VALUES))
    crds = operator_crds()
    with make_cluster() as c:
        for name, zone in ZONES.items():
            node = c.add_node(name, {"topology.kubernetes.io/zone": zone})
            c.start_standin(node, extra_args=FAST_ARGS)
        # Server-side: the CRDs are too large for the last-applied annotation.
        c.kubectl("apply", "--server-side", "-f", str(crds))
        c.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        helm(c, *INSTALL[1:], "--values", str(values), "--wait", "--timeout=180s")
        yield c


def test_one_ready_pod_per_node_with_the_values(installed: Cluster) -> None:
    pods = wait_ready_pods(installed, len(ZONES))
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(ZONES)
    for pod in pods:
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"
        assert pod["metadata"]["annotations"]["example.com/installed-by"] == "helm"
        (c,) = pod["spec"]["containers"]
        assert c["args"][-1] == "--log.level=debug"
        assert {"name": "PINGMESH_PROBE_UP_WINDOW", "value": "5"} in c["env"]
    # The restricted namespace the chart made, as the base's.
    ns = installed.get_json("namespace", "pingmesh")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_peer_is_discovered_and_answers(installed: Cluster) -> None:
    nodes = list(installed.nodes.values())
    for node in nodes:
        s = wait_metrics(
            installed,
            node.name,
            mesh_is(expected_mesh(nodes, node.name)),
            f"the whole mesh up from {node.name}",
            timeout=60,
        )
        assert value(s, "pingmesh_discovery_up", source="kubernetes") == 1
        assert value(s, "pingmesh_mesh_peers") == len(ZONES) - 1


def test_the_monitors_and_rules_pass_the_operators_schemas(
    installed: Cluster, tmp_path: Path
) -> None:
    """The real API server judges the chart's PodMonitor, ServiceMonitor and PrometheusRule,
    every value given (tests/test_helm.py's EVERYTHING), by the CRDs' schemas with unknown
    fields refused; a misspelt field is refused, so the check is real."""
    docs = [
        d
        for d in template(tmp_path, EVERYTHING)
        if d["apiVersion"].startswith("monitoring.coreos.com/")
    ]
    assert sorted(d["kind"] for d in docs) == ["PodMonitor", "PrometheusRule", "ServiceMonitor"]
    strict = ("apply", "--dry-run=server", "--validate=strict", "-f", "-")
    out = installed.kubectl(*strict, input=yaml.safe_dump_all(docs), check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    (pm,) = [d for d in docs if d["kind"] == "PodMonitor"]
    pm["spec"]["podMetricsEndpoints"][0]["relabelings"].append({"targetLable": "x"})
    out = installed.kubectl(*strict, input=yaml.safe_dump(pm), check=False)
    assert (
        out.returncode != 0
        and 'unknown field "spec.podMetricsEndpoints[0].relabelings[2].targetLable"' in out.stderr
    ), out.stderr
    for kind in ("podmonitor", "servicemonitor", "prometheusrule"):
        got = installed.get_json(kind, "pingmesh-exporter", "-n", "pingmesh")
        assert got["metadata"]["labels"]["app.kubernetes.io/name"] == "pingmesh-exporter"


def test_the_release_holds_what_helm_template_renders(installed: Cluster, tmp_path: Path) -> None:
    status = yaml.safe_load(helm(installed, "status", "pingmesh-exporter", "-o", "yaml").stdout)
    assert status["info"]["status"] == "deployed" and status["namespace"] == "default"
    notes = helm(installed, "get", "notes", "pingmesh-exporter").stdout
    assert "kubectl -n pingmesh port-forward ds/pingmesh-exporter 9871:9871" in notes
    manifest = helm(installed, "get", "manifest", "pingmesh-exporter").stdout
    got = [d for d in yaml.safe_load_all(manifest) if d]
    assert by_key(got) == by_key(template(tmp_path, VALUES))


def host_targets_up(samples: Samples) -> set[str]:
    return {
        lb["target_node"]
        for n, lb, v in samples
        if n == "pingmesh_target_up" and v == 1 and lb.get("source_network") == "host"
    }


def reaches(nodes: set[str]) -> Callable[[Samples], bool]:
    return lambda samples: host_targets_up(samples) >= nodes


def test_an_upgrade_adds_the_host_network_daemonset(installed: Cluster) -> None:
    """`helm upgrade --reuse-values --set hostNetwork.enabled=true`: the host-network
    exporters start in their own privileged namespace and probe host to host on 9872; the
    pod-network ones are left as they were."""
    before = {p["metadata"]["uid"] for p in wait_ready_pods(installed, len(ZONES))}
    helm(
        installed,
        "upgrade",
        *INSTALL[2:],
        "--reuse-values",
        "--set",
        "hostNetwork.enabled=true",
        "--wait",
        "--timeout=180s",
    )
    wait_ready_pods(installed, len(ZONES), selector=HOST_SELECTOR, namespace=HOST_NS)
    nodes = list(installed.nodes.values())

    def host_pod_on(cluster: Cluster, node: str) -> dict[str, Any]:
        pods = wait_ready_pods(cluster, len(ZONES), selector=HOST_SELECTOR, namespace=HOST_NS)
        (pod,) = [p for p in pods if p["spec"]["nodeName"] == node]
        return pod

    for node in nodes:
        others = {n.name for n in nodes if n.name != node.name}
        s = wait_metrics(
            installed,
            node.name,
            reaches(others),
            f"host-to-host targets up from {node.name}",
            60,
            host_pod_on,
            HOST_PORT,
        )
        kinds = {lb.get("kind") for n, lb, _v in s if n == "pingmesh_target_up"}
        assert kinds == {"node"}  # host-network peers are node targets only
    assert {p["metadata"]["uid"] for p in wait_ready_pods(installed, len(ZONES))} == before


def test_uninstall_removes_every_object(installed: Cluster, tmp_path: Path) -> None:
    helm(installed, "uninstall", "pingmesh-exporter", "--wait", "--timeout=180s")
    for doc in template(tmp_path, {**VALUES, "hostNetwork": {"enabled": True}}):
        ref = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
        ns = doc["metadata"].get("namespace")
        out = installed.kubectl("get", ref, *(["-n", ns] if ns else []), check=False)
        assert out.returncode != 0 and "NotFound" in out.stderr, out.stdout + out.stderr
