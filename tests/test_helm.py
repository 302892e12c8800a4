"""The Helm chart (deploy/helm/pingmesh-exporter) with the real helm client: it lints, its
defaults render the kustomize base exactly, its switches render the overlays and components
exactly, every value lands where it says, and every core object validates."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import generate
from tests.support.helm import CHART, by_key, run, template
from tests.support.manifests import assert_schema_valid
from tests.test_deploy import DEPLOY, by_kind, render

HOST_OVERLAY = DEPLOY / "overlays" / "host-network"

# Every switch on, every list and map given: the widest render, for lint and validation.
EVERYTHING: dict[str, Any] = {
    "image": {"repository": "registry.example/pingmesh-exporter", "tag": "9.9.9"},
    "imagePullSecrets": [{"name": "regcred"}],
    # Helm merges values into the defaults; null removes a default's key.
    "resources": {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"cpu": None, "memory": "128Mi"},
    },
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "net", "effect": "NoSchedule"}
    ],
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "pingmesh", "operator": "NotIn", "values": ["off"]}
                        ]
                    }
                ]
            }
        }
    },
    "priorityClassName": "pingmesh-critical",
    "extraArgs": ["--log.level=debug", "--probe.interval=2s"],
    "extraEnv": [{"name": "TZ", "value": "UTC"}],
    "podAnnotations": {"example.com/team": "network"},
    "podLabels": {"team": "network"},
    "podMonitor": {
        "enabled": True,
        "interval": "15s",
        "scrapeTimeout": "10s",
        "labels": {"release": "kube-prometheus-stack"},
        "relabelings": [
            {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}
        ],
        "metricRelabelings": [{"sourceLabels": ["__name__"], "regex": "go_.*", "action": "drop"}],
        "tlsConfig": {"insecureSkipVerify": True},
        "basicAuth": {
            "username": {"name": "scrape-auth", "key": "username"},
            "password": {"name": "scrape-auth", "key": "password"},
        },
    },
    "serviceMonitor": {
        "enabled": True,
        "labels": {"release": "kube-prometheus-stack"},
        "relabelings": [{"targetLabel": "cluster", "replacement": "c1"}],
        "metricRelabelings": [{"sourceLabels": ["__name__"], "regex": "go_.*", "action": "drop"}],
    },
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "networkPolicy": {"enabled": True},
    "webConfig": {
        "content": {
            "tls_server_config": {
                "cert_file": "/etc/pingmesh-exporter/web/tls.crt",
                "key_file": "/etc/pingmesh-exporter/web/tls.key",
            },
            "basic_auth_users": {"prometheus": "$2y$10$abcdefghijklmnopqrstuv"},
        },
        "files": {"tls.crt": "-----BEGIN CERTIFICATE-----\n", "tls.key": "-----BEGIN KEY-----\n"},
        "tls": True,
    },
    "hostNetwork": {"enabled": True, "extraArgs": ["--probe.interval=5s"]},
}


def relative_overlay(tmp_path: Path, resources: list[Path], components: list[Path]) -> Path:
    """A kustomization of the test's own (kustomize wants relative paths)."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    doc = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(p, overlay) for p in resources],
        "components": [os.path.relpath(p, overlay) for p in components],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    return overlay


