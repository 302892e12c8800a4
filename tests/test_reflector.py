"""List/watch against the API fake, through the official client over a socket."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from exporter.config import KubernetesSettings
from exporter.discovery.api import ConnectionFailed, Resource
from exporter.discovery.kubeapi import (
    METADATA_LIST,
    METADATA_OBJECT,
    KubeApi,
    accept_header,
    load_configuration,
)
from exporter.discovery.objects import parse_endpoint_slice, parse_node_meta, parse_pod
from exporter.discovery.reflector import (
    EARLY_END_LIMIT,
    FatalApiError,
    Reflector,
    ended_early,
)
from exporter.objects import NodeMeta, Peer
from tests.support.kubefake import KubeFake
from tests.support.kubeobjects import make_node, make_pod

NS = "monitoring"
SEL = "app.kubernetes.io/name=pingmesh-exporter"
LABELS = {"app.kubernetes.io/name": "pingmesh-exporter"}


def pod(name: str, node: str, ip: str, **kw: Any) -> dict[str, Any]:
    return make_pod(name, NS, node, [ip], ["198.19.0." + ip.rsplit(".", 1)[1]], LABELS, **kw)


TIMING = {
    "request_timeout": 5.0,
    "watch_timeout": 30.0,
    "retry_max_delay": 0.2,
    "startup_denial_timeout": 60.0,
}


def reflector(fake: KubeFake, **kw: Any) -> Reflector[Peer]:
    api = KubeApi(fake.client_configuration())
    return Reflector(api, Resource("pods", NS, SEL), parse_pod, lambda: None, **(TIMING | kw))


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def run_with(r: Reflector[Any], body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        task = asyncio.create_task(r.run(), name="reflector")
        try:
            await body()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


def nodes(r: Reflector[Peer]) -> dict[str, str]:
    return {p.node: p.pod_ips[0] for p in r.store.values() if p.pod_ips}


def test_list_then_watch_follows_changes_without_relisting(kube: KubeFake) -> None:
    kube.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    kube.upsert("pods", make_pod("other", NS, "node-a", ["198.18.9.9"], [], {"app": "x"}))
    r = reflector(kube)

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)
        assert nodes(r) == {"node-a": "198.18.1.1"}
        kube.upsert("pods", pod("pm-b", "node-b", "198.18.1.2"))
        await until(lambda: "node-b" in nodes(r))
        kube.upsert("pods", pod("pm-b", "node-b", "198.18.1.3"))  # rollout: new IP
        await until(lambda: nodes(r).get("node-b") == "198.18.1.3")
        kube.delete("pods", NS, "pm-a")
        await until(lambda: "node-a" not in nodes(r))

    run_with(r, body)
    assert kube.count("list", "pods") == 1
    assert kube.count("watch", "pods") == 1
    assert all(
        rec.query.get("labelSelector") == SEL for rec in kube.requests if rec.resource == "pods"
    )


def test_gone_mid_watch_relists_and_keeps_live_entries(kube: KubeFake) -> None:
    kube.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    r = reflector(kube)

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)
        kube.fail_next("pods", 410, verb="watch")
        kube.drop_watches()
        await until(lambda: r.stats.restarts.get("gone", 0) == 1)
        kube.upsert("pods", pod("pm-b", "node-b", "198.18.1.2"))
        await until(lambda: set(nodes(r)) == {"node-a", "node-b"})

    run_with(r, body)
    assert kube.count("list", "pods") == 2  # the start, and one after the 410


def test_dropped_connection_resumes_from_resource_version(kube: KubeFake) -> None:
    kube.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    r = reflector(kube)

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)
        assert kube.wait_for_watches(1, "pods")
        kube.drop_watches()
        kube.upsert("pods", pod("pm-b", "node-b", "198.18.1.2"))
        await until(lambda: "node-b" in nodes(r))

    run_with(r, body)
    assert kube.count("list", "pods") == 1
    assert kube.count("watch", "pods") >= 2


def test_server_down_keeps_store_then_recovers(kube: KubeFake) -> None:
    kube.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    r = reflector(kube)

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)
        kube.stop()
        await until(lambda: r.stats.errors.get("connection", 0) >= 2)
        assert nodes(r) == {"node-a": "198.18.1.1"} and not r.stats.healthy
        kube.start()
        kube.upsert("pods", pod("pm-b", "node-b", "198.18.1.2"))
        await until(lambda: "node-b" in nodes(r))
        assert r.stats.healthy

    run_with(r, body)


def test_unauthorized_at_start_is_fatal_at_once(kube: KubeFake) -> None:
    # Wrong credentials are no warm-up: the denial timeout does not apply.
    kube.fail_next("pods", 401, verb="list")
    r = reflector(kube, startup_denial_timeout=60.0)
    started = time.monotonic()
    with pytest.raises(FatalApiError, match=r"401.*service account token or the kubeconfig"):
        asyncio.run(asyncio.wait_for(r.run(), 10))
    assert time.monotonic() - started < 5
    assert kube.count("list", "pods") == 1


def test_forbidden_at_start_is_retried_through_the_warm_up(kube: KubeFake) -> None:
    # A starting API server denies until its RBAC caches have synced.
    kube.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    kube.fail_next("pods", 403, count=3, verb="list")
    r = reflector(kube, startup_denial_timeout=30.0)

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)

    run_with(r, body)
    assert nodes(r) == {"node-a": "198.18.1.1"}
    assert r.stats.errors == {"403": 3}


def test_forbidden_past_the_timeout_is_fatal_naming_the_role(kube: KubeFake) -> None:
    kube.fail_next("pods", 403, count=1000, verb="list")
    r = reflector(kube, startup_denial_timeout=0.6, retry_max_delay=10.0)
    started = time.monotonic()
    with pytest.raises(FatalApiError) as err:
        asyncio.run(asyncio.wait_for(r.run(), 10))
    # The last try comes at the deadline, not a (here up to 10 s) back-off after it.
    assert 0.6 <= time.monotonic() - started < 3
    assert kube.count("list", "pods") >= 2
    text = str(err.value)
    assert "403" in text and f"list and watch on pods (core API group) in namespace {NS}" in text
    assert "Role pingmesh-exporter and its RoleBinding" in text and "ClusterRole" not in text
    assert not re.search(r"\bget\b", text.split(" (403 ")[0])  # rbac.yaml grants no get


@pytest.mark.parametrize(
    "name,group",
    [
        ("endpointslices", "API group discovery.k8s.io"),
        ("services", "core API group"),
        ("nodes", "core API group"),
    ],
)
def test_forbidden_cluster_scope_names_the_cluster_role(
    kube: KubeFake, name: str, group: str
) -> None:
    kube.fail_next(name, 403, count=1000)
    api = KubeApi(kube.client_configuration())
    r: Reflector[Any] = Reflector(
        api,
        Resource(name),
        parse_endpoint_slice,
        lambda: None,
        **(TIMING | {"startup_denial_timeout": 0.0}),
    )
    with pytest.raises(FatalApiError) as err:
        asyncio.run(asyncio.wait_for(r.run(), 10))
    text = str(err.value)
    assert f"list and watch on {name} ({group}) at cluster scope" in text
    assert "ClusterRole pingmesh-exporter and its ClusterRoleBinding" in text


def test_errors_later_are_counted_and_retried(
    kube: KubeFake, caplog: pytest.LogCaptureFixture
) -> None:
    kube.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    r = reflector(kube)

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)
        kube.fail_next("pods", 403, count=3, verb="watch")
        kube.fail_next("pods", 500, count=1, verb="watch")
        kube.drop_watches()
        await until(lambda: r.stats.errors.get("403", 0) == 3 and r.stats.errors.get("500", 0) == 1)
        kube.upsert("pods", pod("pm-b", "node-b", "198.18.1.2"))
        await until(lambda: "node-b" in nodes(r))

    with caplog.at_level(logging.WARNING):
        run_with(r, body)
    # Shorter than the window: a restart's warm-up, not worth a false "RBAC denies us".
    assert not any("RBAC denies us" in m for m in caplog.messages)
    assert nodes(r)["node-a"] == "198.18.1.1"


def test_lasting_denial_later_is_logged_once_per_streak(
    kube: KubeFake, caplog: pytest.LogCaptureFixture
) -> None:
    kube.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    r = reflector(kube, startup_denial_timeout=0.3)

    async def denied(count: int) -> None:
        before = r.stats.errors.get("403", 0)
        kube.fail_next("pods", 403, count=count, verb="watch")
        kube.drop_watches()
        await until(lambda: r.stats.errors.get("403", 0) == before + count)
        await until(lambda: kube.watch_count("pods") == 1)  # a success again

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)
        await denied(6)  # 0.1 to 0.2 s apart: lasts past 0.3 s
        assert sum("RBAC denies us" in m for m in caplog.messages) == 1
        await denied(6)  # a new denial after a success is logged again
        assert sum("RBAC denies us" in m for m in caplog.messages) == 2

    with caplog.at_level(logging.WARNING):
        run_with(r, body)
    assert all(
        rec.levelno == logging.WARNING
        for rec in caplog.records
        if "RBAC denies us" in rec.getMessage()
    )


def test_silent_watch_is_abandoned_after_the_read_timeout(kube: KubeFake) -> None:
    kube.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    kube.hang_next_watch("pods")
    r = reflector(kube, request_timeout=1.0)

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)
        kube.upsert("pods", pod("pm-b", "node-b", "198.18.1.2"))
        await until(lambda: "node-b" in nodes(r), timeout=15)

    run_with(r, body)
    assert r.stats.errors.get("connection", 0) >= 1


def test_malformed_objects_skipped_and_counted_never_remove_live(kube: KubeFake) -> None:
    kube.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    kube.put_raw("pods", {"metadata": {"namespace": NS, "labels": LABELS}}, namespace=NS)
    r = reflector(kube)

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)
        assert r.stats.skipped.get("malformed") == 1
        # pm-a turns into garbage: keep what we knew
        kube.put_raw(
            "pods",
            {
                "metadata": {
                    "name": "pm-a",
                    "namespace": NS,
                    "labels": LABELS,
                    "resourceVersion": "999999",
                },
                "status": "garbage",
                "spec": [],
            },
            namespace=NS,
        )
        kube.put_raw(
            "pods",
            {
                "metadata": {"name": "pm-c", "namespace": NS, "labels": LABELS},
                "spec": {"nodeName": "node-c"},
                "status": {
                    "phase": "Running",
                    "podIPs": [{"ip": "not-an-ip"}, {"ip": "198.18.1.7"}],
                },
            },
            namespace=NS,
        )
        await until(lambda: "node-c" in nodes(r))

    run_with(r, body)
    assert nodes(r)["node-c"] == "198.18.1.7"
    assert "node-a" in nodes(r)


def test_settings_errors_name_the_cause(tmp_path: Any) -> None:
    from exporter.config import ConfigError
    from exporter.discovery.kubeapi import load_configuration

    with pytest.raises(ConfigError, match="--kubeconfig: no such file"):
        load_configuration(KubernetesSettings(kubeconfig=str(tmp_path / "nope")))
    bad = tmp_path / "kubeconfig"
    bad.write_text("this: [is not a kubeconfig")
    with pytest.raises(ConfigError, match="--kubeconfig: cannot use"):
        load_configuration(KubernetesSettings(kubeconfig=str(bad)))
    with pytest.raises(ConfigError, match="no Kubernetes credentials"):
        load_configuration(KubernetesSettings())


# ----- metadata-only watches, early ends ------------------------------------------------


def test_accept_header_asks_for_a_list_only_on_lists() -> None:
    meta = Resource("nodes", metadata_only=True)
    assert accept_header(meta, watch=False) == METADATA_LIST
    assert accept_header(meta, watch=True) == METADATA_OBJECT
    assert "as=PartialObjectMetadataList;" in METADATA_LIST
    assert "as=PartialObjectMetadata;" in METADATA_OBJECT
    assert accept_header(Resource("pods", NS, SEL), watch=True) is None
    assert accept_header(Resource("pods", NS, SEL), watch=False) is None


def test_metadata_only_watch_follows_changes(kube: KubeFake) -> None:
    # The fake ends a watch that asks for a list at its first event, as a real server does.
    kube.upsert("nodes", make_node("n1", {"topology.kubernetes.io/zone": "z1"}))
    api = KubeApi(kube.client_configuration())
    r: Reflector[NodeMeta] = Reflector(
        api, Resource("nodes", metadata_only=True), parse_node_meta, lambda: None, **TIMING
    )

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)
        kube.upsert("nodes", make_node("n2", {"topology.kubernetes.io/zone": "z2"}))
        await until(lambda: {m.zone for m in r.store.values()} == {"z1", "z2"})
        await asyncio.sleep(0.5)  # bookmarks come every 0.2 s: the watch stays open

    run_with(r, body)
    assert kube.count("list", "nodes", metadata_only=True) == 1
    assert kube.count("watch", "nodes", metadata_only=True) == 1
    assert r.stats.restarts == {}


def test_ended_early() -> None:
    assert ended_early(0.01, 300, delivered=False)
    assert not ended_early(0.01, 300, delivered=True)  # it moved on: re-watch from there
    assert not ended_early(2.0, 300, delivered=False)
    assert not ended_early(0.5, 3, delivered=False)  # a short timeout is not "early"


class EndingApi:
    """Lists fine; every watch ends at once without an event until `serve` is set, then
    delivers a bookmark and stays open until closed."""

    def __init__(self) -> None:
        self.watches = 0
        self.serve = threading.Event()

    def list(
        self, res: Resource, timeout: float, transform: Callable[[Any], Any] = lambda obj: obj
    ) -> tuple[list[Any], str]:
        return [], "7"

    def watch(
        self, res: Resource, resource_version: str, timeout_seconds: int, read_timeout: float
    ) -> EndingWatch:
        self.watches += 1
        return EndingWatch(self.serve.is_set())


class EndingWatch:
    def __init__(self, serve: bool) -> None:
        self.serve = serve
        self.closed = threading.Event()

    def events(self) -> Iterator[tuple[str, Any]]:
        if self.serve:
            yield "BOOKMARK", {"metadata": {"resourceVersion": "8"}}
            self.closed.wait(10)

    def close(self) -> None:
        self.closed.set()


def test_early_ending_watch_backs_off_and_reads_unhealthy() -> None:
    api = EndingApi()
    r: Reflector[Peer] = Reflector(
        api,
        Resource("pods", NS, SEL),
        parse_pod,
        lambda: None,
        **(TIMING | {"retry_max_delay": 0.4}),
    )

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 5)
        await asyncio.sleep(1.5)
        # Backed off (0.1-0.2 s, then 0.2-0.4 s), not re-opened thousands of times.
        assert EARLY_END_LIMIT <= api.watches <= 12
        # (one watch may be between its call and its end right now)
        assert set(r.stats.restarts) == {"early_end"}
        assert api.watches - 1 <= r.stats.restarts["early_end"] <= api.watches
        assert not r.stats.healthy
        api.serve.set()  # the server serves the watch again
        await until(lambda: r.stats.healthy, timeout=5)
        served = api.watches
        await asyncio.sleep(0.5)
        assert api.watches == served

    run_with(r, body)
    assert "timeout" not in r.stats.restarts


# ----- urllib3 retries ------------------------------------------------------------------


def test_configuration_disables_urllib3_retries(kube: KubeFake, tmp_path: Any) -> None:
    cfg = load_configuration(
        KubernetesSettings(kubeconfig=str(kube.kubeconfig(tmp_path / "kubeconfig")))
    )
    assert cfg.retries is False
    api = KubeApi(kube.client_configuration())  # also for a configuration made elsewhere
    retries = api._api_client.rest_client.pool_manager.connection_pool_kw["retries"]
    assert retries.total is False  # urllib3's Retry(False): raise at once, no retry


def test_connection_failure_surfaces_at_once_without_urllib3_retries(
    kube: KubeFake, caplog: pytest.LogCaptureFixture
) -> None:
    api = KubeApi(kube.client_configuration())
    kube.stop()
    with caplog.at_level(logging.DEBUG, logger="urllib3"), pytest.raises(ConnectionFailed):
        api.list(Resource("pods", NS, SEL), 5.0)
    # urllib3 logs each retry it makes; none may be made (the reflector backs off itself).
    assert not any("Retrying" in m for m in caplog.messages)
