"""The Service network on a real cluster: real kube-proxy in each node (iptables and nftables
modes) translates the ClusterIPs, the real EndpointSlice controller follows the backends'
readiness, and real CoreDNS answers through the kube-dns ClusterIP.

The backends are pods of real Deployments (their program is tests/support/cluster/backend.py); the
one fault made by hand is a DROP rule on the nodes for one backend, a broken datapath."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster.cluster import Cluster
from tests.support.cluster.fixtures import (
    FAST_ARGS,
    install_dns,
    install_exporter,
    make_cluster,
    ready_pods,
    wait_metrics,
    wait_ready_pods,
)
from tests.support.metrics import Samples, value

pytestmark = pytest.mark.netns

SHOP = "shop"
PROBE = "pingmesh_service_probe_total"
EP = "pingmesh_service_endpoints"
ARGS = (
    *FAST_ARGS,
    "--services.interval=1s",
    "--services.timeout=1s",
    "--services.selector=team=net",
    "--services.dns=kube-system/kube-dns,shop/broken-dns",
)
# A cluster DNS server whose kubernetes plugin is missing: every name is NXDOMAIN.
BROKEN_DNS = """
apiVersion: v1
kind: ConfigMap
metadata: {name: broken-dns, namespace: shop}
data:
  Corefile: |
    .:53 {
        ready :8181
        template ANY ANY { rcode NXDOMAIN }
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: broken-dns, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: broken-dns}}
  template:
    metadata: {labels: {app: broken-dns}}
    spec:
      containers:
        - name: coredns
          image: registry.k8s.io/coredns/coredns:v1.12.4
          args: [-conf, /etc/coredns/Corefile]
          volumeMounts: [{name: config, mountPath: /etc/coredns}]
          readinessProbe: {httpGet: {path: /ready, port: 8181}}
          securityContext: {capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}}
      volumes: [{name: config, configMap: {name: broken-dns}}]
---
apiVersion: v1
kind: Service
metadata: {name: broken-dns, namespace: shop}
spec:
  selector: {app: broken-dns}
  ports: [{name: dns, port: 53, protocol: UDP}]
