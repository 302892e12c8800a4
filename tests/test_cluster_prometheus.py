"""Prometheus on the real cluster: it finds the exporter pods with `kubernetes_sd_configs`
(role pod) against the real API server, with the README's plain-Prometheus scrape config and
the shipped rules; the dashboard's queries answer, and loss towards one node fires the alerts
for that node only.

The rules' time scales are shrunk (rate windows of 5m become 20s, `for:` becomes 5s) so that
a test sees in a minute what a cluster sees in minutes; the expressions are unchanged."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.support.cluster.cluster import BIN, ROOT, Cluster
from tests.support.cluster.fixtures import (
    FAST_ARGS,
    http_get,
    install_dns,
    install_exporter,
    make_cluster,
    pod_on,
    wait_ready_pods,
)
from tests.support.cluster.process import Process
from tests.support.metrics import assert_promtool_clean
from tests.support.rulescenarios import EMPTY_WHEN_HEALTHY, shrink_starting
from tests.test_dashboard import dashboard_queries

pytestmark = pytest.mark.netns

RULES = ROOT / "deploy" / "rules" / "pingmesh.rules.yml"
README = ROOT / "README.md"
PROM_PORT = 9090
NODES = ("node-1", "node-2", "node-3", "node-4")
ARGS = (*FAST_ARGS, "--probe.interval=200ms", "--services.interval=1s")
PROMETHEUS_RBAC = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: prometheus, namespace: pingmesh}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: prometheus, namespace: pingmesh}
rules: [{apiGroups: [""], resources: [pods], verbs: [list, watch]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: prometheus, namespace: pingmesh}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: prometheus}
subjects: [{kind: ServiceAccount, name: prometheus, namespace: pingmesh}]
"""


def fast_rules(text: str) -> str:
    text = re.sub(r"\[5m\]", "[20s]", text)
    text = shrink_starting(text, 40)  # twice the rate window, as 10 minutes is twice 5
    return re.sub(r"for: \d+m", "for: 5s", text)


def readme_scrape_config() -> dict[str, Any]:
    """The plain-Prometheus snippet of the README, as written there."""
    text = README.read_text()
    block = re.search(r"```yaml\n(rule_files:.*?)```", text, re.S)
    assert block, "README's plain-Prometheus snippet not found"
    doc: dict[str, Any] = yaml.safe_load(block.group(1))
    return doc


class Prom:
    def __init__(self, c: Cluster) -> None:
        self.c = c

    def query(self, expr: str) -> list[dict[str, Any]]:
        path = "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        code, body = http_get(self.c.cp, "127.0.0.1", PROM_PORT, path)
        doc = json.loads(body)
        assert code == 200 and doc["status"] == "success", (expr, doc)
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def firing(self) -> list[dict[str, str]]:
        _code, body = http_get(self.c.cp, "127.0.0.1", PROM_PORT, "/api/v1/alerts")
        return [a["labels"] for a in json.loads(body)["data"]["alerts"] if a["state"] == "firing"]

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached in {timeout}s; firing: {self.firing()}")
            time.sleep(1)


