"""Kubernetes discovery: the DaemonSet's own pods (one watch, label- and namespace-scoped)
and, when zones are on, node metadata (a metadata-only watch). Peer node IPs come from the
peer pods' status.hostIPs, so full Node objects are never fetched."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter.config import MeshSettings, Settings
from exporter.discovery.api import Api, Resource
from exporter.discovery.objects import parse_node_meta, parse_pod
from exporter.discovery.reflector import Reflector
from exporter.mesh import Identity, MeshPlan, plan
from exporter.objects import NodeMeta, Peer, Skip
from exporter.targets import Target

COALESCE_SECONDS = 0.05  # a rollout's burst of events makes one recomputation, not hundreds


class KubernetesDiscovery:
    def __init__(
        self, settings: Settings, api: Api, publish: Callable[[list[Target]], None]
    ) -> None:
        k = settings.kubernetes
        assert k.node_name and k.namespace
        self.me = Identity(k.node_name, k.pod_name)
        self.mesh: MeshSettings = settings.mesh
        self.publish = publish
        timing = {
            "request_timeout": k.request_timeout,
            "watch_timeout": k.watch_timeout,
            "retry_max_delay": k.retry_max_delay,
            "startup_denial_timeout": k.startup_denial_timeout,
        }
        self.pods: Reflector[Peer] = Reflector(
            api,
            Resource("pods", k.namespace, k.peer_selector),
            self._parse_pod,
            self._changed,
            **timing,
        )
        self.nodes: Reflector[NodeMeta] | None = None
        if settings.mesh.zones:
            self.nodes = Reflector(
                api, Resource("nodes", metadata_only=True), parse_node_meta, self._changed, **timing
            )
        self.plan: MeshPlan | None = None
        self.last_publish = 0.0
        self._dirty = asyncio.Event()

    @property
    def reflectors(self) -> list[Reflector[Any]]:
        return [r for r in (self.pods, self.nodes) if r is not None]

    def _parse_pod(self, obj: Any) -> Peer | Skip:
        peer = parse_pod(obj)
        if isinstance(peer, Peer) and peer.bad_ips:
            self.pods.stats.skipped["invalid_ip"] += peer.bad_ips
        return peer

    def _changed(self) -> None:
        self._dirty.set()

    @property
    def ready(self) -> bool:
        return all(r.synced.is_set() for r in self.reflectors)

    async def run(self) -> None:
        """Runs until cancelled; raises FatalApiError when the API denies us at start."""
        async with asyncio.TaskGroup() as group:
            for r in self.reflectors:
                group.create_task(r.run(), name=f"discovery.kubernetes.{r.resource.name}")
            group.create_task(self._recompute(), name="discovery.kubernetes.mesh")

    async def _recompute(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(COALESCE_SECONDS)
            self._dirty.clear()
            if not self.ready:
                continue
            self.recompute()

    def recompute(self) -> None:
        zones = None
        if self.nodes is not None:
            zones = {m.name: m.zone for m in self.nodes.store.values()}
        self.plan = plan(self.me, self.pods.store.values(), zones, self.mesh)
        self.publish(list(self.plan.targets))
        self.last_publish = time.time()

    # ----- metrics ----------------------------------------------------------------------

    def collect(self, more: Iterable[Reflector[Any]] = ()) -> Iterator[Metric]:
        reflectors = [*self.reflectors, *more]
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
            name = r.resource.name
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

        p = self.plan
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
