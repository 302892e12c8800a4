#!/usr/bin/env python3
"""What --web.config.file costs the exporter's HTTP server per scrape.

The server (exporter.http with a WebGuard, serving a fixed 100 kB document so that only the
web layer differs) runs in a child process; the parent scrapes it over loopback and reads
the child's CPU seconds from /proc around each run:

- `http`: no web configuration, a new connection per scrape;
- `tls`: TLS 1.3 with a P-256 certificate and a verified client certificate, a new
  connection (a full handshake) per scrape, as Prometheus does when its keep-alive
  connection has been closed;
- `tls keep-alive`: the same over one connection, as Prometheus' scrapes usually go;
- `tls + basic auth`: the new-connection run with a cost-10 bcrypt user, the password
  right (cached after the first check);
- `basic auth uncached`: every scrape a different wrong password, so every one pays bcrypt
  (what the cache saves, and what a password-guessing client costs at most: one core, the
  checks running one at a time).

Usage: ``python -m bench.web_bench [--scrapes N]``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import multiprocessing
import multiprocessing.connection
import ssl
import tempfile
import time
from pathlib import Path

from bench.common import cpu_seconds
from tests.support.certs import Certs, make_certs

DOCUMENT = b"# a fixed document\n" + b"x_metric 1\n" * 9000  # about 100 kB


def _serve(web: str | None, conn: multiprocessing.connection.Connection) -> None:
    from exporter.http import Health, HttpServer
    from exporter.web.guard import WebGuard

    guard = WebGuard(web) if web else None
    server = HttpServer(
        "127.0.0.1", 0, "/metrics", lambda accept: ("text/plain", [DOCUMENT]), Health(), guard
    )
    server.start()
    conn.send(server.port)
    conn.recv()  # until the parent is done
    server.stop()


def _web_file(certs: Certs, users: bool) -> Path:
    d = certs.dir
    text = (
        "tls_server_config:\n"
        f"  cert_file: {d / 'server.crt'}\n  key_file: {d / 'server.key'}\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {d / 'ca.crt'}\n"
    )
    if users:
        text += f"basic_auth_users:\n  {certs.user}: '{certs.password_hash}'\n"
    path = d / f"web-{'users' if users else 'tls'}.yml"
    path.write_text(text)
    return path


def _run(
    name: str, web: Path | None, certs: Certs, scrapes: int, keep_alive: bool, password: str
) -> tuple[str, float, float]:
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=_serve, args=(str(web) if web else None, child))
    proc.start()
    port = parent.recv()
    ctx = None
    if web is not None:
        ctx = ssl.create_default_context(cafile=str(certs.path("ca.crt")))
        ctx.load_cert_chain(str(certs.path("client.crt")), str(certs.path("client.key")))

    def connect() -> http.client.HTTPConnection:
        if ctx is None:
            return http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)

    def scrape(conn: http.client.HTTPConnection, i: int) -> None:
        pw = f"guess-{i}" if password == "guess" else password
        token = base64.b64encode(f"{certs.user}:{pw}".encode()).decode()
        conn.request("GET", "/metrics", headers={"Authorization": f"Basic {token}"})
        resp = conn.getresponse()
        resp.read()
        if resp.status not in (200, 401):
            raise RuntimeError(f"{name}: {resp.status}")

    try:
        warm = connect()
        scrape(warm, -1)
        warm.close()
        before, started = cpu_seconds(proc.pid or 0), time.perf_counter()
        conn = connect()
        for i in range(scrapes):
            if not keep_alive:
                conn = connect()
            scrape(conn, i)
            if not keep_alive:
                conn.close()
        conn.close()
        wall = time.perf_counter() - started
        cpu = cpu_seconds(proc.pid or 0) - before
    finally:
        parent.send("done")
        proc.join(10)
    return name, cpu / scrapes * 1e3, wall / scrapes * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scrapes", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pmtb-web-bench-") as tmp:
        certs = make_certs(Path(tmp))
        tls, users = _web_file(certs, False), _web_file(certs, True)
        n = args.scrapes
        rows = [
            _run("http", None, certs, n, False, certs.password),
            _run("tls", tls, certs, n, False, certs.password),
            _run("tls keep-alive", tls, certs, n, True, certs.password),
            _run("tls + basic auth", users, certs, n, False, certs.password),
            _run("basic auth uncached", users, certs, max(20, n // 10), True, "guess"),
        ]
    print("| server | CPU ms per scrape | wall ms per scrape |")
    print("|---|---|---|")
    for name, cpu, wall in rows:
        print(f"| {name} | {cpu:.2f} | {wall:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
