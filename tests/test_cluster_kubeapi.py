"""exporter/discovery/kubeapi.py against the real kube-apiserver: the HTTP edge a fake would only
imitate (metadata-only lists and watches and their Accept headers, label selectors).

A control plane without nodes; the tests' own code runs inside its network namespace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from exporter.config import KubernetesSettings
from exporter.discovery.api import Api, Resource, WatchStream
from exporter.discovery.kubeapi import LIST_PAGE, KubeApi, load_configuration
from exporter.discovery.objects import parse_node_meta
from exporter.discovery.reflector import Reflector
from exporter.objects import NodeMeta
from tests.support.cluster.cluster import Cluster
from tests.support.cluster.fixtures import make_cluster
from tests.support.exporter_proc import in_namespace

ZONE = "topology.kubernetes.io/zone"
TIMING = {
    "request_timeout": 5.0,
    "watch_timeout": 30.0,
    "retry_max_delay": 0.2,
    "startup_denial_timeout": 60.0,
}


@pytest.fixture(scope="module")
def apiserver() -> Iterator[Cluster]:
    with make_cluster(dual_stack=False) as c:
        yield c


class Counting:
    """The Api, with every list and watch recorded as (verb, Resource)."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.calls: list[tuple[str, Resource]] = []

    def list(
        self, res: Resource, timeout: float, transform: Callable[[Any], Any] = lambda obj: obj
    ) -> tuple[list[Any], str]:
        self.calls.append(("list", res))
        return self.api.list(res, timeout, transform)

    def watch(
        self, res: Resource, resource_version: str, timeout_seconds: int, read_timeout: float
    ) -> WatchStream:
        self.calls.append(("watch", res))
        return self.api.watch(res, resource_version, timeout_seconds, read_timeout)

    def count(self, verb: str, resource: str, metadata_only: bool) -> int:
        return sum(
            1
            for v, res in self.calls
            if v == verb and res.name == resource and res.metadata_only == metadata_only
        )


def node(name: str, zone: str) -> dict[str, Any]:
    """A Node object as a test registers it (no kubelet runs for it)."""
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {ZONE: zone}}}


def admin_api(c: Cluster) -> KubeApi:
    return KubeApi(load_configuration(KubernetesSettings(kubeconfig=str(c.admin_kubeconfig))))


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_metadata_only_watch_follows_changes(apiserver: Cluster) -> None:
    # A real server ends a watch that asks for the list form (PartialObjectMetadataList) at
    # its first event; kubeapi asks for PartialObjectMetadata on watches.
    apiserver.apply(node("n1", "z1"))
    api = Counting(in_namespace(apiserver.cp, lambda: admin_api(apiserver)))
    r: Reflector[NodeMeta] = Reflector(
        api, Resource("nodes", metadata_only=True), parse_node_meta, lambda: None, **TIMING
    )

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)
        apiserver.apply(node("n2", "z2"))
        await until(lambda: {m.zone for m in r.store.values()} == {"z1", "z2"})
        await asyncio.sleep(0.5)  # past the event: the watch stays open

    async def main() -> None:
        task = asyncio.create_task(r.run(), name="reflector")
        try:
            await body()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    # The reflector's threads start from this one, inside the control plane's namespace.
    in_namespace(apiserver.cp, lambda: asyncio.run(main()))
    assert api.count("list", "nodes", metadata_only=True) == 1
    assert api.count("watch", "nodes", metadata_only=True) == 1
    assert r.stats.restarts == {}


def test_label_selector_reaches_the_server(apiserver: Cluster) -> None:
    apiserver.apply(node("n3", "z3"))
    apiserver.apply(node("n4", "z4"))

    def listed() -> list[str]:
        items, rv = admin_api(apiserver).list(
            Resource("nodes", label_selector=f"{ZONE}=z3", metadata_only=True), 10.0
        )
        assert rv
        return [obj["metadata"]["name"] for obj in items]

    assert in_namespace(apiserver.cp, listed) == ["n3"]


def test_lists_fall_back_to_pages_where_the_server_does_not_stream_them() -> None:
    """kube-apiserver with the WatchList feature gate off answers 422 to sendInitialEvents,
    as a server that cannot stream lists does: the client switches to paginated LISTs
    (no resourceVersion, LIST_PAGE objects a page) and still gets every object."""
    many = "pingmesh.test/many"
    with make_cluster(dual_stack=False, apiserver_args=["--feature-gates=WatchList=false"]) as c:
        items = [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": f"m{i}", "labels": {many: "1"}},
            }
            for i in range(LIST_PAGE + 5)
        ]
        c.apply({"apiVersion": "v1", "kind": "List", "items": items})
        gets: list[dict[str, str]] = []

        def listed() -> tuple[list[str], str, bool]:
            api = admin_api(c)
            inner = api._get

            def counting(res: Resource, query: dict[str, str], read_timeout: float) -> Any:
                gets.append(query)
                return inner(res, query, read_timeout)

            api._get = counting  # type: ignore[method-assign]
            res = Resource("nodes", label_selector=f"{many}=1", metadata_only=True)
            got, rv = api.list(res, 10.0)
            again, _ = api.list(res, 10.0)  # the switch holds: straight to pages
            assert len(again) == len(got)
            return [obj["metadata"]["name"] for obj in got], rv, api._watch_list

        names, rv, streaming = in_namespace(c.cp, listed)
    assert sorted(names) == sorted(f"m{i}" for i in range(LIST_PAGE + 5))
    assert rv and not streaming
    assert gets[0].get("sendInitialEvents") == "true"  # tried once, refused
    pages = [q for q in gets if "watch" not in q]
    assert len(pages) == 4 and all("resourceVersion" not in q for q in pages)
    assert [("continue" in q) for q in pages] == [False, True, False, True]
