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


class Recent:
    """A target's last outcomes, a fixed ring of 8-byte slots: the RTT in nanoseconds, LOST or
    UNTIMED. 60 slots (1 s interval) cost 8 * 60 + 64 bytes of array and 56 of this object,
    about 600 bytes a target. Only the order-free figures (loss, quantiles) are read from it,
    so a reader on another thread may copy it between two writes and still be right."""

    __slots__ = ("filled", "next", "slots")

    def __init__(self, size: int) -> None:
        self.slots = array("q", [0]) * size  # exactly size slots, no spare capacity
        self.next = 0
        self.filled = 0

    def add(self, value: int) -> None:
        slots = self.slots
        slots[self.next] = value
        self.next = (self.next + 1) % len(slots)
        if self.filled < len(slots):
            self.filled += 1

    def values(self) -> list[int]:
        """The outcomes held, in no particular order."""
        filled = self.filled
        return self.slots[:filled].tolist() if filled < len(self.slots) else self.slots.tolist()


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
        # None for the full-size probes: the mesh page shows the small echoes only.
        self.recent = Recent(recent) if recent else None

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
        if self.recent is not None:
            self.recent.add(UNTIMED if rtt_ns is None else rtt_ns)

    def lost(self) -> None:
        self.sent += 1
        self.resolved += 1
        self.history = (self.history << 1) & self.up_mask
        if self.recent is not None:
            self.recent.add(LOST)

    def error(self, reason: str) -> None:
        self.errors[reason] += 1

    @property
    def up(self) -> int:
        return 1 if self.history else 0

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
