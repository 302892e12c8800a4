"""This exporter's own Node, for its readiness: unready while the node is cordoned, as
kubenurse does, so that `kubectl get pods` and the DaemonSet's status show which nodes are out.

spec.unschedulable is not in a Node's metadata, so this is one LIST+WATCH of one full Node,
selected on the server by `fieldSelector=metadata.name=<own node>`: every other node's
heartbeats stay on the server. It is on the same reflector as the other watches (back-off,
resourceVersion resume, bookmarks), but it is not needed to probe: its denials are never
fatal, and what it does not know (not listed yet, an API error, the Node gone) reads ready.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.config import KubernetesSettings
from exporter.discovery.api import Api, Resource
from exporter.discovery.objects import parse_node_schedule
from exporter.discovery.reflector import Reflector
from exporter.objects import NodeSchedule

# The `resource` label of the watch's discovery metrics, apart from the zones' nodes watch.
REFLECTOR_NAME = "own_node"


@dataclass(frozen=True)
class Readiness:
    """What /readyz answers of the own node: whether ready, and why (its body)."""

    ready: bool
    why: str


def cordon_readiness(node: NodeSchedule | None, node_name: str) -> Readiness:
    """Readiness from what is known of the own Node: only a Node known to be cordoned makes
    the exporter unready. Unknown is ready: an API server that is away must not turn every
    exporter unready at once (its probes of the mesh are as good as before)."""
    if node is None:
        return Readiness(True, f"ready (node {node_name}'s schedulability not known)")
    if node.unschedulable:
        return Readiness(False, f"node {node_name} is cordoned (spec.unschedulable)")
    return Readiness(True, "ready")


def own_node_resource(node_name: str) -> Resource:
    return Resource("nodes", field_selector=f"metadata.name={node_name}")


class OwnNode:
    """The watch of the own Node and the readiness it gives."""

    def __init__(self, k: KubernetesSettings, api: Api) -> None:
        assert k.node_name
        self.node_name = k.node_name
        self.reflector: Reflector[NodeSchedule] = Reflector(
            api,
            own_node_resource(k.node_name),
            parse_node_schedule,
            lambda: None,  # readiness is read per request: nothing to recompute
            request_timeout=k.request_timeout,
            watch_timeout=k.watch_timeout,
            retry_max_delay=k.retry_max_delay,
            startup_denial_timeout=k.startup_denial_timeout,
        )
        self.reflector.name = REFLECTOR_NAME
        self.reflector.denial_fatal = False

    def readiness(self) -> Readiness:
        return cordon_readiness(self.reflector.store.get(self.node_name), self.node_name)

    async def run(self) -> None:
        await self.reflector.run()
