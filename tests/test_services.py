"""Service selection, check plans, endpoint counts, DNS codec and the checker: no network."""

from __future__ import annotations

import asyncio
import struct

import pytest
from prometheus_client.core import Metric

from exporter.config import ServicesSettings
from exporter.discovery.objects import parse_endpoint_slice, parse_service
from exporter.discovery.services import selected
from exporter.metrics.services import ServicesCollector
from exporter.objects import Service, ServicePort, Skip, SliceCounts
from exporter.selectors import LabelSelector
from exporter.services import dns
from exporter.services.checker import ServiceChecker
from exporter.services.plan import Check, endpoint_counts, plan_checks
from tests.support.kubeobjects import make_endpointslice, make_service
from tests.support.metrics import samples

CHECKS = ServicesSettings(interval=0.2, timeout=0.1, concurrency=4, dns_name="x")


def svc(
    name: str,
    ns: str = "default",
    ips: tuple[str, ...] = ("198.19.128.1",),
    ports: tuple[ServicePort, ...] = (ServicePort("http", 80, "TCP"),),
    type: str = "ClusterIP",
    headless: bool = False,
    annotated: bool = False,
    labels: tuple[tuple[str, str], ...] = (),
) -> Service:
    return Service(ns, name, type, ips, headless, ports, labels, annotated)


def test_parse_service_variants() -> None:
    obj = make_service(
        "web", "shop", ports=[("http", 80, 8080)], cluster_ips=["198.19.128.5", "2001:db8:cafe::5"]
    )
    obj["metadata"]["annotations"] = {"pingmesh.io/probe": "true"}
    s = parse_service(obj)
    assert isinstance(s, Service)
    assert s.cluster_ips == ("198.19.128.5", "2001:db8:cafe::5") and s.annotated
    headless = parse_service(make_service("h", "shop", cluster_ip=None, ports=[]))
    assert isinstance(headless, Service) and headless.headless
    assert parse_service({"metadata": {"name": "x", "namespace": "n"}, "spec": "no"}) == Skip(
        "malformed"
    )


def test_parse_endpoint_slice_counts_conditions() -> None:
    obj = make_endpointslice(
        "web-abc",
        "shop",
        "web",
        [
            {"addresses": ["198.18.40.1"], "conditions": {"ready": True}},
            {
                "addresses": ["198.18.40.2"],
                "conditions": {"ready": False, "serving": True, "terminating": True},
            },
            {"addresses": ["198.18.40.3"], "conditions": {}},  # absent means ready
        ],
    )
    assert parse_endpoint_slice(obj) == SliceCounts("shop/web", "IPv4", 2, 3, 1)
    assert isinstance(parse_endpoint_slice({"metadata": {"name": "a", "namespace": "b"}}), Skip)


def test_selection_defaults_annotation_selector() -> None:
    all_services = [
        svc("kubernetes"),
        svc("kube-dns", "kube-system"),
        svc("a", annotated=True),
        svc("b", labels=(("team", "net"),)),
        svc("c"),
    ]
    keys = [
        s.key
        for s in selected(
            all_services,
            ["default/kubernetes", "kube-system/kube-dns"],
            LabelSelector("team in (net, ops)"),
        )
    ]
    assert keys == ["default/a", "default/b", "default/kubernetes", "kube-system/kube-dns"]
    assert [s.key for s in selected(all_services, [], None)] == ["default/a"]


@pytest.mark.parametrize(
    "text,labels,ok",
    [
        ("a=b", {"a": "b"}, True),
        ("a=b", {"a": "c"}, False),
        ("a!=b", {}, True),
        ("a", {"a": ""}, True),
        ("!a", {"a": "x"}, False),
        ("a in (x, y),b", {"a": "y", "b": "1"}, True),
        ("a notin (x)", {"a": "x"}, False),
    ],
)
def test_label_selector(text: str, labels: dict[str, str], ok: bool) -> None:
    assert LabelSelector(text).matches(labels) is ok


def test_bad_label_selector() -> None:
    with pytest.raises(ValueError):
        LabelSelector("a in x")


def test_plan_checks() -> None:
    dns_svc = svc(
        "kube-dns",
        "kube-system",
        ports=(
            ServicePort("dns", 53, "UDP"),
            ServicePort("dns-tcp", 53, "TCP"),
            ServicePort("metrics", 9153, "TCP"),
        ),
    )
    dual = svc(
        "web",
        ips=("198.19.128.2", "2001:db8:cafe::2"),
        ports=(
            ServicePort("", 80, "TCP"),
            ServicePort("q", 5000, "UDP"),
            ServicePort("s", 9000, "SCTP"),
        ),
    )
    others = [
        svc("ext", type="ExternalName", ips=()),
        svc("hl", ips=(), headless=True),
        svc("noports", ports=()),
        svc("udp", ports=(ServicePort("", 9999, "UDP"),)),
    ]
    plan = plan_checks([dns_svc, dual, *others], ["kube-system/kube-dns"])
    got = sorted((c.service, c.family, c.port, c.protocol) for c in plan.checks)
    assert got == [
        ("kube-dns", 4, 53, "dns"),
        ("kube-dns", 4, 53, "tcp"),
        ("kube-dns", 4, 9153, "tcp"),
        ("web", 4, 80, "tcp"),
        ("web", 6, 80, "tcp"),
    ]
    assert sorted(plan.uncheckable) == [
        ("default", "ext", "external_name"),
        ("default", "hl", "headless"),
        ("default", "noports", "no_ports"),
        ("default", "udp", "no_tcp_ports"),
    ]


