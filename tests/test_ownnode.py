"""/readyz on a cordoned node: the own Node's parse and the readiness it gives (pure), the
watch on the reflector (the in-memory Api, for denials a real server gives only with RBAC
changed under it), and the app's readiness with it. The real kube-apiserver's side (the field
selector, a cordon by PATCH) is tests/test_cluster_ownnode.py."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from exporter.config import KubernetesSettings, parse_settings
from exporter.discovery.api import ApiError
from exporter.discovery.objects import parse_node_schedule
from exporter.discovery.ownnode import OwnNode, cordon_readiness, own_node_resource
from exporter.metrics.discovery import OwnNodeCollector
from exporter.objects import NodeSchedule, Skip
from tests.support.fakeapi import FakeApi
from tests.support.kubeobjects import make_node
from tests.test_reflector import run_with

K = KubernetesSettings(
    node_name="node-a",
    namespace="pingmesh",
    request_timeout=5.0,
    watch_timeout=30.0,
    retry_max_delay=0.05,
    startup_denial_timeout=0.0,  # a denial is believed at once: it must still not be fatal
)


# ----- parse (pure) -------------------------------------------------------------------------


def test_parse_cordoned_and_schedulable() -> None:
    assert parse_node_schedule(make_node("n1", unschedulable=True)) == NodeSchedule("n1", True)
    assert parse_node_schedule(make_node("n1")) == NodeSchedule("n1", False)
    # The API omits a false field and an empty spec.
    assert parse_node_schedule({"metadata": {"name": "n1"}}) == NodeSchedule("n1", False)
    assert parse_node_schedule({"metadata": {"name": "n1"}, "spec": {}}) == NodeSchedule(
        "n1", False
    )


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"metadata": {}},
        {"metadata": {"name": ""}},
        {"metadata": {"name": "n1"}, "spec": []},
        {"metadata": {"name": "n1"}, "spec": {"unschedulable": "true"}},
        {"metadata": {"name": "n1"}, "spec": {"unschedulable": 1}},
        "not an object",
    ],
)
def test_parse_malformed_is_skipped(obj: Any) -> None:
    assert parse_node_schedule(obj) == Skip("malformed")


# ----- readiness (pure) ---------------------------------------------------------------------


def test_only_a_node_known_cordoned_is_unready() -> None:
    cordoned = cordon_readiness(NodeSchedule("node-a", True), "node-a")
    assert not cordoned.ready and "node-a is cordoned" in cordoned.why
    assert cordon_readiness(NodeSchedule("node-a", False), "node-a").ready
    unknown = cordon_readiness(None, "node-a")
    assert unknown.ready and "not known" in unknown.why


def test_the_watch_selects_the_own_node_on_the_server() -> None:
    res = own_node_resource("node-a")
    assert res.name == "nodes" and not res.metadata_only  # spec is not in metadata
    assert res.field_selector == "metadata.name=node-a"
    assert res.namespace is None and res.label_selector is None


# ----- the watch ----------------------------------------------------------------------------


async def until(cond: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def run_own(own: OwnNode, body: Any) -> None:
    # OwnNode.run is its reflector's run: the reflector tests' harness serves.
    run_with(own.reflector, body)


def test_cordon_and_uncordon_follow_the_watch() -> None:
    api = FakeApi(bookmark_interval=0.1)
    api.upsert("nodes", make_node("node-a"))
    api.upsert("nodes", make_node("node-b", unschedulable=True))  # another node's cordon
    own = OwnNode(K, api)

    async def body() -> None:
        await asyncio.wait_for(own.reflector.synced.wait(), 10)
        assert list(own.reflector.store) == ["node-a"]
        assert own.readiness().ready
        api.upsert("nodes", make_node("node-a", unschedulable=True))
        await until(lambda: not own.readiness().ready)
        api.upsert("nodes", make_node("node-a"))
        await until(lambda: own.readiness().ready)

    run_own(own, body)
    assert api.count("list", "nodes") == 1  # one list, then the watch followed
    assert own.reflector.name == "own_node"


def test_malformed_update_is_counted_and_keeps_the_last_state() -> None:
    api = FakeApi(bookmark_interval=0.1)
    api.upsert("nodes", make_node("node-a", unschedulable=True))
    own = OwnNode(K, api)

    async def body() -> None:
        await asyncio.wait_for(own.reflector.synced.wait(), 10)
        assert not own.readiness().ready
        api.upsert("nodes", {"metadata": {"name": "node-a"}, "spec": {"unschedulable": "yes"}})
        await until(lambda: own.reflector.stats.skipped["malformed"] == 1)
        assert not own.readiness().ready

    run_own(own, body)


def test_api_errors_never_flip_readiness_nor_stop_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = FakeApi(bookmark_interval=0.1)
    api.upsert("nodes", make_node("node-a"))
    # Denied at start for longer than the denial timeout: for the pods' watch that is fatal,
    # for this one it is logged and retried.
    api.fail_next("nodes", ApiError(403, "Forbidden", "denied"), count=3, verb="list")
    api.fail_next("nodes", ApiError(500, "InternalError"), count=2, verb="list")
    own = OwnNode(K, api)

    async def body() -> None:
        assert own.readiness().ready  # nothing known yet: ready
        await asyncio.wait_for(own.reflector.synced.wait(), 10)
        assert own.readiness().ready
        api.upsert("nodes", make_node("node-a", unschedulable=True))
        await until(lambda: not own.readiness().ready)
        api.down()  # the API server goes away: the last known state stands
        await until(lambda: own.reflector.stats.errors["connection"] >= 2)
        assert not own.readiness().ready
        api.up()
        api.upsert("nodes", make_node("node-a"))
        await until(lambda: own.readiness().ready)

    with caplog.at_level(logging.WARNING, logger="exporter.discovery.kubernetes"):
        run_own(own, body)
    assert own.reflector.stats.errors["403"] == 3 and own.reflector.stats.errors["500"] == 2
    assert any("RBAC denies us (403) on nodes" in r.getMessage() for r in caplog.records)


def test_deleted_node_reads_ready() -> None:
    api = FakeApi(bookmark_interval=0.1)
    api.upsert("nodes", make_node("node-a", unschedulable=True))
    own = OwnNode(K, api)

    async def body() -> None:
        await asyncio.wait_for(own.reflector.synced.wait(), 10)
        assert not own.readiness().ready
        api.delete("nodes", "", "node-a")
        await until(lambda: own.readiness().ready)

    run_own(own, body)


# ----- the flag -----------------------------------------------------------------------------


ENV = {"NODE_NAME": "node-a", "POD_NAMESPACE": "pingmesh"}


def test_flag_defaults_on_and_turns_off() -> None:
    on = parse_settings(["--discovery=kubernetes"], ENV)
    assert on.health.unready_when_cordoned
    off = parse_settings(["--discovery=kubernetes", "--health.unready-when-cordoned=false"], ENV)
    assert not off.health.unready_when_cordoned
    env = parse_settings(
        ["--discovery=kubernetes"], ENV | {"PINGMESH_HEALTH_UNREADY_WHEN_CORDONED": "false"}
    )
    assert not env.health.unready_when_cordoned


def test_bad_flag_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_settings(["--health.unready-when-cordoned=maybe"], ENV)
    assert exc.value.code == 2
    assert "--health.unready-when-cordoned" in capsys.readouterr().err


# ----- the gauge ----------------------------------------------------------------------------


def gauge(own: OwnNode) -> list[tuple[dict[str, str], float]]:
    [fam] = list(OwnNodeCollector(own).collect())
    assert fam.name == "pingmesh_node_unschedulable"
    return [(s.labels, s.value) for s in fam.samples]


def test_gauge_follows_the_watch_and_is_absent_while_unknown() -> None:
    api = FakeApi(bookmark_interval=0.1)
    api.upsert("nodes", make_node("node-a"))
    own = OwnNode(K, api)
    assert gauge(own) == []  # not listed yet

    async def body() -> None:
        await asyncio.wait_for(own.reflector.synced.wait(), 10)
        assert gauge(own) == [({"source_node": "node-a"}, 0.0)]
        api.upsert("nodes", make_node("node-a", unschedulable=True))
        await until(lambda: gauge(own) == [({"source_node": "node-a"}, 1.0)])
        api.delete("nodes", "", "node-a")
        await until(lambda: gauge(own) == [])  # gone: no stale series

    run_own(own, body)