"""


def backend(name: str, replicas: int, linger_s: int = 0) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": SHOP},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 60,
                    "securityContext": {"runAsUser": 65534, "runAsGroup": 65534},
                    "containers": [
                        {
                            "name": "http",
                            "image": "pingmesh-test/backend:1",
                            "args": ["--port", "8080", "--linger", str(linger_s)],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                        }
                    ],
                },
            },
        },
    }


def service(
    name: str,
    selector: str,
    *,
    annotated: bool = True,
    dual: bool = True,
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": SHOP, "labels": labels or {}}
    if annotated:
        meta["annotations"] = {"pingmesh.io/probe": "true"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "selector": {"app": selector},
            "ipFamilyPolicy": "PreferDualStack" if dual else "SingleStack",
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "quic", "port": 443, "targetPort": 8443, "protocol": "UDP"},
            ],
            **spec,
        },
    }


@pytest.fixture(scope="module", params=["iptables", "nftables"])
def shop(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with make_cluster(proxy_mode=request.param) as c:
        for name in ("node-a", "node-b"):
            c.start_standin(c.add_node(name), extra_args=ARGS)
        install_dns(c)
        c.kubectl("create", "namespace", SHOP)
        for obj in (
            backend("web", 2, linger_s=30),
            backend("hole", 1),
            service("web", "web"),
            service("empty", "nothing"),
            service("hole", "hole", dual=False),
            service("quiet", "web", annotated=False),
            service("labelled", "web", annotated=False, labels={"team": "net"}),
            service("headless", "web", clusterIP="None", ipFamilyPolicy="SingleStack"),
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": "external",
                    "namespace": SHOP,
                    "annotations": {"pingmesh.io/probe": "true"},
                },
                "spec": {"type": "ExternalName", "externalName": "db.example.org"},
            },
        ):
            c.apply(obj)
        c.kubectl("apply", "-f", "-", input=BROKEN_DNS)
        install_exporter(c)
        wait_ready_pods(c, 2)
        yield c


def svc(s: Samples, name: str, metric: str = PROBE, **labels: str) -> float:
    return value(s, metric, default=-1.0, service=name, **labels)


def test_checks_read_what_the_datapath_does(shop: Cluster) -> None:
    # The broken datapath: every node drops what is forwarded to hole's backend.
    hole = wait_ready_pods(shop, 1, selector="app=hole", namespace=SHOP)[0]
    for node in shop.nodes.values():
        node.ns.run(
            [
                "iptables",
                "-I",
                "FORWARD",
                "1",
                "-d",
                hole["status"]["podIP"],
                "-p",
                "tcp",
                "--dport",
                "8080",
                "-j",
                "DROP",
            ]
        )
    s = wait_metrics(
        shop,
        "node-a",
        lambda s: all(
            svc(s, name, result=r, **lb) >= 2
            for name, r, lb in (
                ("web", "ok", {"ip_family": "ipv4"}),
                ("web", "ok", {"ip_family": "ipv6"}),
                ("kubernetes", "ok", {}),
                ("empty", "refused", {}),
                ("hole", "timeout", {}),
                ("kube-dns", "noerror", {"protocol": "dns", "ip_family": "ipv4"}),
                ("kube-dns", "nodata", {"protocol": "dns", "ip_family": "ipv6"}),
                ("kube-dns", "ok", {"protocol": "tcp"}),
                ("labelled", "ok", {}),
                ("broken-dns", "nxdomain", {"protocol": "dns"}),
            )
        ),
        "every Service check's result",
        timeout=60,
    )
    up = "pingmesh_service_up"
    for fam in ("ipv4", "ipv6"):
        assert svc(s, "web", up, ip_family=fam, port="80") == 1
        assert svc(s, "web", EP, condition="ready", ip_family=fam) == 2
    assert svc(s, "web", port="443") == -1  # a UDP port proves nothing: not checked
    assert svc(s, "kubernetes", up) == 1
    assert svc(s, "empty", up) == 0
    assert svc(s, "empty", EP, condition="ready", ip_family="ipv4") == 0
    assert svc(s, "hole", up) == 0
    assert svc(s, "hole", EP, condition="ready", ip_family="ipv4") == 1
    # Real CoreDNS: A over IPv4 answers; AAAA over IPv6 is NOERROR without data (the
    # kubernetes Service is single-stack), which proves the resolver works: up, no alert.
    assert svc(s, "kube-dns", up, protocol="dns", ip_family="ipv4") == 1
    assert svc(s, "kube-dns", up, protocol="dns", ip_family="ipv6") == 1
    assert svc(s, "broken-dns", up, protocol="dns") == 0
    assert svc(s, "quiet") == -1  # neither annotated nor selected
    assert svc(s, "labelled", up, ip_family="ipv4") == 1  # --services.selector
    unc = "pingmesh_service_uncheckable"
    assert svc(s, "headless", unc, reason="headless") == 1
    assert svc(s, "external", unc, reason="external_name") == 1


def test_a_terminating_endpoint_is_counted_then_replaced(shop: Cluster) -> None:
    pods = wait_ready_pods(shop, 2, selector="app=web", namespace=SHOP)
    victim = pods[0]["metadata"]["name"]
    shop.kubectl("delete", "pod", "-n", SHOP, victim, "--wait=false")
    # The backend drains for 30 s after SIGTERM: the real controller marks it terminating.
    wait_metrics(
        shop,
        "node-b",
        lambda s: svc(s, "web", EP, condition="terminating", ip_family="ipv4") == 1,
        "web's terminating endpoint",
        timeout=30,
    )
    s = wait_metrics(
        shop,
        "node-b",
        lambda s: svc(s, "web", EP, condition="ready", ip_family="ipv4") == 2,
        "web's replacement Ready",
        timeout=60,
    )
    assert svc(s, "web", "pingmesh_service_up", ip_family="ipv4") == 1
    assert victim not in {p["metadata"]["name"] for p in ready_pods(shop, "app=web", SHOP)}


def test_annotation_removed_and_service_deleted_take_their_series(shop: Cluster) -> None:
    shop.kubectl("annotate", "service", "-n", SHOP, "web", "pingmesh.io/probe-")
    shop.kubectl("delete", "service", "-n", SHOP, "empty")
    wait_metrics(
        shop,
        "node-a",
        lambda s: not any(lb.get("service") in ("web", "empty") for _n, lb, _v in s),
        "web's and empty's series gone",
    )
    shop.kubectl("annotate", "service", "-n", SHOP, "web", "pingmesh.io/probe=true")
    wait_metrics(shop, "node-a", lambda s: svc(s, "web", result="ok") >= 1, "web checked again")