def test_lint_and_lint_strict(tmp_path: Path) -> None:
    values = tmp_path / "everything.yaml"
    values.write_text(yaml.safe_dump(EVERYTHING))
    for args in ([], ["--strict"], ["--strict", "--values", str(values)]):
        proc = run(tmp_path, "lint", *args, str(CHART), check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "0 chart(s) failed" in proc.stdout
        assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_defaults_render_the_kustomize_base(tmp_path: Path) -> None:
    """As data, object for object: no Helm label, no release name, nothing else."""
    assert by_key(template(tmp_path)) == by_key(render(DEPLOY))


def test_defaults_render_the_base_in_any_release_namespace(tmp_path: Path) -> None:
    """The objects' namespace is a value, not the release's: `helm install -n other` puts
    only the release record there."""
    assert template(tmp_path, extra=["--namespace", "other"]) == template(tmp_path)


def test_host_network_renders_the_host_network_overlay(tmp_path: Path) -> None:
    mine = template(tmp_path, {"hostNetwork": {"enabled": True}})
    assert by_key(mine) == by_key(render(HOST_OVERLAY))


def test_operator_switches_render_the_prometheus_operator_kustomization(tmp_path: Path) -> None:
    mine = template(
        tmp_path, {"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
    )
    assert by_key(mine) == by_key(render(DEPLOY / "prometheus-operator"))


def test_network_policy_renders_the_component(tmp_path: Path) -> None:
    overlay = relative_overlay(tmp_path, [DEPLOY], [DEPLOY / "networkpolicy"])
    mine = template(tmp_path, {"networkPolicy": {"enabled": True}})
    assert by_key(mine) == by_key(render(overlay))


def test_the_chart_carries_the_rules_of_deploy_rules(tmp_path: Path) -> None:
    """One source: deploy/generate.py copies deploy/rules/pingmesh.rules.yml into the chart
    (Helm reads nothing outside it); whatever the rules become, the copy follows."""
    source = (DEPLOY / "rules" / "pingmesh.rules.yml").read_text()
    copied = (CHART / "files" / "pingmesh.rules.yml").read_text()
    assert copied == generate.chart_rules(), "stale: run python deploy/generate.py"
    assert yaml.safe_load(copied) == yaml.safe_load(source)
    (rule,) = by_kind(template(tmp_path, {"prometheusRule": {"enabled": True}}), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(source)


def _pod(docs: list[dict[str, Any]], namespace: str) -> dict[str, Any]:
    (ds,) = [d for d in by_kind(docs, "DaemonSet") if d["metadata"]["namespace"] == namespace]
    template_: dict[str, Any] = ds["spec"]["template"]
    return template_


def test_every_value_lands_in_both_daemonsets(tmp_path: Path) -> None:
    docs = template(tmp_path, EVERYTHING)
    base = by_key(render(HOST_OVERLAY))
    for ns, port in (("pingmesh", 9871), ("pingmesh-host", 9872)):
        pod = _pod(docs, ns)
        spec, (c,) = pod["spec"], pod["spec"]["containers"]
        assert c["image"] == "registry.example/pingmesh-exporter:9.9.9"
        assert spec["imagePullSecrets"] == [{"name": "regcred"}]
        assert c["resources"] == {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "128Mi"},
        }
        assert spec["tolerations"] == EVERYTHING["tolerations"]
        assert spec["nodeSelector"] == EVERYTHING["nodeSelector"]
        assert spec["affinity"] == EVERYTHING["affinity"]
        assert spec["priorityClassName"] == "pingmesh-critical"
        assert c["env"][-1] == {"name": "TZ", "value": "UTC"} and len(c["env"]) == 5
        annotations = pod["metadata"]["annotations"]
        assert annotations["example.com/team"] == "network"
        assert annotations["prometheus.io/port"] == str(port)
        assert pod["metadata"]["labels"]["team"] == "network"
        # The selector stays the base's: it is immutable once installed.
        (plain,) = [
            d
            for d in base.values()
            if d["kind"] == "DaemonSet" and d["metadata"]["namespace"] == ns
        ]
        (ds,) = [d for d in by_kind(docs, "DaemonSet") if d["metadata"]["namespace"] == ns]
        assert ds["spec"]["selector"] == plain["spec"]["selector"]
        # The base's arguments first, then the web config, then the extra ones in order.
        want = plain["spec"]["template"]["spec"]["containers"][0]["args"]
        want += [
            "--web.config.file=/etc/pingmesh-exporter/web/web-config.yml",
            "--web.auth-exempt-probes",
        ]
        want += EVERYTHING["extraArgs"]
        if ns == "pingmesh-host":
            want += EVERYTHING["hostNetwork"]["extraArgs"]
        assert c["args"] == want


def test_image_tag_defaults_to_the_app_version(tmp_path: Path) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    docs = template(tmp_path, {"image": {"repository": "r.example/p", "pullPolicy": "Always"}})
    (c,) = _pod(docs, "pingmesh")["spec"]["containers"]
    assert c["image"] == f"r.example/p:{chart['appVersion']}"
    assert c["imagePullPolicy"] == "Always"
    # And the base's image is the chart's appVersion: the two are released together.
    (ds,) = by_kind(render(DEPLOY), "DaemonSet")
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"].endswith(
        f":{chart['appVersion']}"
    )


def test_web_config_inline_is_a_secret_mounted_and_passed(tmp_path: Path) -> None:
    docs = template(tmp_path, EVERYTHING)
    secrets = by_kind(docs, "Secret")
    assert sorted(s["metadata"]["namespace"] for s in secrets) == ["pingmesh", "pingmesh-host"]
    for secret in secrets:
        data = secret["stringData"]
        assert yaml.safe_load(data["web-config.yml"]) == EVERYTHING["webConfig"]["content"]
        assert data["tls.crt"] == EVERYTHING["webConfig"]["files"]["tls.crt"]
        pod = _pod(docs, secret["metadata"]["namespace"])
        (volume,) = pod["spec"]["volumes"]
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        (c,) = pod["spec"]["containers"]
        assert c["volumeMounts"] == [
            {"name": volume["name"], "mountPath": "/etc/pingmesh-exporter/web", "readOnly": True}
        ]
        # TLS: the kubelet's probes speak HTTPS to the same port.
        for probe in ("livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"]["scheme"] == "HTTPS"


def test_web_config_existing_secret_as_a_string_without_tls(tmp_path: Path) -> None:
    docs = template(
        tmp_path, {"webConfig": {"existingSecret": "mine", "key": "web.yml", "mountPath": "/w"}}
    )
    assert by_kind(docs, "Secret") == []
    pod = _pod(docs, "pingmesh")
    assert pod["spec"]["volumes"] == [{"name": "web-config", "secret": {"secretName": "mine"}}]
    (c,) = pod["spec"]["containers"]
    assert "--web.config.file=/w/web.yml" in c["args"]
    assert "--web.auth-exempt-probes" in c["args"]
    strict = template(
        tmp_path, {"webConfig": {"existingSecret": "mine", "authExemptProbes": False}}
    )
    (c,) = _pod(strict, "pingmesh")["spec"]["containers"]
    assert "--web.auth-exempt-probes" not in c["args"]
    assert "scheme" not in c["readinessProbe"]["httpGet"]
    inline = template(tmp_path, {"webConfig": {"content": "basic_auth_users: {a: b}\n"}})
    (secret,) = by_kind(inline, "Secret")
    assert secret["stringData"]["web-config.yml"] == "basic_auth_users: {a: b}\n"


def test_web_config_both_ways_at_once_is_refused(tmp_path: Path) -> None:
    values = tmp_path / "both.yaml"
    values.write_text(yaml.safe_dump({"webConfig": {"existingSecret": "a", "content": "x: 1"}}))
    proc = run(tmp_path, "template", str(CHART), "--values", str(values), check=False)
    assert proc.returncode != 0 and "set existingSecret or content, not both" in proc.stderr


def test_monitors_carry_the_job_then_the_users_relabelings(tmp_path: Path) -> None:
    docs = template(tmp_path, EVERYTHING)
    (pm,) = by_kind(docs, "PodMonitor")
    (sm,) = by_kind(docs, "ServiceMonitor")
    job = {"targetLabel": "job", "replacement": "pingmesh-exporter"}
    (pe,) = pm["spec"]["podMetricsEndpoints"]
    assert pe["relabelings"] == [job, *EVERYTHING["podMonitor"]["relabelings"]]
    assert pe["metricRelabelings"] == EVERYTHING["podMonitor"]["metricRelabelings"]
    assert (pe["interval"], pe["scrapeTimeout"], pe["scheme"]) == ("15s", "10s", "https")
    assert pe["tlsConfig"] == {"insecureSkipVerify": True}
    assert pe["basicAuth"] == EVERYTHING["podMonitor"]["basicAuth"]
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["pingmesh", "pingmesh-host"]}
    (se,) = sm["spec"]["endpoints"]
    assert se["relabelings"] == [job, *EVERYTHING["serviceMonitor"]["relabelings"]]
    assert (se["interval"], se["port"], se["scheme"]) == ("30s", "metrics", "https")
    (svc,) = by_kind(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"] == svc["metadata"]["labels"]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [svc["metadata"]["namespace"]]}
    (rule,) = by_kind(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_other_names_and_namespace(tmp_path: Path) -> None:
    """fullnameOverride renames the objects (and the RBAC follows); an existing namespace is
    used, not created; the pods keep the label the peer selector's default looks for."""
    docs = template(
        tmp_path,
        {"fullnameOverride": "mesh", "namespace": {"create": False, "name": "monitoring"}},
    )
    assert by_kind(docs, "Namespace") == []
    assert {d["metadata"]["name"] for d in docs} == {"mesh"}
    assert {d["metadata"].get("namespace", "") for d in docs} == {"", "monitoring"}
    (ds,) = by_kind(docs, "DaemonSet")
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == "mesh"
    assert ds["spec"]["template"]["metadata"]["labels"] == {
        "app.kubernetes.io/name": "pingmesh-exporter"
    }
    for binding in by_kind(docs, "RoleBinding") + by_kind(docs, "ClusterRoleBinding"):
        assert binding["roleRef"]["name"] == "mesh"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "mesh", "namespace": "monitoring"}
        ]
    no_service = template(tmp_path, {"service": {"enabled": False}})
    assert by_kind(no_service, "Service") == []


