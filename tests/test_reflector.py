"""The reflector's list/watch, its errors and back-off, against the in-memory Api fake.

What kubeapi does over HTTP is tested in tests/test_kubeapi.py and, on the real API server,
in tests/test_cluster_kubeapi.py."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from exporter.discovery.api import ApiError, Gone, Resource
from exporter.discovery.objects import parse_endpoint_slice, parse_pod
from exporter.discovery.reflector import (
    EARLY_END_LIMIT,
    FatalApiError,
    Reflector,
    ended_early,
)
from exporter.objects import Peer
from tests.support.fakeapi import FakeApi
from tests.support.kubeobjects import make_pod

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


FORBIDDEN = ApiError(403, "Forbidden", "denied")


@pytest.fixture
def api() -> FakeApi:
    return FakeApi(bookmark_interval=0.2)


def reflector(api: FakeApi, **kw: Any) -> Reflector[Peer]:
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


def test_list_then_watch_follows_changes_without_relisting(api: FakeApi) -> None:
    api.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    api.upsert("pods", make_pod("other", NS, "node-a", ["198.18.9.9"], [], {"app": "x"}))
    r = reflector(api)

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)
        assert nodes(r) == {"node-a": "198.18.1.1"}
        api.upsert("pods", pod("pm-b", "node-b", "198.18.1.2"))
        await until(lambda: "node-b" in nodes(r))
        api.upsert("pods", pod("pm-b", "node-b", "198.18.1.3"))  # rollout: new IP
        await until(lambda: nodes(r).get("node-b") == "198.18.1.3")
        api.delete("pods", NS, "pm-a")
        await until(lambda: "node-a" not in nodes(r))

    run_with(r, body)
    assert api.count("list", "pods") == 1
    assert api.count("watch", "pods") == 1
    assert all(res.label_selector == SEL for _verb, res in api.calls if res.name == "pods")


def test_changes_name_the_keys_touched_and_a_list_touches_all(api: FakeApi) -> None:
    """What the mesh planner reads to redo only what an event changed."""
    api.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    api.upsert("pods", pod("pm-c", "node-c", "198.18.1.3"))
    r = reflector(api)

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)
        assert r.take_changes() is None  # the first list
        assert r.take_changes() == set()
        api.upsert("pods", pod("pm-b", "node-b", "198.18.1.2"))
        api.delete("pods", NS, "pm-a")
        await until(lambda: set(nodes(r)) == {"node-b", "node-c"})
        assert r.take_changes() == {f"{NS}/pm-a", f"{NS}/pm-b"}
        api.fail_next("pods", Gone(410, "Expired"), verb="watch")
        api.drop_watches()
        await until(lambda: r.stats.restarts.get("gone", 0) == 1)
        await until(lambda: api.count("list", "pods") == 2)
        await until(lambda: r.take_changes() is None)

    run_with(r, body)


def test_gone_mid_watch_relists_and_keeps_live_entries(api: FakeApi) -> None:
    api.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    r = reflector(api)

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)
        api.fail_next("pods", Gone(410, "Expired"), verb="watch")
        api.drop_watches()
        await until(lambda: r.stats.restarts.get("gone", 0) == 1)
        api.upsert("pods", pod("pm-b", "node-b", "198.18.1.2"))
        await until(lambda: set(nodes(r)) == {"node-a", "node-b"})

    run_with(r, body)
    assert api.count("list", "pods") == 2  # the start, and one after the 410


def test_dropped_connection_resumes_from_resource_version(api: FakeApi) -> None:
    api.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    r = reflector(api)

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)
        await until(lambda: api.watch_count("pods") >= 1, timeout=5)
        api.drop_watches()
        api.upsert("pods", pod("pm-b", "node-b", "198.18.1.2"))
        await until(lambda: "node-b" in nodes(r))

    run_with(r, body)
    assert api.count("list", "pods") == 1
    assert api.count("watch", "pods") >= 2


def test_server_down_keeps_store_then_recovers(api: FakeApi) -> None:
    api.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    r = reflector(api)

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)
        api.down()
        await until(lambda: r.stats.errors.get("connection", 0) >= 2)
        assert nodes(r) == {"node-a": "198.18.1.1"} and not r.stats.healthy
        api.up()
        api.upsert("pods", pod("pm-b", "node-b", "198.18.1.2"))
        await until(lambda: "node-b" in nodes(r))
        assert r.stats.healthy

    run_with(r, body)


def test_unauthorized_at_start_is_fatal_at_once(api: FakeApi) -> None:
    # Wrong credentials are no warm-up: the denial timeout does not apply.
    api.fail_next("pods", ApiError(401, "Unauthorized"), verb="list")
    r = reflector(api, startup_denial_timeout=60.0)
    started = time.monotonic()
    with pytest.raises(FatalApiError, match=r"401.*service account token or the kubeconfig"):
        asyncio.run(asyncio.wait_for(r.run(), 10))
    assert time.monotonic() - started < 5
    assert api.count("list", "pods") == 1


def test_forbidden_at_start_is_retried_through_the_warm_up(api: FakeApi) -> None:
    # A starting API server denies until its RBAC caches have synced.
    api.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    api.fail_next("pods", FORBIDDEN, count=3, verb="list")
    r = reflector(api, startup_denial_timeout=30.0)

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)

    run_with(r, body)
    assert nodes(r) == {"node-a": "198.18.1.1"}
    assert r.stats.errors == {"403": 3}


def test_forbidden_past_the_timeout_is_fatal_naming_the_role(api: FakeApi) -> None:
    api.fail_next("pods", FORBIDDEN, count=1000, verb="list")
    r = reflector(api, startup_denial_timeout=0.6, retry_max_delay=10.0)
    started = time.monotonic()
    with pytest.raises(FatalApiError) as err:
        asyncio.run(asyncio.wait_for(r.run(), 10))
    # The last try comes at the deadline, not a (here up to 10 s) back-off after it.
    assert 0.6 <= time.monotonic() - started < 3
    assert api.count("list", "pods") >= 2
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
    api: FakeApi, name: str, group: str
) -> None:
    api.fail_next(name, FORBIDDEN, count=1000)
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
    api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    api.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    r = reflector(api)

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)
        api.fail_next("pods", FORBIDDEN, count=3, verb="watch")
        api.fail_next("pods", ApiError(500, "InternalError"), count=1, verb="watch")
        api.drop_watches()
        await until(lambda: r.stats.errors.get("403", 0) == 3 and r.stats.errors.get("500", 0) == 1)
        api.upsert("pods", pod("pm-b", "node-b", "198.18.1.2"))
        await until(lambda: "node-b" in nodes(r))

    with caplog.at_level(logging.WARNING):
        run_with(r, body)
    # Shorter than the window: a restart's warm-up, not worth a false "RBAC denies us".
    assert not any("RBAC denies us" in m for m in caplog.messages)
    assert nodes(r)["node-a"] == "198.18.1.1"


def test_lasting_denial_later_is_logged_once_per_streak(
    api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    api.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    r = reflector(api, startup_denial_timeout=0.3)

    async def denied(count: int) -> None:
        before = r.stats.errors.get("403", 0)
        api.fail_next("pods", FORBIDDEN, count=count, verb="watch")
        api.drop_watches()
        await until(lambda: r.stats.errors.get("403", 0) == before + count)
        await until(lambda: api.watch_count("pods") == 1)  # a success again

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


def test_silent_watch_is_abandoned_after_the_read_timeout(api: FakeApi) -> None:
    api.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    api.stall_next_watch("pods")
    r = reflector(api, request_timeout=1.0)

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)
        api.upsert("pods", pod("pm-b", "node-b", "198.18.1.2"))
        await until(lambda: "node-b" in nodes(r), timeout=15)

    run_with(r, body)
    assert r.stats.errors.get("connection", 0) >= 1


def test_malformed_objects_skipped_and_counted_never_remove_live(api: FakeApi) -> None:
    api.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    api.upsert("pods", {"metadata": {"namespace": NS, "labels": LABELS}})
    r = reflector(api)

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)
        assert r.stats.skipped.get("malformed") == 1
        # pm-a turns into garbage: keep what we knew
        api.upsert(
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
        )
        api.upsert(
            "pods",
            {
                "metadata": {"name": "pm-c", "namespace": NS, "labels": LABELS},
                "spec": {"nodeName": "node-c"},
                "status": {
                    "phase": "Running",
                    "podIPs": [{"ip": "not-an-ip"}, {"ip": "198.18.1.7"}],
                },
            },
        )
        await until(lambda: "node-c" in nodes(r))

    run_with(r, body)
    assert nodes(r)["node-c"] == "198.18.1.7"
    assert "node-a" in nodes(r)


# ----- early ends -----------------------------------------------------------------------


def test_ended_early() -> None:
    assert ended_early(0.01, 300, delivered=False)
    assert not ended_early(0.01, 300, delivered=True)  # it moved on: re-watch from there
    assert not ended_early(2.0, 300, delivered=False)
    assert not ended_early(0.5, 3, delivered=False)  # a short timeout is not "early"


def test_early_ending_watch_backs_off_and_reads_unhealthy(api: FakeApi) -> None:
    api.watches_end_at_once = True  # lists fine; every watch ends at once without an event

    def watches() -> int:
        return api.count("watch", "pods")

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
        assert EARLY_END_LIMIT <= watches() <= 12
        # (one watch may be between its call and its end right now)
        assert set(r.stats.restarts) == {"early_end"}
        assert watches() - 1 <= r.stats.restarts["early_end"] <= watches()
        assert not r.stats.healthy
        api.watches_end_at_once = False  # the server serves the watch again (bookmarks)
        await until(lambda: r.stats.healthy, timeout=5)
        served = watches()
        await asyncio.sleep(0.5)
        assert watches() == served

    run_with(r, body)
    assert "timeout" not in r.stats.restarts