@pytest.fixture(scope="module")
def prom() -> Iterator[Prom]:
    with make_cluster() as c:
        for name in NODES:
            c.start_standin(c.add_node(name), extra_args=ARGS)
        install_dns(c)
        install_exporter(c)
        c.kubectl("apply", "-f", "-", input=PROMETHEUS_RBAC)
        token = c.kubectl("create", "token", "prometheus", "-n", "pingmesh").stdout.strip()
        (c.dir / "prometheus.token").write_text(token)
        (c.dir / "rules.yml").write_text(fast_rules(RULES.read_text()))
        config = readme_scrape_config()
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(c.dir / "rules.yml")]
        # Prometheus runs outside the cluster here: where the API server is and who it is.
        sd = config["scrape_configs"][0]["kubernetes_sd_configs"][0]
        sd.update(
            api_server=c.server,
            tls_config={"ca_file": str(c.pki.ca)},
            authorization={"credentials_file": str(c.dir / "prometheus.token")},
        )
        (c.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        p = Process(
            "prometheus",
            c.cp.path,
            [
                str(BIN / "prometheus"),
                f"--config.file={c.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={c.dir / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{PROM_PORT}",
            ],
            c.dir / "prometheus.log",
        )
        c.processes["prometheus"] = p
        p.start()
        wait_ready_pods(c, len(NODES))
        pm = Prom(c)
        pm.wait(lambda: _scraping(pm), 60, "Prometheus scraping every exporter")
        yield pm


def _scraping(p: Prom) -> bool:
    try:
        return len(p.query('up{job="pingmesh-exporter"} == 1')) == len(NODES)
    except (OSError, AssertionError, ValueError):
        return False


def _recording_rules() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    records = [r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r]
    assert set(records) >= EMPTY_WHEN_HEALTHY
    return [r for r in records if r not in EMPTY_WHEN_HEALTHY]


def test_discovered_through_the_api_with_the_node_label(prom: Prom) -> None:
    up = prom.query('up{job="pingmesh-exporter"}')
    assert sorted(r["metric"]["node"] for r in up) == sorted(NODES)


def test_metrics_document_is_valid_and_in_the_readme(prom: Prom) -> None:
    c = prom.c
    pod = pod_on(c, "node-1")
    code, metrics = http_get(c.nodes["node-1"].ns, pod["status"]["podIP"], 9871, "/metrics")
    assert code == 200
    families = set(re.findall(r"^# TYPE (pingmesh_\w+) ", metrics.decode(), re.M))
    assert len(families) > 30
    readme = README.read_text()
    missing = [f for f in families if f"`{f}`" not in readme and f"`{f}_total`" not in readme]
    assert not missing, f"metrics missing from README's table: {missing}"
    assert_promtool_clean(metrics)


def test_rules_dashboards_and_alerts(prom: Prom) -> None:
    p = prom
    p.wait(lambda: all(p.query(r) for r in _recording_rules()), 90, "recording rules")
    loss = p.query('max(pingmesh:probe_loss:ratio5m{kind="pod"})')
    lossy = p.query('pingmesh:probe_loss:ratio5m{kind="pod"} > 0')
    assert float(loss[0]["value"][1]) == 0.0, [(r["metric"], r["value"][1]) for r in lossy]
    time.sleep(6)  # longer than every shrunk `for:`
    assert p.firing() == []

    # Past their quiet start (the shrunk 40 s of pingmesh.lifecycle) before the fault: a pair
    # from an exporter younger than that counts for no node's score.
    p.wait(
        lambda: (
            bool(p.query('min(time() - process_start_time_seconds{job="pingmesh-exporter"}) > 41'))
            and not p.query("pingmesh:source_node_quiet:info or pingmesh:target_node_quiet:info")
        ),
        90,
        "every exporter past its quiet start",
    )

    # node-4 stops answering echo requests, to its pod and to its node IPs.
    node4 = p.c.nodes["node-4"]
    pod4 = pod_on(p.c, "node-4")["status"]["podIPs"]
    rules = [
        ("iptables", ["INPUT", "-p", "icmp", "--icmp-type", "echo-request"]),
        ("ip6tables", ["INPUT", "-p", "ipv6-icmp", "--icmpv6-type", "echo-request"]),
    ]
    for ip in pod4:
        v6 = ":" in ip["ip"]
        tool = "ip6tables" if v6 else "iptables"
        proto = ["-p", "ipv6-icmp", "--icmpv6-type"] if v6 else ["-p", "icmp", "--icmp-type"]
        rules.append((tool, ["FORWARD", "-d", ip["ip"], *proto, "echo-request"]))
    for tool, rule in rules:
        node4.ns.run([tool, "-I", *rule, "-j", "DROP"])

    def node4_alerts() -> set[tuple[str, str, str]]:
        return {
            (a["alertname"], a.get("side", ""), a.get("kind", ""))
            for a in p.firing()
            if "node-4" in (a.get("target_node"), a.get("node"))
        }

    # One page for node-4: it answers nothing, so PingmeshNodeUnreachable, and neither a
    # PingmeshNodeNetworkDegraded per kind (the localisation names node-4's target side on
    # both networks, and the unreachable node keeps it from paging again) nor a per-pair loss
    # alert (its three probers' pairs are what the localisation explains). No
    # kube-state-metrics here: the lifecycle rules' fallback, which pages.
    expected = {("PingmeshNodeUnreachable", "", "pod")}
    p.wait(lambda: expected <= node4_alerts(), 120, "node-4 alerts")

    def degraded_kinds() -> set[str]:
        got = p.query('pingmesh:node_target_degraded:ratio5m{node="node-4"}')
        return {r["metric"]["kind"] for r in got}

    # Five recording rules down the chain from the loss: a few evaluations behind the alert.
    p.wait(lambda: degraded_kinds() == {"pod", "node"}, 30, "node-4's target side degraded")
    time.sleep(6)  # longer than every shrunk `for:`: a second page would be firing by now
    assert node4_alerts() == expected
    others = [a for a in p.firing() if a.get("target_node", a.get("node")) not in (None, "node-4")]
    assert others == []
    assert not [
        a for a in p.firing() if a["alertname"].startswith(("PingmeshService", "PingmeshDNS"))
    ]
    empty = [title for title, expr in dashboard_queries() if not p.query(expr)]
    assert not empty, f"dashboard panels without data: {empty}"