def test_every_core_object_validates_against_the_openapi_schemas(tmp_path: Path) -> None:
    """The Prometheus Operator's kinds are CRDs, outside the schemas: checked above by shape."""
    docs = [
        d
        for values in ({}, EVERYTHING)
        for d in template(tmp_path, values)
        if not d["apiVersion"].startswith("monitoring.coreos.com/")
    ]
    assert_schema_valid(docs, tmp_path / "chart.yaml")


def _leaves(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, dict) and value:
        return set().union(
            *(_leaves(v, f"{prefix}.{k}" if prefix else k) for k, v in value.items())
        )
    return {prefix}


def test_every_value_is_documented_in_the_readme_table() -> None:
    """Each leaf of values.yaml is under a key that a `# --` comment documents, and the
    README's table is the one generated from them."""
    text = (CHART / "values.yaml").read_text()
    documented = {k for k, _doc in generate.documented_values(text)}
    for leaf in _leaves(yaml.safe_load(text)):
        parts = leaf.split(".")
        assert any(".".join(parts[:i]) in documented for i in range(1, len(parts) + 1)), leaf
    readme = (DEPLOY.parent / "README.md").read_text()
    assert readme == generate.readme_with_values(readme), "stale: run python deploy/generate.py"
    for key in documented:
        assert f"| `{key}` |" in readme


