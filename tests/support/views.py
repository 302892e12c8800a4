"""Views of a mesh made up for tests and the benchmark, and real HTTP servers that serve
them: one per peer, each on its own loopback address (127.0.1.N) and one shared port, as
peer exporters answer on their pod IPs and the exporter's own port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from exporter.metrics.view import VERSION, Recent, TargetView, View, to_json


def peer_address(n: int) -> str:
    """The n-th peer's address (n from 1): 127.0.1.1, 127.0.1.2, ..."""
    return f"127.0.{1 + (n - 1) // 250}.{1 + (n - 1) % 250}"


def node_name(n: int) -> str:
    return f"node-{n:03d}"


def target(
    name: str,
    address: str,
    kind: str = "pod",
    loss: float | None = 0.0,
    p99: float | None = 0.0003,
    family: str = "ipv4",
) -> TargetView:
    probes = 60 if loss is not None else 0
    received = probes - round(probes * (loss or 0.0))
    labels = (("target_node", name),) if kind != "static" else (("target", address),)
    return TargetView(
        kind,
        name,
        family,
        address,
        labels,
        loss is not None and loss < 1,
        Recent(
            probes,
            received,
            loss,
            None if p99 is None or received == 0 else p99 / 3,
            None if received == 0 else p99,
        ),
    )


def view(
    node: str | None,
    addresses: Sequence[str],
    targets: Sequence[TargetView],
    instance: str | None = None,
) -> View:
    return View(
        VERSION,
        "test",
        instance or f"instance-of-{node}-{addresses[0] if addresses else ''}",
        node,
        "host",
        "pod" if node else None,
        tuple(addresses),
        time.time(),
        1.0,
        60.0,
        tuple(targets),
        (),
        (),
    )


def mesh_views(
    n: int, broken: Mapping[tuple[int, int], float] | None = None, kind: str = "pod"
) -> list[View]:
    """Views of n exporters that each probe the other n-1: peer i's pod target j at
    peer_address(j); broken maps (i, j) to the loss of that pair."""
    broken = broken or {}
    out = []
    for i in range(1, n + 1):
        ts = [
            target(node_name(j), peer_address(j), kind, loss=broken.get((i, j), 0.0))
            for j in range(1, n + 1)
            if j != i
        ]
        out.append(view(node_name(i), [peer_address(i)], ts))
    return out


@dataclass
class Reply:
    """What one fake peer answers: a body, after a delay (seconds), with a status; without
    a Content-Length (length False) the body ends when the connection closes."""

    body: bytes
    delay: float = 0.0
    status: int = 200
    length: bool = True


class _Handler(BaseHTTPRequestHandler):
    server: _ViewServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        reply = self.server.reply()
        if reply.delay:
            time.sleep(reply.delay)
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            if reply.length:
                self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:
            pass  # the client gave up first: what a deadline does


class _ViewServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    reply: Callable[[], Reply]


def free_port(address: str = "127.0.1.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


@contextmanager
def view_servers(
    replies: Mapping[str, Reply | Callable[[], Reply]], port: int | None = None
) -> Iterator[int]:
    """A real HTTP server per address (a loopback one), all on one port; yields the port,
    and stops every server however the block ends."""
    port = port or free_port()
    servers: list[_ViewServer] = []
    threads: list[threading.Thread] = []
    try:
        for address, reply in replies.items():
            srv = _ViewServer((address, port), _Handler)
            srv.reply = reply if callable(reply) else _always(reply)
            servers.append(srv)
            t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
            t.start()
            threads.append(t)
        yield port
    finally:
        # In parallel: each shutdown waits up to a poll interval for its loop.
        stoppers = [threading.Thread(target=srv.shutdown) for srv in servers]
        for t in stoppers:
            t.start()
        for t in [*stoppers, *threads]:
            t.join(5)
        for srv in servers:
            srv.server_close()


def _always(reply: Reply) -> Callable[[], Reply]:
    return lambda: reply


def fixed(v: View) -> Reply:
    return Reply(to_json(v))


class FixedView:
    """A view source that always answers one view."""

    def __init__(self, v: View) -> None:
        self.v = v

    def view(self) -> View:
        return self.v


def main() -> None:
    """`python -m tests.support.views N PORT`: serve the made-up views of peers 2..N of an
    N-node mesh (the pair 2 -> 3 broken) from a process of their own, as peers would, until
    stdin closes; prints "ready" once every server listens."""
    import sys

    n, port = int(sys.argv[1]), int(sys.argv[2])
    views = mesh_views(n, broken={(2, 3): 1.0})
    with view_servers({peer_address(i): fixed(views[i - 1]) for i in range(2, n + 1)}, port):
        print("ready", flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