def test_endpoint_counts_sum_slices() -> None:
    web = svc("web", ips=("198.19.128.2", "2001:db8:cafe::2"))
    counts = endpoint_counts(
        [
            SliceCounts("default/web", "IPv4", 2, 2, 0),
            SliceCounts("default/web", "IPv4", 1, 2, 1),
            SliceCounts("other/web", "IPv4", 9, 9, 9),
        ],
        [web],
    )
    assert counts == {
        ("default/web", "ipv4"): {"ready": 3, "serving": 4, "terminating": 1},
        ("default/web", "ipv6"): {"ready": 0, "serving": 0, "terminating": 0},
    }


def test_dns_codec() -> None:
    q = dns.build_query(0x1234, "kubernetes.default.svc.cluster.local")
    assert q[:2] == b"\x12\x34" and q.endswith(struct.pack("!HH", 1, 1))
    answer = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0)
    assert dns.answer_result(0x1234, answer) == "noerror"
    assert (
        dns.answer_result(0x1234, struct.pack("!HHHHHH", 0x1234, 0x8183, 1, 0, 0, 0)) == "nxdomain"
    )
    assert dns.answer_result(0x1234, struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 0, 0, 0)) == "nodata"
    assert dns.answer_result(0x9999, answer) is None
    assert dns.answer_result(0x1234, b"\x12") is None
    with pytest.raises(ValueError):
        dns.build_query(1, "a.." + "b" * 70)


def _samples(metrics: list[Metric], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(lb.items())): v for n, lb, v in samples(metrics) if n == name}


def test_checker_spreads_records_and_forgets_removed() -> None:
    calls: list[str] = []

    async def fake_tcp(check: Check, timeout: float) -> tuple[str, float | None]:
        calls.append(check.service)
        return ("ok", 0.0003) if check.service == "web" else ("refused", None)

    async def fake_dns(check: Check, timeout: float) -> tuple[str, float | None]:
        return "nxdomain", 0.001

    checker = ServiceChecker(CHECKS, tcp=fake_tcp, dns_probe=fake_dns)
    web = svc("web")
    empty = svc("empty", ips=("198.19.128.3",))
    kdns = svc("kube-dns", "kube-system", ports=(ServicePort("dns", 53, "UDP"),))
    checker.set_plan(plan_checks([web, empty, kdns], []), endpoint_counts([], [web]))

    async def go() -> None:
        task = asyncio.create_task(checker.run())
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    metrics = list(ServicesCollector(checker, "node-0").collect())
    totals = _samples(metrics, "pingmesh_service_probe_total")
    by = {(dict(k)["service"], dict(k)["result"]): v for k, v in totals.items()}
    assert by[("web", "ok")] >= 2 and by[("empty", "refused")] >= 2
    assert by[("kube-dns", "nxdomain")] >= 2
    up = {dict(k)["service"]: v for k, v in _samples(metrics, "pingmesh_service_up").items()}
    assert up == {"web": 1, "empty": 0, "kube-dns": 0}
    count = _samples(metrics, "pingmesh_service_connect_seconds_count")
    assert {dict(k)["service"]: v for k, v in count.items()}["web"] == by[("web", "ok")]
    assert all(dict(k)["source_node"] == "node-0" for k in totals)
    endpoints = _samples(metrics, "pingmesh_service_endpoints")
    assert len(endpoints) == 3 and set(endpoints.values()) == {0}

    checker.set_plan(plan_checks([web], []), {})
    names = {
        dict(k)["service"]
        for k in _samples(
            list(ServicesCollector(checker, "node-0").collect()), "pingmesh_service_probe_total"
        )
    }
    assert names == {"web"}


def _run_checker(dns_results: dict[int, str]) -> list[Metric]:
    async def fake_dns(check: Check, timeout: float) -> tuple[str, float | None]:
        result = dns_results[check.family]
        return result, (0.001 if result not in ("timeout", "error") else None)

    async def fake_tcp(check: Check, timeout: float) -> tuple[str, float | None]:
        return "ok", 0.0003

    checker = ServiceChecker(CHECKS, tcp=fake_tcp, dns_probe=fake_dns)
    kdns = svc(
        "kube-dns",
        "kube-system",
        ips=("198.19.128.10", "2001:db8:cafe::a"),
        ports=(ServicePort("dns", 53, "UDP"),),
    )
    checker.set_plan(plan_checks([kdns], ["kube-system/kube-dns"]), {})

    async def go() -> None:
        task = asyncio.create_task(checker.run())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    return list(ServicesCollector(checker, "node-0").collect())


def test_dns_nodata_is_up_and_keeps_its_label() -> None:
    # Dual stack: the kubernetes Service is single-stack, so AAAA is NOERROR with no records.
    metrics = _run_checker({4: "noerror", 6: "nodata"})
    up = {dict(k)["ip_family"]: v for k, v in _samples(metrics, "pingmesh_service_up").items()}
    assert up == {"ipv4": 1, "ipv6": 1}
    results = {
        (dict(k)["ip_family"], dict(k)["result"])
        for k in _samples(metrics, "pingmesh_service_probe_total")
    }
    assert results == {("ipv4", "noerror"), ("ipv6", "nodata")}


@pytest.mark.parametrize(
    "result",
    [
        "nxdomain",
        "servfail",
        "refused",
        "formerr",
        "notimp",
        "rcode_other",
        "timeout",
        "unreachable",
        "error",
    ],
)
def test_dns_failures_are_down(result: str) -> None:
    metrics = _run_checker({4: "noerror", 6: result})
    up = {dict(k)["ip_family"]: v for k, v in _samples(metrics, "pingmesh_service_up").items()}
    assert up == {"ipv4": 1, "ipv6": 0}