def test_readme_install_command_is_the_one_the_cluster_test_runs() -> None:
    from tests.test_cluster_helm import INSTALL

    text = (DEPLOY.parent / "README.md").read_text()
    section = text[text.index("### Helm chart") :]
    start = section.index("```sh\n") + len("```sh\n")
    command = section[start : section.index("```", start)].replace("\\\n", " ").split()
    assert command[: len(INSTALL)] == list(INSTALL)


@pytest.mark.parametrize(
    "switch", ["podMonitor", "serviceMonitor", "prometheusRule", "networkPolicy"]
)
def test_each_switch_adds_only_its_own_object(tmp_path: Path, switch: str) -> None:
    base = by_key(template(tmp_path))
    values: dict[str, Any] = {switch: {"enabled": True}}
    mine = by_key(template(tmp_path, copy.deepcopy(values)))
    added = set(mine) - set(base)
    kind = switch[0].upper() + switch[1:]
    assert [k[1] for k in added] == [kind]
    assert {k: mine[k] for k in base} == base


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("podMonitor.enable=true", "additional properties 'enable' not allowed"),
        ("hostNetwork.port=0", "minimum"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ],
)
def test_a_misspelt_or_bad_value_is_refused(tmp_path: Path, setting: str, complaint: str) -> None:
    """values.schema.json: a typo fails the render instead of being ignored in silence."""
    proc = run(tmp_path, "template", str(CHART), "--set", setting, check=False)
    assert proc.returncode != 0 and complaint in proc.stderr, proc.stderr
