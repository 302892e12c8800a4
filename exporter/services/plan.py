"""Which Services are checked, how, and their endpoint counts. Pure functions.

ICMP to a ClusterIP proves nothing (kube-proxy's iptables mode never answers it, IPVS and
nftables answer without touching a backend), so a Service port is checked with a TCP connect
through the ClusterIP and the cluster DNS Service with a real query. UDP ports of other
Services and SCTP ports are not checked: silence there proves nothing either.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from exporter.discovery.objects import Service, SliceCounts
from exporter.targets import ip_family


@dataclass(frozen=True)
class Check:
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
    checks: tuple[Check, ...]
    uncheckable: tuple[tuple[str, str, str], ...]  # (namespace, service, reason)
    selected: tuple[str, ...]  # namespace/name keys


_REQ = re.compile(
    r"^\s*(!?)([A-Za-z0-9_./-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9_.-]*)|"
    r"\s+(in|notin)\s*\(([^)]*)\))?\s*$"
)


class LabelSelector:
    """Kubernetes label selector syntax, matched locally (annotations cannot be selected by
    the API server, so Services are watched whole and filtered here)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._reqs: list[tuple[str, str, frozenset[str]]] = []
        for part in _split(text):
            m = _REQ.match(part)
            if not m:
                raise ValueError(f"invalid label selector {text!r} at {part!r}")
            neg, key, op, value, set_op, values = m.groups()
            if neg and (op or set_op):
                raise ValueError(f"invalid label selector {text!r} at {part!r}")
            if op:
                self._reqs.append(("!=" if op == "!=" else "=", key, frozenset([value])))
            elif set_op:
                vals = frozenset(v.strip() for v in values.split(",") if v.strip())
                self._reqs.append((set_op, key, vals))
            else:
                self._reqs.append(("!" if neg else "exists", key, frozenset()))

    def matches(self, labels: Mapping[str, str]) -> bool:
        for op, key, vals in self._reqs:
            have = labels.get(key)
            ok = {
                "=": have in vals,
                "!=": have not in vals,
                "in": have in vals,
                "notin": have not in vals,
                "exists": have is not None,
                "!": have is None,
            }[op]
            if not ok:
                return False
        return bool(self._reqs)


def _split(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p for p in parts if p.strip()]


def selected(
    services: Iterable[Service], always: Iterable[str], selector: LabelSelector | None
) -> list[Service]:
    keep = set(always)
    out = []
    for svc in services:
        if (
            svc.key in keep
            or svc.annotated
            or (selector is not None and selector.matches(dict(svc.labels)))
        ):
            out.append(svc)
    return sorted(out, key=lambda s: s.key)


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
