"""Discovery's figures: static discovery's problems, the Kubernetes watches' requests,
errors and restarts (pods and nodes, Services and EndpointSlices in one set of families), and
the mesh plan's coverage."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.discovery.kubernetes import KubernetesDiscovery
from exporter.discovery.ownnode import OwnNode
from exporter.discovery.reflector import Reflector
from exporter.discovery.static import StaticDiscovery

Reflectors = Callable[[], Sequence[Reflector[Any]]]


class DiscoveryCollector(Collector):
    """Static discovery's error counts, and, in Kubernetes, every reflector's health, whichever
    feature owns it: one family per name, however many components watch."""

    def __init__(self, static: StaticDiscovery, reflectors: Reflectors | None) -> None:
        self.static = static
        self.reflectors = reflectors

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily(
            "pingmesh_discovery_errors",
            "Discovery problems: unresolvable names, bad lines, unreadable files, API errors.",
            labels=["source", "reason"],
        )
        for reason, n in sorted(self.static.errors.items()):
            fam.add_metric(["static", reason], n)
        yield fam
        if self.reflectors is not None:
            yield from self._reflectors(self.reflectors())

    def _reflectors(self, reflectors: Sequence[Reflector[Any]]) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "pingmesh_discovery_up",
            "1 when every watched resource is synced and its last request succeeded.",
            labels=["source"],
        )
        up.add_metric(
            ["kubernetes"],
            1 if all(r.synced.is_set() and r.stats.healthy for r in reflectors) else 0,
        )
        yield up
        last = GaugeMetricFamily(
            "pingmesh_discovery_last_sync_timestamp_seconds",
            "Unix time a resource's local copy was last confirmed current.",
            labels=["resource"],
        )
        requests = CounterMetricFamily(
            "pingmesh_discovery_requests",
            "List and watch requests sent to the API server.",
            labels=["resource", "verb"],
        )
        errors = CounterMetricFamily(
            "pingmesh_discovery_api_errors",
            "Failed API requests by HTTP status (or connection).",
            labels=["resource", "code"],
        )
        restarts = CounterMetricFamily(
            "pingmesh_discovery_watch_restarts",
            "Watches that ended: timeout (normal), gone (410, "
            "re-list), early_end (at once, without an event: "
            "backed off).",
            labels=["resource", "reason"],
        )
        skipped = CounterMetricFamily(
            "pingmesh_discovery_objects_skipped",
            "Malformed API objects or fields, skipped.",
            labels=["resource", "reason"],
        )
        for r in reflectors:
            name = r.name
            s = r.stats
            last.add_metric([name], s.last_sync)
            for table, fam in (
                (s.requests, requests),
                (s.errors, errors),
                (s.restarts, restarts),
                (s.skipped, skipped),
            ):
                for key, n in sorted(dict(table).items()):
                    fam.add_metric([name, key], n)
        yield from (last, requests, errors, restarts, skipped)


class MeshCollector(Collector):
    """How much of the mesh this exporter covers, from the last plan."""

    def __init__(self, kube: KubernetesDiscovery) -> None:
        self.kube = kube

    def collect(self) -> Iterator[Metric]:
        p = self.kube.plan
        yield GaugeMetricFamily(
            "pingmesh_mesh_peers",
            "Peers on other nodes that can be probed (Running, with IPs).",
            value=p.peers_total if p else 0,
        )
        yield GaugeMetricFamily(
            "pingmesh_mesh_selected_peers",
            "Peers this exporter probes (all of them up to --mesh.full-mesh-max).",
            value=len(p.selected) if p else 0,
        )
        yield GaugeMetricFamily(
            "pingmesh_mesh_expected_probers",
            "Peers expected to probe this node, by the same selection.",
            value=p.expected_probers if p else 0,
        )
        ready = GaugeMetricFamily(
            "pingmesh_peer_ready",
            "Readiness of each probed peer pod (1 Ready, 0 not).",
            labels=["target_node"],
        )
        for node, ok in p.readiness if p else ():
            ready.add_metric([node], 1 if ok else 0)
        yield ready


class OwnNodeCollector(Collector):
    """Whether this exporter's node is cordoned, as its own watch last saw it: what /readyz
    answers, for rules that must not page on a cordoned node without kube-state-metrics."""

    def __init__(self, own: OwnNode) -> None:
        self.own = own

    def collect(self) -> Iterator[Metric]:
        fam = GaugeMetricFamily(
            "pingmesh_node_unschedulable",
            "1 while this exporter's node is cordoned (spec.unschedulable), 0 when it is not; "
            "absent while unknown.",
            labels=["source_node"],
        )
        node = self.own.reflector.store.get(self.own.node_name)
        if node is not None:
            fam.add_metric([self.own.node_name], 1 if node.unschedulable else 0)
        yield fam
