"""The Service network end to end: the src namespace's netfilter rules do what kube-proxy's
iptables mode does, backends run a real TCP server and real dnsmasq, the API fake serves the
matching Services and EndpointSlices, and the exporter process checks them for real."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import kube_support, netbed_fixtures
from tests.exporter_proc import ExporterProcess, Samples, value
from tests.kube_support import exporter_args
from tests.kubefake import KubeFake
from tests.kubefake_fixtures import make_endpointslice, make_service
from tests.netbed import Bed
from tests.svcbed import ServiceBed

pytestmark = pytest.mark.netns
bed = netbed_fixtures.bed
fake_in_src = kube_support.fake_in_src

ANNOTATED = {"pingmesh.io/probe": "true"}


def service(name: str, ns: str, ips: list[str], ports: list[tuple[str, int, str]],
            annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None,
            service_type: str = "ClusterIP") -> dict[str, Any]:
    obj = make_service(name, ns, ports=[(n, p, p) for n, p, _ in ports], cluster_ips=ips or None,
                       cluster_ip=None if not ips else ips[0], labels=labels,
                       service_type=service_type)
    for spec_port, (_n, _p, proto) in zip(obj["spec"]["ports"], ports, strict=True):
        spec_port["protocol"] = proto
    if annotations:
        obj["metadata"]["annotations"] = annotations
    if service_type == "ExternalName":
        obj["spec"] = {"type": "ExternalName", "externalName": "db.example.org"}
    return obj


def endpoints(name: str, ns: str, service: str, states: list[dict[str, bool]],
              family: str = "IPv4") -> dict[str, Any]:
    base = "198.18.40." if family == "IPv4" else "2001:db8:40::"
    eps = [{"addresses": [f"{base}{i + 1}"], "conditions": c} for i, c in enumerate(states)]
    return make_endpointslice(name, ns, service, eps, address_type=family)


def svc_value(samples: Samples, name: str, service: str, **labels: str) -> float:
    return value(samples, name, default=-1.0, service=service, **labels)


def wait_for(proc: ExporterProcess, cond: Callable[[Samples], bool],
             timeout: float = 20.0) -> Samples:
    deadline = time.monotonic() + timeout
    samples = proc.scrape()
    while not cond(samples):
        if time.monotonic() > deadline:
            got = sorted({(lb.get("service"), n, lb.get("result", ""), v) for n, lb, v in samples
                          if n.startswith("pingmesh_service")})
            raise AssertionError(f"not reached in {timeout}s: {got}")
        time.sleep(0.3)
        samples = proc.scrape()
    return samples


def test_service_checks(bed: Bed, fake_in_src: KubeFake, tmp_path: Path) -> None:
    fake = fake_in_src
    with ServiceBed(bed) as sb:
        api4 = sb.tcp_service(port=443, target_port=6443, family=4,
                              cluster_ip=sb.kubernetes_ip)
        web4 = sb.tcp_service(port=80, target_port=8080, family=4, n_backends=2)
        web6 = sb.tcp_service(port=80, target_port=8080, family=6)
        empty = sb.tcp_service(port=80, family=4, n_backends=0)
        hole = sb.tcp_service(port=80, target_port=8081, family=4, drop_syn=True)
        labelled = sb.tcp_service(port=8443, target_port=8082, family=4)
        dns_ok = sb.dns_service(family=4)
        dns_nx = sb.dns_service(family=4, records={})
        dns_silent = sb.dns_service(family=4, silent=True)

        dns_ports = [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")]
        objs = [
            service("kubernetes", "default", [api4.cluster_ip], [("https", 443, "TCP")]),
            service("kube-dns", "kube-system", [dns_ok.cluster_ip], dns_ports),
            service("dns-nx", "kube-system", [dns_nx.cluster_ip], dns_ports),
            service("dns-silent", "kube-system", [dns_silent.cluster_ip], dns_ports),
            service("web", "shop", [web4.cluster_ip, web6.cluster_ip],
                    [("http", 80, "TCP"), ("quic", 443, "UDP")], annotations=ANNOTATED),
            service("empty", "shop", [empty.cluster_ip], [("http", 80, "TCP")],
                    annotations=ANNOTATED),
            service("hole", "shop", [hole.cluster_ip], [("http", 80, "TCP")],
                    annotations=ANNOTATED),
            service("labelled", "shop", [labelled.cluster_ip], [("https", 8443, "TCP")],
                    labels={"team": "net"}),
            service("ignored", "shop", [labelled.cluster_ip], [("https", 8443, "TCP")]),
            service("headless", "shop", [], [("http", 80, "TCP")], annotations=ANNOTATED),
            service("external", "shop", [], [], annotations=ANNOTATED,
                    service_type="ExternalName"),
        ]
        for obj in objs:
            fake.upsert("services", obj)
        ready = {"ready": True, "serving": True, "terminating": False}
        fake.upsert("endpointslices", endpoints("web-v4", "shop", "web", [ready, ready]))
        fake.upsert("endpointslices", endpoints("web-v6", "shop", "web", [ready], "IPv6"))
        fake.upsert("endpointslices", endpoints("hole-1", "shop", "hole", [ready]))
        fake.upsert("endpointslices", endpoints("other", "shop", "ignored", [ready]))

        args = exporter_args(fake, tmp_path, "--services.interval", "300ms",
                             "--services.timeout", "500ms", "--services.selector", "team=net",
                             "--services.dns", "kube-system/kube-dns,kube-system/dns-nx,"
                             "kube-system/dns-silent")
        with ExporterProcess(bed.src, args) as proc:
            proc.wait_ready()
            probe = "pingmesh_service_probe_total"
            s = wait_for(proc, lambda s: all(
                svc_value(s, probe, name, result=r) >= 2 for name, r in
                (("web", "ok"), ("empty", "refused"), ("hole", "timeout"),
                 ("kubernetes", "ok"), ("labelled", "ok"), ("kube-dns", "noerror"),
                 ("dns-nx", "nxdomain"), ("dns-silent", "timeout"))))
            # A healthy dual-stack Service: both ClusterIPs reach a backend, once per check.
            for fam in ("ipv4", "ipv6"):
                assert svc_value(s, "pingmesh_service_up", "web", ip_family=fam, port="80") == 1
                assert svc_value(s, "pingmesh_service_connect_seconds_count", "web",
                                 ip_family=fam) >= 2
            assert web4.connections() >= 2 and web6.connections() >= 2
            # UDP ports of other Services are not probed
            assert svc_value(s, probe, "web", port="443") == -1
            assert svc_value(s, "pingmesh_service_up", "empty") == 0
            assert svc_value(s, "pingmesh_service_up", "hole") == 0
            assert hole.connections() == 0
            assert svc_value(s, "pingmesh_service_up", "kube-dns", protocol="dns") == 1
            assert svc_value(s, "pingmesh_service_up", "kube-dns", protocol="tcp") == 1
            assert svc_value(s, "pingmesh_service_up", "dns-nx", protocol="dns") == 0
            assert svc_value(s, "pingmesh_service_dns_query_seconds_count", "kube-dns") >= 2
            assert svc_value(s, probe, "ignored") == -1
            ep = "pingmesh_service_endpoints"
            assert svc_value(s, ep, "web", condition="ready", ip_family="ipv4") == 2
            assert svc_value(s, ep, "web", condition="ready", ip_family="ipv6") == 1
            assert svc_value(s, ep, "empty", condition="ready", ip_family="ipv4") == 0
            unc = "pingmesh_service_uncheckable"
            assert svc_value(s, unc, "headless", reason="headless") == 1
            assert svc_value(s, unc, "external", reason="external_name") == 1
            assert all(lb.get("source_node") == "node-0" for n, lb, _v in s if n == probe)

            # Endpoints change: one of web's IPv4 endpoints starts terminating.
            terminating = {"ready": False, "serving": True, "terminating": True}
            fake.upsert("endpointslices",
                        endpoints("web-v4", "shop", "web", [ready, terminating]))
            s = wait_for(proc, lambda s: svc_value(s, ep, "web", condition="terminating",
                                                   ip_family="ipv4") == 1)
            assert svc_value(s, ep, "web", condition="ready", ip_family="ipv4") == 1
            assert svc_value(s, ep, "web", condition="serving", ip_family="ipv4") == 2

            # A Service that gets the annotation later, and loses it again.
            fake.upsert("services", service("ignored", "shop", [labelled.cluster_ip],
                                             [("https", 8443, "TCP")], annotations=ANNOTATED))
            s = wait_for(proc, lambda s: svc_value(s, probe, "ignored", result="ok") >= 1)
            assert svc_value(s, ep, "ignored", condition="ready", ip_family="ipv4") == 1
            fake.upsert("services", service("ignored", "shop", [labelled.cluster_ip],
                                            [("https", 8443, "TCP")]))
            fake.delete("services", "shop", "empty")
            s = wait_for(proc, lambda s: not any(
                lb.get("service") in ("ignored", "empty") for _n, lb, _v in s))

    slice_requests = [r for r in fake.requests if r.resource == "endpointslices"]
    assert slice_requests and all(
        r.query.get("labelSelector", "").startswith("kubernetes.io/service-name in (")
        for r in slice_requests)
