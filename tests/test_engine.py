"""Reply matching and accounting of the probing engine, with a scripted socket: no network."""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import time
from collections import deque

import pytest

from exporter.config import ProbeSettings
from exporter.probing import wire
from exporter.probing.engine import Prober, payload_length
from exporter.probing.icmpsocket import IcmpSocket, QueuedError, Received
from exporter.probing.pacing import MAX_TICK_NS, MIN_TICK_NS
from exporter.probing.stats import MtuState, TargetState
from exporter.targets import index, static_target


class ScriptedSocket:
    """Records what the engine sends; hands back whatever a test queues."""

    def __init__(self, family: int = 4, raw: bool = False) -> None:
        self.family = family
        self.raw = raw
        self.mode = "raw" if raw else "datagram"
        self.ident = 0x4242 if raw else 0
        self.rcvbuf = 1 << 20
        self.drops = 0
        self.sent: list[tuple[bytes, str, int]] = []
        self.inbox: deque[Received] = deque()
        self.errors: deque[QueuedError] = deque()
        self.fail_with: OSError | None = None

    def fileno(self) -> int:
        return -1

    def destination(self, address: str) -> tuple[str, int]:
        return (address, 0)

    def send(self, packet: bytes, destination: tuple[str, int] | tuple[str, int, int, int]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append((packet, destination[0], time.time_ns()))

    def recv_many(self, limit: int) -> tuple[list[Received], bool]:
        out: list[Received] = []
        while self.inbox and len(out) < limit:
            out.append(self.inbox.popleft())
        # A queued ICMP error also sets the socket's error, as the kernel does.
        return out, bool(self.errors)

    def recv_error(self) -> QueuedError | None:
        return self.errors.popleft() if self.errors else None

    def resize(self, wanted: int) -> None:
        pass

    def close(self) -> None:
        pass

    # --- helpers for tests ---
    def reply(
        self,
        i: int = -1,
        *,
        delay_ns: int = 300_000,
        source: str | None = None,
        payload: bytes | None = None,
        seq_shift: int = 0,
        truncated: bool = False,
    ) -> None:
        packet, address, tx = self.sent[i]
        _t, _c, _k, ident, seq = struct.unpack_from("!BBHHH", packet)
        body = packet[8:] if payload is None else payload
        reply = (
            struct.pack(
                "!BBHHH", wire.ECHO_REPLY[self.family], 0, 0, ident, (seq + seq_shift) & 0xFFFF
            )
            + body
        )
        self.inbox.append((reply, source or address, tx + delay_ns, truncated))


def make(
    targets: list[str], timeout: float = 1.0, raw: bool = False
) -> tuple[Prober, ScriptedSocket, list[TargetState]]:
    sock = ScriptedSocket(raw=raw)
    prober = Prober(ProbeSettings(interval=1.0, timeout=timeout), {4: sock})
    prober.set_targets(index(static_target(t, t) for t in targets))
    by_name = {dict(s.target.labels)["target"]: s for s in prober.states}
    return prober, sock, [by_name[t] for t in targets]


def drain(prober: Prober) -> None:
    prober.drain(prober.channels[4])


def test_reply_counts_received_with_kernel_rtt() -> None:
    prober, sock, (st,) = make(["198.18.1.1"])
    prober._send(st)
    sock.reply(delay_ns=300_000)
    drain(prober)
    assert (st.sent, st.received) == (1, 1)
    assert 300_000 <= st.rtt_sum_ns < 350_000  # fake stamps its send a little later
    assert sum(st.buckets) == 1
    assert st.up == 1
    # 300 us falls in the (200 us, 400 us] bucket
    assert st.buckets[prober._bounds_ns.index(400_000)] == 1


def test_duplicate_is_counted_once() -> None:
    prober, sock, (st,) = make(["198.18.1.1"])
    prober._send(st)
    sock.reply()
    sock.reply()
    drain(prober)
    assert (st.sent, st.received) == (1, 1)
    assert st.errors == {"duplicate": 1}


def test_wrong_source_does_not_count() -> None:
    prober, sock, (a, b) = make(["198.18.1.1", "198.18.1.2"])
    prober._send(a)
    sock.reply(source="198.18.1.2")
    drain(prober)
    assert (a.received, a.errors) == (0, {"wrong_source": 1})
    assert b.errors == {}


def test_corrupt_and_truncated_replies_are_rejected() -> None:
    prober, sock, (st,) = make(["198.18.1.1"])
    prober._send(st)
    good = sock.sent[-1][0][8:]
    sock.reply(payload=bytes([good[0] ^ 0xFF]) + good[1:])
    sock.reply(payload=good[: len(good) // 2])
    drain(prober)
    assert st.received == 0
    assert st.errors == {"corrupt": 1, "truncated": 1}
    sock.reply()  # the genuine reply still counts
    drain(prober)
    assert st.received == 1


def test_unknown_sequence_is_unmatched() -> None:
    prober, sock, (st,) = make(["198.18.1.1"])
    prober._send(st)
    sock.reply(seq_shift=7)
    drain(prober)
    assert st.received == 0 and st.errors == {}
    assert prober.channels[4].unmatched == {"unknown_sequence": 1}


def test_timeout_then_late_reply() -> None:
    prober, sock, (st,) = make(["198.18.1.1"], timeout=0.01)
    prober._send(st)
    time.sleep(0.02)
    prober.sweep()
    assert (st.sent, st.received, st.up) == (1, 0, 0)
    sock.reply(delay_ns=15_000_000)
    drain(prober)
    assert (st.sent, st.received) == (1, 0)
    assert st.errors == {"late": 1}


def test_reply_with_rtt_over_timeout_is_late_even_before_sweep() -> None:
    prober, sock, (st,) = make(["198.18.1.1"], timeout=0.005)
    prober._send(st)
    time.sleep(0.01)
    sock.reply(delay_ns=8_000_000)
    drain(prober)
    assert (st.sent, st.received, st.errors) == (1, 0, {"late": 1})
    prober.sweep()
    assert st.sent == 1  # not counted twice


def test_clock_step_keeps_reply_drops_rtt() -> None:
    prober, sock, (st,) = make(["198.18.1.1"])
    prober._send(st)
    sock.reply(delay_ns=-5_000_000_000)  # wall clock went back 5 s
    drain(prober)
    assert (st.sent, st.received) == (1, 1)
    assert sum(st.buckets) == 0
    assert st.errors == {"clock_step": 1}


def test_icmp_error_from_error_queue_counts_by_type_and_as_lost() -> None:
    prober, sock, (st,) = make(["198.18.1.1"])
    prober._send(st)
    packet, address, _ = sock.sent[-1]
    sock.errors.append(QueuedError(3, 1, address, packet))
    drain(prober)
    assert (st.sent, st.received, st.errors) == (1, 0, {"unreachable": 1})
    prober.sweep()
    assert st.sent == 1


def test_raw_icmp_error_quoting_our_request() -> None:
    prober, sock, (st,) = make(["198.18.1.1"], raw=True)
    prober._send(st)
    packet, _address, _ = sock.sent[-1]
    inner_ip = bytes([0x45, 0, 0, 84, 0, 0, 0, 0, 64, 1, 0, 0, 198, 18, 0, 1, 198, 18, 1, 1])
    err = struct.pack("!BBHI", 11, 0, 0, 0) + inner_ip + packet[:8]
    sock.inbox.append((err, "198.18.0.2", time.time_ns(), False))
    drain(prober)
    assert st.errors == {"ttl_exceeded": 1}
    assert (st.sent, st.received) == (1, 0)


def test_raw_mode_ignores_other_identifiers() -> None:
    prober, sock, (st,) = make(["198.18.1.1"], raw=True)
    prober._send(st)
    packet, address, tx = sock.sent[-1]
    foreign = bytearray(packet)
    foreign[0] = 0
    foreign[4:6] = b"\x00\x01"
    sock.inbox.append((bytes(foreign), address, tx + 1000, False))
    drain(prober)
    assert st.received == 0 and st.errors == {}


def test_send_failure_counted_not_sent() -> None:
    prober, sock, (st,) = make(["198.18.1.1"])
    sock.fail_with = OSError(101, "Network is unreachable")
    prober._send(st)
    prober._send(st)
    assert st.errors == {"send_failed": 2}
    assert st.sent == 0


def test_removed_target_state_is_gone_and_late_replies_ignored() -> None:
    prober, sock, (a, _b) = make(["198.18.1.1", "198.18.1.2"])
    prober._send(a)
    prober.set_targets(index([static_target("198.18.1.2", "198.18.1.2")]))
    assert [s.target.address for s in prober.states] == ["198.18.1.2"]
    sock.reply()
    drain(prober)
    assert a.received == 0 and a.removed


def test_moved_target_keeps_its_counters() -> None:
    prober, sock, (st,) = make(["198.18.1.1"])
    prober._send(st)
    sock.reply()
    drain(prober)
    prober.set_targets(index([static_target("198.18.1.1", "198.18.1.9")]))
    (same,) = prober.states
    assert same is st and same.address == "198.18.1.9" and same.received == 1


@pytest.mark.parametrize(
    "window,pattern,up", [(3, [1, 0, 0], 1), (3, [1, 0, 0, 0], 0), (1, [0, 1], 1), (1, [1, 0], 0)]
)
def test_up_window(window: int, pattern: list[int], up: int) -> None:
    sock = ScriptedSocket()
    prober = Prober(ProbeSettings(up_window=window), {4: sock})
    prober.set_targets(index([static_target("198.18.1.1", "198.18.1.1")]))
    (st,) = prober.states
    for ok in pattern:
        st.reply(1000) if ok else st.lost()
    assert st.up == up


def test_sequence_numbers_unique_while_in_flight() -> None:
    prober, sock, (st,) = make(["198.18.1.1"])
    for _ in range(1000):
        prober._send(st)
    seqs = {struct.unpack_from("!H", p, 6)[0] for p, _a, _t in sock.sent}
    assert len(seqs) == 1000


class _PendingErrorSocket:
    """sendto as the kernel does it: a pending error (left by an ICMP error for any earlier
    request) is reported by the next send, instead of sending, and cleared."""

    def __init__(self, pending: list[int], genuine: int | None = None) -> None:
        self.pending = pending
        self.genuine = genuine
        self.sent = 0
        self.calls = 0

    def sendto(self, packet: bytes, destination: object) -> int:
        self.calls += 1
        if self.pending:
            raise OSError(self.pending.pop(0), "pending")
        if self.genuine is not None:
            raise OSError(self.genuine, "genuine")
        self.sent += 1
        return len(packet)


def _icmp_socket(inner: _PendingErrorSocket) -> IcmpSocket:
    sock = IcmpSocket.__new__(IcmpSocket)
    sock.sock = inner  # type: ignore[assignment]
    return sock


def test_another_targets_pending_error_does_not_fail_this_send() -> None:
    inner = _PendingErrorSocket([errno.EHOSTUNREACH, errno.ECONNREFUSED])
    _icmp_socket(inner).send(b"x" * 64, ("198.18.0.1", 0))
    assert inner.sent == 1


def test_a_send_that_fails_itself_is_reported() -> None:
    inner = _PendingErrorSocket([], genuine=errno.ENETUNREACH)
    with pytest.raises(OSError) as err:
        _icmp_socket(inner).send(b"x" * 64, ("198.18.0.1", 0))
    assert err.value.errno == errno.ENETUNREACH and inner.calls == 4
    other = _PendingErrorSocket([], genuine=errno.EPERM)  # not an ICMP error: at once
    with pytest.raises(OSError):
        _icmp_socket(other).send(b"x" * 64, ("198.18.0.1", 0))
    assert other.calls == 1


# ----- the tick: sending, reading and timing out on one wake-up ----------------------------


def test_tick_width_carries_about_twenty_requests_within_bounds() -> None:
    prober, _, _ = make(["198.18.1.1"])
    assert prober.tick_ns(0) == MAX_TICK_NS
    assert prober.tick_ns(1) == MAX_TICK_NS  # one target: the widest tick
    assert prober.tick_ns(40) == MAX_TICK_NS  # 2 requests a tick, 20 ticks a second
    assert prober.tick_ns(1000) == 20_000_000  # 20 requests a tick
    assert prober.tick_ns(5000) == MIN_TICK_NS  # 25 requests a tick, never wider apart


def test_pending_counts_flights_until_their_outcome() -> None:
    prober, sock, (a, b, c) = make(["198.18.1.1", "198.18.1.2", "198.18.1.3"], timeout=0.05)
    ch = prober.channels[4]
    for st in (a, b, c):
        prober._send(st)
    assert ch.pending == 3
    sock.reply(0)
    sock.reply(0)  # a duplicate settles nothing more
    drain(prober)
    assert ch.pending == 2
    sock.errors.append(QueuedError(3, 1, "198.18.1.2", sock.sent[1][0]))
    drain(prober)
    assert ch.pending == 1 and b.errors
    prober.sweep(time.monotonic_ns() + 100_000_000)
    assert ch.pending == 0 and (c.sent, c.received) == (1, 0)


def test_ticks_come_only_while_requests_are_in_flight() -> None:
    prober, sock, (st,) = make(["198.18.1.1"], timeout=0.5)
    now = time.monotonic_ns()
    assert prober.next_service_ns(now, MAX_TICK_NS) is None  # nothing out: sleep
    prober._send(st)
    assert prober.next_service_ns(now, MAX_TICK_NS) == now + MAX_TICK_NS  # read it soon
    deadline = prober.channels[4].to_expire[0][0]
    assert prober.next_service_ns(now, 10**12) == deadline  # never past its deadline
    sock.reply()
    prober.read()
    assert prober.next_service_ns(now, MAX_TICK_NS) is None


def test_read_leaves_idle_channels_alone_but_reads_every_channel_when_asked() -> None:
    prober, sock, _ = make(["198.18.1.1"])
    calls: list[int] = []
    real = sock.recv_many

    def counting(limit: int) -> tuple[list[Received], bool]:
        calls.append(limit)
        return real(limit)

    sock.recv_many = counting  # type: ignore[method-assign]
    prober.read()
    assert calls == []  # no request in flight: no syscall
    prober.read(every_channel=True)
    assert len(calls) == 1


class EchoingSocket(ScriptedSocket):
    """Answers every request at once, and counts the reads (one per tick at most)."""

    reads = 0

    def send(self, packet: bytes, destination: tuple[str, int] | tuple[str, int, int, int]) -> None:
        super().send(packet, destination)
        self.reply()

    def recv_many(self, limit: int) -> tuple[list[Received], bool]:
        self.reads += 1
        return super().recv_many(limit)


def test_send_loop_keeps_phases_and_coalesces_reads_into_ticks() -> None:
    async def scenario() -> tuple[EchoingSocket, Prober]:
        sock = EchoingSocket()
        prober = Prober(ProbeSettings(interval=0.2, timeout=0.1), {4: sock})
        prober.set_targets(
            index(static_target(f"198.18.2.{i}", f"198.18.2.{i}") for i in range(40))
        )
        task = asyncio.create_task(prober.send_loop())
        await asyncio.sleep(0.95)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task  # cancelling the loop propagates, as a stop needs
        return sock, prober

    sock, prober = asyncio.run(scenario())
    sent = [s.sent for s in prober.states]
    received = [s.received for s in prober.states]
    # 0.95 s at 0.2 s a round: 4 or 5 rounds; every target the same, every reply read.
    assert min(sent) >= 4 and max(sent) - min(sent) <= 1
    assert sum(received) >= sum(sent) - 40  # the last round's replies may be unread
    assert all(not s.errors for s in prober.states)
    # 40 targets each 0.2 s is 200 requests a second: 10 ms ticks, about 100 a second; one
    # read per send would be about 200.
    assert sock.reads <= 130
    # Sent within half a tick of the phase (plus scheduling noise on a busy machine).
    assert prober.rounds.last_max_lag_s < 0.05
    # Evenly spread: the sends of one round span most of the interval, in phase order.
    first_round = sorted(t for _, _, t in sock.sent[:40])
    assert (first_round[-1] - first_round[0]) / 1e9 > 0.1


# ----- full-size (MTU) probes ----------------------------------------------------------


def make_full_size(
    targets: list[str], size: int = 1500, up_window: int = 3, raw: bool = False
) -> tuple[Prober, ScriptedSocket, list[MtuState]]:
    sock = ScriptedSocket(raw=raw)
    prober = Prober(
        ProbeSettings(interval=10.0, timeout=1.0, up_window=up_window),
        {4: sock},
        sizer=lambda t: size,
    )
    prober.set_targets(index(static_target(t, t) for t in targets))
    states = {dict(s.target.labels)["target"]: s for s in prober.states}
    out = [states[t] for t in targets]
    assert all(isinstance(s, MtuState) for s in out)
    return prober, sock, [s for s in out if isinstance(s, MtuState)]


def test_full_size_probes_fill_the_ip_packet() -> None:
    prober, sock, (a, b) = make_full_size(["198.18.1.1", "198.18.1.2"], size=1400)
    prober._send(a)
    prober._send(b)
    assert [len(p) for p, *_ in sock.sent] == [1400 - 20, 1400 - 20]
    assert a.tail is b.tail  # one tail for every target of a size
    assert payload_length(6, 1280) == 1280 - 48
    assert payload_length(4, 30) == wire.PAYLOAD_HEAD  # never below the cookie and nonce


def test_small_prober_keeps_its_payload_size() -> None:
    prober, sock, (st,) = make(["198.18.1.1"])
    prober._send(st)
    assert len(sock.sent[0][0]) == 8 + ProbeSettings().payload_size
    assert not isinstance(st, MtuState)


def test_reply_confirms_the_probed_size_as_path_mtu() -> None:
    prober, sock, (st,) = make_full_size(["198.18.1.1"])
    assert st.path_mtu == 0  # not known before any answer
    prober._send(st)
    sock.reply()
    drain(prober)
    assert (st.sent, st.received, st.path_mtu) == (1, 1, 1500)


def test_packet_too_big_from_error_queue_reports_the_routers_mtu() -> None:
    prober, sock, (st,) = make_full_size(["198.18.1.1"])
    prober._send(st)
    packet, address, _ = sock.sent[-1]
    sock.errors.append(QueuedError(3, 4, address, packet, 1400))  # frag-needed, ee_info
    drain(prober)
    assert (st.sent, st.received, st.errors, st.path_mtu) == (1, 0, {"packet_too_big": 1}, 1400)


def test_raw_packet_too_big_reports_the_mtu_in_the_header() -> None:
    prober, sock, (st,) = make_full_size(["198.18.1.1"], raw=True)
    prober._send(st)
    packet, address, _ = sock.sent[-1]
    quoted = (
        bytes([0x45, 0, 5, 0xDC, 0, 0, 0x40, 0, 64, 1, 0, 0])
        + socket.inet_aton("198.18.0.1")
        + socket.inet_aton(address)
        + packet[:8]
    )
    error = struct.pack("!BBHHH", 3, 4, 0, 0, 1380) + quoted
    sock.inbox.append((error, "198.18.0.254", None, False))
    drain(prober)
    assert (st.sent, st.errors, st.path_mtu) == (1, {"packet_too_big": 1}, 1380)


def test_path_mtu_is_forgotten_when_the_window_hears_nothing() -> None:
    prober, sock, (st,) = make_full_size(["198.18.1.1"], up_window=2)
    prober._send(st)
    sock.reply()
    drain(prober)
    now = time.monotonic_ns()
    prober._send(st)
    prober.sweep(now + 2_000_000_000)
    assert (st.sent, st.path_mtu) == (2, 1500)  # one of the last two was answered
    prober._send(st)
    prober.sweep(now + 4_000_000_000)
    assert (st.sent, st.path_mtu) == (3, 0)  # a black hole opened: no old size left
    prober._send(st)
    packet, address, _ = sock.sent[-1]
    sock.errors.append(QueuedError(3, 4, address, packet, 1400))
    drain(prober)
    prober._send(st)
    prober.sweep(now + 8_000_000_000)
    assert (st.sent, st.path_mtu) == (5, 1400)  # a router's word counts as an answer


def test_packet_too_big_without_an_mtu_keeps_what_was_known() -> None:
    prober, sock, (st,) = make_full_size(["198.18.1.1"])
    prober._send(st)
    sock.reply()
    drain(prober)
    prober._send(st)
    packet, address, _ = sock.sent[-1]
    sock.errors.append(QueuedError(3, 4, address, packet, 0))
    drain(prober)
    assert (st.errors, st.path_mtu) == ({"packet_too_big": 1}, 1500)


def test_a_moved_target_is_sized_again() -> None:
    sizes = {"198.18.1.1": 1500, "198.18.9.9": 9000}
    sock = ScriptedSocket()
    prober = Prober(ProbeSettings(), {4: sock}, sizer=lambda t: sizes[t.address])
    prober.set_targets(index([static_target("peer", "198.18.1.1")]))
    (st,) = prober.states
    assert isinstance(st, MtuState) and st.size == 1500
    prober.set_targets(index([static_target("peer", "198.18.9.9")]))
    assert st.size == 9000 and len(st.tail) == 9000 - 28 - wire.PAYLOAD_HEAD
