"""Kubernetes object builders for the tests and bench/discovery_bench.py.

Builders return plain dicts shaped the way the API server serializes
objects (camelCase keys, omitted empty fields, ``podIPs: [{"ip": ...}]``),
so code under test meets the same JSON it would get from a cluster.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "make_endpoint",
    "make_endpointslice",
    "make_node",
    "make_pod",
    "make_service",
]

JSON = dict[str, Any]

# Fixed so objects built in different tests compare equal and read the same
# in failure messages; upsert() keeps a creationTimestamp that is present.
_EPOCH = "2024-05-01T12:00:00Z"


def _uid(kind: str, namespace: str, name: str) -> str:
    # Deterministic, so a test can predict targetRef/ownerReference uids.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pingmesh-tests/{kind}/{namespace}/{name}"))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(ctype: str, ok: bool) -> JSON:
    return {
        "type": ctype,
        "status": "True" if ok else "False",
        "lastProbeTime": None,
        "lastTransitionTime": _EPOCH,
    }


def make_pod(
    name: str,
    namespace: str = "default",
    node: str | None = "node-1",
    ips: Sequence[str] = (),
    host_ips: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    phase: str = "Running",
    ready: bool = True,
    deleting: bool = False,
    *,
    host_network: bool = False,
    annotations: Mapping[str, str] | None = None,
    container_port: int | None = 9871,
    owner_daemonset: str | None = None,
) -> JSON:
    """A Pod as the API server returns it (empty IP lists are omitted)."""
    metadata: JSON = {
        "name": name,
        "namespace": namespace,
        "uid": _uid("Pod", namespace, name),
        "creationTimestamp": _EPOCH,
        "labels": dict(labels or {}),
    }
    if annotations:
        metadata["annotations"] = dict(annotations)
    if owner_daemonset:
        metadata["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "name": owner_daemonset,
                "uid": _uid("DaemonSet", namespace, owner_daemonset),
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    if deleting:
        metadata["deletionTimestamp"] = _now()
        metadata["deletionGracePeriodSeconds"] = 30

    container: JSON = {
        "name": "exporter",
        "image": "pingmesh-exporter:test",
        "imagePullPolicy": "IfNotPresent",
        "resources": {},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }
    if container_port is not None:
        container["ports"] = [
            {"name": "metrics", "containerPort": container_port, "protocol": "TCP"}
        ]
    spec: JSON = {
        "containers": [container],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirstWithHostNet" if host_network else "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "securityContext": {},
        "schedulerName": "default-scheduler",
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
        "priority": 0,
    }
    if node:
        spec["nodeName"] = node
    if host_network:
        spec["hostNetwork"] = True

    scheduled = bool(node)
    running = phase == "Running"
    status: JSON = {"phase": phase, "qosClass": "BestEffort"}
    if scheduled:
        status["conditions"] = [
            _condition("PodReadyToStartContainers", running),
            _condition("Initialized", True),
            _condition("Ready", ready and running),
            _condition("ContainersReady", ready and running),
            _condition("PodScheduled", True),
        ]
        status["startTime"] = _EPOCH
    else:
        status["conditions"] = [_condition("PodScheduled", False)]
    if host_ips:
        status["hostIP"] = host_ips[0]
        status["hostIPs"] = [{"ip": ip} for ip in host_ips]
    if ips:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": ip} for ip in ips]
    if scheduled:
        state: JSON = (
            {"running": {"startedAt": _EPOCH}}
            if running
            else {"waiting": {"reason": "ContainerCreating"}}
        )
        status["containerStatuses"] = [
            {
                "name": "exporter",
                "state": state,
                "lastState": {},
                "ready": ready and running,
                "restartCount": 0,
                "image": "docker.io/library/pingmesh-exporter:test",
                "imageID": "",
                "started": running,
                **(
                    {"containerID": f"containerd://{uuid.uuid5(uuid.NAMESPACE_OID, name).hex}"}
                    if running
                    else {}
                ),
            }
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status}


def make_node(
    name: str,
    labels: Mapping[str, str] | None = None,
    internal_ips: Sequence[str] = (),
    *,
    ready: bool = True,
    unschedulable: bool = False,
    external_ips: Sequence[str] = (),
    pod_cidrs: Sequence[str] = (),
) -> JSON:
    """A Node with the addresses and Ready condition the kubelet reports."""
    node_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64",
    }
    node_labels.update(labels or {})
    addresses = [{"type": "InternalIP", "address": ip} for ip in internal_ips]
    addresses += [{"type": "ExternalIP", "address": ip} for ip in external_ips]
    addresses.append({"type": "Hostname", "address": name})
    spec: JSON = {}
    if pod_cidrs:
        spec["podCIDR"] = pod_cidrs[0]
        spec["podCIDRs"] = list(pod_cidrs)
    if unschedulable:
        spec["unschedulable"] = True
        spec["taints"] = [
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule", "timeAdded": _EPOCH}
        ]
    conditions = [
        {
            "type": ctype,
            "status": "False",
            "lastHeartbeatTime": _EPOCH,
            "lastTransitionTime": _EPOCH,
            "reason": reason,
            "message": "",
        }
        for ctype, reason in (
            ("MemoryPressure", "KubeletHasSufficientMemory"),
            ("DiskPressure", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "KubeletHasSufficientPID"),
        )
    ]
    conditions.append(
        {
            "type": "Ready",
            "status": "True" if ready else "Unknown",
            "lastHeartbeatTime": _EPOCH,
            "lastTransitionTime": _EPOCH,
            "reason": "KubeletReady" if ready else "NodeStatusUnknown",
            "message": "kubelet is posting ready status"
            if ready
            else "Kubelet stopped posting node status.",
        }
    )
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": _uid("Node", "", name),
            "creationTimestamp": _EPOCH,
            "labels": node_labels,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": spec,
        "status": {
            "addresses": addresses,
            "conditions": conditions,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": _uid("boot", "", name),
                "containerRuntimeVersion": "containerd://1.7.20",
                "kernelVersion": "6.1.0-25-amd64",
                "kubeProxyVersion": "",
                "kubeletVersion": "v1.31.0",
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, name).hex,
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "systemUUID": _uid("system", "", name),
            },
        },
    }


def make_service(
    name: str,
    namespace: str = "default",
    selector: Mapping[str, str] | None = None,
    ports: Iterable[tuple[str, int, int]] = (("metrics", 9871, 9871),),
    cluster_ip: str | None = "10.96.0.10",
    *,
    labels: Mapping[str, str] | None = None,
    service_type: str = "ClusterIP",
    cluster_ips: Sequence[str] | None = None,
) -> JSON:
    """A Service; ``ports`` are (name, port, targetPort); ``cluster_ip=None`` is headless."""
    ips = list(cluster_ips) if cluster_ips else ([cluster_ip] if cluster_ip else ["None"])
    families = ["IPv6" if ":" in ip else "IPv4" for ip in ips if ip != "None"] or ["IPv4"]
    spec: JSON = {
        "type": service_type,
        "clusterIP": ips[0],
        "clusterIPs": ips,
        "ports": [
            {"name": pname, "port": port, "protocol": "TCP", "targetPort": target}
            for pname, port, target in ports
        ],
        "sessionAffinity": "None",
        "ipFamilies": families,
        "ipFamilyPolicy": "RequireDualStack" if len(families) > 1 else "SingleStack",
        "internalTrafficPolicy": "Cluster",
    }
    if selector:
        spec["selector"] = dict(selector)
    metadata: JSON = {
        "name": name,
        "namespace": namespace,
        "uid": _uid("Service", namespace, name),
        "creationTimestamp": _EPOCH,
    }
    if labels:
        metadata["labels"] = dict(labels)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": spec,
        "status": {"loadBalancer": {}},
    }


def make_endpoint(
    address: str | Sequence[str],
    node: str | None = None,
    pod: str | None = None,
    namespace: str = "default",
    *,
    ready: bool = True,
    serving: bool | None = None,
    terminating: bool = False,
    zone: str | None = None,
) -> JSON:
    """One entry of ``EndpointSlice.endpoints``."""
    ep: JSON = {
        "addresses": [address] if isinstance(address, str) else list(address),
        "conditions": {
            "ready": ready,
            "serving": ready if serving is None else serving,
            "terminating": terminating,
        },
    }
    if node:
        ep["nodeName"] = node
    if zone:
        ep["zone"] = zone
    if pod:
        ep["targetRef"] = {
            "kind": "Pod",
            "name": pod,
            "namespace": namespace,
            "uid": _uid("Pod", namespace, pod),
        }
    return ep


def make_endpointslice(
    name: str,
    namespace: str = "default",
    service: str = "pingmesh",
    endpoints: Sequence[JSON] = (),
    ports: Iterable[tuple[str, int]] = (("metrics", 9871),),
    address_type: str = "IPv4",
    *,
    labels: Mapping[str, str] | None = None,
) -> JSON:
    """An EndpointSlice as the endpointslice controller writes it.

    An empty ``endpoints`` is serialized as ``null``, as the real server does.
    """
    slice_labels = {
        "kubernetes.io/service-name": service,
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
    }
    slice_labels.update(labels or {})
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": _uid("EndpointSlice", namespace, name),
            "creationTimestamp": _EPOCH,
            "generateName": f"{service}-",
            "labels": slice_labels,
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "name": service,
                    "uid": _uid("Service", namespace, service),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "addressType": address_type,
        "endpoints": [dict(ep) for ep in endpoints] if endpoints else None,
        "ports": [{"name": pname, "port": port, "protocol": "TCP"} for pname, port in ports],
    }
