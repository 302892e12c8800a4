"""The API-server fake against the official ``kubernetes`` client, over a socket.

These tests pin down both the fake's protocol behaviour and how the client
library reacts to it (which exception surfaces where), since exporter code
will be written against exactly those reactions.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import (
    ApiException,
    ForbiddenException,
    NotFoundException,
    ServiceException,
    UnauthorizedException,
)

from tests import kubefake_fixtures
from tests.kubefake import FieldSelector, KubeFake, LabelSelector, SelectorError
from tests.kubefake_fixtures import (
    make_endpoint,
    make_endpointslice,
    make_node,
    make_pod,
    make_service,
)

# Bound here so pytest finds the fixture without a conftest (registering the
# module through pytest_plugins after importing the builders would skip
# assertion rewriting for it and warn).
kube = kubefake_fixtures.kube

pytestmark = pytest.mark.timeout(60)

METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA_ONE = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"

Events = list[dict[str, Any]]


@pytest.fixture
def api_client(kube: KubeFake) -> Iterator[client.ApiClient]:
    api = client.ApiClient(kube.client_configuration())
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


def raw_json(resp: Any) -> dict[str, Any]:
    """Body of a ``_preload_content=False`` response (a urllib3 response)."""
    assert isinstance(resp, urllib3.HTTPResponse)
    return cast(dict[str, Any], json.loads(resp.data))


def status_of(exc: ApiException) -> dict[str, Any]:
    """The Status object an ApiException carries as its body."""
    assert exc.body is not None
    return cast(dict[str, Any], json.loads(exc.body))


def names(items: list[Any]) -> list[str]:
    out = []
    for item in items:
        assert item.metadata is not None and item.metadata.name is not None
        out.append(item.metadata.name)
    return sorted(out)


def watch_events(
    func: Callable[..., Any],
    *args: Any,
    stop: Callable[[Events], bool] | None = None,
    **kwargs: Any,
) -> Events:
    """Run ``Watch().stream`` until it ends or ``stop(events_so_far)`` is true."""
    w = watch.Watch()
    events: Events = []
    for ev in w.stream(func, *args, **kwargs):
        events.append(ev)
        if stop is not None and stop(events):
            w.stop()
    return events


def on_bookmark(events: Events) -> bool:
    return bool(events[-1]["type"] == "BOOKMARK")


def bookmark_after(event_type: str) -> Callable[[Events], bool]:
    """Stop at the first bookmark that follows an event of ``event_type``.

    Bookmarks are periodic, so one may also arrive before a background
    writer has got going; stopping at the first one would race.
    """
    return lambda events: on_bookmark(events) and event_type in kinds(events)


def without_bookmarks(events: Events) -> Events:
    return [e for e in events if e["type"] != "BOOKMARK"]


def after(n: int) -> Callable[[Events], bool]:
    return lambda events: len(events) >= n


def kinds(events: Events) -> list[str]:
    return [str(e["type"]) for e in events]


def in_background(fn: Callable[[], object]) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def seed_pods(kube: KubeFake) -> None:
    kube.upsert("pods", make_pod("a", labels={"app": "pingmesh", "tier": "x"}, ips=["10.0.0.1"]))
    kube.upsert("pods", make_pod("b", labels={"app": "pingmesh", "tier": "y", "canary": "1"}))
    kube.upsert("pods", make_pod("c", labels={"app": "other"}, node="node-2", phase="Pending"))
    kube.upsert("pods", make_pod("d", labels={}, node="node-2"))
    kube.upsert("pods", make_pod("e", namespace="kube-system", labels={"app": "pingmesh"}))


# -- LIST ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", ["a", "b", "c", "d"]),
        ("app=pingmesh", ["a", "b"]),
        ("app==pingmesh", ["a", "b"]),
        ("app!=pingmesh", ["c", "d"]),
        ("tier in (x, z)", ["a"]),
        ("tier notin (x)", ["b", "c", "d"]),
        ("canary", ["b"]),
        ("!canary", ["a", "c", "d"]),
        ("app=pingmesh,!canary", ["a"]),
        ("app in (pingmesh,other),tier notin (y)", ["a", "c"]),
    ],
)
def test_typed_list_honours_label_selectors(
    kube: KubeFake, core: client.CoreV1Api, selector: str, expected: list[str]
) -> None:
    seed_pods(kube)
    pods = core.list_namespaced_pod("default", label_selector=selector)
    assert isinstance(pods, client.V1PodList)
    assert all(isinstance(p, client.V1Pod) for p in pods.items)
    assert names(pods.items) == expected
    assert pods.metadata is not None
    assert pods.metadata.resource_version == kube.resource_version


def test_typed_list_items_are_fully_deserialized(kube: KubeFake, core: client.CoreV1Api) -> None:
    kube.upsert(
        "pods",
        make_pod("p", ips=["10.1.0.5", "fd00::5"], host_ips=["192.168.1.2"], labels={"a": "b"}),
    )
    (pod,) = core.list_namespaced_pod("default").items
    assert pod.status is not None and pod.spec is not None and pod.metadata is not None
    assert [ip.ip for ip in pod.status.pod_ips or []] == ["10.1.0.5", "fd00::5"]
    assert [ip.ip for ip in pod.status.host_ips or []] == ["192.168.1.2"]
    assert pod.spec.node_name == "node-1"
    ready = [c for c in pod.status.conditions or [] if c.type == "Ready"]
    assert ready and ready[0].status == "True"
    assert pod.metadata.resource_version and pod.metadata.uid and pod.metadata.creation_timestamp


def test_invalid_label_selector_is_a_400(kube: KubeFake, core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_pod("default", label_selector="app in (x")
    assert exc.value.status == 400


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("spec.nodeName=node-2", ["c", "d"]),
        ("status.phase!=Running", ["c"]),
        ("metadata.name=a", ["a"]),
        ("metadata.namespace=kube-system", ["e"]),
        ("spec.nodeName=node-1,status.phase=Running", ["a", "b", "e"]),
    ],
)
def test_field_selectors(
    kube: KubeFake, core: client.CoreV1Api, selector: str, expected: list[str]
) -> None:
    seed_pods(kube)
    assert names(core.list_pod_for_all_namespaces(field_selector=selector).items) == expected


def test_unsupported_field_selector_is_rejected(kube: KubeFake, core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_pod("default", field_selector="spec.containers=x")
    assert exc.value.status == 400
    assert "field label not supported" in status_of(exc.value)["message"]


def test_nodes_services_endpointslices_and_gets(
    kube: KubeFake, core: client.CoreV1Api, api_client: client.ApiClient
) -> None:
    kube.upsert("nodes", make_node("n1", internal_ips=["192.168.0.1"], labels={"zone": "a"}))
    kube.upsert("nodes", make_node("n2", internal_ips=["192.168.0.2", "fd00::2"]))
    kube.upsert("services", make_service("svc", selector={"app": "pingmesh"}))
    kube.upsert(
        "endpointslices",
        make_endpointslice(
            "svc-abcde", service="svc", endpoints=[make_endpoint("10.0.0.1", node="n1", pod="a")]
        ),
    )
    kube.upsert("pods", make_pod("a"))

    assert names(core.list_node(label_selector="zone=a").items) == ["n1"]
    n2 = core.read_node("n2")
    assert n2.status is not None
    internal = [a.address for a in n2.status.addresses or [] if a.type == "InternalIP"]
    assert internal == ["192.168.0.2", "fd00::2"]
    assert names(core.list_namespaced_service("default").items) == ["svc"]

    disc = client.DiscoveryV1Api(api_client)
    slices = disc.list_namespaced_endpoint_slice(
        "default", label_selector="kubernetes.io/service-name=svc"
    )
    assert isinstance(slices.items[0], client.V1EndpointSlice)
    assert slices.items[0].endpoints is not None
    assert slices.items[0].endpoints[0].addresses == ["10.0.0.1"]
    assert len(disc.list_endpoint_slice_for_all_namespaces().items) == 1

    pod = core.read_namespaced_pod("a", "default")
    assert pod.metadata is not None and pod.metadata.name == "a"
    with pytest.raises(NotFoundException) as exc:
        core.read_namespaced_pod("missing", "default")
    assert status_of(exc.value)["reason"] == "NotFound"
    assert kube.count("get", "pods") == 2


def test_raw_list_with_preload_content_false(kube: KubeFake, core: client.CoreV1Api) -> None:
    seed_pods(kube)
    body = raw_json(core.list_namespaced_pod("default", _preload_content=False))
    assert body["kind"] == "PodList" and body["apiVersion"] == "v1"
    assert body["metadata"]["resourceVersion"] == kube.resource_version
    assert len(body["items"]) == 4
    # Like the real server, items of a typed list carry no kind/apiVersion.
    assert "kind" not in body["items"][0]
    assert body["items"][0]["status"]["podIPs"] == [{"ip": "10.0.0.1"}]


def test_pagination_is_a_consistent_snapshot(kube: KubeFake, core: client.CoreV1Api) -> None:
    kube.upsert_many("pods", [make_pod(f"p{i:02d}") for i in range(25)])
    first = core.list_namespaced_pod("default", limit=10)
    assert first.metadata is not None
    assert len(first.items) == 10 and first.metadata.remaining_item_count == 15
    kube.upsert("pods", make_pod("p99"))  # after the snapshot: must not appear
    seen = names(first.items)
    token = first.metadata.var_continue
    while token:
        page = core.list_namespaced_pod("default", limit=10, _continue=token)
        assert page.metadata is not None
        assert page.metadata.resource_version == first.metadata.resource_version
        seen += names(page.items)
        token = page.metadata.var_continue
    assert seen == [f"p{i:02d}" for i in range(25)]

    again = core.list_namespaced_pod("default", limit=5)
    assert again.metadata is not None
    kube.compact()
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_pod("default", limit=5, _continue=again.metadata.var_continue)
    assert exc.value.status == 410


# -- metadata-only -----------------------------------------------------------


def test_metadata_only_list_raw_and_typed(
    kube: KubeFake, core: client.CoreV1Api, api_client: client.ApiClient
) -> None:
    kube.upsert("nodes", make_node("n1", internal_ips=["192.168.0.1"]))
    kube.upsert("nodes", make_node("n2", internal_ips=["192.168.0.2"]))

    raw = raw_json(core.list_node(_headers={"Accept": METADATA_LIST}, _preload_content=False))
    assert raw["kind"] == "PartialObjectMetadataList"
    assert raw["apiVersion"] == "meta.k8s.io/v1"
    assert raw["metadata"]["resourceVersion"] == kube.resource_version
    assert [i["kind"] for i in raw["items"]] == ["PartialObjectMetadata"] * 2
    assert set(raw["items"][0]) == {"kind", "apiVersion", "metadata"}
    assert raw["items"][0]["metadata"]["labels"]["kubernetes.io/hostname"] == "n1"

    # The client has no PartialObjectMetadata model; the typed call still
    # works because only metadata is populated: items come back as V1Node
    # with spec/status None and kind "PartialObjectMetadata".
    typed = core.list_node(_headers={"Accept": METADATA_LIST})
    assert names(typed.items) == ["n1", "n2"]
    assert typed.items[0].kind == "PartialObjectMetadata" and typed.items[0].status is None

    # The lower-level route: build the request and deserialize it yourself.
    req = api_client.param_serialize(
        "GET",
        "/api/v1/nodes",
        header_params={"Accept": METADATA_LIST},
        auth_settings=["BearerToken"],
    )
    resp = api_client.call_api(*req)
    resp.read()
    data: Any = api_client.response_deserialize(resp, {"200": "V1NodeList"}).data
    assert names(data.items) == ["n1", "n2"]

    one = raw_json(core.read_node("n1", _headers={"Accept": METADATA_ONE}, _preload_content=False))
    assert one["kind"] == "PartialObjectMetadata" and "status" not in one

    assert kube.count("list", "nodes", metadata_only=True) == 3
    assert kube.count("get", "nodes", metadata_only=True) == 1
    assert raw_json(core.list_node(_preload_content=False))["kind"] == "NodeList"
    meta_rec = kube.filter_requests("list", "nodes", metadata_only=True)[0]
    full_rec = kube.filter_requests("list", "nodes", metadata_only=False)[0]
    assert meta_rec.bytes_sent < full_rec.bytes_sent


def test_metadata_only_watch(kube: KubeFake, core: client.CoreV1Api) -> None:
    kube.upsert("nodes", make_node("n1", internal_ips=["192.168.0.1"]))
    rv = kube.resource_version
    in_background(lambda: kube.wait_for_watches(1) and kube.upsert("nodes", make_node("n2")))
    events = watch_events(
        core.list_node,
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=5,
        _headers={"Accept": METADATA_ONE},
        stop=bookmark_after("ADDED"),
    )
    assert kinds(without_bookmarks(events)) == ["ADDED"]
    added = without_bookmarks(events)[0]["raw_object"]
    assert added["kind"] == "PartialObjectMetadata"
    assert set(added) == {"kind", "apiVersion", "metadata"}
    assert events[-1]["raw_object"]["kind"] == "PartialObjectMetadata"
    assert kube.filter_requests("watch", "nodes")[0].metadata_only


def test_metadata_watch_asking_for_a_list_ends_at_the_first_event(
    kube: KubeFake, core: client.CoreV1Api
) -> None:
    # As a real API server: 200, then a clean end instead of the first event.
    kube.upsert("nodes", make_node("n1"))
    rv = kube.resource_version
    kube.upsert("nodes", make_node("n2"))
    started = time.monotonic()
    events = watch_events(
        core.list_node,
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=5,
        _headers={"Accept": METADATA_LIST},
    )
    assert events == [] and time.monotonic() - started < 2
    assert kube.filter_requests("watch", "nodes")[0].status == 200


# -- WATCH -------------------------------------------------------------------


def test_watch_streams_added_modified_deleted_and_bookmarks(
    kube: KubeFake, core: client.CoreV1Api
) -> None:
    kube.upsert("pods", make_pod("a", labels={"v": "1"}))
    kube.upsert("pods", make_pod("b"))
    listed = core.list_namespaced_pod("default")
    assert listed.metadata is not None
    rv = listed.metadata.resource_version

    def mutate() -> None:
        kube.wait_for_watches(1)
        kube.upsert("pods", make_pod("c"))
        kube.upsert("pods", make_pod("a", labels={"v": "2"}))
        kube.delete("pods", "default", "b")

    in_background(mutate)
    w = watch.Watch()
    events: Events = []
    for ev in w.stream(
        core.list_namespaced_pod,
        "default",
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=10,
        _request_timeout=(2, 5),
    ):
        events.append(ev)
        if bookmark_after("DELETED")(events):
            w.stop()

    changes = without_bookmarks(events)
    assert [(e["type"], e["raw_object"]["metadata"]["name"]) for e in changes] == [
        ("ADDED", "c"),
        ("MODIFIED", "a"),
        ("DELETED", "b"),
    ]
    modified = changes[1]["object"]
    assert isinstance(modified, client.V1Pod)
    assert modified.metadata is not None and modified.metadata.labels == {"v": "2"}
    assert modified.spec is not None and modified.spec.containers  # the full object
    rvs = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and rvs[-1] == int(kube.resource_version)
    assert events[-1]["raw_object"] == {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": kube.resource_version},
    }
    # Bookmarks feed the Watch's resume point.
    assert w.resource_version == kube.resource_version


def test_watch_timeout_seconds_ends_stream_cleanly(kube: KubeFake, core: client.CoreV1Api) -> None:
    started = time.monotonic()
    events = watch_events(
        core.list_namespaced_pod,
        "default",
        resource_version=kube.resource_version,
        timeout_seconds=1,
    )
    assert events == []
    assert 0.9 <= time.monotonic() - started < 3
    assert kube.watch_count() == 0


def test_watch_selector_transitions_are_added_and_deleted(
    kube: KubeFake, core: client.CoreV1Api
) -> None:
    kube.upsert("pods", make_pod("a", labels={"app": "pingmesh"}))
    rv = kube.resource_version

    def mutate() -> None:
        kube.wait_for_watches(1)
        kube.upsert("pods", make_pod("a", labels={"app": "gone"}))  # leaves the selector
        kube.upsert("pods", make_pod("z", labels={"app": "other"}))  # never matches
        kube.upsert("pods", make_pod("a", labels={"app": "pingmesh"}))  # comes back
        kube.upsert("pods", make_pod("a", labels={"app": "pingmesh", "x": "y"}))

    in_background(mutate)
    events = watch_events(
        core.list_namespaced_pod,
        "default",
        label_selector="app=pingmesh",
        resource_version=rv,
        timeout_seconds=5,
        stop=after(3),
    )
    assert [(e["type"], e["raw_object"]["metadata"]["labels"]) for e in events] == [
        ("DELETED", {"app": "pingmesh"}),  # the last state that matched
        ("ADDED", {"app": "pingmesh"}),
        ("MODIFIED", {"app": "pingmesh", "x": "y"}),
    ]
    # The DELETED carries the old content but the RV of the change.
    assert int(events[0]["raw_object"]["metadata"]["resourceVersion"]) == int(rv) + 1


def test_watch_without_resource_version_starts_with_current_state(
    kube: KubeFake, core: client.CoreV1Api
) -> None:
    seed_pods(kube)
    for rv in (None, "0"):
        kwargs: dict[str, Any] = {} if rv is None else {"resource_version": rv}
        events = watch_events(
            core.list_namespaced_pod,
            "default",
            label_selector="app=pingmesh",
            allow_watch_bookmarks=True,
            timeout_seconds=5,
            stop=on_bookmark,
            **kwargs,
        )
        assert [(e["type"], e["raw_object"]["metadata"].get("name")) for e in events] == [
            ("ADDED", "a"),
            ("ADDED", "b"),
            ("BOOKMARK", None),
        ]


def test_send_initial_events_ends_with_annotated_bookmark(
    kube: KubeFake, core: client.CoreV1Api
) -> None:
    seed_pods(kube)
    events = watch_events(
        core.list_namespaced_pod,
        "default",
        send_initial_events=True,
        resource_version_match="NotOlderThan",
        allow_watch_bookmarks=True,
        timeout_seconds=5,
        stop=on_bookmark,
    )
    assert kinds(events) == ["ADDED"] * 4 + ["BOOKMARK"]
    annotations = events[-1]["raw_object"]["metadata"]["annotations"]
    assert annotations == {"k8s.io/initial-events-end": "true"}


def test_watch_replays_events_since_resource_version(
    kube: KubeFake, core: client.CoreV1Api
) -> None:
    kube.upsert("pods", make_pod("a"))
    rv = kube.resource_version
    kube.upsert("pods", make_pod("b"))
    kube.upsert("nodes", make_node("n1"))  # other resources share the RV sequence
    kube.delete("pods", "default", "a")
    events = watch_events(
        core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=1
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "b"),
        ("DELETED", "a"),
    ]


def test_bookmarks_carry_progress_from_other_resources(
    kube: KubeFake, core: client.CoreV1Api
) -> None:
    kube.upsert("pods", make_pod("a"))
    rv = kube.resource_version
    in_background(lambda: kube.wait_for_watches(1) and kube.upsert("nodes", make_node("n")))
    events = watch_events(
        core.list_namespaced_pod,
        "default",
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=5,
        stop=lambda evs: evs[-1]["raw_object"]["metadata"]["resourceVersion"] != rv,
    )
    assert kinds(events)[-1] == "BOOKMARK"
    bookmark_rv = events[-1]["raw_object"]["metadata"]["resourceVersion"]
    assert bookmark_rv == kube.resource_version
    # Resuming from a bookmark survives a compaction that an older RV would not.
    kube.compact()
    resumed = watch_events(
        core.list_namespaced_pod,
        "default",
        resource_version=bookmark_rv,
        allow_watch_bookmarks=True,
        timeout_seconds=5,
        stop=on_bookmark,
    )
    assert kinds(resumed) == ["BOOKMARK"]


def test_watch_from_compacted_rv_raises_410_immediately_with_timeout(
    kube: KubeFake, core: client.CoreV1Api
) -> None:
    kube.upsert("pods", make_pod("a"))
    stale = kube.resource_version
    kube.upsert("pods", make_pod("b"))
    kube.compact()
    with pytest.raises(ApiException) as exc:
        watch_events(core.list_namespaced_pod, "default", resource_version=stale, timeout_seconds=5)
    assert exc.value.status == 410
    assert exc.value.reason == f"Expired: too old resource version: {stale} ({int(stale) + 1})"
    # With timeout_seconds the client never retries.
    assert kube.count("watch", "pods") == 1


def test_watch_from_compacted_rv_retries_once_then_raises(
    kube: KubeFake, core: client.CoreV1Api
) -> None:
    kube.upsert("pods", make_pod("a"))
    stale = kube.resource_version
    kube.upsert("pods", make_pod("b"))
    kube.compact()
    with pytest.raises(ApiException) as exc:
        watch_events(core.list_namespaced_pod, "default", resource_version=stale)
    assert exc.value.status == 410
    # Without timeout_seconds the client retries once, with the same stale RV.
    watches = kube.filter_requests("watch", "pods")
    assert [r.query["resourceVersion"] for r in watches] == [stale, stale]


def test_history_limit_trims_like_etcd_compaction() -> None:
    with KubeFake(history_limit=10) as small, client.ApiClient(small.client_configuration()) as ac:
        api = client.CoreV1Api(ac)
        small.upsert("pods", make_pod("first"))
        early = small.resource_version
        small.upsert_many("pods", [make_pod(f"p{i}") for i in range(30)])
        with pytest.raises(ApiException) as exc:
            watch_events(
                api.list_namespaced_pod, "default", resource_version=early, timeout_seconds=1
            )
        assert exc.value.status == 410
        recent = str(int(small.resource_version) - 3)
        events = watch_events(
            api.list_namespaced_pod,
            "default",
            resource_version=recent,
            timeout_seconds=5,
            stop=after(3),
        )
        assert kinds(events) == ["ADDED"] * 3


def test_watch_fan_out_to_several_watchers(kube: KubeFake, core: client.CoreV1Api) -> None:
    kube.upsert_many("pods", [make_pod(f"p{i}") for i in range(50)])
    rv = kube.resource_version
    counts: dict[int, int] = {}

    def consume(i: int) -> None:
        events = watch_events(
            core.list_pod_for_all_namespaces,
            resource_version=rv,
            timeout_seconds=10,
            stop=after(50),
        )
        counts[i] = sum(1 for e in events if e["type"] == "MODIFIED")

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    assert kube.wait_for_watches(4)
    kube.upsert_many("pods", [make_pod(f"p{i}", labels={"gen": "2"}) for i in range(50)])
    for t in threads:
        t.join(10)
    assert counts == {0: 50, 1: 50, 2: 50, 3: 50}


# -- faults ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "exc_type", "reason"),
    [
        (401, UnauthorizedException, "Unauthorized"),
        (403, ForbiddenException, "Forbidden"),
        (410, ApiException, "Expired"),
        (500, ServiceException, "InternalError"),
        (503, ServiceException, "ServiceUnavailable"),
    ],
)
def test_fail_next_list(
    kube: KubeFake,
    core: client.CoreV1Api,
    code: int,
    exc_type: type[ApiException],
    reason: str,
) -> None:
    kube.fail_next("pods", code, verb="list")
    with pytest.raises(exc_type) as exc:
        core.list_namespaced_pod("probe")
    assert exc.value.status == code
    status = status_of(exc.value)
    assert status["kind"] == "Status" and status["code"] == code and status["reason"] == reason
    if code == 403:
        assert status["message"] == (
            'pods is forbidden: User "system:serviceaccount:default:default" cannot list '
            'resource "pods" in API group "" in the namespace "probe"'
        )
    core.list_namespaced_pod("probe")  # the fault was used up
    assert kube.count("list", "pods", status=code) == 1


def test_fail_next_count_and_verb_filter(kube: KubeFake, core: client.CoreV1Api) -> None:
    kube.fail_next("pods", 500, count=2, verb="watch")
    core.list_namespaced_pod("default")  # lists are unaffected
    for _ in range(2):
        with pytest.raises(ServiceException):
            watch_events(core.list_namespaced_pod, "default", timeout_seconds=1)
    events = watch_events(
        core.list_namespaced_pod,
        "default",
        allow_watch_bookmarks=True,
        timeout_seconds=5,
        stop=on_bookmark,
    )
    assert kinds(events) == ["BOOKMARK"]


def test_fail_next_watch_403_and_410(kube: KubeFake, core: client.CoreV1Api) -> None:
    kube.fail_next("pods", 403, verb="watch")
    with pytest.raises(ForbiddenException) as forbidden:
        watch_events(core.list_namespaced_pod, "default", timeout_seconds=1)
    assert "cannot watch resource" in status_of(forbidden.value)["message"]

    # A 410 on a watch comes as HTTP 200 + one ERROR event, like the server's.
    kube.fail_next("pods", 410, verb="watch")
    with pytest.raises(ApiException) as gone:
        watch_events(core.list_namespaced_pod, "default", resource_version="1", timeout_seconds=1)
    assert gone.value.status == 410
    assert kube.filter_requests("watch", "pods")[-1].status == 200


def test_429_with_retry_after_is_retried_by_urllib3(kube: KubeFake, core: client.CoreV1Api) -> None:
    kube.fail_next("pods", 429, retry_after=0)
    assert core.list_namespaced_pod("default").items == []
    assert [r.status for r in kube.filter_requests("list", "pods")] == [429, 200]


def test_require_token() -> None:
    with KubeFake(require_token="abc") as fake:
        bad = client.CoreV1Api(client.ApiClient(fake.client_configuration(token="nope")))
        with pytest.raises(UnauthorizedException):
            bad.list_node()
        good = client.CoreV1Api(client.ApiClient(fake.client_configuration(token="abc")))
        assert good.list_node().items == []
        assert [r.headers["authorization"] for r in fake.requests] == ["Bearer nope", "Bearer abc"]


def test_drop_watches_breaks_the_stream(kube: KubeFake, core: client.CoreV1Api) -> None:
    kube.upsert("pods", make_pod("a"))
    events: list[str] = []
    with pytest.raises(urllib3.exceptions.ProtocolError, match="Response ended prematurely"):
        for ev in watch.Watch().stream(core.list_namespaced_pod, "default", timeout_seconds=30):
            events.append(ev["type"])
            assert kube.drop_watches() == 1
    assert events == ["ADDED"]
    assert kube.watch_count() == 0
    # The connection pool recovers: the next call works.
    assert names(core.list_namespaced_pod("default").items) == ["a"]


def test_stop_and_start_on_the_same_port(kube: KubeFake, core: client.CoreV1Api) -> None:
    kube.upsert("pods", make_pod("a"))
    port = kube.port
    outcome: list[BaseException] = []

    def watch_until_cut() -> None:
        try:
            watch_events(core.list_namespaced_pod, "default", timeout_seconds=30)
        except Exception as exc:
            outcome.append(exc)

    t = in_background(watch_until_cut)
    assert kube.wait_for_watches(1)
    kube.stop()
    t.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], urllib3.exceptions.ProtocolError)

    with pytest.raises(urllib3.exceptions.MaxRetryError) as exc:
        core.list_namespaced_pod("default")
    assert isinstance(exc.value.reason, urllib3.exceptions.NewConnectionError)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()

    kube.upsert("pods", make_pod("b"))  # the store lives on while the server is down
    kube.start()
    assert kube.port == port
    assert names(core.list_namespaced_pod("default").items) == ["a", "b"]


def test_hang_next_watch_after_headers_hits_read_timeout(
    kube: KubeFake, core: client.CoreV1Api
) -> None:
    kube.hang_next_watch("pods")
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        watch_events(
            core.list_namespaced_pod, "default", timeout_seconds=30, _request_timeout=(1, 0.3)
        )
    assert time.monotonic() - started < 2
    assert kube.count("watch", "pods") == 1  # mid-body timeouts are not retried
    events = watch_events(
        core.list_namespaced_pod,
        "default",
        allow_watch_bookmarks=True,
        timeout_seconds=5,
        stop=on_bookmark,
    )
    assert kinds(events) == ["BOOKMARK"]


def test_hang_before_headers_is_retried_by_urllib3(kube: KubeFake, core: client.CoreV1Api) -> None:
    kube.hang_next_watch("pods", count=4, send_headers=False)
    with pytest.raises(urllib3.exceptions.MaxRetryError) as exc:
        watch_events(
            core.list_namespaced_pod, "default", timeout_seconds=30, _request_timeout=(1, 0.2)
        )
    assert isinstance(exc.value.reason, urllib3.exceptions.ReadTimeoutError)
    assert kube.count("watch", "pods") == 4  # urllib3's default Retry: 1 try + 3 retries


def test_single_request_timeout_is_an_idle_timeout_on_streams(
    kube: KubeFake, core: client.CoreV1Api
) -> None:
    # Bookmarks every 0.2 s keep a stream with a 0.7 s "total" timeout alive
    # for longer than that: urllib3 applies it per socket read.
    started = time.monotonic()
    events = watch_events(
        core.list_namespaced_pod,
        "default",
        resource_version=kube.resource_version,
        allow_watch_bookmarks=True,
        timeout_seconds=1,
        _request_timeout=0.7,
    )
    assert time.monotonic() - started >= 0.95
    assert events and set(kinds(events)) == {"BOOKMARK"}


# -- malformed objects -----------------------------------------------------------


def test_malformed_objects_are_served_as_is(kube: KubeFake, core: client.CoreV1Api) -> None:
    kube.upsert("pods", make_pod("good", ips=["10.0.0.1"]))
    no_status = {"metadata": {"name": "no-status", "namespace": "default"}, "spec": {}}
    bad_ips = {
        "metadata": {"name": "bad-ips", "namespace": "default"},
        "spec": {"containers": [{"name": "c"}]},
        "status": {"podIPs": ["10.0.0.9", {"ip": "not-an-ip"}], "hostIPs": "garbage"},
    }
    kube.put_raw("pods", no_status)
    kube.put_raw("pods", bad_ips)

    items = raw_json(core.list_namespaced_pod("default", _preload_content=False))["items"]
    assert [i["metadata"]["name"] for i in items] == ["bad-ips", "good", "no-status"]
    assert items[0] == bad_ips and items[2] == no_status  # verbatim, unstamped

    # The typed client validates with pydantic: one bad item fails the whole
    # list with a pydantic ValidationError (a ValueError), not ApiException.
    with pytest.raises(ValueError, match="validation error"):
        core.list_namespaced_pod("default")

    events = watch_events(
        core.list_namespaced_pod, "default", timeout_seconds=5, deserialize=False, stop=after(3)
    )
    assert [e["object"]["metadata"]["name"] for e in events] == ["bad-ips", "good", "no-status"]


# -- plumbing --------------------------------------------------------------------


def test_request_log(kube: KubeFake, core: client.CoreV1Api) -> None:
    seed_pods(kube)
    core.list_namespaced_pod("default", label_selector="app=pingmesh")
    core.list_node(_headers={"Accept": METADATA_LIST})
    watch_events(core.list_namespaced_pod, "default", timeout_seconds=5, stop=after(4))
    assert kube.count("list", "pods") == 1
    assert kube.count("list", "nodes", metadata_only=True) == 1
    assert kube.count("watch") == 1
    rec = kube.filter_requests("list", "pods")[0]
    assert rec.path == "/api/v1/namespaces/default/pods"
    assert rec.namespace == "default" and rec.method == "GET" and rec.status == 200
    assert rec.query == {"labelSelector": "app=pingmesh"}
    assert rec.bytes_sent > 0 and rec.duration is not None
    watch_rec = kube.filter_requests("watch")[0]
    assert watch_rec.query["watch"] == "true" and watch_rec.bytes_sent > 0
    assert kube.bytes_sent() == sum(r.bytes_sent for r in kube.requests)
    kube.clear_log()
    assert kube.requests == []
    assert kube.server_errors == []


def test_kubeconfig_with_the_official_loader(kube: KubeFake, tmp_path: Path) -> None:
    path = kube.kubeconfig(tmp_path / "kubeconfig", token="t0ken")
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=cfg)
    assert cfg.host == kube.url
    with client.ApiClient(cfg) as api_client:
        assert client.CoreV1Api(api_client).list_node().items == []
    assert kube.requests[-1].headers["authorization"] == "Bearer t0ken"


def test_discovery_endpoints(kube: KubeFake, api_client: client.ApiClient) -> None:
    version = client.VersionApi(api_client).get_code()
    assert version.major == "1" and version.git_version.startswith("v1.")
    assert client.CoreApi(api_client).get_api_versions().versions == ["v1"]
    groups = client.ApisApi(api_client).get_api_versions().groups
    assert [g.name for g in groups] == ["discovery.k8s.io"]
    resources = client.CoreV1Api(api_client).get_api_resources().resources
    assert {r.name for r in resources} == {"pods", "nodes", "services"}
    assert kube.count("discovery") == 4


def test_context_manager_closes_everything() -> None:
    with KubeFake() as fake:
        port = fake.port
        api = client.CoreV1Api(client.ApiClient(fake.client_configuration()))
        api.list_node()  # leaves a pooled keep-alive connection behind
        assert fake.running
    assert not fake.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with pytest.raises(RuntimeError):
        fake.start()


def test_scale_5000_pods(kube: KubeFake, core: client.CoreV1Api) -> None:
    kube.upsert_many(
        "pods",
        (
            make_pod(
                f"pod-{i:05d}",
                namespace=f"ns-{i % 20}",
                node=f"node-{i % 500}",
                ips=[f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"],
                host_ips=[f"192.168.{i % 500 // 256}.{i % 500 % 256}"],
                labels={"app": "pingmesh"},
            )
            for i in range(5000)
        ),
    )
    started = time.monotonic()
    body = raw_json(core.list_pod_for_all_namespaces(_preload_content=False))
    elapsed = time.monotonic() - started
    assert len(body["items"]) == 5000
    assert elapsed < 1.0, f"LIST of 5000 pods took {elapsed:.2f}s"
    meta = raw_json(
        core.list_pod_for_all_namespaces(_headers={"Accept": METADATA_LIST}, _preload_content=False)
    )
    assert len(meta["items"]) == 5000
    on_node = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-7")
    assert len(on_node.items) == 10


# -- selector parsing (no server) ----------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("a=b", {"a": "b"}, True),
        ("a = b", {"a": "b"}, True),
        ("a!=b", {}, True),
        ("a notin (b)", {}, True),
        ("a in (b)", {}, False),
        ("example.com/role in (x,y),tier", {"example.com/role": "y", "tier": ""}, True),
        ("a>3", {"a": "5"}, True),
        ("a<3", {"a": "5"}, False),
        ("!a", {"a": "1"}, False),
        ("a=", {"a": ""}, True),
    ],
)
def test_label_selector_semantics(selector: str, labels: dict[str, str], matches: bool) -> None:
    assert LabelSelector.parse(selector).matches(labels) is matches


@pytest.mark.parametrize("selector", ["a in (b", "=b", "a,,b", "a in b", "a>x", "a b"])
def test_label_selector_rejects_garbage(selector: str) -> None:
    with pytest.raises(SelectorError):
        LabelSelector.parse(selector)


def test_field_selector_parsing() -> None:
    pods = KubeFake().types["pods"]
    with pytest.raises(SelectorError):
        FieldSelector.parse("spec.containers=x", pods)
    # An omitted boolean compares as "false", as on a real server.
    sel = FieldSelector.parse("spec.hostNetwork=false", pods)
    assert sel.matches(pods.field_values(make_pod("p")))
    assert not sel.matches(pods.field_values(make_pod("p", host_network=True)))
