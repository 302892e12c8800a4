"""Kubernetes objects as the API sends them (JSON dicts) into the frozen values of
exporter.objects. Pure functions.

Parsing is defensive: one malformed object is skipped with a reason and never takes the rest
of a list or a watch down. Only the fields the exporter uses are read.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from exporter.objects import NodeMeta, NodeSchedule, Peer, Service, ServicePort, Skip, SliceCounts

ZONE_LABEL = "topology.kubernetes.io/zone"
REGION_LABEL = "topology.kubernetes.io/region"


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
        host_network=spec.get("hostNetwork") is True,
    )


def parse_node_meta(obj: Any) -> NodeMeta | Skip:
    key = object_key(obj)
    if key is None:
        return Skip("malformed")
    labels = _dict(_dict(obj.get("metadata")).get("labels"))
    zone = labels.get(ZONE_LABEL)
    region = labels.get(REGION_LABEL)
    return NodeMeta(
        key, zone if isinstance(zone, str) else None, region if isinstance(region, str) else None
    )


def parse_node_schedule(obj: Any) -> NodeSchedule | Skip:
    """A full Node into whether it is cordoned. An absent spec or field is schedulable (the
    API omits false); a spec or field of the wrong type is malformed, not a guess."""
    key = object_key(obj)
    if key is None:
        return Skip("malformed")
    spec = obj.get("spec", {})
    if not isinstance(spec, dict):
        return Skip("malformed")
    unschedulable = spec.get("unschedulable", False)
    if not isinstance(unschedulable, bool):
        return Skip("malformed")
    return NodeSchedule(key, unschedulable)


PROBE_ANNOTATION = "pingmesh.io/probe"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def parse_service(obj: Any) -> Service | Skip:
    key = object_key(obj)
    if key is None or "/" not in key:
        return Skip("malformed")
    meta = _dict(obj.get("metadata"))
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return Skip("malformed")
    svc_type = str(spec.get("type") or "ClusterIP")
    raw_ips = spec.get("clusterIPs")
    if not isinstance(raw_ips, list) or not raw_ips:
        raw_ips = [spec.get("clusterIP")] if spec.get("clusterIP") else []
    headless = any(ip == "None" for ip in raw_ips)
    ips: list[str] = []
    for ip in raw_ips:
        if ip in (None, "", "None"):
            continue
        try:
            ips.append(str(ipaddress.ip_address(ip)))
        except (ValueError, TypeError):
            return Skip("invalid_ip")
    ports: list[ServicePort] = []
    raw_ports = spec.get("ports") or []
    if not isinstance(raw_ports, list):
        return Skip("malformed")
    for p in raw_ports:
        if not isinstance(p, dict) or not isinstance(p.get("port"), int):
            return Skip("malformed")
        name = str(p.get("name") or "")
        proto = str(p.get("protocol") or "TCP")
        ports.append(ServicePort(name, int(p["port"]), proto))
    labels = _dict(meta.get("labels"))
    annotations = _dict(meta.get("annotations"))
    namespace, name = key.split("/", 1)
    return Service(
        namespace=namespace,
        name=name,
        type=svc_type,
        cluster_ips=tuple(ips) if svc_type != "ExternalName" else (),
        headless=headless,
        ports=tuple(ports),
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
        annotated=str(annotations.get(PROBE_ANNOTATION, "")).lower() == "true",
    )


def parse_endpoint_slice(obj: Any) -> SliceCounts | Skip:
    key = object_key(obj)
    if key is None or "/" not in key:
        return Skip("malformed")
    meta = _dict(obj.get("metadata"))
    service = _dict(meta.get("labels")).get(SERVICE_NAME_LABEL)
    address_type = obj.get("addressType")
    endpoints = obj.get("endpoints") or []
    if (
        not isinstance(service, str)
        or not isinstance(address_type, str)
        or not isinstance(endpoints, list)
    ):
        return Skip("malformed")
    ready = serving = terminating = 0
    for ep in endpoints:
        if not isinstance(ep, dict):
            return Skip("malformed")
        cond = _dict(ep.get("conditions"))
        # The API defines an absent ready or serving as true, an absent terminating as false.
        is_ready = cond.get("ready") is not False
        ready += is_ready
        serving += cond.get("serving", is_ready) is not False
        terminating += cond.get("terminating") is True
    return SliceCounts(
        f"{key.split('/', 1)[0]}/{service}", address_type, ready, serving, terminating
    )
