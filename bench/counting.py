"""The bench children's KubeApi, counting what the exporter's own code reads: body bytes per
resource and verb, events per resource and type, list pages and complete lists' times.
Imported by the children only (it brings in the exporter's Kubernetes edge)."""

from __future__ import annotations

import threading
import time
from typing import Any

from exporter.discovery.kubeapi import KubeApi

# One lock for every Counts of a process: the watchers' threads add, the stats reader copies.
LOCK = threading.Lock()


class Counts:
    def __init__(self) -> None:
        self.bytes: dict[str, int] = {}  # "<res>/<list|watch>" -> body bytes read
        self.events: dict[str, int] = {}  # "<res>/<TYPE>" -> events
        self.pages: dict[str, int] = {}  # res -> list pages
        self.lists: dict[str, list[float]] = {}  # res -> seconds of each complete LIST
        self.list_items: dict[str, int] = {}

    def add(self, table: dict[str, int], key: str, n: int) -> None:
        with LOCK:
            table[key] = table.get(key, 0) + n


class Counted:
    """A response whose body bytes are counted as the exporter's code reads them."""

    def __init__(self, resp: Any, counts: Counts, key: str) -> None:
        self._resp = resp
        self._counts = counts
        self._key = key

    def read(self, *a: Any, **kw: Any) -> bytes:
        try:
            data: bytes = self._resp.read(*a, **kw)
        except Exception:
            self._counts.add(self._counts.bytes, self._key + "_failed", 1)
            raise
        self._counts.add(self._counts.bytes, self._key, len(data))
        return data

    def __iter__(self) -> Any:
        for line in self._resp:
            self._counts.add(self._counts.bytes, self._key, len(line))
            yield line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._resp, name)


class CountedWatch:
    def __init__(self, inner: Any, counts: Counts, res: str) -> None:
        self.inner, self.counts, self.res = inner, counts, res

    def events(self) -> Any:
        for etype, obj in self.inner.events():
            self.counts.add(self.counts.events, f"{self.res}/{etype}", 1)
            yield etype, obj

    def close(self) -> None:
        self.inner.close()


class CountingApi(KubeApi):
    def __init__(self, cfg: Any, counts: Counts) -> None:
        super().__init__(cfg)
        self.counts = counts

    def _get(self, res: Any, query: dict[str, str], read_timeout: float) -> Any:
        # A watch-list (sendInitialEvents) is the list, streamed: counted as one page.
        watch = query.get("watch") == "true" and "sendInitialEvents" not in query
        resp = super()._get(res, query, read_timeout)
        if not watch:
            self.counts.add(self.counts.pages, res.name, 1)
        return Counted(resp, self.counts, f"{res.name}/{'watch' if watch else 'list'}")

    def list(self, res: Any, timeout: float, transform: Any = lambda o: o) -> Any:
        started = time.monotonic()
        items, rv = super().list(res, timeout, transform)
        with LOCK:
            self.counts.lists.setdefault(res.name, []).append(time.monotonic() - started)
            self.counts.list_items[res.name] = len(items)
        return items, rv

    def watch(
        self, res: Any, resource_version: str, timeout_seconds: int, read_timeout: float
    ) -> Any:
        return CountedWatch(
            super().watch(res, resource_version, timeout_seconds, read_timeout),
            self.counts,
            res.name,
        )
