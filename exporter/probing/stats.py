"""Per-target probe state: counters and the RTT histogram, updated only by the event loop.

The HTTP thread reads these objects while the loop writes them. Each field is read once per
render (an int or a list copy, atomic under the GIL), so a scrape may lag a probe behind but
never sees a histogram whose count disagrees with its buckets.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections import Counter

from exporter.histogram import Exponential
from exporter.targets import Target

# The mesh page's "last minute": this many seconds of outcomes per target, but never more
# than RECENT_MAX of them (a 10 ms interval keeps the last 6 s).
RECENT_SECONDS = 60.0
RECENT_MAX = 600
# What a slot of Recent holds besides an RTT in nanoseconds.
LOST = -1
UNTIMED = -2  # received, but its RTT could not be trusted (a clock step)


def recent_size(interval: float) -> int:
    """How many outcomes make the last minute at this interval."""
    return max(1, min(RECENT_MAX, math.ceil(RECENT_SECONDS / interval - 1e-9)))


def ring(size: int) -> array[int]:
    """A ring of outcomes for TargetState.recent: exactly size 8-byte slots (the RTT in
    nanoseconds, LOST or UNTIMED), no spare capacity. 60 slots (1 s interval) cost
    8 * 60 + 80 bytes; the count beside it in TargetState at most 32 more, about 600 bytes
    a target in all."""
    return array("q", [0]) * size


def ring_values(slots: array[int], count: int) -> list[int]:
    """The outcomes a ring holds after count writes, in no particular order. Only the
    order-free figures (loss, quantiles) are read from it, so a reader on another thread
    that copies it between two writes is still right."""
    return slots[:count].tolist() if count < len(slots) else slots.tolist()


class TargetState:
    """One target's counters and RTT histogram."""

    __slots__ = (
        "address",
        "bounds_ns",
        "buckets",
        "dest",
        "errors",
        "history",
        "native",
        "phase",
        "received",
        "recent",
        "recent_count",
        "removed",
        "resolved",
        "rtt_sum_ns",
        "sent",
        "tail",
        "target",
        "up_mask",
    )

    def __init__(
        self,
        target: Target,
        bounds_ns: list[int],
        up_window: int,
        native_schema: int,
        recent: int = 0,
    ) -> None:
        self.target = target
        self.address = target.address
        self.dest: tuple[str, int] | tuple[str, int, int, int] | None = None
        # The payload after its 16-byte head: the prober's, or sized for this target.
        self.tail = b""
        self.phase = target.phase()
        self.bounds_ns = bounds_ns
        self.buckets = [0] * (len(bounds_ns) + 1)
        self.rtt_sum_ns = 0
        self.native = Exponential(native_schema)
        self.sent = 0
        self.received = 0
        self.errors: Counter[str] = Counter()
        self.history = 0
        self.resolved = 0
        self.up_mask = (1 << up_window) - 1
        self.removed = False
        # The mesh page's last minute (None for the full-size probes: it shows the small
        # echoes only), and the outcomes ever written to it; written in place below, as a
        # method call per outcome cost half again of reply() itself.
        self.recent = ring(recent) if recent else None
        self.recent_count = 0

    def reply(self, rtt_ns: int | None) -> None:
        """A valid reply within the timeout; rtt_ns None when it could not be trusted."""
        self.sent += 1
        self.received += 1
        self.resolved += 1
        self.history = ((self.history << 1) | 1) & self.up_mask
        if rtt_ns is not None:
            # Native first: a scrape reads the classic buckets first, so it never sees an
            # observation in them that the native buckets lack.
            self.native.observe(rtt_ns / 1e9)
            self.buckets[bisect_left(self.bounds_ns, rtt_ns)] += 1
            self.rtt_sum_ns += rtt_ns
        slots = self.recent
        if slots is not None:
            slots[self.recent_count % len(slots)] = UNTIMED if rtt_ns is None else rtt_ns
            self.recent_count += 1

    def lost(self) -> None:
        self.sent += 1
        self.resolved += 1
        self.history = (self.history << 1) & self.up_mask
        slots = self.recent
        if slots is not None:
            slots[self.recent_count % len(slots)] = LOST
            self.recent_count += 1

    def error(self, reason: str) -> None:
        self.errors[reason] += 1

    @property
    def up(self) -> int:
        return 1 if self.history else 0

    def recent_values(self) -> list[int]:
        """The last minute's outcomes (count first: a write in between only adds one)."""
        count = self.recent_count
        return ring_values(self.recent, count) if self.recent is not None else []

    def too_big(self, mtu: int) -> None:
        """A router said the request was too big for its next hop (MTU 0: it did not say
        how big); only full-size probes act on it."""


class MtuState(TargetState):
    """A target of the full-size probes: what TargetState counts, plus the IP packet size
    probed and the path MTU once known.

    The path MTU is the latest evidence: the MTU a router reported in "fragmentation
    needed" / "packet too big", or the probed size when a reply came back. It is forgotten
    (0: not known) when none of the last up-window probes got an answer of either kind, so a
    black hole that opens later does not leave an old size behind."""

    __slots__ = ("heard", "path_mtu", "size")

    def __init__(
        self,
        target: Target,
        bounds_ns: list[int],
        up_window: int,
        native_schema: int,
        recent: int = 0,
    ) -> None:
        super().__init__(target, bounds_ns, up_window, native_schema, recent)
        self.size = 0
        self.path_mtu = 0
        # Like history, with a router's report counting as an answer.
        self.heard = 0

    def reply(self, rtt_ns: int | None) -> None:
        super().reply(rtt_ns)
        self.heard = ((self.heard << 1) | 1) & self.up_mask
        self.path_mtu = self.size

    def lost(self) -> None:
        # An ICMP error is counted lost first, then reported through too_big.
        super().lost()
        self.heard = (self.heard << 1) & self.up_mask
        if not self.heard:
            self.path_mtu = 0

    def too_big(self, mtu: int) -> None:
        if mtu > 0:
            self.heard |= 1
            self.path_mtu = mtu
