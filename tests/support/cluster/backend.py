"""A Service backend for the cluster tests: HTTP on a dual-stack port (so a TCP connect
succeeds and a readinessProbe can ask /ready), that keeps serving for --linger seconds after
SIGTERM, as an application draining its connections does; the endpoint is then terminating.

The kubelet stand-in runs it for pods whose image names ``pingmesh-test/backend``."""

from __future__ import annotations

import argparse
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


class DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--linger", type=float, default=0.0)
    args = p.parse_args()
    server = DualStackServer(("::", args.port), Handler)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stopping.wait()
    time.sleep(args.linger)
    server.shutdown()


if __name__ == "__main__":
    main()
