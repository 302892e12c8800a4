"""How the selected Services are checked, and their endpoint counts. Pure functions.

ICMP to a ClusterIP proves nothing (kube-proxy's iptables mode never answers it, IPVS and
nftables answer without touching a backend), so a Service port is checked with a TCP connect
through the ClusterIP and the cluster DNS Service with a real query. UDP ports of other
Services and SCTP ports are not checked: silence there proves nothing either.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from exporter.objects import Service, SliceCounts
from exporter.targets import ip_family


@dataclass(frozen=True)
class Check:
    """One check: a ClusterIP, port and protocol of one Service."""

    namespace: str
    service: str
    cluster_ip: str
    family: int
    port: int
    protocol: str  # "tcp" (connect) or "dns" (query over UDP)
    port_name: str

    @property
    def key(self) -> tuple[str, str, int, int, str]:
        return (self.namespace, self.service, self.family, self.port, self.protocol)


@dataclass(frozen=True)
class ServicePlan:
    """What is checked, and what cannot be and why."""

    checks: tuple[Check, ...]
    uncheckable: tuple[tuple[str, str, str], ...]  # (namespace, service, reason)
    selected: tuple[str, ...]  # namespace/name keys


def plan_checks(services: Iterable[Service], dns_services: Iterable[str]) -> ServicePlan:
    dns = set(dns_services)
    checks: list[Check] = []
    uncheckable: list[tuple[str, str, str]] = []
    keys: list[str] = []
    for svc in services:
        keys.append(svc.key)
        if svc.type == "ExternalName":
            uncheckable.append((svc.namespace, svc.name, "external_name"))
            continue
        if svc.headless or not svc.cluster_ips:
            uncheckable.append((svc.namespace, svc.name, "headless"))
            continue
        if not svc.ports:
            uncheckable.append((svc.namespace, svc.name, "no_ports"))
            continue
        is_dns = svc.key in dns or any(p.port == 53 for p in svc.ports)
        for ip in svc.cluster_ips:
            fam = ip_family(ip)
            for p in svc.ports:
                if p.protocol == "TCP":
                    checks.append(Check(svc.namespace, svc.name, ip, fam, p.port, "tcp", p.name))
                elif p.protocol == "UDP" and is_dns and p.port == 53:
                    checks.append(Check(svc.namespace, svc.name, ip, fam, p.port, "dns", p.name))
        if not any(c.service == svc.name and c.namespace == svc.namespace for c in checks):
            uncheckable.append((svc.namespace, svc.name, "no_tcp_ports"))
    unique = list({c.key: c for c in checks}.values())
    return ServicePlan(tuple(unique), tuple(uncheckable), tuple(keys))


def endpoint_counts(
    slices: Iterable[SliceCounts], services: Iterable[Service]
) -> dict[tuple[str, str], dict[str, int]]:
    """(service key, ip_family label) to counts by condition, summed over all slices, with
    zeros for the families of a selected Service that has no endpoints in them."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    wanted = set()
    for svc in services:
        wanted.add(svc.key)
        for ip in svc.cluster_ips:
            fam = "ipv4" if ip_family(ip) == 4 else "ipv6"
            out[(svc.key, fam)] = {"ready": 0, "serving": 0, "terminating": 0}
    for s in slices:
        if s.service not in wanted or s.address_type not in ("IPv4", "IPv6"):
            continue
        fam = "ipv4" if s.address_type == "IPv4" else "ipv6"
        counts = out.setdefault((s.service, fam), {"ready": 0, "serving": 0, "terminating": 0})
        counts["ready"] += s.ready
        counts["serving"] += s.serving
        counts["terminating"] += s.terminating
    return out
