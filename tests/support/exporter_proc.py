"""Run the real exporter process inside a test-bed namespace and read its /metrics."""

from __future__ import annotations

import ctypes
import ctypes.util
import gzip
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from tests.support.metrics import Samples, parse
from tests.support.netbed import Namespace

ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")


class _NsConnection(http.client.HTTPConnection):
    """An HTTP connection whose socket is created inside a network namespace."""

    def __init__(self, ns: Namespace, port: int, timeout: float, host: str = "127.0.0.1") -> None:
        super().__init__(host, port, timeout=timeout)
        self._ns = ns

    def connect(self) -> None:
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = self._ns.socket(fam, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect((self.host, self.port))
        self.sock = sock


def http_get(
    ns: Namespace,
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
    host: str = "127.0.0.1",
) -> tuple[int, dict[str, str], bytes]:
    conn = _NsConnection(ns, port, timeout, host)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class ExporterProcess:
    def __init__(
        self,
        ns: Namespace,
        args: Sequence[str],
        port: int = 9871,
        no_capabilities: bool = False,
        client: tuple[Namespace, str] | None = None,
    ) -> None:
        self.ns = ns
        self.port = port
        # Where the test's HTTP requests come from: by default the exporter's own namespace
        # over loopback; a (namespace, address) pair keeps them off its port range.
        self.client = client or (ns, "127.0.0.1")
        argv = [
            sys.executable,
            "-m",
            "exporter",
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--log.level",
            "debug",
            *args,
        ]
        if no_capabilities:
            # Root's uid without a single capability: what a container with
            # `capabilities: drop: [ALL]` gets.
            argv = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", *argv]
        # Its output goes to a file, not a pipe: nobody reads a pipe while the exporter runs,
        # and once its 64 KiB are full (debug logs a line per request: a few Prometheus
        # servers scraping every second fill it in about two minutes) every thread that logs
        # blocks in write(), the HTTP server with them, and scrapes fail.
        self._out = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by __exit__)
        self.proc: subprocess.Popen[str] = ns.popen(
            argv, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT, text=True
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"exporter exited with {self.proc.returncode}: {self.output()}"
                )
            try:
                code, _, _ = self.get("/readyz", timeout=2)
                if code == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"exporter not ready after {timeout}s")

    def get(self, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        ns, host = self.client
        return http_get(ns, self.port, path, host=host, **kw)

    def scrape(self) -> Samples:
        code, headers, body = self.get("/metrics", headers={"Accept-Encoding": "gzip"})
        assert code == 200
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        return parse(body.decode())

    def stop(self, timeout: float = 5.0) -> float:
        """SIGTERM; returns the seconds it took to exit."""
        if self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError("exporter did not stop on SIGTERM") from None
        return time.monotonic() - started

    def output(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        self._out.seek(0)
        return self._out.read()

    def __enter__(self) -> ExporterProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._out.close()


def in_namespace(ns: Namespace, fn: Callable[[], T]) -> T:
    """Call fn in a thread that has entered ns: sockets it creates (a listening server's,
    say) live in that namespace for good."""
    out: list[Any] = []

    def worker() -> None:
        try:
            fd = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
                if libc.setns(fd, 0x40000000) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            out.append((True, fn()))
        except BaseException as exc:
            out.append((False, exc))

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    thread.join(30)
    ok, result = out[0]
    if not ok:
        raise result
    return cast(T, result)
