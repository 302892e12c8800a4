"""The probing engine: paced echo requests to every target over one socket per family, read on
the same ticks that send them, with replies and ICMP errors matched to the requests still in
flight.

A probe's outcome is decided once: a valid reply within the timeout (received), or a timeout
or ICMP error (lost). Anything else that arrives for it later (duplicates, late or corrupt
replies, replies from the wrong source) is counted as an error and never changes RTT or loss.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from exporter.config import ProbeSettings
from exporter.probing import wire
from exporter.probing.icmpsocket import ProbeSocket
from exporter.probing.pacing import Rounds
from exporter.probing.stats import MtuState, TargetState, recent_size
from exporter.targets import Target, TargetKey, diff

log = logging.getLogger("exporter.probing")

PENDING, ANSWERED, EXPIRED = 0, 1, 2

# Sending, reading and timing out share the ticks of exporter.probing.pacing: every tick
# reads what is queued, sends what is due and expires what is overdue, about TICK_PACKETS
# requests a tick.
TICK_PACKETS = 20
DRAIN_BATCH = 2048  # packets read per tick and socket before yielding to the loop
RECV_BATCH = 128
_ID_SEQ = struct.Struct("!HH")
CLOCK_SLACK_NS = 2_000_000
# IP header bytes before the ICMP header, by family (no options, no extension headers).
IP_HEADER = {4: 20, 6: 40}

# The IP packet size of a target's full-size probes, decided when it is added or moves.
Sizer = Callable[[Target], int]


class Flight:
    """An echo request in flight: a slotted class, as one is made per probe, thousands a second."""

    __slots__ = ("address", "payload", "st", "status", "tx_mono", "tx_real")

    st: TargetState
    # Where the request went: st.address changes when the target moves.
    address: str
    payload: bytes
    tx_real: int
    tx_mono: int
    status: int

    def __init__(
        self, st: TargetState, address: str, payload: bytes, tx_real: int, tx_mono: int
    ) -> None:
        self.st = st
        self.address = address
        self.payload = payload
        self.tx_real = tx_real
        self.tx_mono = tx_mono
        self.status = PENDING


@dataclass
class Channel:
    """Everything that belongs to one address family's socket."""

    family: int
    sock: ProbeSocket | None
    flights: dict[int, Flight] = field(default_factory=dict)
    to_expire: deque[tuple[int, int, Flight]] = field(default_factory=deque)
    to_forget: deque[tuple[int, int, Flight]] = field(default_factory=deque)
    seq: int = 0
    # Flights still PENDING: while there are any, ticks come at least every tick width to
    # read their replies; with none, the loop sleeps until the next send.
    pending: int = 0
    packets_sent: int = 0
    reply_type: int = 0
    unmatched: Counter[str] = field(default_factory=Counter)
    seq_reuse: int = 0

    def unmatched_add(self, reason: str) -> None:
        self.unmatched[reason] += 1


def payload_length(family: int, size: int) -> int:
    """Echo payload bytes that make an IP packet of size bytes (at least the payload's head)."""
    return max(size - IP_HEADER[family] - 8, wire.PAYLOAD_HEAD)


