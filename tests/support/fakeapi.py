"""An in-memory ``Api`` (exporter/discovery/api.py) for the reflector's unit tests.

Real components first: discovery end to end, and what ``exporter/discovery/kubeapi.py`` does
over HTTP, are tested against the real kube-apiserver (tests/test_cluster_*.py,
tests/test_cluster_kubeapi.py). This fake exists only for the faults a real server cannot be
made to produce on demand, scripted directly: an ``ApiError`` on the n-th list or watch, a
watch that is cut, one that stalls until its read timeout or ends at once, a malformed
object, a server that is down. It keeps objects as JSON dicts and a history of events with integer
resourceVersions; a watch streams the history after its resourceVersion, plus bookmarks.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from exporter.discovery.api import ApiError, ConnectionFailed, Resource
from exporter.selectors import LabelSelector

JSON = dict[str, Any]


def _meta(obj: Any) -> JSON:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    return meta if isinstance(meta, dict) else {}


def _selected(res: Resource, obj: Any) -> bool:
    meta = _meta(obj)
    if res.namespace is not None and meta.get("namespace") != res.namespace:
        return False
    # The one field selector the exporter sends (its own Node's); the real server's parsing
    # is tested against kube-apiserver (tests/test_cluster_ownnode.py).
    if res.field_selector and res.field_selector != f"metadata.name={meta.get('name')}":
        return False
    labels = meta.get("labels")
    return not res.label_selector or LabelSelector(res.label_selector).matches(
        labels if isinstance(labels, dict) else {}
    )


class FakeApi:
    """Objects per resource name, every list and watch recorded as (verb, Resource)."""

    def __init__(self, bookmark_interval: float = 0.2) -> None:
        self.bookmark_interval = bookmark_interval
        self.calls: list[tuple[str, Resource]] = []
        self._objects: dict[str, dict[tuple[str, str], JSON]] = {}
        self._history: list[tuple[int, str, str, JSON]] = []  # rv, resource, type, object
        self._rv = 1
        self._faults: list[tuple[str | None, str, BaseException]] = []  # verb, resource, error
        self._stalls: dict[str, int] = {}
        self._watches: list[FakeWatch] = []
        self._down = False
        self._cond = threading.Condition()
        # Every watch ends at once without an event (a proxy that does not serve watches).
        self.watches_end_at_once = False

    # ----- the cluster's state ------------------------------------------------------------

    def upsert(self, resource: str, obj: JSON) -> None:
        """Create or replace ``obj`` (any dict, malformed ones too) and tell the watches."""
        obj = copy.deepcopy(obj)
        meta = _meta(obj)
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        with self._cond:
            self._rv += 1
            if "metadata" in obj and isinstance(obj["metadata"], dict):
                obj["metadata"]["resourceVersion"] = str(self._rv)
            store = self._objects.setdefault(resource, {})
            etype = "MODIFIED" if key in store else "ADDED"
            store[key] = obj
            self._history.append((self._rv, resource, etype, obj))
            self._cond.notify_all()

    def delete(self, resource: str, namespace: str, name: str) -> None:
        with self._cond:
            obj = self._objects.get(resource, {}).pop((namespace, name))
            self._rv += 1
            self._history.append((self._rv, resource, "DELETED", obj))
            self._cond.notify_all()

    # ----- faults -------------------------------------------------------------------------

    def fail_next(
        self, resource: str, error: BaseException, count: int = 1, verb: str | None = None
    ) -> None:
        """The next ``count`` lists or watches (or either, without ``verb``) raise ``error``."""
        with self._cond:
            self._faults += [(verb, resource, error)] * count

    def stall_next_watch(self, resource: str) -> None:
        """The next watch sends nothing until its read timeout, then fails as the client
        does on a silent connection (kubeapi's own behaviour is tested over HTTP)."""
        with self._cond:
            self._stalls[resource] = self._stalls.get(resource, 0) + 1

    def drop_watches(self) -> None:
        """Cut every open watch: its reader gets ConnectionFailed."""
        with self._cond:
            for w in self._watches:
                w.dropped = True
            self._watches.clear()
            self._cond.notify_all()

    def down(self) -> None:
        """Every request fails to connect, and open watches are cut, until ``up()``."""
        self._down = True
        self.drop_watches()

    def up(self) -> None:
        self._down = False

    # ----- what was asked -----------------------------------------------------------------

    def count(self, verb: str, resource: str, metadata_only: bool | None = None) -> int:
        return sum(
            1
            for v, res in self.calls
            if v == verb
            and res.name == resource
            and (metadata_only is None or res.metadata_only == metadata_only)
        )

    def watch_count(self, resource: str) -> int:
        with self._cond:
            return sum(1 for w in self._watches if w.res.name == resource)

    # ----- the Api protocol ---------------------------------------------------------------

    def _request(self, verb: str, res: Resource) -> None:
        self.calls.append((verb, res))
        if self._down:
            raise ConnectionFailed("ConnectionRefusedError: the fake API server is down")
        for i, (v, name, error) in enumerate(self._faults):
            if name == res.name and v in (None, verb):
                del self._faults[i]
                raise error

    def list(
        self, res: Resource, timeout: float, transform: Callable[[Any], Any] = lambda obj: obj
    ) -> tuple[list[Any], str]:
        with self._cond:
            self._request("list", res)
            objs = [o for o in self._objects.get(res.name, {}).values() if _selected(res, o)]
            rv = str(self._rv)
        return [transform(copy.deepcopy(o)) for o in objs], rv

    def watch(
        self, res: Resource, resource_version: str, timeout_seconds: int, read_timeout: float
    ) -> FakeWatch:
        with self._cond:
            self._request("watch", res)
            stall = self._stalls.get(res.name, 0) > 0
            if stall:
                self._stalls[res.name] -= 1
            timeout = 0 if self.watches_end_at_once else timeout_seconds
            w = FakeWatch(self, res, int(resource_version), timeout, read_timeout, stall)
            self._watches.append(w)
            return w


class FakeWatch:
    def __init__(
        self,
        api: FakeApi,
        res: Resource,
        rv: int,
        timeout_seconds: int,
        read_timeout: float,
        stall: bool,
    ) -> None:
        self.api, self.res, self.rv = api, res, rv
        self.deadline = time.monotonic() + timeout_seconds
        self.read_timeout = read_timeout
        self.stall = stall
        self.dropped = False
        self.closed = False

    def _next(self) -> tuple[str, Any] | None:
        """The next event, a bookmark, or None when the watch is over; called locked."""
        api = self.api
        quiet_since = time.monotonic()
        while True:
            if self.dropped:
                raise ConnectionFailed("ProtocolError: connection broken")
            if self.closed or time.monotonic() >= self.deadline:
                return None
            if self.stall:
                if time.monotonic() - quiet_since >= self.read_timeout:
                    raise ConnectionFailed("ReadTimeoutError: read timed out")
            else:
                for rv, resource, etype, obj in api._history:
                    if rv > self.rv and resource == self.res.name and _selected(self.res, obj):
                        self.rv = rv
                        return etype, copy.deepcopy(obj)
                if time.monotonic() - quiet_since >= api.bookmark_interval:
                    self.rv = max(self.rv, api._rv)
                    return "BOOKMARK", {"metadata": {"resourceVersion": str(self.rv)}}
            api._cond.wait(0.05)

    def events(self) -> Iterator[tuple[str, Any]]:
        try:
            while True:
                with self.api._cond:
                    event = self._next()
                if event is None:
                    return
                yield event
        finally:
            with self.api._cond, contextlib.suppress(ValueError):
                self.api._watches.remove(self)

    def close(self) -> None:
        with self.api._cond:
            self.closed = True
            self.api._cond.notify_all()


__all__ = ["ApiError", "ConnectionFailed", "FakeApi", "FakeWatch"]
