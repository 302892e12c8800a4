"""In-process Kubernetes API server fake, kept for the faults a real server cannot be made to
produce on demand, in fast unit tests of the reflector (tests/test_reflector.py):

- malformed objects in a list or a watch stream (a real server validates what it stores);
- a stream that hangs after its headers, or goes silent (the read timeout);
- a connection reset at an exact point of a stream;
- an answer (403, 410, 429, 500) to exactly the n-th request of one verb.

Everything else the exporter relies on (lists, watches, bookmarks, selectors, metadata-only
media types, 410 after compaction, RBAC) is tested against a real kube-apiserver in
tests/test_cluster_*.py; this fake only imitates that much to carry the faults above. It
speaks the HTTP list/watch protocol, so the official ``kubernetes`` client runs unchanged.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import functools
import itertools
import json
import queue
import re
import select
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from kubernetes import client

__all__ = [
    "DEFAULT_RESOURCES",
    "FieldSelector",
    "KubeFake",
    "LabelSelector",
    "RequestRecord",
    "ResourceType",
    "SelectorError",
    "status_object",
]

JSON = dict[str, Any]

META_GROUP = "meta.k8s.io"
META_API_VERSION = "meta.k8s.io/v1"
INITIAL_EVENTS_END = "k8s.io/initial-events-end"

# A watch handler wakes at least this often to notice drops, client hang-ups
# and deadlines; small enough that tests never wait noticeably on it.
_TICK = 0.05


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=64)
def _type_head(kind: Any, api_version: Any) -> bytes:
    """``{"kind":...,"apiVersion":...`` without the closing brace."""
    return _dumps({"kind": kind, "apiVersion": api_version})[:-1]


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------
# Resource types


@dataclass(frozen=True)
class ResourceType:
    plural: str
    kind: str
    group: str
    version: str
    namespaced: bool
    # Field selectors the real API server accepts for this type; anything
    # else is rejected with 400, which client code must not rely on.
    field_labels: frozenset[str] = frozenset()

    @property
    def api_version(self) -> str:
        return self.version if not self.group else f"{self.group}/{self.version}"

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    def supported_fields(self) -> frozenset[str]:
        base = {"metadata.name"}
        if self.namespaced:
            base.add("metadata.namespace")
        return frozenset(base) | self.field_labels

    @functools.cached_property
    def _field_paths(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return tuple((f, tuple(f.split("."))) for f in sorted(self.supported_fields()))

    def field_values(self, obj: Any) -> dict[str, str]:
        """Every field-selectable value of ``obj``, as the selector compares them."""
        out: dict[str, str] = {}
        for path, parts in self._field_paths:
            cur = obj
            for part in parts:
                cur = cur.get(part) if isinstance(cur, dict) else None
            out[path] = _field_string(path, cur)
        return out


DEFAULT_RESOURCES: tuple[ResourceType, ...] = (
    ResourceType(
        "pods",
        "Pod",
        "",
        "v1",
        True,
        frozenset(
            {
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            }
        ),
    ),
    ResourceType("nodes", "Node", "", "v1", False, frozenset({"spec.unschedulable"})),
    ResourceType("services", "Service", "", "v1", True, frozenset({"spec.clusterIP", "spec.type"})),
    ResourceType("endpointslices", "EndpointSlice", "discovery.k8s.io", "v1", True),
)


# --------------------------------------------------------------------------
# Selectors


class SelectorError(ValueError):
    pass


_NAME_RE = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_KEY_RE = rf"(?:[A-Za-z0-9](?:[-A-Za-z0-9.]*[A-Za-z0-9])?/)?{_NAME_RE}"
_VALUE_RE = rf"(?:{_NAME_RE})?"
_SET_REQ = re.compile(rf"^({_KEY_RE})\s+(in|notin)\s*\((.*)\)$")
_CMP_REQ = re.compile(rf"^({_KEY_RE})\s*(==|!=|=|>|<)\s*({_VALUE_RE})$")
_EXISTS_REQ = re.compile(rf"^({_KEY_RE})$")
_NOT_EXISTS_REQ = re.compile(rf"^!\s*({_KEY_RE})$")
_VALUE_ONLY = re.compile(rf"^{_VALUE_RE}$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside a parenthesised value set."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced parenthesis in {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise SelectorError(f"unbalanced parenthesis in {text!r}")
    parts.append("".join(current))
    return parts


@dataclass(frozen=True)
class _LabelRequirement:
    key: str
    op: str  # in, notin, exists, !exists, gt, lt
    values: frozenset[str]

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        if not present:
            return False
        try:
            have = int(str(value))
            want = int(next(iter(self.values)))
        except ValueError:
            return False
        return have > want if self.op == "gt" else have < want


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[_LabelRequirement, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        if text is None or not text.strip():
            return cls()
        reqs: list[_LabelRequirement] = []
        for raw in _split_top_level(text):
            part = raw.strip()
            if not part:
                raise SelectorError(f"unable to parse requirement: empty term in {text!r}")
            m = _SET_REQ.match(part)
            if m:
                values = [v.strip() for v in m.group(3).split(",")]
                if any(not _VALUE_ONLY.match(v) for v in values):
                    raise SelectorError(f"unable to parse requirement: invalid value in {part!r}")
                reqs.append(_LabelRequirement(m.group(1), m.group(2), frozenset(values)))
                continue
            m = _NOT_EXISTS_REQ.match(part)
            if m:
                reqs.append(_LabelRequirement(m.group(1), "!exists", frozenset()))
                continue
            m = _CMP_REQ.match(part)
            if m:
                key, op, value = m.groups()
                if op in ("=", "=="):
                    reqs.append(_LabelRequirement(key, "in", frozenset({value})))
                elif op == "!=":
                    reqs.append(_LabelRequirement(key, "notin", frozenset({value})))
                else:
                    if not value.isdigit():
                        raise SelectorError(
                            f"unable to parse requirement: {part!r}: value must be an integer"
                        )
                    reqs.append(
                        _LabelRequirement(key, "gt" if op == ">" else "lt", frozenset({value}))
                    )
                continue
            m = _EXISTS_REQ.match(part)
            if m:
                reqs.append(_LabelRequirement(m.group(1), "exists", frozenset()))
                continue
            raise SelectorError(f"unable to parse requirement: {part!r}")
        return cls(tuple(reqs))

    def matches(self, labels: dict[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)


def _field_string(path: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        # Booleans omitted by the serializer are false, not empty, on a real server.
        return "false" if path in ("spec.hostNetwork", "spec.unschedulable") else ""
    return str(value)


@dataclass(frozen=True)
class FieldSelector:
    terms: tuple[tuple[str, bool, str], ...] = ()  # (path, equal, value)

    @classmethod
    def parse(cls, text: str | None, rt: ResourceType) -> FieldSelector:
        if text is None or not text.strip():
            return cls()
        terms: list[tuple[str, bool, str]] = []
        supported = rt.supported_fields()
        for raw in text.split(","):
            part = raw.strip()
            m = re.match(r"^([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*)$", part)
            if not m:
                raise SelectorError(f"invalid selector: {part!r}; can't understand {part!r}")
            path, op, value = m.groups()
            if path not in supported:
                raise SelectorError(f"field label not supported: {path}")
            terms.append((path, op != "!=", value.strip()))
        return cls(tuple(terms))

    def matches(self, values: dict[str, str]) -> bool:
        return all((values.get(p, "") == v) == eq for p, eq, v in self.terms)

    def __bool__(self) -> bool:
        return bool(self.terms)


# --------------------------------------------------------------------------
# Store internals


def _metadata(obj: Any) -> JSON:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    return meta if isinstance(meta, dict) else {}


class _Stored:
    """One immutable version of an object, kept in its encoded forms.

    Encoding happens once per version, at write time: lists, watch fan-out
    and pagination snapshots then only join bytes, which is what keeps a
    5,000-pod LIST cheap. Labels, field values and metadata are captured as
    well, so selectors never need the object parsed back, and callers that
    later mutate the dict they passed in cannot change what is served.
    """

    __slots__ = ("created", "fields", "full", "item", "key", "labels", "meta", "raw", "rt", "uid")

    def __init__(self, obj: JSON, key: tuple[str, str], raw: bool, rt: ResourceType) -> None:
        self.key = key
        self.raw = raw
        self.rt = rt
        metadata = _metadata(obj)
        self.uid = metadata.get("uid")
        self.created = metadata.get("creationTimestamp")
        labels = metadata.get("labels")
        self.labels: dict[str, str] = (
            {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
        )
        self.fields = rt.field_values(obj)
        if raw:
            self.full = self.item = _dumps(obj)
        else:
            # A real server omits kind/apiVersion on the items of a typed
            # list; the full form is the same bytes with them prepended.
            self.item = _dumps({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})
            head = _type_head(obj["kind"], obj["apiVersion"])
            self.full = head + (b"," + self.item[1:] if len(self.item) > 2 else b"}")
        self.meta = _dumps(
            {"kind": "PartialObjectMetadata", "apiVersion": META_API_VERSION, "metadata": metadata}
        )

    def parsed(self) -> JSON:
        return cast(JSON, json.loads(self.full))

    def restamped(self, rv: int) -> _Stored:
        obj = self.parsed()
        if self.raw or not isinstance(obj.get("metadata"), dict):
            return self
        obj["metadata"]["resourceVersion"] = str(rv)
        return _Stored(obj, self.key, self.raw, self.rt)


@dataclass(frozen=True)
class _Event:
    rv: int
    resource: str
    type: str  # ADDED, MODIFIED, DELETED
    cur: _Stored  # for DELETED: the last state stamped with the deletion RV
    prev: _Stored | None


@dataclass(frozen=True)
class _Filter:
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector

    def matches(self, st: _Stored) -> bool:
        if self.namespace is not None and st.key[0] != self.namespace:
            return False
        if self.labels and not self.labels.matches(st.labels):
            return False
        return not self.fields or self.fields.matches(st.fields)

    def convert(self, ev: _Event) -> tuple[str, _Stored] | None:
        # Mirrors the API server's watch cache: a watcher sees an object
        # entering its selector as ADDED and leaving it as DELETED.
        cur_ok = ev.type != "DELETED" and self.matches(ev.cur)
        prev_ok = ev.prev is not None and self.matches(ev.prev)
        if cur_ok and prev_ok:
            return "MODIFIED", ev.cur
        if cur_ok:
            return "ADDED", ev.cur
        if prev_ok:
            if ev.type == "DELETED":
                return "DELETED", ev.cur
            assert ev.prev is not None
            return "DELETED", ev.prev.restamped(ev.rv)
        return None


class _Watcher:
    def __init__(
        self,
        rt: ResourceType,
        flt: _Filter,
        metadata_only: bool,
        conn: socket.socket,
        start_rv: int,
        hang: bool,
        hang_headers: bool = True,
    ) -> None:
        self.rt = rt
        self.filter = flt
        self.metadata_only = metadata_only
        self.conn = conn
        self.processed_rv = start_rv
        self.hang = hang
        self.hang_headers = hang_headers
        self.queue: queue.SimpleQueue[_Event | None] = queue.SimpleQueue()
        self.dropped = False
        self.replay: list[_Event] = []
        self.initial: list[_Stored] = []
        self.send_initial_end = False
        self.error: JSON | None = None
        # The watch asked for PartialObjectMetadataList: see _NotAList.
        self.list_media = False


@dataclass
class _Fault:
    resource: str | None
    status: int
    remaining: int
    verb: str | None
    message: str | None
    retry_after: int | None


@dataclass
class _Snapshot:
    rv: int
    items: list[_Stored]


class _NotAList(Exception):
    """A watch that asked for ``as=PartialObjectMetadataList``: a real API server answers 200,
    fails to encode the first event ("you requested PartialObjectMetadataList, but the
    requested object is not a list") and ends the stream cleanly, before sending it."""


class _HTTPError(Exception):
    def __init__(self, status: JSON, headers: dict[str, str] | None = None) -> None:
        super().__init__(status.get("message", ""))
        self.status = status
        self.headers = headers or {}


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def status_object(
    code: int, message: str, reason: str | None = None, details: JSON | None = None
) -> JSON:
    """A ``meta/v1 Status`` as the API server returns for failures."""
    obj: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason if reason is not None else _REASONS.get(code, ""),
        "code": code,
    }
    if details:
        obj["details"] = details
    return obj


# --------------------------------------------------------------------------
# Request log


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    verb: str  # list, watch, get, discovery, other
    resource: str | None
    namespace: str | None
    name: str | None
    metadata_only: bool
    time: float
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 0
    # Response body bytes, excluding headers and chunk framing, so full and
    # metadata-only transfers can be compared directly.
    bytes_sent: int = 0
    duration: float | None = None


# --------------------------------------------------------------------------
# HTTP server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], fake: KubeFake) -> None:
        self.fake = fake
        super().__init__(addr, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the FQDN, which can stall for
        # seconds on a machine without working DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Peers vanishing mid-response is routine here (drops, stops, tests
        # abandoning streams); anything else is recorded for assertions.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return
        if exc is not None:
            self.fake.server_errors.append(exc)


@dataclass
class _Route:
    kind: str  # discovery, collection, object, notfound
    rt: ResourceType | None = None
    namespace: str | None = None
    name: str | None = None
    body: JSON | None = None
    text: str | None = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kubefake/1"

    @property
    def fake(self) -> KubeFake:
        return cast(_Server, self.server).fake

    def setup(self) -> None:
        super().setup()
        self.fake._track(self)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.fake._untrack(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing --------------------------------------------------------

    def _send_bytes(
        self,
        code: int,
        body: bytes,
        record: RequestRecord | None,
        content_type: str = "application/json",
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache, private")
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if record is not None:
            record.status = code
        self.wfile.write(body)
        if record is not None:
            record.bytes_sent += len(body)
            record.duration = time.time() - record.time

    def _send_status(self, err: _HTTPError, record: RequestRecord | None) -> None:
        code = int(err.status["code"])
        self._send_bytes(code, _dumps(err.status), record, extra_headers=err.headers)

    def _write_chunk(self, data: bytes, record: RequestRecord) -> None:
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
        record.bytes_sent += len(data)

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return bool(self.connection.recv(1, socket.MSG_PEEK) == b"")
        except (OSError, ValueError):
            return True

    # -- verbs -----------------------------------------------------------

    def do_GET(self) -> None:
        fake = self.fake
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        route = fake._route(url.path)
        accept = self.headers.get("Accept", "")
        metadata_only = route.kind in ("collection", "object") and _wants_metadata(accept)
        if route.kind == "collection":
            verb = "watch" if query.get("watch", "").lower() in ("true", "1") else "list"
        elif route.kind == "object":
            verb = "get"
        elif route.kind == "discovery":
            verb = "discovery"
        else:
            verb = "other"
        record = RequestRecord(
            method="GET",
            path=url.path,
            query=query,
            verb=verb,
            resource=route.rt.plural if route.rt else None,
            namespace=route.namespace,
            name=route.name,
            metadata_only=metadata_only,
            time=time.time(),
            headers={k.lower(): v for k, v in self.headers.items()},
        )
        fake._log(record)
        try:
            fake._authorize(self.headers.get("Authorization"))
            if route.kind == "notfound":
                raise _HTTPError(
                    status_object(404, "the server could not find the requested resource")
                )
            if route.kind == "discovery":
                if route.text is not None:
                    self._send_bytes(200, route.text.encode(), record, "text/plain; charset=utf-8")
                else:
                    self._send_bytes(200, _dumps(route.body), record)
                return
            assert route.rt is not None
            fault = fake._take_fault(route.rt, verb, route.namespace, route.name, query)
            if fault is not None and not (verb == "watch" and fault.status["code"] == 410):
                raise fault
            if verb == "watch":
                self._serve_watch(route, query, metadata_only, record, fault)
            elif verb == "list":
                body = fake._list_body(route.rt, route.namespace, query, metadata_only)
                self._send_bytes(200, body, record, _content_type(metadata_only, True))
            else:
                assert route.name is not None
                body = fake._get_body(route.rt, route.namespace or "", route.name, metadata_only)
                self._send_bytes(200, body, record, _content_type(metadata_only, False))
        except _HTTPError as err:
            self._send_status(err, record)
        except OSError:
            self.close_connection = True
        except Exception as exc:  # surfaced through server_errors
            fake.server_errors.append(exc)
            if record.status == 0:
                self._send_status(
                    _HTTPError(status_object(500, f"kubefake internal error: {exc!r}")), record
                )
            else:
                self.close_connection = True

    def _refuse(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        url = urlsplit(self.path)
        record = RequestRecord(
            method=self.command,
            path=url.path,
            query={},
            verb="other",
            resource=None,
            namespace=None,
            name=None,
            metadata_only=False,
            time=time.time(),
        )
        self.fake._log(record)
        self._send_status(
            _HTTPError(status_object(405, f"method not allowed: {self.command}")), record
        )

    do_POST = _refuse
    do_PUT = _refuse
    do_PATCH = _refuse
    do_DELETE = _refuse

    def _serve_watch(
        self,
        route: _Route,
        query: dict[str, str],
        metadata_only: bool,
        record: RequestRecord,
        fault: _HTTPError | None,
    ) -> None:
        fake = self.fake
        assert route.rt is not None
        try:
            timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        except ValueError:
            raise _HTTPError(status_object(400, "invalid timeoutSeconds")) from None
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        w = fake._open_watch(route.rt, route.namespace, query, metadata_only, self.connection)
        w.list_media = metadata_only and _metadata_kind(self.headers.get("Accept", "")) == (
            "PartialObjectMetadataList"
        )
        if fault is not None:
            w.error = fault.status
        try:
            if w.hang and not w.hang_headers:
                self._hang(w)
                return
            self.send_response(200)
            self.send_header("Content-Type", _content_type(metadata_only, False, watch=True))
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache, private")
            self.end_headers()
            record.status = 200
            if w.error is not None:
                self._write_chunk(_dumps({"type": "ERROR", "object": w.error}) + b"\n", record)
                self.wfile.write(b"0\r\n\r\n")
                return
            if w.hang:
                self._hang(w)
                return
            try:
                self._stream(w, record, timeout, bookmarks)
            except _NotAList:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
        finally:
            fake._close_watch(w)
            record.duration = time.time() - record.time

    def _hang(self, w: _Watcher) -> None:
        while not w.dropped and not self._client_gone():
            time.sleep(_TICK)
        self.close_connection = True

    def _stream(
        self, w: _Watcher, record: RequestRecord, timeout: float | None, bookmarks: bool
    ) -> None:
        fake = self.fake
        enc = (lambda st: st.meta) if w.metadata_only else (lambda st: st.full)

        def send(kind: str, st: _Stored) -> None:
            if w.list_media:
                raise _NotAList
            self._write_chunk(b'{"type":"%s","object":%s}\n' % (kind.encode(), enc(st)), record)

        def bookmark(rv: int, initial_end: bool = False) -> None:
            if w.list_media:
                raise _NotAList
            meta: JSON = {"resourceVersion": str(rv)}
            if initial_end:
                meta["annotations"] = {INITIAL_EVENTS_END: "true"}
            kind, api_version = (
                ("PartialObjectMetadata", META_API_VERSION)
                if w.metadata_only
                else (w.rt.kind, w.rt.api_version)
            )
            obj = {"kind": kind, "apiVersion": api_version, "metadata": meta}
            self._write_chunk(_dumps({"type": "BOOKMARK", "object": obj}) + b"\n", record)

        for st in w.initial:
            send("ADDED", st)
        if w.send_initial_end and bookmarks:
            bookmark(w.processed_rv, initial_end=True)
        for ev in w.replay:
            converted = w.filter.convert(ev)
            if converted is not None:
                send(*converted)
            w.processed_rv = ev.rv
        w.replay = []

        start = time.monotonic()
        deadline = start + timeout if timeout is not None else None
        interval = fake.bookmark_interval
        next_bookmark = start + interval if bookmarks and interval > 0 else None
        while True:
            if w.dropped:
                # The dropper already shut the socket down; ending here
                # without the terminating chunk is the point.
                self.close_connection = True
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                if bookmarks:
                    bookmark(fake._bookmark_rv(w))
                self.wfile.write(b"0\r\n\r\n")
                return
            if next_bookmark is not None and now >= next_bookmark:
                bookmark(fake._bookmark_rv(w))
                next_bookmark = now + fake.bookmark_interval
            wait = _TICK
            if deadline is not None:
                wait = min(wait, deadline - now)
            if next_bookmark is not None:
                wait = min(wait, next_bookmark - now)
            try:
                item = w.queue.get(timeout=max(wait, 0.001))
            except queue.Empty:
                if self._client_gone():
                    self.close_connection = True
                    return
                continue
            if item is None:
                continue
            converted = w.filter.convert(item)
            if converted is not None:
                send(*converted)
            w.processed_rv = item.rv


def _parse_media_types(accept: str) -> Iterator[tuple[str, dict[str, str]]]:
    for media in accept.split(","):
        parts = [p.strip() for p in media.split(";")]
        params: dict[str, str] = {}
        for p in parts[1:]:
            if "=" in p:
                k, v = p.split("=", 1)
                params[k.strip().lower()] = v.strip()
        yield parts[0].lower(), params


def _metadata_kind(accept: str) -> str | None:
    """``PartialObjectMetadata`` or ``PartialObjectMetadataList`` when the
    metadata form was asked for, else None."""
    # The server honours the first media type it can produce, as the real
    # content negotiation does; only JSON is produced here.
    for mtype, params in _parse_media_types(accept):
        if mtype not in ("application/json", "*/*", "application/*"):
            continue
        kind = params.get("as", "")
        if kind in ("PartialObjectMetadata", "PartialObjectMetadataList") and (
            params.get("g", "") == META_GROUP
        ):
            return kind
        return None
    return None


def _wants_metadata(accept: str) -> bool:
    return _metadata_kind(accept) is not None


def _content_type(metadata_only: bool, is_list: bool, watch: bool = False) -> str:
    if watch:
        return "application/json;stream=watch"
    if not metadata_only:
        return "application/json"
    kind = "PartialObjectMetadataList" if is_list else "PartialObjectMetadata"
    return f"application/json;as={kind};g={META_GROUP};v=v1"


# --------------------------------------------------------------------------
# The fake


class KubeFake:
    """A minimal Kubernetes API server for list/watch clients.

    ``resource`` arguments are plural resource names: ``pods``, ``nodes``,
    ``services``, ``endpointslices`` (plus any ``extra_resources``).
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        require_token: str | None = None,
        bookmark_interval: float = 1.0,
        history_limit: int = 50_000,
        start_rv: int = 1,
        user: str = "system:serviceaccount:default:default",
        extra_resources: Iterable[ResourceType] = (),
    ) -> None:
        self.host = host
        self._port = port
        self.require_token = require_token
        self.bookmark_interval = bookmark_interval
        self.history_limit = history_limit
        self.user = user
        self.types: dict[str, ResourceType] = {
            rt.plural: rt for rt in (*DEFAULT_RESOURCES, *extra_resources)
        }
        self.server_errors: list[BaseException] = []

        self._lock = threading.RLock()
        self._rv = start_rv
        self._store: dict[str, dict[tuple[str, str], _Stored]] = {r: {} for r in self.types}
        self._history: list[_Event] = []
        self._compacted_rv = 0
        self._watchers: dict[str, list[_Watcher]] = {r: [] for r in self.types}
        self._faults: list[_Fault] = []
        self._hangs: dict[str, list[bool]] = {}
        self._snapshots: OrderedDict[str, _Snapshot] = OrderedDict()
        self._raw_ids = itertools.count(1)

        self._log_lock = threading.Lock()
        self._requests: list[RequestRecord] = []

        self._life_lock = threading.Lock()
        self._conn_lock = threading.Lock()
        self._conns: dict[_Handler, threading.Thread] = {}
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> KubeFake:
        """Start serving; after ``stop()`` this binds the same port again."""
        with self._life_lock:
            if self._closed:
                raise RuntimeError("KubeFake is closed")
            if self._server is not None:
                return self
            server = _Server((self.host, self._port), self)
            self._port = int(server.server_address[1])
            self._server = server
            self._serve_thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"kubefake-{self._port}",
                daemon=True,
            )
            self._serve_thread.start()
        return self

    def stop(self) -> None:
        """Make the server unreachable: refuse new connections, cut open ones."""
        with self._life_lock:
            server, thread = self._server, self._serve_thread
            if server is None:
                return
            self._server = None
            self._serve_thread = None
            server.shutdown()
            server.server_close()
            self.drop_watches()
            with self._conn_lock:
                conns = dict(self._conns)
            for handler in conns:
                _shutdown(handler.connection)
            deadline = time.monotonic() + 5.0
            for t in conns.values():
                t.join(max(0.0, deadline - time.monotonic()))
            if thread is not None:
                thread.join(5.0)

    def close(self) -> None:
        self.stop()
        self._closed = True

    def __enter__(self) -> KubeFake:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _track(self, handler: _Handler) -> None:
        with self._conn_lock:
            self._conns[handler] = threading.current_thread()
        # A connection accepted just before stop() must not outlive it.
        if self._server is not handler.server:
            _shutdown(handler.connection)

    def _untrack(self, handler: _Handler) -> None:
        with self._conn_lock:
            self._conns.pop(handler, None)

    # -- client configuration ------------------------------------------------

    def client_configuration(self, token: str = "kubefake-token") -> client.Configuration:
        cfg = client.Configuration(host=self.url)
        cfg.api_key = {"BearerToken": f"Bearer {token}"}
        cfg.verify_ssl = False
        return cfg

    def kubeconfig(
        self, path: str | Path, token: str = "kubefake-token", namespace: str = "default"
    ) -> Path:
        """Write a kubeconfig for this server (JSON, which is valid YAML)."""
        path = Path(path)
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "kubefake",
                    "cluster": {"server": self.url, "insecure-skip-tls-verify": True},
                }
            ],
            "users": [{"name": "kubefake", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "kubefake",
                    "context": {"cluster": "kubefake", "user": "kubefake", "namespace": namespace},
                }
            ],
            "current-context": "kubefake",
            "preferences": {},
        }
        path.write_text(json.dumps(doc, indent=2))
        return path

    # -- store API -------------------------------------------------------

    def _type(self, resource: str) -> ResourceType:
        try:
            return self.types[resource]
        except KeyError:
            raise KeyError(f"unknown resource {resource!r}; known: {sorted(self.types)}") from None

    def _key_for(self, rt: ResourceType, obj: Any, namespace: str | None = None) -> tuple[str, str]:
        meta = _metadata(obj)
        name = meta.get("name")
        ns = namespace if namespace is not None else meta.get("namespace")
        if not rt.namespaced:
            ns = ""
        elif not isinstance(ns, str) or not ns:
            ns = "default"
        if not isinstance(name, str) or not name:
            name = f"__raw-{next(self._raw_ids)}"
        return ns, name

    @property
    def resource_version(self) -> str:
        with self._lock:
            return str(self._rv)

    def upsert(self, resource: str, obj: JSON) -> JSON:
        """Create or replace an object; emits ADDED or MODIFIED.

        Stamps metadata.resourceVersion, and uid/creationTimestamp unless
        given (an update keeps the previous ones). Returns a copy as stored.
        """
        return self._write(resource, [obj])[0].parsed()

    def upsert_many(self, resource: str, objs: Iterable[JSON]) -> str:
        """Bulk ``upsert`` under one lock; returns the resourceVersion after the last write."""
        self._write(resource, objs)
        return self.resource_version

    def _write(self, resource: str, objs: Iterable[JSON]) -> list[_Stored]:
        rt = self._type(resource)
        now = _now_rfc3339()
        written: list[_Stored] = []
        with self._lock:
            store = self._store[resource]
            for given in objs:
                # Shallow copies suffice: _Stored encodes immediately and keeps
                # no reference to the dict.
                obj = dict(given)
                meta = dict(obj.get("metadata") or {})
                obj["metadata"] = meta
                if not isinstance(meta.get("name"), str) or not meta["name"]:
                    raise ValueError(f"{resource} object needs metadata.name: {given!r}")
                key = self._key_for(rt, obj)
                if rt.namespaced:
                    meta["namespace"] = key[0]
                else:
                    meta.pop("namespace", None)
                obj.setdefault("kind", rt.kind)
                obj.setdefault("apiVersion", rt.api_version)
                prev = store.get(key)
                if "uid" not in meta:
                    meta["uid"] = (prev.uid if prev else None) or str(uuid.uuid4())
                if "creationTimestamp" not in meta:
                    meta["creationTimestamp"] = (prev.created if prev else None) or now
                self._rv += 1
                meta["resourceVersion"] = str(self._rv)
                st = _Stored(obj, key, False, rt)
                store[key] = st
                self._publish(_Event(self._rv, resource, "MODIFIED" if prev else "ADDED", st, prev))
                written.append(st)
        return written

    def put_raw(self, resource: str, raw: JSON, *, namespace: str | None = None) -> JSON:
        """Store ``raw`` exactly as given (no resourceVersion/uid stamping).

        Meant for malformed objects; it still bumps the global resourceVersion
        and reaches watchers as ADDED/MODIFIED. ``namespace`` places an object
        that has no usable metadata.namespace.
        """
        rt = self._type(resource)
        with self._lock:
            key = self._key_for(rt, raw, namespace)
            store = self._store[resource]
            prev = store.get(key)
            self._rv += 1
            st = _Stored(raw, key, True, rt)
            store[key] = st
            self._publish(_Event(self._rv, resource, "MODIFIED" if prev else "ADDED", st, prev))
        return st.parsed()

    def delete(self, resource: str, namespace: str | None, name: str) -> JSON:
        """Remove an object; emits DELETED. Raises KeyError if absent."""
        rt = self._type(resource)
        key = (namespace or "default", name) if rt.namespaced else ("", name)
        with self._lock:
            prev = self._store[resource].pop(key)
            self._rv += 1
            st = prev.restamped(self._rv)
            self._publish(_Event(self._rv, resource, "DELETED", st, prev))
        return st.parsed()

    def get(self, resource: str, namespace: str | None, name: str) -> JSON | None:
        rt = self._type(resource)
        key = (namespace or "default", name) if rt.namespaced else ("", name)
        with self._lock:
            st = self._store[resource].get(key)
        return st.parsed() if st is not None else None

    def objects(self, resource: str, namespace: str | None = None) -> list[JSON]:
        self._type(resource)
        with self._lock:
            items = sorted(self._store[resource].items())
        return [st.parsed() for k, st in items if namespace is None or k[0] == namespace]

    def compact(self) -> None:
        """Forget all history: watches from any older resourceVersion get 410."""
        with self._lock:
            self._history.clear()
            self._compacted_rv = self._rv
            self._snapshots.clear()

    def _publish(self, ev: _Event) -> None:
        # Caller holds self._lock, which keeps history order, watcher
        # registration and fan-out consistent with each other.
        self._history.append(ev)
        if len(self._history) > self.history_limit + max(1, self.history_limit // 10):
            cut = len(self._history) - self.history_limit
            self._compacted_rv = self._history[cut - 1].rv
            del self._history[:cut]
            for sid in [s for s, snap in self._snapshots.items() if snap.rv < self._compacted_rv]:
                del self._snapshots[sid]
        for w in self._watchers[ev.resource]:
            if not w.hang:
                w.queue.put(ev)

    # -- fault injection ------------------------------------------------------

    def fail_next(
        self,
        resource: str | None,
        status_code: int,
        count: int = 1,
        verb: str | None = None,
        *,
        message: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Fail the next ``count`` matching requests with a Status error.

        ``resource`` None matches any resource (discovery paths never fail).
        ``verb`` is ``list``, ``watch``, ``get`` or None for any. A 410 on a
        watch is delivered the way the server does it for an expired
        resourceVersion: HTTP 200 with one ERROR event, then end of stream.
        A 429 carries ``Retry-After: 1`` unless ``retry_after`` says otherwise.
        """
        if verb not in (None, "list", "watch", "get"):
            raise ValueError(f"bad verb {verb!r}")
        if resource is not None:
            self._type(resource)
        with self._lock:
            self._faults.append(_Fault(resource, status_code, count, verb, message, retry_after))

    def hang_next_watch(self, resource: str, count: int = 1, *, send_headers: bool = True) -> None:
        """The next ``count`` watches are accepted and then never answered.

        With ``send_headers`` the 200 response headers go out first (a stream
        that stalls); without, even the headers never come (a server that
        stalls before answering).
        """
        self._type(resource)
        with self._lock:
            self._hangs.setdefault(resource, []).extend([send_headers] * count)

    def drop_watches(self, resource: str | None = None) -> int:
        """Cut open watch connections mid-stream (no terminating chunk).

        The watches stop counting at once, so ``watch_count()`` right after
        this call does not depend on handler threads having noticed yet.
        """
        with self._lock:
            victims: list[_Watcher] = []
            for r, ws in self._watchers.items():
                if resource is None or r == resource:
                    victims += ws
                    ws.clear()
            for w in victims:
                w.dropped = True
        for w in victims:
            _shutdown(w.conn)
            w.queue.put(None)
        return len(victims)

    def watch_count(self, resource: str | None = None) -> int:
        with self._lock:
            return sum(
                len(ws) for r, ws in self._watchers.items() if resource is None or r == resource
            )

    def wait_for_watches(self, n: int, resource: str | None = None, timeout: float = 5.0) -> bool:
        """Wait until at least ``n`` watches are open (they are registered
        before the response headers go out, so events upserted afterwards
        reach them)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.watch_count(resource) >= n:
                return True
            time.sleep(0.005)
        return self.watch_count(resource) >= n

    # -- request log ---------------------------------------------------------

    def _log(self, record: RequestRecord) -> None:
        with self._log_lock:
            self._requests.append(record)

    @property
    def requests(self) -> list[RequestRecord]:
        with self._log_lock:
            return list(self._requests)

    def count(
        self,
        verb: str | None = None,
        resource: str | None = None,
        *,
        metadata_only: bool | None = None,
        status: int | None = None,
    ) -> int:
        return len(self.filter_requests(verb, resource, metadata_only=metadata_only, status=status))

    def filter_requests(
        self,
        verb: str | None = None,
        resource: str | None = None,
        *,
        metadata_only: bool | None = None,
        status: int | None = None,
    ) -> list[RequestRecord]:
        return [
            r
            for r in self.requests
            if (verb is None or r.verb == verb)
            and (resource is None or r.resource == resource)
            and (metadata_only is None or r.metadata_only == metadata_only)
            and (status is None or r.status == status)
        ]

    def bytes_sent(self, verb: str | None = None, resource: str | None = None) -> int:
        return sum(r.bytes_sent for r in self.filter_requests(verb, resource))

    def clear_log(self) -> None:
        with self._log_lock:
            self._requests.clear()

    # -- request handling (called from handler threads) ------------------------

    def _authorize(self, header: str | None) -> None:
        if self.require_token is None:
            return
        if header != f"Bearer {self.require_token}":
            raise _HTTPError(status_object(401, "Unauthorized"))

    def _take_fault(
        self,
        rt: ResourceType,
        verb: str,
        namespace: str | None,
        name: str | None,
        query: dict[str, str],
    ) -> _HTTPError | None:
        with self._lock:
            for f in self._faults:
                if (f.resource is None or f.resource == rt.plural) and (
                    f.verb is None or f.verb == verb
                ):
                    f.remaining -= 1
                    if f.remaining <= 0:
                        self._faults.remove(f)
                    fault = f
                    break
            else:
                return None
            compacted = self._compacted_rv
        code = fault.status
        message = fault.message
        details: JSON = {"kind": rt.plural}
        if rt.group:
            details["group"] = rt.group
        if name:
            details["name"] = name
        if message is None:
            if code == 403:
                scope = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
                message = (
                    f'{rt.plural} is forbidden: User "{self.user}" cannot {verb} resource '
                    f'"{rt.plural}" in API group "{rt.group}"{scope}'
                )
            elif code == 404:
                message = (
                    f'{rt.plural} "{name}" not found'
                    if name
                    else "the server could not find the requested resource"
                )
            elif code == 410:
                rv = query.get("resourceVersion") or str(compacted)
                message = f"too old resource version: {rv} ({compacted})"
            elif code == 429:
                message = "Too many requests, please try again later."
            elif code == 500:
                message = "Internal error occurred: injected fault"
            elif code == 503:
                message = "the server is currently unable to handle the request"
            elif code == 504:
                message = "Timeout: request did not complete within the allotted timeout"
            else:
                message = _REASONS.get(code, "injected fault")
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        elif code == 429:
            headers["Retry-After"] = "1"
        return _HTTPError(
            status_object(code, message, details=None if code == 401 else details), headers
        )

    def _route(self, path: str) -> _Route:
        parts = [unquote(p) for p in path.split("/") if p]
        if not parts:
            return _Route(
                "discovery", body={"paths": ["/api", "/api/v1", "/apis", "/version", "/healthz"]}
            )
        if parts in (["healthz"], ["livez"], ["readyz"]):
            return _Route("discovery", text="ok")
        if parts == ["version"]:
            return _Route("discovery", body=_VERSION)
        if parts == ["api"]:
            return _Route(
                "discovery",
                body={
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self._port}"}
                    ],
                },
            )
        if parts == ["apis"]:
            return _Route("discovery", body=self._group_list())
        if parts[0] == "api" and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        elif parts[0] == "apis" and len(parts) == 2:
            for g in self._group_list()["groups"]:
                if g["name"] == parts[1]:
                    return _Route("discovery", body={"kind": "APIGroup", "apiVersion": "v1", **g})
            return _Route("notfound")
        else:
            return _Route("notfound")
        types = {
            rt.plural: rt
            for rt in self.types.values()
            if (rt.group, rt.version) == (group, version)
        }
        if not types:
            return _Route("notfound")
        if not rest:
            return _Route("discovery", body=_resource_list(group, version, types.values()))
        if len(rest) in (1, 2) and rest[0] in types:
            rt = types[rest[0]]
            if len(rest) == 1:
                return _Route("collection", rt)
            if not rt.namespaced:
                return _Route("object", rt, None, rest[1])
            return _Route("notfound")
        if len(rest) in (3, 4) and rest[0] == "namespaces" and rest[2] in types:
            rt = types[rest[2]]
            if not rt.namespaced:
                return _Route("notfound")
            if len(rest) == 3:
                return _Route("collection", rt, rest[1])
            return _Route("object", rt, rest[1], rest[3])
        return _Route("notfound")

    def _group_list(self) -> JSON:
        groups: dict[str, list[str]] = {}
        for rt in self.types.values():
            if rt.group and rt.version not in groups.setdefault(rt.group, []):
                groups[rt.group].append(rt.version)
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": g,
                    "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                    "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]},
                }
                for g, vs in sorted(groups.items())
            ],
        }

    def _filter(self, rt: ResourceType, namespace: str | None, query: dict[str, str]) -> _Filter:
        try:
            return _Filter(
                namespace,
                LabelSelector.parse(query.get("labelSelector")),
                FieldSelector.parse(query.get("fieldSelector"), rt),
            )
        except SelectorError as exc:
            raise _HTTPError(status_object(400, str(exc))) from None

    def _list_body(
        self, rt: ResourceType, namespace: str | None, query: dict[str, str], metadata_only: bool
    ) -> bytes:
        flt = self._filter(rt, namespace, query)
        limit_s = query.get("limit", "")
        try:
            limit = int(limit_s) if limit_s else 0
        except ValueError:
            raise _HTTPError(status_object(400, f"invalid limit {limit_s!r}")) from None
        token = query.get("continue", "")
        if token:
            snap_id, offset = _decode_continue(token)
            with self._lock:
                snap = self._snapshots.get(snap_id)
            if snap is None:
                raise _HTTPError(
                    status_object(
                        410,
                        "The provided continue parameter is too old to display a consistent "
                        "list result. You can start a new list without the continue parameter.",
                        reason="Expired",
                    )
                )
            rv, items = snap.rv, snap.items
        else:
            with self._lock:
                rv = self._rv
                stored = list(self._store[rt.plural].items())
            stored.sort(key=lambda kv: kv[0])
            items = [st for _, st in stored if flt.matches(st)]
            offset = 0
            snap_id = ""
        end = len(items) if limit <= 0 else min(len(items), offset + limit)
        meta: JSON = {"resourceVersion": str(rv)}
        if end < len(items):
            if not snap_id:
                snap_id = uuid.uuid4().hex
                with self._lock:
                    self._snapshots[snap_id] = _Snapshot(rv, items)
                    while len(self._snapshots) > 64:
                        self._snapshots.popitem(last=False)
            meta["continue"] = _encode_continue(snap_id, end)
            meta["remainingItemCount"] = len(items) - end
        page = items[offset:end]
        if metadata_only:
            kind, api_version = "PartialObjectMetadataList", META_API_VERSION
            encoded = [st.meta for st in page]
        else:
            kind, api_version = rt.list_kind, rt.api_version
            encoded = [st.item for st in page]
        head = _dumps({"kind": kind, "apiVersion": api_version, "metadata": meta})[:-1]
        return head + b',"items":[' + b",".join(encoded) + b"]}"

    def _get_body(self, rt: ResourceType, namespace: str, name: str, metadata_only: bool) -> bytes:
        with self._lock:
            st = self._store[rt.plural].get((namespace, name))
        if st is None:
            details: JSON = {"name": name, "kind": rt.plural}
            if rt.group:
                details["group"] = rt.group
            raise _HTTPError(status_object(404, f'{rt.plural} "{name}" not found', details=details))
        return st.meta if metadata_only else st.full

    def _open_watch(
        self,
        rt: ResourceType,
        namespace: str | None,
        query: dict[str, str],
        metadata_only: bool,
        conn: socket.socket,
    ) -> _Watcher:
        flt = self._filter(rt, namespace, query)
        rv_s = query.get("resourceVersion", "")
        send_initial = query.get("sendInitialEvents", "").lower() in ("true", "1")
        if rv_s not in ("", "0"):
            try:
                rv_req = int(rv_s)
            except ValueError:
                raise _HTTPError(
                    status_object(400, f"resourceVersion: Invalid value: {rv_s!r}")
                ) from None
        else:
            rv_req = -1
        with self._lock:
            pending = self._hangs.get(rt.plural)
            hang, hang_headers = (True, pending.pop(0)) if pending else (False, True)
            w = _Watcher(rt, flt, metadata_only, conn, self._rv, hang, hang_headers)
            if not hang and (rv_req < 0 or send_initial):
                w.initial = [st for _, st in sorted(self._store[rt.plural].items())]
                w.send_initial_end = send_initial
            elif not hang:
                if rv_req < self._compacted_rv:
                    # Not registered: the stream carries only this error.
                    w.error = status_object(
                        410,
                        f"too old resource version: {rv_req} ({self._compacted_rv})",
                        reason="Expired",
                    )
                    return w
                idx = bisect.bisect_right(self._history, rv_req, key=lambda e: e.rv)
                w.replay = [e for e in self._history[idx:] if e.resource == rt.plural]
                w.processed_rv = rv_req
            self._watchers[rt.plural].append(w)
        w.initial = [st for st in w.initial if flt.matches(st)]
        return w

    def _close_watch(self, w: _Watcher) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._watchers[w.rt.plural].remove(w)

    def _bookmark_rv(self, w: _Watcher) -> int:
        # Only claim progress up to the global RV when nothing is queued for
        # this watcher; publishing happens under the same lock.
        with self._lock:
            if w.queue.empty():
                w.processed_rv = max(w.processed_rv, self._rv)
            return w.processed_rv


_VERSION: JSON = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def _resource_list(group: str, version: str, types: Iterable[ResourceType]) -> JSON:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": [
            {
                "name": rt.plural,
                "singularName": rt.kind.lower(),
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": ["get", "list", "watch"],
            }
            for rt in types
        ],
    }


def _encode_continue(snap_id: str, offset: int) -> str:
    return base64.urlsafe_b64encode(_dumps({"s": snap_id, "o": offset})).decode()


def _decode_continue(token: str) -> tuple[str, int]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(data["s"]), int(data["o"])
    except (ValueError, KeyError, TypeError):
        raise _HTTPError(status_object(400, "continue key is not valid")) from None


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
