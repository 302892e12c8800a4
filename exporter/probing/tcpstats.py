"""Per-target TCP probe state: results, the connect-time histogram and each flow's recent
outcomes, updated only by the event loop; the pure rules that read them.

A flow is one source port towards the target, reused from one probe of it to the next, so
that a multipath hash over the 4-tuple sends it along the same path each time. A target's N
flows are probed in turn; a flow whose recent probes failed while others pass is a path that
drops traffic the other paths carry.
"""

from __future__ import annotations

import errno
import struct
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass

from exporter.histogram import Exponential
from exporter.targets import Target

RESULTS = ("ok", "refused", "timeout", "reset", "unreachable", "error")

_REFUSED = frozenset({errno.ECONNREFUSED})
_RESET = frozenset({errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE})
_UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN})


def classify(err: int) -> str:
    """The result of a connect that ended with this errno (0: connected).

    refused: the SYN was answered by a RST (nothing listens, or a REJECT with tcp-reset) or
    by an ICMP port unreachable; reset: the handshake was aborted after it began;
    unreachable: an ICMP host or network unreachable, or no route; timeout: no answer.
    """
    if err == 0:
        return "ok"
    if err in _REFUSED:
        return "refused"
    if err in _RESET:
        return "reset"
    if err in _UNREACHABLE:
        return "unreachable"
    if err == errno.ETIMEDOUT:
        return "timeout"
    return "error"


# struct tcp_info (linux/tcp.h): eight one-byte fields, then u32s, of which tcpi_rtt (in
# microseconds) is the 16th and tcpi_total_retrans the 24th.
_TCP_INFO = struct.Struct("=8x24I")
TCP_INFO_LEN = _TCP_INFO.size
_RTT_FIELD, _TOTAL_RETRANS_FIELD = 15, 23


def handshake_rtt_ns(info: bytes) -> int | None:
    """The handshake's round-trip time from a connected socket's TCP_INFO, in nanoseconds;
    None when a SYN was retransmitted (the sample then belongs to a later SYN, and the
    connect took longer) or the kernel took no sample."""
    if len(info) < _TCP_INFO.size:
        return None
    fields = _TCP_INFO.unpack_from(info)
    rtt_us, retrans = fields[_RTT_FIELD], fields[_TOTAL_RETRANS_FIELD]
    if retrans or rtt_us == 0:
        return None
    return int(rtt_us) * 1000


@dataclass(frozen=True)
class Flow:
    """One source port towards a target and its last outcomes (bit 1: ok, newest lowest)."""

    port: int = 0  # 0: not bound yet
    history: int = 0
    probes: int = 0

    def after(self, ok: bool, window: int) -> Flow:
        mask = (1 << window) - 1
        return Flow(self.port, ((self.history << 1) | ok) & mask, min(self.probes + 1, window))

    def on_port(self, port: int) -> Flow:
        return Flow(port, self.history, self.probes)

    def lossy(self) -> bool:
        """A failure among its last probes (the up window, or fewer while it is new)."""
        full = (1 << self.probes) - 1
        return self.probes > 0 and self.history & full != full


def lossy_flows(flows: tuple[Flow, ...] | list[Flow]) -> int:
    return sum(1 for f in flows if f.lossy())


class TcpTargetState:
    """One TCP target's counters, connect-time histogram and flows."""

    __slots__ = (
        "address",
        "bounds_ns",
        "buckets",
        "dest",
        "flows",
        "native",
        "next_flow",
        "phase",
        "port",
        "removed",
        "results",
        "seconds_sum_ns",
        "target",
        "window",
    )

    def __init__(
        self,
        target: Target,
        port: int,
        flows: int,
        bounds_ns: list[int],
        window: int,
        native_schema: int,
    ) -> None:
        self.target = target
        self.address = target.address
        self.port = port
        self.dest: tuple[str, int] | tuple[str, int, int, int] = (target.address, port)
        self.phase = target.phase()
        self.bounds_ns = bounds_ns
        self.buckets = [0] * (len(bounds_ns) + 1)
        self.seconds_sum_ns = 0
        self.native = Exponential(native_schema)
        self.results: Counter[str] = Counter()
        self.flows = [Flow() for _ in range(flows)]
        self.next_flow = 0
        self.window = window
        self.removed = False

    def take_flow(self) -> int:
        """The flow the next probe uses: each in turn."""
        i = self.next_flow
        self.next_flow = (i + 1) % len(self.flows)
        return i

    def record(self, flow: int, result: str, connect_ns: int | None) -> None:
        if connect_ns is not None:
            # Native first, as for the RTT: a scrape never sees a classic observation the
            # native buckets lack.
            self.native.observe(connect_ns / 1e9)
            self.buckets[bisect_left(self.bounds_ns, connect_ns)] += 1
            self.seconds_sum_ns += connect_ns
        self.flows[flow] = self.flows[flow].after(result == "ok", self.window)
        self.results[result] += 1

    @property
    def lossy_flows(self) -> int:
        return lossy_flows(self.flows)
