"""TCP probes to peers: one non-blocking connect per target and interval, on the ICMP pacing
(each target at its own phase of the interval), closed at once with a RST.

The connects are driven from the prober's own ticks: an epoll set is polled without waiting
on each tick, so a thousand targets cost a wake-up per tick, not a task or a callback per
connect. A connect's time is the kernel's handshake round-trip time (TCP_INFO ``tcpi_rtt``,
exact when the SYN was not retransmitted), which the event loop's own delay does not touch;
the loop's measure is the fallback when a SYN was retransmitted.

Flows: each target has ``--probe.flows`` source ports, probed in turn. A flow keeps its port
from one probe to the next (SO_LINGER 0 closes with a RST, so no TIME_WAIT holds the 4-tuple),
and takes a new one, counted, when the kernel refuses it (another socket holds it).
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from exporter.config import ProbeSettings
from exporter.probing.pacing import Rounds
from exporter.probing.tcpstats import TCP_INFO_LEN, TcpTargetState, classify, handshake_rtt_ns
from exporter.targets import Target, TargetKey

log = logging.getLogger("exporter.probing.tcp")

TICK_CONNECTS = 20
POLL_BATCH = 1024
_LINGER_RST = struct.pack("ii", 1, 0)
_WILDCARD = {4: "0.0.0.0", 6: "::"}
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


class TcpTarget(NamedTuple):
    """What a TCP probe connects to: a target of the table (whose labels its series carry)
    and a port."""

    target: Target
    port: int


# Which targets of the prober's table get TCP probes, and on which port.
TargetSource = Callable[[Mapping[TargetKey, Target]], Iterable[TcpTarget]]


def of_kinds(port: int, *kinds: str) -> TargetSource:
    """The targets of the given kinds, all on one port (the peer exporters' pods: kind pod)."""

    def source(table: Mapping[TargetKey, Target]) -> Iterable[TcpTarget]:
        return [TcpTarget(t, port) for t in table.values() if t.kind in kinds]

    return source


def every_target(port: int) -> TargetSource:
    """Every target of the table (static mode)."""

    def source(table: Mapping[TargetKey, Target]) -> Iterable[TcpTarget]:
        return [TcpTarget(t, port) for t in table.values()]

    return source


class Attempt:
    """A connect in flight: a slotted class, as one is made per probe."""

    __slots__ = ("deadline_ns", "done", "flow", "sock", "st", "started_ns")

    def __init__(
        self, st: TcpTargetState, flow: int, sock: socket.socket, started_ns: int, deadline_ns: int
    ) -> None:
        self.st = st
        self.flow = flow
        self.sock = sock
        self.started_ns = started_ns
        self.deadline_ns = deadline_ns
        self.done = False


class TcpProber:
    """Connects to every TCP target once an interval and classifies what happened."""

    def __init__(self, settings: ProbeSettings, source: TargetSource) -> None:
        self.settings = settings
        self.source = source
        self.flows = settings.flows
        self._timeout_ns = round(settings.timeout * 1e9)
        self._bounds_ns = [round(b * 1e9) for b in settings.rtt_buckets]
        self.buckets = settings.rtt_buckets
        self._states: dict[tuple[TargetKey, int], TcpTargetState] = {}
        self.states: tuple[TcpTargetState, ...] = ()
        self._order: list[TcpTargetState] = []
        self._epoll = select.epoll()
        self._attempts: dict[int, Attempt] = {}
        self._by_flow: dict[tuple[TcpTargetState, int], Attempt] = {}
        self._expiry: deque[Attempt] = deque()
        # Flows that had to take a new source port, and connects started, by family.
        self.port_changes: Counter[int] = Counter()
        self.connects: Counter[int] = Counter()
        self.last_tick_monotonic = time.monotonic()
        self._rounds = Rounds(self, settings.interval, TICK_CONNECTS)

    @property
    def in_flight(self) -> int:
        return len(self._attempts)

    # ----- target set -----------------------------------------------------------------

    def set_targets(self, table: Mapping[TargetKey, Target]) -> None:
        wanted = {(tt.target.key, tt.port): tt for tt in self.source(table)}
        changed = False
        for key in [k for k in self._states if k not in wanted]:
            self._states.pop(key).removed = True
            changed = True
        for key, (target, port) in wanted.items():
            st = self._states.get(key)
            if st is None:
                self._states[key] = TcpTargetState(
                    target,
                    port,
                    self.flows,
                    self._bounds_ns,
                    self.settings.up_window,
                    self.settings.rtt_native_schema,
                )
                changed = True
            elif st.address != target.address:
                # Same series, new address (a rollout): the flows keep their ports.
                st.target = target
                st.address = target.address
                st.dest = (target.address, port)
                changed = True
        if changed:
            self.states = tuple(self._states.values())
            self._order = sorted(self.states, key=lambda s: s.phase)

    # ----- connects ---------------------------------------------------------------------

    @staticmethod
    def _socket(fam: int) -> socket.socket:
        sock = socket.socket(_FAMILY[fam], socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            if fam == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        except BaseException:
            sock.close()
            raise
        return sock

    def _open(self, st: TcpTargetState, flow: int) -> socket.socket:
        """A non-blocking socket on the flow's port, or on a new one (counted) when the
        kernel refuses it."""
        fam = st.target.family
        port = st.flows[flow].port
        if port:
            sock = self._socket(fam)
            try:
                # Flows of different targets may share a port: their 4-tuples differ.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((_WILDCARD[fam], port))
                return sock
            except OSError:
                sock.close()
                self.port_changes[fam] += 1
        return self._new_port(st, flow)

    def _new_port(self, st: TcpTargetState, flow: int) -> socket.socket:
        """A socket on an ephemeral port that no other flow of the target has: ports the
        kernel offers twice are held bound until it offers another (bounded by the flow
        count), so a target's flows are distinct source ports."""
        fam = st.target.family
        taken = {f.port for i, f in enumerate(st.flows) if i != flow and f.port}
        held: list[socket.socket] = []
        try:
            for _ in range(len(st.flows) + 1):
                # Bound without SO_REUSEADDR: the kernel offers only a port nobody holds.
                sock = self._socket(fam)
                held.append(sock)
                sock.bind((_WILDCARD[fam], 0))
                port = sock.getsockname()[1]
                if port not in taken:
                    break
            held.pop()
        finally:
            for other in held:
                other.close()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        except BaseException:
            sock.close()
            raise
        st.flows[flow] = st.flows[flow].on_port(port)
        return sock

    def _connect(self, st: TcpTargetState, now: int) -> None:
        flow = st.take_flow()
        fam = st.target.family
        previous = self._by_flow.get((st, flow))
        if previous is not None and not previous.done:
            # The flow's turn came round before its last connect timed out (a timeout
            # longer than flows x interval): that connect is lost, and the new one takes
            # the same 4-tuple, so the flow stays on its path.
            self._finish(previous, errno.ETIMEDOUT, timed_out=True)
        try:
            sock = self._open(st, flow)
        except OSError as exc:
            log.debug("cannot open a TCP socket for %s: %s", st.target.display, exc)
            st.record(flow, "error", None)
            return
        self.connects[fam] += 1
        err = sock.connect_ex(st.dest)
        if err == errno.EADDRNOTAVAIL and st.flows[flow].port:
            # The 4-tuple is still taken (this flow's previous connect is in flight when
            # the timeout is longer than the interval): a new port for this flow.
            sock.close()
            self.port_changes[fam] += 1
            st.flows[flow] = st.flows[flow].on_port(0)
            try:
                sock = self._open(st, flow)
            except OSError:
                st.record(flow, "error", None)
                return
            err = sock.connect_ex(st.dest)
        attempt = Attempt(st, flow, sock, now, now + self._timeout_ns)
        if err != errno.EINPROGRESS:
            # Decided at once: connected over loopback, or refused by the local stack
            # (no route).
            self._finish(attempt, err, registered=False)
            return
        fd = sock.fileno()
        self._epoll.register(fd, select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP)
        self._attempts[fd] = attempt
        self._by_flow[(st, flow)] = attempt
        self._expiry.append(attempt)

    def _finish(
        self, a: Attempt, err: int, registered: bool = True, timed_out: bool = False
    ) -> None:
        a.done = True
        sock = a.sock
        if registered:
            fd = sock.fileno()
            self._attempts.pop(fd, None)
            self._epoll.unregister(fd)
            if self._by_flow.get((a.st, a.flow)) is a:
                del self._by_flow[(a.st, a.flow)]
        result = "timeout" if timed_out else classify(err)
        connect_ns: int | None = None
        if result == "ok":
            try:
                connect_ns = handshake_rtt_ns(
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
                )
            except OSError:
                connect_ns = None
            if connect_ns is None:
                connect_ns = time.monotonic_ns() - a.started_ns
        sock.close()  # SO_LINGER 0: a RST, no TIME_WAIT
        if not a.st.removed:
            a.st.record(a.flow, result, connect_ns)

    def service(self, now: int) -> None:
        """The reading part of a tick: connects that completed, then those past their
        deadline (after the completions, so an answer that came in time is not lost)."""
        if self._attempts:
            for _ in range(8):  # bounded: POLL_BATCH events a round
                events = self._epoll.poll(0, POLL_BATCH)
                for fd, _mask in events:
                    a = self._attempts.get(fd)
                    if a is None:
                        continue
                    err = a.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    self._finish(a, err)
                if len(events) < POLL_BATCH:
                    break
        exp = self._expiry
        while exp and (exp[0].done or exp[0].deadline_ns <= now):
            a = exp.popleft()
            if not a.done:
                self._finish(a, errno.ETIMEDOUT, timed_out=True)

    def next_service_ns(self, now: int, width: int) -> int | None:
        if not self._attempts:
            return None
        at = now + width
        for a in self._expiry:
            if not a.done:
                return min(at, a.deadline_ns)
        return at

    def tick_ns(self, n: int) -> int:
        return self._rounds.tick_ns(n)

    async def run(self) -> None:
        """Connects due on each tick of the rounds, completions read on the same ticks;
        forever."""
        try:
            await self._rounds.run()
        finally:
            self.close()

    # The rounds' ticks (exporter.probing.pacing.Ticks).

    def order(self) -> Sequence[TcpTargetState]:
        return self._order

    def before_sends(self, now: int) -> None:
        self.service(now)

    def fire(self, st: TcpTargetState, now: int) -> None:
        self._connect(st, now)

    def after_sends(self, now: int) -> None:
        pass

    def idle(self, now: int, first: bool) -> None:
        self.service(now)

    def close(self) -> None:
        """Abandons the connects in flight (uncounted) and the epoll set."""
        for a in list(self._attempts.values()):
            a.done = True
            a.sock.close()
        self._attempts.clear()
        self._by_flow.clear()
        self._expiry.clear()
        self._epoll.close()
