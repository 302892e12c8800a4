"""Service checks: a TCP connect per ClusterIP and port, a DNS query for the cluster DNS,
spread over the interval, with a cap on how many run at once.

The two probe functions are the only I/O here; tests replace them to fake the world.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from exporter.config import ServicesSettings
from exporter.histogram import Exponential
from exporter.services import dns
from exporter.services.plan import Check, ServicePlan
from exporter.targets import Target

log = logging.getLogger("exporter.services")

Probe = Callable[[Check, float], Awaitable[tuple[str, float | None]]]

BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
# The native histograms' resolution: buckets about 9 % wide, like the RTT's default.
NATIVE_SCHEMA = 3
# nodata is an answer too: NOERROR proves the resolver works and the name exists. AAAA for
# kubernetes.default on a dual-stack cluster is nodata, the Service being single-stack.
GOOD = ("ok", "noerror", "nodata")
_UNREACHABLE = (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN)


def failure(exc: OSError) -> str:
    """The result label of a failed check."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    return "unreachable" if exc.errno in _UNREACHABLE else "error"


async def tcp_connect(check: Check, timeout: float) -> tuple[str, float | None]:
    """ok, refused (a REJECT: usually no endpoints), timeout (the datapath lost the SYN),
    unreachable (an ICMP error), or error. No data is sent; the connection is closed at once."""
    fam = socket.AF_INET if check.family == 4 else socket.AF_INET6
    loop = asyncio.get_running_loop()
    with socket.socket(fam, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        started = time.perf_counter()
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (check.cluster_ip, check.port)), timeout)
        except OSError as exc:  # TimeoutError and ConnectionRefusedError included
            return failure(exc), None
        return "ok", time.perf_counter() - started


def dns_prober(name: str) -> Probe:
    async def dns_query(check: Check, timeout: float) -> tuple[str, float | None]:
        """A real query through the ClusterIP: result is the rcode (noerror, nxdomain, ...),
        nodata for an empty answer, timeout, refused (ICMP port unreachable), or error."""
        fam = socket.AF_INET if check.family == 4 else socket.AF_INET6
        ident = int.from_bytes(os.urandom(2), "big")
        query = dns.build_query(ident, name, dns.TYPE_A if check.family == 4 else dns.TYPE_AAAA)
        loop = asyncio.get_running_loop()
        with socket.socket(fam, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            started = time.perf_counter()
            deadline = started + timeout
            try:
                await loop.sock_connect(sock, (check.cluster_ip, check.port))
                await loop.sock_sendall(sock, query)
                for _ in range(16):  # ignore stray datagrams, a bounded number of them
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        raise TimeoutError
                    packet = await asyncio.wait_for(loop.sock_recv(sock, 4096), remaining)
                    result = dns.answer_result(ident, packet)
                    if result is not None:
                        return result, time.perf_counter() - started
                return "error", None
            except OSError as exc:
                return failure(exc), None

    return dns_query


@dataclass
class CheckState:
    """One ClusterIP and port's results and latency histogram."""

    check: Check
    phase: float
    results: Counter[str] = field(default_factory=Counter)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    seconds_sum: float = 0.0
    native: Exponential = field(default_factory=lambda: Exponential(NATIVE_SCHEMA))
    last: str = ""
    removed: bool = False

    def record(self, result: str, seconds: float | None) -> None:
        self.results[result] += 1
        self.last = result
        if seconds is not None:
            self.native.observe(seconds)
            self.buckets[bisect_left(BUCKETS, seconds)] += 1
            self.seconds_sum += seconds


class ServiceChecker:
    """Runs the planned checks, spread over the interval, a bounded number at once."""

    def __init__(
        self,
        settings: ServicesSettings,
        tcp: Probe = tcp_connect,
        dns_probe: Probe | None = None,
    ) -> None:
        self.interval = settings.interval
        self.timeout = settings.timeout
        query = dns_probe or dns_prober(settings.query_name)
        self._probes: dict[str, Probe] = {"tcp": tcp, "dns": query}
        self._limit = asyncio.Semaphore(settings.concurrency)
        self.states: dict[tuple[str, str, int, int, str], CheckState] = {}
        self.plan = ServicePlan((), (), ())
        self.endpoints: dict[tuple[str, str], dict[str, int]] = {}

    def set_plan(self, plan: ServicePlan, endpoints: dict[tuple[str, str], dict[str, int]]) -> None:
        wanted = {c.key: c for c in plan.checks}
        for key in list(self.states):
            if key not in wanted:
                self.states.pop(key).removed = True
        for key, check in wanted.items():
            state = self.states.get(key)
            if state is None:
                phase = Target(
                    (("service", "/".join(map(str, key))),), check.family, check.cluster_ip
                ).phase()
                self.states[key] = CheckState(check, phase)
            else:
                state.check = check  # a new ClusterIP keeps the series
        self.plan = plan
        self.endpoints = endpoints

    async def _one(self, state: CheckState) -> None:
        try:
            check = state.check
            result, seconds = await self._probes[check.protocol](check, self.timeout)
        except Exception:  # one odd failure must not stop the round
            log.exception("service check %s failed", state.check)
            result, seconds = "error", None
        finally:
            self._limit.release()
        if not state.removed:
            state.record(result, seconds)

    async def run(self) -> None:
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                round_start = time.monotonic()
                for state in sorted(self.states.values(), key=lambda s: s.phase):
                    delay = round_start + state.phase * self.interval - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if state.removed:
                        continue
                    await self._limit.acquire()
                    task = asyncio.create_task(self._one(state), name="services.check")
                    running.add(task)
                    task.add_done_callback(running.discard)
                await asyncio.sleep(max(0.0, round_start + self.interval - time.monotonic()))
        finally:
            for task in running:
                task.cancel()
