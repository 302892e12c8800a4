"""/mesh against real HTTP servers (one per peer, on its own loopback address and the shared
port, as peer exporters answer): the matrix of a 100-node mesh, and the bounds on fan-out,
time and size. Timings here check the deadline logic with generous margins only; the
figures are bench/meshpage_bench.py's."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from exporter.app import Parts, mesh_site
from exporter.config import MeshPageSettings, parse_settings
from exporter.discovery.static import StaticDiscovery, system_resolver
from exporter.http import Health, HttpServer
from exporter.metrics.view import View, from_json
from exporter.pages.fetch import Limits, fan_out, fetch, view_url
from exporter.pages.site import Site
from exporter.probing.engine import Prober
from tests.support.views import (
    FixedView,
    Reply,
    fixed,
    free_port,
    mesh_views,
    node_name,
    peer_address,
    target,
    view,
    view_servers,
)

SETTINGS = MeshPageSettings()


def site(own_view: View, port: int, settings: MeshPageSettings = SETTINGS) -> Site:
    return Site(FixedView(own_view), settings, "/metrics", port, ("pod",))


def test_a_100_node_mesh_from_100_real_servers() -> None:
    views = mesh_views(100, broken={(7, 42): 1.0})
    replies = {peer_address(n): fixed(views[n - 1]) for n in range(2, 101)}
    # Deadlines far above the work: this test is about the matrix, on a machine however
    # loaded; the page's time is bench/meshpage_bench.py's figure.
    relaxed = replace(SETTINGS, peer_timeout=10.0, deadline=20.0)
    with view_servers(replies) as port:
        s = site(views[0], port, relaxed)
        started = time.monotonic()
        m = s.matrix(views[0])
        took = time.monotonic() - started
        code, body, ctype = s.mesh()
    assert [r.error for r in m.rows] == [None] * 100
    assert len(m.cells) == 100 * 99
    assert m.cells[(node_name(7), node_name(42), "pod")].state == "down"
    assert {c.state for k, c in m.cells.items() if k[:2] != (node_name(7), node_name(42))} == {"ok"}
    assert took < relaxed.deadline
    assert code == 200 and ctype.startswith("text/html")
    assert body.count(b'<td class="ok"') == 100 * 99 - 1 and body.count(b'<td class="down"') == 1


def _own(n: int) -> View:
    return view(
        "me", ["127.0.9.9"], [target(node_name(i), peer_address(i)) for i in range(1, n + 1)]
    )


def test_one_slow_peer_is_cut_off_at_the_deadline_and_the_rest_shown() -> None:
    views = mesh_views(4)
    replies: dict[str, Reply | Callable[[], Reply]] = {
        peer_address(n): fixed(views[n - 1]) for n in (1, 2, 3)
    }
    replies[peer_address(4)] = replace(fixed(views[3]), delay=5.0)
    settings = replace(SETTINGS, peer_timeout=3.0, deadline=0.5)
    with view_servers(replies) as port:
        started = time.monotonic()
        m = site(_own(4), port, settings).matrix(_own(4))
        took = time.monotonic() - started
    errors = {r.name: r.error for r in m.rows}
    assert errors[node_name(4)] in ("deadline", "timeout")
    assert [errors[node_name(n)] for n in (1, 2, 3)] == [None] * 3
    assert 0.45 < took < 0.5 + 1.5  # cut at the deadline, not at the peer's 5 s


def test_a_peer_slower_than_its_timeout_fails_alone() -> None:
    v = mesh_views(1)[0]
    with view_servers({peer_address(1): replace(fixed(v), delay=1.0)}) as port:
        got = fetch(view_url(peer_address(1), port), Limits(0.2, 1 << 20))
    assert got.error == "timeout" and 0.15 < got.seconds < 1.0


def test_size_status_garbage_and_refusal_are_each_a_failed_peer() -> None:
    big = b'{"version":1,"pad":"' + b"x" * 5000 + b'"}'
    replies: dict[str, Reply | Callable[[], Reply]] = {
        peer_address(1): Reply(big),
        peer_address(2): Reply(b"{}", status=503),
        peer_address(3): Reply(b"<html>not json</html>"),
        peer_address(4): Reply(big, length=False),
    }
    settings = replace(SETTINGS, max_bytes=1024)
    with view_servers(replies) as port:
        m = site(_own(5), port, settings).matrix(_own(5))
    errors = {r.name: r.error for r in m.rows}
    assert "more than 1024" in str(errors[node_name(1)])
    assert errors[node_name(2)] == "HTTP 503"
    assert str(errors[node_name(3)]).startswith("not a view: not JSON")
    assert "longer than 1024" in str(errors[node_name(4)])
    assert errors[node_name(5)] == "connection refused"  # nothing listens there


def test_fan_out_runs_at_most_concurrency_fetches_at_once() -> None:
    lock = threading.Lock()
    now = [0]
    most = [0]
    v = mesh_views(1)[0]

    def counted() -> Reply:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.05)
        with lock:
            now[0] -= 1
        return fixed(v)

    replies: dict[str, Reply | Callable[[], Reply]] = {
        peer_address(n): counted for n in range(1, 21)
    }
    with view_servers(replies) as port:
        urls = [view_url(peer_address(n), port) for n in range(1, 21)]
        got = fan_out(urls, Limits(2.0, 1 << 20), 4, 5.0)
    assert [g.error for g in got] == [None] * 20
    assert 2 <= most[0] <= 4


def test_the_routes_over_the_exporters_own_http_server() -> None:
    views = mesh_views(3, broken={(1, 3): 0.5})
    port = free_port(peer_address(1))
    with view_servers({peer_address(n): fixed(views[n - 1]) for n in (2, 3)}, port):
        server = HttpServer(peer_address(1), port, "/metrics", lambda a: ("", []), Health())
        server.set_routes(site(views[0], port).routes())
        server.start()
        try:
            conn = http.client.HTTPConnection(peer_address(1), port, timeout=5)
            conn.request("GET", "/api/v1/view")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("Content-Type") == "application/json"
            body = resp.read()
            assert from_json(body) == views[0] and json.loads(body)["version"] == 1
            conn.request("GET", "/mesh")
            page = conn.getresponse().read()
            conn.close()
        finally:
            server.stop()
    assert page.count(b'data-s="') == 6 and page.count(b'<td class="lossy"') == 1


def test_which_peers_each_mode_asks() -> None:
    def kinds(argv: list[str]) -> tuple[str, ...]:
        s = parse_settings(argv, {})
        parts = Parts(Prober(s.probe, {}), StaticDiscovery(s.static, [], system_resolver))
        return mesh_site(s, parts, 9871).peer_kinds

    kube = ["--discovery=kubernetes", "--kubernetes.node-name=a", "--kubernetes.namespace=p"]
    assert kinds(kube) == ("pod",)
    assert kinds([*kube, "--mesh.source-network=host"]) == ("node",)
    assert kinds(["--target=198.18.0.1"]) == ("static",)
    assert kinds([]) == ()  # the loopback default probes only this machine
