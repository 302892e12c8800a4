"""Kubernetes discovery: the DaemonSet's own pods (one watch, label- and namespace-scoped)
and, when zones are on, node metadata (a metadata-only watch). Peer node IPs come from the
peer pods' status.hostIPs, so full Node objects are never fetched."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from exporter.config import KubernetesSettings, MeshSettings
from exporter.discovery.api import Api, Resource
from exporter.discovery.objects import parse_node_meta, parse_pod
from exporter.discovery.reflector import Reflector
from exporter.mesh import Identity, MeshPlan, Planner, describe, network_mismatch
from exporter.objects import NodeMeta, Peer, Skip
from exporter.targets import Target

log = logging.getLogger("exporter.discovery.kubernetes")

COALESCE_SECONDS = 0.05  # a rollout's burst of events makes one recomputation, not hundreds


class KubernetesDiscovery:
    """Peer pods (and node metadata with zones) watched, turned into the mesh plan's targets."""

    def __init__(
        self,
        k: KubernetesSettings,
        mesh: MeshSettings,
        api: Api,
        publish: Callable[[list[Target]], None],
        services: bool = False,
    ) -> None:
        assert k.node_name and k.namespace
        self.me = Identity(k.node_name, k.pod_name, mesh.source_network)
        self.namespace = k.namespace
        self._checked_network = False  # once, at the first plan: the own pod is in the store
        self.mesh = mesh
        self.publish = publish
        self.services = services  # whether the Service checks run: only for what is said
        self.said: tuple[str, ...] = ()
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
        if mesh.zones:
            self.nodes = Reflector(
                api, Resource("nodes", metadata_only=True), parse_node_meta, self._changed, **timing
            )
        self.planner = Planner(self.me, mesh)
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
        # Only what changed since the last plan: a pod event at 5,000 peers then costs
        # tens of microseconds instead of a selection over every peer.
        if not self._checked_network and self.me.pod_name:
            self._checked_network = True
            own = self.pods.store.get(f"{self.namespace}/{self.me.pod_name}")
            mismatch = network_mismatch(self.me, own)
            if mismatch is not None:
                log.warning("%s", mismatch)
        self.planner.sync_pods(self.pods.store, self.pods.take_changes())
        if self.nodes is not None:
            self.planner.sync_nodes(self.nodes.store, self.nodes.take_changes())
        self.plan = self.planner.plan()
        self.publish(list(self.plan.targets))
        self.last_publish = time.time()
        self._say(self.plan)

    @property
    def status(self) -> tuple[str, ...]:
        """What the landing page says of the mesh: nothing before the first sync."""
        return describe(self.plan, self.services) if self.plan is not None else ()

    def _say(self, plan: MeshPlan) -> None:
        # Logged when its meaning changes (one node, a mesh, zones without labels), not
        # at every peer count: a rollout would otherwise log a line per pod.
        lines = describe(plan, self.services)
        if _gist(lines) != _gist(self.said):
            for line in lines:
                log.info("%s", line)
        self.said = lines


def _gist(lines: tuple[str, ...]) -> tuple[str, ...]:
    """Status lines as far as logging them again is worth it: a mesh's peer count is not."""
    return tuple("mesh" if line.startswith("mesh:") else line for line in lines)
