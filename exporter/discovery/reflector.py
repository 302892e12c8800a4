"""List once, then watch: a local copy of one API resource that follows the cluster.

The store is replaced only by a complete list and changed only by watch events, so live
entries survive API outages, dropped connections and 410s (a re-list reconciles: only what
is really gone leaves). One malformed object is counted and skipped; its previous good
version, if any, is kept. Requests back off with capped, jittered exponential delays; so does
a watch the server keeps ending at once, which would otherwise be re-opened in a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from exporter.discovery.api import Api, ApiError, ConnectionFailed, Gone, Resource
from exporter.discovery.objects import object_key
from exporter.objects import Skip

log = logging.getLogger("exporter.discovery.kubernetes")

T = TypeVar("T")
R = TypeVar("R")

# A watch the server ends this soon, with nothing delivered, was not served: re-opening it at
# once would spin (hundreds of WATCHes a second) on whatever made the server end it.
EARLY_END_SECONDS = 1.0
# Consecutive early ends after which discovery reads unhealthy: one can be a server
# restarting, a streak is a watch the server cannot serve.
EARLY_END_LIMIT = 3
# The API group of each resource the exporter watches, for the RBAC remedy (others are core).
API_GROUPS = {"endpointslices": "discovery.k8s.io"}


class FatalApiError(Exception):
    """The API refused us at start (401, or a 403 that outlived the API server's warm-up): no
    point retrying, the operator must act."""


class WatchEndedEarly(Exception):
    """The server ended a watch cleanly, at once and without an event: back off."""


def ended_early(elapsed: float, timeout_seconds: int, delivered: bool) -> bool:
    """Whether a watch that ended cleanly was not really served. Only one that delivered
    nothing counts: one that delivered an event or a bookmark moved on, and a re-watch starts
    from there."""
    return not delivered and elapsed < min(EARLY_END_SECONDS, timeout_seconds / 10)


def rbac_remedy(res: Resource) -> str:
    """What deploy/base/rbac.yaml grants for res, and where, for a 403's message."""
    group = API_GROUPS.get(res.name)
    need = f"list and watch on {res.name} ({f'API group {group}' if group else 'core API group'})"
    if res.namespace:
        return (
            f"{need} in namespace {res.namespace}, granted by the Role pingmesh-exporter "
            "and its RoleBinding in deploy/base/rbac.yaml (both must be in that namespace)"
        )
    return (
        f"{need} at cluster scope, granted by the ClusterRole pingmesh-exporter and its "
        "ClusterRoleBinding in deploy/base/rbac.yaml"
    )


@dataclass
class ReflectorStats:
    """What one reflector did, by reason, for its metrics."""

    requests: Counter[str] = field(default_factory=Counter)  # verb -> n
    errors: Counter[str] = field(default_factory=Counter)  # code -> n
    restarts: Counter[str] = field(default_factory=Counter)  # reason -> n
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> n
    last_sync: float = 0.0  # unix time the store was last known current
    healthy: bool = False


class Backoff:
    """Capped exponential delays with full jitter."""

    def __init__(self, base: float, cap: float) -> None:
        self.base = min(base, cap)
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        # Full jitter: thousands of exporters that lost the API server at once must not come
        # back in step.
        delay = min(self.cap, self.base * 2**self.attempt)
        self.attempt = min(self.attempt + 1, 30)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


async def in_thread(fn: Callable[[], R], name: str) -> R:
    """Run a blocking call in a daemon thread: unlike the default executor, a call stuck on a
    dead connection can never hold up the process's exit."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[R] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def run() -> None:
        try:
            result: Any = fn()
            ok = True
        except BaseException as exc:
            result, ok = exc, False
        # RuntimeError: the loop is gone because we are shutting down.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, ok, result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await fut


class Reflector(Generic[T]):
    """A local copy of one resource: list once, then watch from the list's resourceVersion."""

    def __init__(
        self,
        api: Api,
        resource: Resource,
        parse: Callable[[Any], T | Skip],
        on_change: Callable[[], None],
        *,
        request_timeout: float,
        watch_timeout: float,
        retry_max_delay: float,
        startup_denial_timeout: float,
    ) -> None:
        self.api = api
        self.resource = resource
        # The `resource` label of its metrics: two reflectors of one resource need two names.
        self.name = resource.name
        # False for a watch the exporter can do without: its denials are logged, never fatal.
        self.denial_fatal = True
        self.parse = parse
        self.on_change = on_change
        self.request_timeout = request_timeout
        self.watch_timeout = watch_timeout
        self.retry_max_delay = retry_max_delay
        # A freshly started API server answers 403 to correctly bound service accounts until
        # its RBAC caches have synced: a 403 is only believed once it has lasted this long.
        self.denial_timeout = startup_denial_timeout
        self.store: dict[str, T] = {}
        # Keys changed since take_changes(); None after a new list, which may change any.
        self._changed: set[str] | None = set()
        self.synced = asyncio.Event()
        self.stats = ReflectorStats()
        self._resource_version = ""
        self._denied_since: float | None = None  # first 401/403 since the last success
        self._logged_denial = False
        self._early_ends = 0  # watches in a row that ended early

    # ----- store updates ----------------------------------------------------------------

    def _parse_item(self, obj: Any) -> tuple[str | None, T | Skip]:
        """Pure apart from logging: also runs in the list's thread, page by page."""
        key = object_key(obj)
        try:
            return key, self.parse(obj)
        except Exception:  # a parser bug must not take discovery down
            log.exception("cannot parse %s %s", self.resource.name, key)
            return key, Skip("malformed")

    def _counted(self, item: tuple[str | None, T | Skip]) -> tuple[str | None, T | None]:
        key, parsed = item
        if isinstance(parsed, Skip):
            self.stats.skipped[parsed.reason] += 1
            return key, None
        return key, parsed

    def _parse(self, obj: Any) -> tuple[str | None, T | None]:
        return self._counted(self._parse_item(obj))

    def _replace(self, items: list[tuple[str | None, T | Skip]]) -> None:
        fresh: dict[str, T] = {}
        for item in items:
            key, value = self._counted(item)
            if key is None:
                continue
            if value is not None:
                fresh[key] = value
            elif key in self.store:
                fresh[key] = self.store[key]
        self.store = fresh
        self._changed = None
        self.on_change()

    def _apply(self, etype: str, obj: Any) -> None:
        if etype == "BOOKMARK":
            self._note_version(obj)
            return
        if etype == "MALFORMED":
            self.stats.skipped["malformed_event"] += 1
            return
        self._note_version(obj)
        if etype == "DELETED":
            key = object_key(obj)
            if key is not None and self.store.pop(key, None) is not None:
                self._touch(key)
                self.on_change()
            return
        key, value = self._parse(obj)
        if key is None or value is None:
            return
        if self.store.get(key) != value:
            self.store[key] = value
            self._touch(key)
            self.on_change()

    def _touch(self, key: str) -> None:
        if self._changed is not None:
            self._changed.add(key)

    def take_changes(self) -> set[str] | None:
        """The keys changed since the last call, or None if a list replaced the store since
        (any key may have changed): what a consumer must look at again."""
        changed, self._changed = self._changed, set()
        return changed

    def _note_version(self, obj: Any) -> None:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if isinstance(rv, str) and rv:
            self._resource_version = rv
        self.stats.last_sync = time.time()

    # ----- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        backoff = Backoff(0.2, self.retry_max_delay)
        while True:
            try:
                if not self._resource_version:
                    await self._list()
                    backoff.reset()
                await self._watch()
                backoff.reset()
            except Gone:
                # Too old to resume: list again now (a 410 is not a failure of the server).
                self.stats.restarts["gone"] += 1
                self._resource_version = ""
            except WatchEndedEarly:
                self._ended_early()
                await asyncio.sleep(backoff.next())
            except ApiError as exc:
                self._failed(str(exc.status), exc)
                delay = backoff.next()
                if exc.status in (401, 403):
                    delay = self._denied(exc, delay)
                await asyncio.sleep(delay)
            except ConnectionFailed as exc:
                self._failed("connection", exc)
                await asyncio.sleep(backoff.next())
            except Exception as exc:  # never let one odd answer stop discovery
                self._failed("error", exc)
                log.exception("%s discovery error", self.resource.name)
                await asyncio.sleep(backoff.next())

    def _failed(self, code: str, exc: BaseException) -> None:
        self.stats.errors[code] += 1
        self.stats.healthy = False
        if code in ("401", "403"):
            return  # _denied decides whether and how loudly
        log.warning("%s %s failed: %s", self.resource.name, self._verb, exc)

    @property
    def _verb(self) -> str:
        return "list" if not self._resource_version else "watch"

    def _succeeded(self) -> None:
        """An answer from the API server: a later denial is a new one, timed and logged anew."""
        self._denied_since = None
        self._logged_denial = False

    def _denied(self, exc: ApiError, delay: float) -> float:
        """The delay before retrying a 401 or 403; raises FatalApiError when retrying cannot
        help. A 401 means wrong credentials, which no waiting fixes; a 403 may be the API
        server's warm-up, so it is believed only once it has lasted denial_timeout."""
        now = time.monotonic()
        first = self._denied_since is None
        since = now if self._denied_since is None else self._denied_since
        self._denied_since = since
        denied_for = now - since
        left = self.denial_timeout - denied_for
        if not self.synced.is_set() and self.denial_fatal:
            if exc.status == 401 or left <= 0:
                raise FatalApiError(self._denial_message(exc, denied_for)) from None
            if first:
                log.info(
                    "%s %s denied (403): retrying for up to %.0fs, the API server's RBAC "
                    "may still be warming up",
                    self.resource.name,
                    self._verb,
                    left,
                )
            return min(delay, left)  # the last try is at the deadline, not a back-off later
        if (exc.status == 401 or left <= 0) and not self._logged_denial:
            self._logged_denial = True
            log.log(
                logging.ERROR if exc.status == 401 else logging.WARNING,
                "%s",
                self._denial_message(exc, denied_for),
            )
        else:
            log.debug(
                "%s %s denied (%d) for %.1fs",
                self.resource.name,
                self._verb,
                exc.status,
                denied_for,
            )
        return delay

    def _denial_message(self, exc: ApiError, denied_for: float) -> str:
        r = self.resource
        if exc.status == 401:
            return (
                f"the API server rejected our credentials (401) on {r.name}: check the "
                "service account token or the kubeconfig"
            )
        lasted = f" for {denied_for:.0f}s" if denied_for >= 1 else ""
        return (
            f"RBAC denies us (403) on {r.name}{lasted}: the exporter's service account "
            f"needs {rbac_remedy(r)} ({exc})"
        )

    def _ended_early(self) -> None:
        self.stats.restarts["early_end"] += 1
        self._early_ends += 1
        if self._early_ends < EARLY_END_LIMIT:
            return
        self.stats.healthy = False
        if self._early_ends == EARLY_END_LIMIT:
            log.warning(
                "%s watch ended %d times in a row as soon as it was opened, without an "
                "event: backing off; the API server (or a proxy in front of it) does "
                "not serve this watch",
                self.resource.name,
                self._early_ends,
            )

    async def _list(self) -> None:
        self.stats.requests["list"] += 1
        items, rv = await in_thread(
            lambda: self.api.list(self.resource, self.request_timeout, self._parse_item),
            name=f"list-{self.resource.name}",
        )
        self._succeeded()
        self._replace(items)
        self._resource_version = rv
        self.stats.last_sync = time.time()
        self.stats.healthy = True
        self.synced.set()

    async def _watch(self) -> None:
        """One watch from the current resourceVersion until the server ends it."""
        self.stats.requests["watch"] += 1
        # Spread the server-side timeouts (as client-go does) so watches do not end in step.
        timeout_seconds = int(self.watch_timeout * random.uniform(1.0, 2.0))
        read_timeout = self.request_timeout
        rv = self._resource_version
        watch = await in_thread(
            lambda: self.api.watch(self.resource, rv, timeout_seconds, read_timeout),
            name=f"watch-open-{self.resource.name}",
        )
        opened = time.monotonic()
        self._succeeded()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any] | BaseException | None] = asyncio.Queue()
        stop = threading.Event()

        def pump() -> None:
            try:
                for event in watch.events():
                    if stop.is_set():
                        return
                    loop.call_soon_threadsafe(queue.put_nowait, event)
                item: BaseException | None = None
            except BaseException as exc:
                item = exc
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, item)

        threading.Thread(target=pump, name=f"watch-{self.resource.name}", daemon=True).start()
        # In a streak of early ends, an open watch proves nothing yet.
        self.stats.healthy = self._early_ends < EARLY_END_LIMIT
        delivered = False
        try:
            while True:
                got = await queue.get()
                if got is None:
                    if ended_early(time.monotonic() - opened, timeout_seconds, delivered):
                        raise WatchEndedEarly
                    self.stats.restarts["timeout"] += 1
                    return
                if isinstance(got, BaseException):
                    raise got
                if not delivered and got[0] != "MALFORMED":  # a garbled line moves nothing on
                    delivered = True
                    self._early_ends = 0
                    self.stats.healthy = True
                self._apply(*got)
        finally:
            stop.set()
            watch.close()
