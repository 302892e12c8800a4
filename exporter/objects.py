"""The Kubernetes objects the exporter uses, as frozen values: what discovery hands to the
mesh plan and to the Service checks. discovery.objects makes them from the API's JSON."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Skip:
    """A malformed object or field, with the reason it is counted under."""

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
    host_network: bool = False  # spec.hostNetwork: its pod IPs are its node's IPs


@dataclass(frozen=True)
class NodeMeta:
    """A Node as discovery needs it: name and zone."""

    name: str
    zone: str | None
    region: str | None


@dataclass(frozen=True)
class NodeSchedule:
    """This exporter's own Node as its readiness needs it: whether it is cordoned."""

    name: str
    unschedulable: bool  # spec.unschedulable: cordoned (kubectl cordon, or a drain)


@dataclass(frozen=True)
class ServicePort:
    """One port of a Service."""

    name: str
    port: int
    protocol: str  # TCP, UDP, SCTP


@dataclass(frozen=True)
class Service:
    """A Service as the checks need it."""

    namespace: str
    name: str
    type: str
    cluster_ips: tuple[str, ...]  # empty for headless and ExternalName Services
    headless: bool
    ports: tuple[ServicePort, ...]
    labels: tuple[tuple[str, str], ...]
    annotated: bool  # pingmesh.io/probe: "true"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class SliceCounts:
    """Endpoint counts of one EndpointSlice, by condition."""

    service: str  # namespace/name of the owning Service
    address_type: str  # IPv4, IPv6, FQDN
    ready: int
    serving: int
    terminating: int
