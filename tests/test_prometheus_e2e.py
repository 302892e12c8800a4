"""End to end with a real Prometheus: four exporters, each with its own node identity, find
each other through the API fake and probe each other's addresses in the test bed; Prometheus
scrapes them with the shipped recording and alerting rules loaded.

The shipped rules are loaded with their time scales shrunk (rate windows of 5m become 20s,
`for:` durations become 5s) so that a test sees in a minute what a cluster sees in minutes;
the expressions themselves are unchanged.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import kube_support, netbed_fixtures
from tests.exporter_proc import ExporterProcess, http_get
from tests.kube_support import NS, exporter_args
from tests.kubefake import KubeFake
from tests.kubefake_fixtures import make_endpointslice, make_pod, make_service
from tests.netbed import Bed, Dst
from tests.svcbed import ServiceBed
from tests.test_dashboard import dashboard_queries

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(shutil.which("prometheus") is None,
                                 reason="prometheus is not installed (Debian package)")]
bed = netbed_fixtures.bed
fake_in_src = kube_support.fake_in_src

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "rules" / "pingmesh.rules.yml"
PROM_PORT = 9090
NODES = ["node-1", "node-2", "node-3", "node-4"]
LABELS = {"app.kubernetes.io/name": "pingmesh-exporter"}


def fast_rules(text: str) -> str:
    text = re.sub(r"\[5m\]", "[20s]", text)
    return re.sub(r"for: \d+m", "for: 5s", text)


@dataclass
class Cluster:
    bed: Bed
    far: Dst  # node-4's addresses live here, so loss can be injected towards it alone
    exporters: list[ExporterProcess]

    def query(self, expr: str) -> list[dict[str, Any]]:
        path = "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        code, _h, body = http_get(self.bed.src, PROM_PORT, path)
        doc = json.loads(body)
        assert code == 200 and doc["status"] == "success", (expr, doc)
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def firing(self) -> list[dict[str, str]]:
        code, _h, body = http_get(self.bed.src, PROM_PORT, "/api/v1/alerts")
        assert code == 200
        return [a["labels"] for a in json.loads(body)["data"]["alerts"]
                if a["state"] == "firing"]

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached in {timeout}s; firing: "
                                     f"{self.firing()}")
            time.sleep(1)


@pytest.fixture
def cluster(bed: Bed, fake_in_src: KubeFake, tmp_path: Path) -> Iterator[Cluster]:
    fake = fake_in_src
    near = bed.add_dst("near")
    far = bed.add_dst("far")
    near_ips = near.add_targets(6)
    far_ips = far.add_targets(2)
    addresses = {n: (near_ips[2 * i], near_ips[2 * i + 1]) for i, n in enumerate(NODES[:3])}
    addresses["node-4"] = (far_ips[0], far_ips[1])
    for node, (pod_ip, host_ip) in addresses.items():
        fake.upsert("pods", make_pod(f"pm-{node}", NS, node, [pod_ip], [host_ip], LABELS))
    with ExitStack() as stack:
        sb = stack.enter_context(ServiceBed(bed))
        api = sb.tcp_service(port=443, target_port=6443, cluster_ip=sb.kubernetes_ip)
        dns = sb.dns_service()
        fake.upsert("services", make_service("kubernetes", "default", ports=[("https", 443, 443)],
                                             cluster_ip=api.cluster_ip))
        kdns = make_service("kube-dns", "kube-system", ports=[("dns", 53, 53)],
                            cluster_ip=dns.cluster_ip)
        kdns["spec"]["ports"][0]["protocol"] = "UDP"
        fake.upsert("services", kdns)
        fake.upsert("endpointslices", make_endpointslice(
            "kubernetes", "default", "kubernetes", [{"addresses": ["198.18.40.1"]}]))
        fake.upsert("endpointslices", make_endpointslice(
            "kube-dns-1", "kube-system", "kube-dns", [{"addresses": ["198.18.40.2"]}]))

        exporters = []
        for i, node in enumerate(NODES):
            args = exporter_args(fake, tmp_path, "--probe.interval", "200ms",
                                 "--services.interval", "1s", node=node)
            proc = stack.enter_context(ExporterProcess(bed.src, args, port=9871 + i))
            exporters.append(proc)
        for proc in exporters:
            proc.wait_ready()

        rules = tmp_path / "rules.yml"
        rules.write_text(fast_rules(RULES.read_text()))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{
                "job_name": "pingmesh-exporter",
                "static_configs": [{"targets": [f"127.0.0.1:{9871 + i}"
                                                for i in range(len(NODES))]}],
            }],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom = bed.src.popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                              f"--storage.tsdb.path={tmp_path / 'data'}",
                              f"--web.listen-address=127.0.0.1:{PROM_PORT}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(prom.wait, 10)
        stack.callback(prom.terminate)
        c = Cluster(bed, far, exporters)
        c.wait(lambda: _ready(c), 30, "Prometheus up")
        yield c


def _ready(c: Cluster) -> bool:
    try:
        return len(c.query('up{job="pingmesh-exporter"} == 1')) == len(NODES)
    except (OSError, AssertionError, ValueError):
        return False


def _recording_rules() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r]


def test_rules_dashboards_and_alerts_against_real_prometheus(cluster: Cluster) -> None:
    c = cluster
    # Healthy mesh: every recording rule has data, nothing fires.
    c.wait(lambda: all(c.query(r) for r in _recording_rules()), 60, "recording rules")
    loss = c.query('max(pingmesh:probe_loss:ratio5m{kind="pod"})')
    assert float(loss[0]["value"][1]) == 0.0
    time.sleep(6)  # longer than every shrunk `for:`
    assert c.firing() == []

    # promtool on a real /metrics document, and every family in README's metric table.
    metrics = c.exporters[0].get("/metrics")[2]
    readme = (ROOT / "README.md").read_text()
    families = set(re.findall(r"^# TYPE (pingmesh_\w+) ", metrics.decode(), re.M))
    assert len(families) > 30
    missing = [f for f in families if f"`{f}`" not in readme and f"`{f}_total`" not in readme]
    assert not missing, f"metrics missing from README's table: {missing}"
    proc = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # Loss towards node-4 alone: the node-unreachable and loss alerts fire for it, only it.
    c.bed.loss(c.far, 1.0)

    def node4_alerts() -> set[str]:
        return {a["alertname"] for a in c.firing() if a.get("target_node") == "node-4"}

    c.wait(lambda: {"PingmeshNodeUnreachable", "PingmeshPodNetworkLoss",
                    "PingmeshNodeNetworkLoss"} <= node4_alerts(), 90, "node-4 alerts")
    others = [a for a in c.firing() if a.get("target_node") not in (None, "node-4")]
    assert others == []
    assert not [a for a in c.firing() if a["alertname"].startswith(("PingmeshService",
                                                                    "PingmeshDNS"))]

    # Every dashboard query is valid and answers (with one node down, as on a bad day).
    empty = []
    for title, expr in dashboard_queries():
        if not c.query(expr):
            empty.append(title)
    assert not empty, f"dashboard panels without data: {empty}"
