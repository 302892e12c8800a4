"""The exporter's lifecycle and HTTP surface in-process, through its Seams: scripted
sockets, port 0, no root and no network beyond loopback HTTP."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import replace

import pytest

from exporter.app import EXIT_FATAL, EXIT_OK, App, Seams
from exporter.config import parse_settings
from exporter.discovery.static import StaticDiscovery
from tests.support.metrics import parse, value
from tests.test_engine import ScriptedSocket
from tests.test_metrics import PROTOBUF_ACCEPT


class FdSocket(ScriptedSocket):
    """A scripted socket with a real descriptor, so the event loop can watch it."""

    def __init__(self, family: int) -> None:
        super().__init__(family)
        self._pair = socket.socketpair()

    def fileno(self) -> int:
        return self._pair[0].fileno()

    def close(self) -> None:
        for s in self._pair:
            s.close()


@pytest.fixture
def sockets() -> Iterator[dict[int, FdSocket]]:
    socks = {4: FdSocket(4), 6: FdSocket(6)}
    yield socks
    for s in socks.values():
        s.close()


@pytest.fixture
def large_sockets() -> Iterator[dict[int, FdSocket]]:
    socks = {4: FdSocket(4), 6: FdSocket(6)}
    yield socks
    for s in socks.values():
        s.close()


def app(sockets: dict[int, FdSocket], *args: str, large: dict[int, FdSocket] | None = None) -> App:
    settings = parse_settings(
        [
            "--web.listen-address=127.0.0.1:0",
            "--probe.interval=50ms",
            "--probe.timeout=100ms",
            *args,
        ],
        environ={},
    )
    if large is None:
        settings = replace(settings, probe=replace(settings.probe, mtu_interval=0.0))
    full_size = large or {}
    return App(
        settings,
        Seams(
            open_socket=lambda fam, *_: sockets[fam],
            defaults=lambda: ["127.0.0.1", "::1"],
            open_full_size_socket=lambda fam, *_: full_size[fam],
            route_mtu=lambda address: 1500 if ":" not in address else 1280,
        ),
    )


def get(port: int, path: str, accept: str = "") -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            if accept:
                return resp.status, resp.headers["Content-Type"].encode()
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def serving_port(caplog: pytest.LogCaptureFixture, task: asyncio.Task[int]) -> int:
    for _ in range(200):
        for rec in caplog.records:
            m = re.search(r"serving metrics on http://\S+:(\d+)/", rec.getMessage())
            if m:
                return int(m.group(1))
        assert not task.done(), "the exporter stopped before serving"
        await asyncio.sleep(0.02)
    raise AssertionError("the exporter never said where it serves")


def test_serves_probes_and_stops_cleanly(
    sockets: dict[int, FdSocket],
    large_sockets: dict[int, FdSocket],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)

    async def scenario() -> int:
        a = app(sockets, "--probe.mtu-interval=50ms", large=large_sockets)
        task = asyncio.create_task(a.run(), name="exporter")
        port = await serving_port(caplog, task)
        await asyncio.sleep(0.4)  # a few rounds, every probe lost: the socket never answers
        ready = await asyncio.to_thread(get, port, "/readyz")
        live = await asyncio.to_thread(get, port, "/healthz")
        status, body = await asyncio.to_thread(get, port, "/metrics")
        missing = await asyncio.to_thread(get, port, "/nothing")
        proto = await asyncio.to_thread(get, port, "/metrics", PROTOBUF_ACCEPT)
        a.request_stop()
        code = await asyncio.wait_for(task, 2)
        assert (ready[0], live[0], status, missing[0], proto[0]) == (200, 200, 200, 404, 200)
        assert proto[1].startswith(b"application/vnd.google.protobuf; proto=")
        s = parse(body.decode())
        assert value(s, "pingmesh_targets", kind="static") == 2
        assert value(s, "pingmesh_probe_sent_total", target="127.0.0.1") >= 2
        assert value(s, "pingmesh_probe_received_total", target="127.0.0.1") == 0
        assert value(s, "pingmesh_mtu_probe_sent_total", target="127.0.0.1") >= 2
        assert value(s, "pingmesh_mtu_probe_received_total", target="::1") == 0
        assert value(s, "pingmesh_path_mtu_bytes", default=-1) == -1  # never confirmed
        return code

    assert asyncio.run(scenario()) == EXIT_OK
    assert sockets[4].sent and sockets[6].sent
    # Full-size probes fill the IP packet the route's MTU allows: 1500 - 20 and 1280 - 40.
    assert {len(p) for p, *_ in large_sockets[4].sent} == {1480}
    assert {len(p) for p, *_ in large_sockets[6].sent} == {1240}
    # The small echoes keep their size and their own socket.
    assert {len(p) for p, *_ in sockets[4].sent} == {64}


def test_a_task_that_ends_is_an_error(
    sockets: dict[int, FdSocket], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def returns_at_once(self: StaticDiscovery, publish: object) -> None:
        return None

    monkeypatch.setattr(StaticDiscovery, "run", returns_at_once)
    code = asyncio.run(asyncio.wait_for(app(sockets).run(), 5))
    assert code == EXIT_FATAL
    assert any("task discovery.static ended" in r.getMessage() for r in caplog.records)
