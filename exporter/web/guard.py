"""`--web.config.file` at run time: the configuration in force, reloaded when the file or a
file it names changes, and the decisions the HTTP server asks of it (which context a new
connection is wrapped in, whether a request may in). Counters for the metrics layer.

The files are looked at when a connection arrives, at most once per CHECK_INTERVAL: no
thread and no timer wakes an idle exporter, and a Kubernetes Secret's update (a symlink
swapped under the mount) is seen on the next scrape. A new file that does not parse, or whose
certificate does not load, leaves the previous configuration in force: logged, counted, and
tried again when the files change again.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from exporter.web.auth import BasicAuth, parse_basic
from exporter.web.config import WebConfig, WebConfigError, parse_text
from exporter.web.tls import (
    REASONS,
    ClientGone,
    HandshakeFailed,
    client_context,
    handshake,
    server_context,
)

log = logging.getLogger("exporter.web")

CHECK_INTERVAL = 1.0
HANDSHAKE_TIMEOUT = 10.0
LOG_EVERY = 10.0  # seconds between two log lines of one kind of refusal
PROBE_PATHS = ("/healthz", "/readyz")
DENIALS = ("missing_credentials", "wrong_credentials", "missing_certificate")

Stamp = tuple[tuple[str, int, int, int, int], ...]


def _stamp(paths: tuple[str, ...]) -> Stamp:
    """What changes when a file does (a rewrite, a rename over it, a Secret's new symlink
    target): device, inode, size and mtime, following links; absent files stamp as zeros."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((p, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((p, 0, 0, 0, 0))
    return tuple(out)


@dataclass(frozen=True)
class Loaded:
    """One configuration, ready to serve: the parsed file and its TLS context."""

    config: WebConfig
    context: ssl.SSLContext | None
    stamp: Stamp
    # The mesh page asks the peers' views with this (None: plain HTTP).
    client: ssl.SSLContext | None
    # RequireAndVerifyClientCert with the probes exempt: the handshake lets a client without
    # a certificate in, and every request but the probes' needs one.
    certificate_per_request: bool = False


def load(path: str, exempt_probes: bool = False) -> Loaded:
    """Read, parse and build: WebConfigError naming the key (or `(file)`)."""
    before = _stamp((path,))
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise WebConfigError("(file)", f"cannot read: {exc}") from None
    config = parse_text(text)
    per_request = (
        exempt_probes
        and config.tls is not None
        and config.tls.client_auth == "RequireAndVerifyClientCert"
    )
    context = server_context(config.tls, per_request) if config.tls is not None else None
    client = client_context(config.tls) if config.tls is not None else None
    return Loaded(config, context, before + _stamp(config.files), client, per_request)


@dataclass
class WebCounters:
    """What the guard has done, for pingmesh_web_* (plain numbers, read by the collector)."""

    reloads: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})
    last_reload_ok: bool = True
    last_reload_success_time: float = 0.0
    handshake_failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    denied: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DENIALS, 0))


class WebGuard:
    """The configuration in force and what follows from it for each connection and request."""

    def __init__(
        self,
        path: str,
        exempt_probes: bool = False,
        clock: Callable[[], float] = time.monotonic,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        """Loads the file now: WebConfigError when it cannot be served."""
        self.path = path
        self.exempt_probes = exempt_probes
        self.handshake_timeout = handshake_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self.counters = WebCounters()
        self.auth = BasicAuth()
        self._loaded = load(path, exempt_probes)
        self._checked = clock()
        self._failed_stamp: Stamp | None = None
        self._logged: dict[str, float] = {}
        self.counters.reloads["success"] += 1
        self.counters.last_reload_success_time = time.time()

    @property
    def tls(self) -> bool:
        return self._loaded.context is not None

    def current(self) -> Loaded:
        """The configuration in force, reloaded first when its files changed."""
        now = self._clock()
        with self._lock:
            if now - self._checked >= CHECK_INTERVAL:
                self._checked = now
                self._maybe_reload()
            return self._loaded

    def client_tls(self) -> ssl.SSLContext | None:
        """What the mesh page asks the peers with, from the configuration in force."""
        return self.current().client

    def reload_now(self) -> None:
        with self._lock:
            self._checked = self._clock()
            self._maybe_reload()

    def _maybe_reload(self) -> None:
        stamp = _stamp(tuple(p for p, *_ in self._loaded.stamp))
        if stamp == self._loaded.stamp or stamp == self._failed_stamp:
            return
        try:
            fresh = load(self.path, self.exempt_probes)
            if (fresh.context is None) != (self._loaded.context is None):
                # A typo that drops tls_server_config must not turn /metrics into plain
                # text, nor can clients that speak plain HTTP be switched to TLS under them.
                raise WebConfigError("tls_server_config", "turning TLS on or off takes a restart")
        except WebConfigError as exc:
            # The stamp of the files as they failed: tried again only once they change.
            self._failed_stamp = stamp
            self.counters.reloads["failure"] += 1
            self.counters.last_reload_ok = False
            log.error(
                "flag --web.config.file %s: %s; keeping the previous configuration",
                self.path,
                exc,
            )
            return
        self._loaded, self._failed_stamp = fresh, None
        self.counters.reloads["success"] += 1
        self.counters.last_reload_ok = True
        self.counters.last_reload_success_time = time.time()
        log.info("flag --web.config.file %s: reloaded", self.path)

    def _log_limited(self, kind: str, message: str, *args: object) -> None:
        now = self._clock()
        with self._lock:
            if now - self._logged.get(kind, -LOG_EVERY) < LOG_EVERY:
                return
            self._logged[kind] = now
        log.warning(message, *args)

    def wrap(self, sock: socket.socket, client: object) -> socket.socket | None:
        """The connection as the handler reads it: TLS-wrapped after a handshake in this
        (the connection's) thread, or as it is without TLS; None when it failed (closed)."""
        loaded = self.current()
        if loaded.context is None or loaded.config.tls is None:
            return sock
        try:
            return handshake(
                loaded.context,
                sock,
                self.handshake_timeout,
                loaded.config.tls.client_allowed_sans,
            )
        except ClientGone as exc:
            log.debug("TLS: %s closed before the handshake ended: %s", client, exc)
            exc.conn.close()
        except HandshakeFailed as exc:
            with self._lock:
                self.counters.handshake_failures[exc.reason] += 1
            self._log_limited(f"tls.{exc.reason}", "TLS handshake with %s failed: %s", client, exc)
            exc.conn.close()
        return None

    def admit(
        self, path: str, authorization: str | None, client: object, conn: object = None
    ) -> bool:
        """Whether a request may in: an exempt probe, else a client certificate where one is
        required per request, and no users configured or a user whose password matches.
        Counted and logged (rate-limited) when not."""
        loaded = self.current()
        if self.exempt_probes and path in PROBE_PATHS:
            return True
        creds = parse_basic(authorization)
        users = loaded.config.users
        if loaded.certificate_per_request and not (
            isinstance(conn, ssl.SSLSocket) and conn.getpeercert()
        ):
            reason = "missing_certificate"
        elif not users or (creds is not None and self.auth.verify(users, *creds)):
            return True
        else:
            reason = "missing_credentials" if creds is None else "wrong_credentials"
        with self._lock:
            self.counters.denied[reason] += 1
        who = f" as user {creds[0]!r}" if creds is not None else ""
        self._log_limited(f"auth.{reason}", "HTTP %s%s refused: %s", client, who, reason)
        return False

    def headers(self) -> tuple[tuple[str, str], ...]:
        return self._loaded.config.headers