class Prober:
    """Sends every target's echo requests on schedule and matches what comes back.

    With a sizer, the same machinery sends full-size probes: each target's payload fills
    the IP packet size the sizer gives it (over sockets that forbid fragmentation), its state
    is an MtuState, and a router's packet-too-big report sets its path MTU."""

    def __init__(
        self,
        settings: ProbeSettings,
        sockets: Mapping[int, ProbeSocket],
        sizer: Sizer | None = None,
    ) -> None:
        self.settings = settings
        self.sizer = sizer
        self.channels = {
            f: Channel(f, sockets.get(f), reply_type=wire.ECHO_REPLY[f]) for f in (4, 6)
        }
        self.buckets = settings.rtt_buckets
        self._bounds_ns = [round(b * 1e9) for b in self.buckets]
        self._interval_ns = round(settings.interval * 1e9)
        self._timeout_ns = round(settings.timeout * 1e9)
        # Replies are remembered this long after their deadline so late ones and duplicates
        # are recognised, not mistaken for strangers.
        self._linger_ns = max(self._timeout_ns, 5_000_000_000)
        self._cookie = os.urandom(8)
        self._tail = self._tail_of(settings.payload_size)
        # Full-size tails by length: every target of one size shares one bytes object.
        self._tails: dict[int, bytes] = {}
        self._nonce = int.from_bytes(os.urandom(4), "big")
        self._states: dict[TargetKey, TargetState] = {}
        self._targets: dict[TargetKey, Target] = {}
        self._order: list[TargetState] = []
        self._logged_send_errors: set[tuple[TargetKey, int]] = set()
        self.states: tuple[TargetState, ...] = ()
        self._rounds = Rounds(self, settings.interval, TICK_PACKETS)
        self.rounds = self._rounds.stats
        self.last_tick_monotonic = time.monotonic()

    @staticmethod
    def _tail_of(payload_size: int) -> bytes:
        filler = bytes(range(256)) * ((payload_size // 256) + 1)
        return filler[wire.PAYLOAD_HEAD : payload_size]

    # ----- target set -----------------------------------------------------------------

    def set_targets(self, table: Mapping[TargetKey, Target]) -> None:
        change = diff(self._targets, table)
        if change.empty:
            return
        for t in change.removed:
            st = self._states.pop(t.key)
            st.removed = True
            self._logged_send_errors = {e for e in self._logged_send_errors if e[0] != t.key}
        make = TargetState if self.sizer is None else MtuState
        # The mesh page's last minute, of the small echoes only.
        recent = recent_size(self.settings.interval) if self.sizer is None else 0
        for t in change.added:
            st = self._states[t.key] = make(
                t,
                self._bounds_ns,
                self.settings.up_window,
                self.settings.rtt_native_schema,
                recent,
            )
            self._set_destination(st)
        for t in change.moved:
            st = self._states[t.key]
            st.target = t
            st.address = t.address
            self._set_destination(st)
        self._targets = dict(table)
        self.states = tuple(self._states.values())
        self._order = sorted(self.states, key=lambda s: s.phase)
        for fam, ch in self.channels.items():
            if ch.sock is not None:
                count = sum(1 for s in self.states if s.target.family == fam)
                ch.sock.resize(min(max(count * 1280, 256 * 1024), 32 * 1024 * 1024))
        log.info(
            "target set changed: %d added, %d removed, %d moved, %d total",
            len(change.added),
            len(change.removed),
            len(change.moved),
            len(self.states),
        )

    def _set_destination(self, st: TargetState) -> None:
        sock = self.channels[st.target.family].sock
        st.dest = sock.destination(st.address) if sock is not None else None
        if self.sizer is None or not isinstance(st, MtuState):
            st.tail = self._tail
            return
        st.size = self.sizer(st.target)
        length = payload_length(st.target.family, st.size)
        tail = self._tails.get(length)
        if tail is None:
            tail = self._tails[length] = self._tail_of(length)
        st.tail = tail
        log.debug("full-size probes to %s: %d bytes", st.target.display, st.size)

    # ----- sending ----------------------------------------------------------------------

    def _send(self, st: TargetState) -> None:
        fam = st.target.family
        ch = self.channels[fam]
        sock = ch.sock
        dest = st.dest
        if sock is None or dest is None:
            self._send_failed(st, errno.EAFNOSUPPORT)
            return
        seq = ch.seq = (ch.seq + 1) & 0xFFFF
        old = ch.flights.get(seq)
        if old is not None and old.status == PENDING:
            # More probes in flight than sequence numbers: the oldest is given up as lost.
            # Only reachable with rate x timeout beyond 65,536 per family.
            old.status = EXPIRED
            ch.pending -= 1
            old.st.lost()
            ch.seq_reuse += 1
        nonce = self._nonce = (self._nonce + 1) & 0xFFFFFFFFFFFFFFFF
        packet = wire.echo_request(
            fam, sock.ident, seq, self._cookie, nonce, st.tail, sock.raw and fam == 4
        )
        tx_mono = time.monotonic_ns()
        tx_real = time.time_ns()
        try:
            sock.send(packet, dest)
        except OSError as exc:
            self._send_failed(st, exc.errno or 0)
            return
        flight = Flight(st, st.address, packet[8:], tx_real, tx_mono)
        ch.flights[seq] = flight
        ch.pending += 1
        ch.to_expire.append((tx_mono + self._timeout_ns, seq, flight))
        ch.packets_sent += 1

    def _send_failed(self, st: TargetState, err: int) -> None:
        st.error("send_failed")
        key = (st.target.key, err)
        if key not in self._logged_send_errors:
            self._logged_send_errors.add(key)
            log.warning(
                "cannot send to %s (%s): %s",
                st.target.display,
                st.address,
                os.strerror(err) if err else "unknown error",
            )

    def tick_ns(self, n: int) -> int:
        """The tick width for n targets per interval (exporter.probing.pacing)."""
        return self._rounds.tick_ns(n)

    def read(self, every_channel: bool = False) -> None:
        """The reading part of a tick: the channels with requests in flight (every channel
        when asked: strays and errors for nobody's request are read once a round). A tick
        reads before it sends, so a reply is matched against the requests that were out
        when it came, not against the sequence numbers sent since."""
        for ch in self.channels.values():
            if ch.sock is not None and (ch.pending or every_channel):
                self.drain(ch)

    def next_service_ns(self, now: int, width: int) -> int | None:
        """When the next tick must come for requests in flight: a tick width from now, or
        the first deadline if sooner; None with nothing in flight."""
        wake: int | None = None
        for ch in self.channels.values():
            if ch.pending:
                at = now + width
                if ch.to_expire:
                    at = min(at, ch.to_expire[0][0])
                wake = at if wake is None else min(wake, at)
        return wake

    async def send_loop(self) -> None:
        """Sends, reads and timeouts, all on the rounds' ticks; forever."""
        await self._rounds.run()

    # The rounds' ticks (exporter.probing.pacing.Ticks).

    def order(self) -> Sequence[TargetState]:
        return self._order

    def before_sends(self, now: int) -> None:
        self.read()

    def fire(self, st: TargetState, now: int) -> None:
        self._send(st)

    def after_sends(self, now: int) -> None:
        self.sweep(now, drained=True)

    def idle(self, now: int, first: bool) -> None:
        self.read(first)
        self.sweep(now, drained=True)

    # ----- receiving --------------------------------------------------------------------

    def drain(self, ch: Channel) -> None:
        """Read everything queued on the channel's socket (on a tick, and in tests)."""
        sock = ch.sock
        if sock is None:
            return
        reply_type = ch.reply_type
        raw = sock.raw
        ident = sock.ident
        on_reply = self._on_reply
        for _ in range(DRAIN_BATCH // RECV_BATCH):
            batch, failed = sock.recv_many(RECV_BATCH)
            for data, source, rx_ns, truncated in batch:
                # Echo replies take the short path; everything else is parsed in full.
                if len(data) >= 8 and data[0] == reply_type:
                    their_ident, seq = _ID_SEQ.unpack_from(data, 4)
                    if raw and their_ident != ident:
                        continue  # another program's ping: raw sockets see everything
                    on_reply(ch, source, seq, data[8:], rx_ns, truncated)
                else:
                    self._on_other(ch, data)
            if failed:
                # The kernel reported an error on the socket: its details (an ICMP error
                # for one of our requests) wait on the error queue.
                self._drain_errors(ch)
            elif len(batch) < RECV_BATCH:
                return

    def _drain_errors(self, ch: Channel) -> None:
        sock = ch.sock
        if sock is None or sock.raw:
            return
        for _ in range(DRAIN_BATCH):
            try:
                qe = sock.recv_error()
            except OSError:
                return
            if qe is None:
                return
            quoted = wire.parse_quoted_request(ch.family, qe.quoted)
            if qe.icmp_type < 0 or quoted is None:
                ch.unmatched_add("unknown_error")
                continue
            reason = wire.error_reason(ch.family, qe.icmp_type, qe.code)
            self._on_error(ch, reason, quoted[1], qe.destination, qe.info)

    def _on_other(self, ch: Channel, data: bytes) -> None:
        parsed = wire.parse_icmp(ch.family, data)
        sock = ch.sock
        assert sock is not None
        if isinstance(parsed, wire.IcmpError):
            if sock.raw and parsed.ident != sock.ident:
                return
            self._on_error(ch, parsed.reason, parsed.seq, parsed.inner_destination, parsed.mtu)
        elif isinstance(parsed, wire.Ignored):
            ch.unmatched_add(parsed.why)

    def _on_reply(
        self, ch: Channel, source: str, seq: int, payload: bytes, rx_ns: int | None, truncated: bool
    ) -> None:
        flight = ch.flights.get(seq)
        if flight is None:
            ch.unmatched_add("unknown_sequence")
            return
        st = flight.st
        if st.removed:
            return
        if source != flight.address:
            st.error("wrong_source")
            return
        expected = flight.payload
        if payload != expected:
            st.error("truncated" if truncated or len(payload) < len(expected) else "corrupt")
            return
        status = flight.status
        if status == ANSWERED:
            st.error("duplicate")
            return
        if status == EXPIRED:
            st.error("late")
            return
        now_real = time.time_ns()
        elapsed = time.monotonic_ns() - flight.tx_mono
        rtt = (rx_ns if rx_ns is not None else now_real) - flight.tx_real
        if rtt < 0 or rtt > elapsed + CLOCK_SLACK_NS:
            # The wall clock stepped between send and receive: the reply is real, its RTT
            # is not.
            flight.status = ANSWERED
            ch.pending -= 1
            st.reply(None)
            st.error("clock_step")
            return
        if rtt > self._timeout_ns:
            flight.status = EXPIRED
            ch.pending -= 1
            st.lost()
            st.error("late")
            return
        flight.status = ANSWERED
        ch.pending -= 1
        st.reply(rtt)

    def _on_error(
        self, ch: Channel, reason: str, seq: int, destination: str | None, mtu: int = 0
    ) -> None:
        flight = ch.flights.get(seq)
        if flight is None or (destination is not None and destination != flight.address):
            ch.unmatched_add("unknown_error")
            return
        st = flight.st
        if st.removed:
            return
        st.error(reason)
        if flight.status == PENDING:
            flight.status = EXPIRED
            ch.pending -= 1
            st.lost()
        if reason == "packet_too_big":
            st.too_big(mtu)

    # ----- timeouts ---------------------------------------------------------------------

    def sweep(self, now: int | None = None, drained: bool = False) -> None:
        """Give up on requests past their deadline and forget old flights. ``drained``: the
        caller has just read every channel with requests in flight."""
        if now is None:
            now = time.monotonic_ns()
        for ch in self.channels.values():
            if ch.to_expire and ch.to_expire[0][0] <= now:
                # Replies already queued in the kernel were on time or not by their own
                # timestamps; read them before declaring anything lost. The error queue is
                # read too: a send that was handed an ICMP error as the socket's pending
                # error cleared it, so no read reports it.
                if not drained:
                    self.drain(ch)
                self._drain_errors(ch)
            exp = ch.to_expire
            while exp and exp[0][0] <= now:
                deadline, seq, flight = exp.popleft()
                if flight.status == PENDING:
                    flight.status = EXPIRED
                    ch.pending -= 1
                    if not flight.st.removed:
                        flight.st.lost()
                ch.to_forget.append((deadline + self._linger_ns, seq, flight))
            fg = ch.to_forget
            while fg and fg[0][0] <= now:
                _, seq, flight = fg.popleft()
                if ch.flights.get(seq) is flight:
                    del ch.flights[seq]
