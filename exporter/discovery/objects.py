"""Kubernetes objects as the API sends them (JSON dicts) into frozen values. Pure functions.

Parsing is defensive: one malformed object is skipped with a reason and never takes the rest
of a list or a watch down. Only the fields the exporter uses are read.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

ZONE_LABEL = "topology.kubernetes.io/zone"
REGION_LABEL = "topology.kubernetes.io/region"


@dataclass(frozen=True)
class Skip:
    reason: str  # "malformed", "invalid_ip"


@dataclass(frozen=True)
class Peer:
    """An exporter pod of the DaemonSet, as far as probing cares."""

    key: str  # namespace/name
    name: str
    node: str
    pod_ips: tuple[str, ...]
    host_ips: tuple[str, ...]
    phase: str
    ready: bool
    terminating: bool
    created: str
    bad_ips: int = 0  # IP strings that did not parse, counted and left out


@dataclass(frozen=True)
class NodeMeta:
    name: str
    zone: str | None
    region: str | None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _ips(entries: Any, single: Any) -> tuple[tuple[str, ...], int]:
    """IPs from a podIPs/hostIPs list (falling back to podIP/hostIP), canonical and unique."""
    raw: list[Any] = []
    if isinstance(entries, list) and entries:
        raw = [e.get("ip") if isinstance(e, dict) else None for e in entries]
    elif single:
        raw = [single]
    out: list[str] = []
    bad = 0
    for item in raw:
        try:
            ip = str(ipaddress.ip_address(item))
        except (ValueError, TypeError):
            bad += 1
            continue
        if ip not in out:
            out.append(ip)
    return tuple(out), bad


def object_key(obj: Any) -> str | None:
    meta = _dict(_dict(obj).get("metadata"))
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return None
    ns = meta.get("namespace")
    return f"{ns}/{name}" if isinstance(ns, str) and ns else name


def parse_pod(obj: Any) -> Peer | Skip:
    key = object_key(obj)
    if key is None:
        return Skip("malformed")
    spec, status = obj.get("spec"), obj.get("status", {})
    if not isinstance(spec, dict) or not isinstance(status, dict):
        return Skip("malformed")
    for field in ("podIPs", "hostIPs", "conditions"):
        if status.get(field) is not None and not isinstance(status[field], list):
            return Skip("malformed")
    meta = _dict(obj.get("metadata"))
    node = spec.get("nodeName")
    if not isinstance(node, str):
        node = ""
    pod_ips, bad_pod = _ips(status.get("podIPs"), status.get("podIP"))
    host_ips, bad_host = _ips(status.get("hostIPs"), status.get("hostIP"))
    ready = False
    conditions = status.get("conditions")
    if isinstance(conditions, list):
        for c in conditions:
            if isinstance(c, dict) and c.get("type") == "Ready":
                ready = c.get("status") == "True"
    phase = status.get("phase")
    created = meta.get("creationTimestamp")
    return Peer(
        key=key,
        name=str(meta.get("name")),
        node=node,
        pod_ips=pod_ips,
        host_ips=host_ips,
        phase=phase if isinstance(phase, str) else "",
        ready=ready,
        terminating=meta.get("deletionTimestamp") is not None,
        created=created if isinstance(created, str) else "",
        bad_ips=bad_pod + bad_host,
    )


def parse_node_meta(obj: Any) -> NodeMeta | Skip:
    key = object_key(obj)
    if key is None:
        return Skip("malformed")
    labels = _dict(_dict(obj.get("metadata")).get("labels"))
    zone = labels.get(ZONE_LABEL)
    region = labels.get(REGION_LABEL)
    return NodeMeta(key, zone if isinstance(zone, str) else None,
                    region if isinstance(region, str) else None)
