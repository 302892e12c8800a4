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
from typing import Any, cast

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import (
    ApiException,
    ForbiddenException,
    ServiceException,
    UnauthorizedException,
)

from tests.support.kubefake import KubeFake
from tests.support.kubeobjects import (
    make_node,
    make_pod,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def kube() -> Iterator[KubeFake]:
    """A started API-server fake with a short bookmark interval.

    Teardown fails the test if the fake itself hit an internal error, so a
    bug in the fake cannot pass as a client-side failure.
    """
    fake = KubeFake(bookmark_interval=0.2)
    fake.start()
    try:
        yield fake
    finally:
        fake.close()
    assert not fake.server_errors, f"kubefake internal errors: {fake.server_errors!r}"


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


# -- metadata-only -----------------------------------------------------------


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


# -- selector parsing (no server) ----------------------------------------------------
