"""HTTP server: /metrics, /healthz, /readyz, and the pages it is given (else a landing page).

It runs in its own threads so that rendering a large /metrics document never blocks the event
loop that sends probes (the loop keeps the GIL between render slices and reply timestamps come
from the kernel, so a scrape cannot inflate latency).

With --web.config.file, exporter.web's guard wraps each accepted connection in TLS (in that
connection's thread) and admits each request before it is dispatched to a path.
"""

from __future__ import annotations

import errno
import html
import logging
import selectors
import socket
import ssl
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from exporter import __version__
from exporter.web.guard import WebGuard

log = logging.getLogger("exporter.http")

# The Accept header in; the content type and the document's pieces out.
Render = Callable[[str], tuple[str, Iterable[bytes]]]
# Further pages by path (the mesh page's): the request's Authorization header in (None
# without; /mesh forwards it to the peers), status, body and content type out.
Routes = Mapping[str, Callable[[str | None], tuple[int, bytes, str]]]


class Health:
    """What /healthz and /readyz answer; set by the app."""

    def __init__(self) -> None:
        self.live: Callable[[], tuple[bool, str]] = lambda: (True, "ok")
        self.ready: Callable[[], tuple[bool, str]] = lambda: (False, "starting")
        # Lines for the landing page (the mesh's state): read per request, never cached.
        self.notes: Callable[[], Sequence[str]] = lambda: ()


class _Server(ThreadingHTTPServer):
    """A threading HTTP server whose threads never hold up the exit."""

    daemon_threads = True
    allow_reuse_address = True
    render: Render
    telemetry_path: str
    health: Health
    routes: Routes
    guard: WebGuard | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        # In the connection's own thread: a slow or silent TLS client holds up only itself,
        # never the accept loop.
        conn = request if self.guard is None else self.guard.wrap(request, client_address[0])
        if conn is None:
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            if conn is not request:
                conn.close()

    def handle_error(self, request: object, client_address: object) -> None:
        # Peers' TCP probes connect and reset at once: a connection reset before its
        # request is their normal end, not an error worth a traceback.
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return
        log.exception("error handling a connection from %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    """The exporter's few paths; everything else is 404."""

    server: _Server
    server_version = f"pingmesh-exporter/{__version__}"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def parse_request(self) -> bool:
        # Before any path is dispatched: every route, present or future, is behind the guard.
        if not super().parse_request():
            return False
        guard = self.server.guard
        if guard is None:
            return True
        path = self.path.split("?", 1)[0]
        client = self.client_address[0]
        if guard.admit(path, self.headers.get("Authorization"), client, self.connection):
            return True
        body = b"unauthorized\n"
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="pingmesh-exporter"')
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return False

    def end_headers(self) -> None:
        if self.server.guard is not None:
            for name, value in self.server.guard.headers():
                self.send_header(name, value)
        super().end_headers()

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self, content_type: str, chunks: Iterable[bytes]) -> None:
        """The metrics document as it is rendered, chunk by chunk (HTTP/1.1 chunked
        encoding), gzip-compressed on the fly when the client accepts it: thousands of targets
        never sit in memory as one document."""
        compress = "gzip" in self.headers.get("Accept-Encoding", "")
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if compress:
            self.send_header("Content-Encoding", "gzip")
        chunked = self.request_version == "HTTP/1.1"
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        gz = zlib.compressobj(1, zlib.DEFLATED, 31) if compress else None
        write = self.wfile.write

        def emit(data: bytes) -> None:
            if not data:
                return
            if chunked:
                write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                write(data)

        for chunk in chunks:
            emit(gz.compress(chunk) if gz else chunk)
        if gz:
            emit(gz.flush())
        if chunked:
            write(b"0\r\n\r\n")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        srv = self.server
        try:
            if path == srv.telemetry_path:
                self._stream(*srv.render(self.headers.get("Accept", "")))
            elif path in ("/healthz", "/readyz"):
                ok, why = (srv.health.live if path == "/healthz" else srv.health.ready)()
                self._send(200 if ok else 503, (why + "\n").encode(), "text/plain; charset=utf-8")
            elif path in srv.routes:
                self._send(*srv.routes[path](self.headers.get("Authorization")))
            elif path == "/":
                self._send(
                    200,
                    _landing(srv.telemetry_path, srv.health.notes()),
                    "text/html; charset=utf-8",
                )
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception("error serving %s", path)
            self._send(500, b"internal error\n", "text/plain; charset=utf-8")


def _landing(telemetry_path: str, notes: Sequence[str] = ()) -> bytes:
    p = html.escape(telemetry_path)
    said = "".join(f'<p class="status">{html.escape(n)}</p>' for n in notes)
    return (
        "<!doctype html><html><head><title>pingmesh-exporter</title></head><body>"
        f"<h1>pingmesh-exporter {__version__}</h1>"
        "<p>ICMP and Service mesh monitoring for Kubernetes.</p>"
        f"{said}"
        f'<ul><li><a href="{p}">metrics</a></li><li><a href="/healthz">healthz</a></li>'
        '<li><a href="/readyz">readyz</a></li></ul></body></html>\n'
    ).encode()


class HttpServer:
    """The HTTP server, in threads of its own so a slow client never stalls probing."""

    def __init__(
        self,
        host: str,
        port: int,
        telemetry_path: str,
        render: Render,
        health: Health,
        guard: WebGuard | None = None,
    ) -> None:
        family = socket.AF_INET6 if ":" in host or host == "" else socket.AF_INET
        server_cls = type("Server", (_Server,), {"address_family": family})
        bind_host = host if host else "::"
        try:
            self._server: _Server = server_cls((bind_host, port), _Handler, bind_and_activate=False)
            if family == socket.AF_INET6 and host == "":
                # Dual-stack wildcard: one listener for IPv4 and IPv6 clients.
                self._server.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self._server.server_bind()
            self._server.server_activate()
        except OSError as exc:
            if host == "" and exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                # No IPv6 on this host: fall back to IPv4's wildcard.
                self._server = type("Server4", (_Server,), {"address_family": socket.AF_INET})(
                    ("0.0.0.0", port), _Handler
                )
            else:
                raise
        self._server.render = render
        self._server.telemetry_path = telemetry_path
        self._server.health = health
        self._server.routes = {}
        self._server.guard = guard
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def set_routes(self, routes: Routes) -> None:
        self._server.routes = routes

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._stopping = threading.Event()
        self._server.timeout = 0.5
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Accept connections until stop(). serve_forever() would wake every poll interval
        to look for a shutdown request (10 times a second at 0.1 s, the exporter's largest
        fixed cost with few targets); this waits on the listener and a wake-up socket only,
        so stop() is still immediate. It ends when stop() is called: no other bound."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._server, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                ready = selector.select()
                if self._stopping.is_set():
                    return
                if any(key.fileobj is self._server for key, _ in ready):
                    # Readable: the request is accepted at once. The timeout bounds the wait
                    # should the client have gone in between.
                    self._server.handle_request()

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._wake_w.send(b"x")
            self._thread.join(timeout=1)
            self._wake_r.close()
            self._wake_w.close()
        self._server.server_close()
