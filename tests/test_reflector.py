"""List/watch against the API fake, through the official client over a socket."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from exporter.config import KubernetesSettings
from exporter.discovery.api import Resource
from exporter.discovery.kubeapi import KubeApi
from exporter.discovery.objects import Peer, parse_pod
from exporter.discovery.reflector import FatalApiError, Reflector
from tests import kubefake_fixtures
from tests.kubefake import KubeFake
from tests.kubefake_fixtures import make_pod

kube = kubefake_fixtures.kube

NS = "monitoring"
SEL = "app.kubernetes.io/name=pingmesh-exporter"
LABELS = {"app.kubernetes.io/name": "pingmesh-exporter"}


def pod(name: str, node: str, ip: str, **kw: Any) -> dict[str, Any]:
    return make_pod(name, NS, node, [ip], ["198.19.0." + ip.rsplit(".", 1)[1]], LABELS, **kw)


def reflector(fake: KubeFake, **kw: Any) -> Reflector[Peer]:
    api = KubeApi(fake.client_configuration())
    timing = {"request_timeout": 5.0, "watch_timeout": 30.0, "retry_max_delay": 0.2} | kw
    return Reflector(api, Resource("pods", NS, SEL), parse_pod, lambda: None, **timing)


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def run_with(r: Reflector[Peer], body: Callable[[], Awaitable[None]]) -> None:
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
    assert all(rec.query.get("labelSelector") == SEL for rec in kube.requests
               if rec.resource == "pods")


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


@pytest.mark.parametrize("code", [401, 403])
def test_denied_at_start_is_fatal_with_remedy(kube: KubeFake, code: int) -> None:
    kube.fail_next("pods", code, verb="list")
    r = reflector(kube)
    with pytest.raises(FatalApiError) as err:
        asyncio.run(r.run())
    text = str(err.value)
    assert str(code) in text
    if code == 403:
        assert "get, list and watch on pods" in text and NS in text


def test_errors_later_are_counted_and_retried(kube: KubeFake,
                                              caplog: pytest.LogCaptureFixture) -> None:
    kube.upsert("pods", pod("pm-a", "node-a", "198.18.1.1"))
    r = reflector(kube)

    async def body() -> None:
        await asyncio.wait_for(r.synced.wait(), 10)
        kube.fail_next("pods", 403, count=3, verb="watch")
        kube.fail_next("pods", 500, count=1, verb="watch")
        kube.drop_watches()
        await until(lambda: r.stats.errors.get("403", 0) == 3
                    and r.stats.errors.get("500", 0) == 1)
        kube.upsert("pods", pod("pm-b", "node-b", "198.18.1.2"))
        await until(lambda: "node-b" in nodes(r))

    with caplog.at_level(logging.WARNING):
        run_with(r, body)
    assert sum("RBAC denies us" in m for m in caplog.messages) == 1  # once, not per retry
    assert nodes(r)["node-a"] == "198.18.1.1"


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
        kube.put_raw("pods", {"metadata": {"name": "pm-a", "namespace": NS, "labels": LABELS,
                                           "resourceVersion": "999999"},
                              "status": "garbage", "spec": []}, namespace=NS)
        kube.put_raw("pods", {"metadata": {"name": "pm-c", "namespace": NS, "labels": LABELS},
                              "spec": {"nodeName": "node-c"},
                              "status": {"phase": "Running",
                                         "podIPs": [{"ip": "not-an-ip"}, {"ip": "198.18.1.7"}]}},
                     namespace=NS)
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
