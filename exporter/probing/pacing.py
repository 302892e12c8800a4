"""Paced rounds: every target once per interval, at its own phase of the interval, on ticks
shared by sending, reading and timing out. The echo prober and the TCP prober run the same
rounds; what a tick does is theirs.

One wake-up of the loop costs far more CPU than the packets it handles, so a tick carries
about ``per_tick`` probes, and ticks are MIN_TICK_NS to MAX_TICK_NS apart: at 5,000 targets/s
a tick every 5 ms with 25 probes (no bursts), at 40 to 1,000 targets/s 20 to 50 ticks a second
instead of one (or three: send, readable, read) per probe. Probes go out within half a tick of
their phase, early or late, so the schedule stays evenly spread to a tick's width.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

MIN_TICK_NS = 5_000_000
MAX_TICK_NS = 50_000_000


def tick_ns(interval_ns: int, n: int, per_tick: int) -> int:
    """The tick width for n targets per interval: about per_tick probes a tick, within
    MIN_TICK_NS..MAX_TICK_NS."""
    if n <= 0:
        return MAX_TICK_NS
    return max(MIN_TICK_NS, min(MAX_TICK_NS, interval_ns * per_tick // n))


@dataclass
class RoundStats:
    """How the last probe round went against its schedule."""

    rounds: int = 0
    skipped: int = 0
    last_duration_s: float = 0.0
    last_max_lag_s: float = 0.0
    last_end_unix: float = 0.0


class Phased(Protocol):
    """A target's state as the rounds see it."""

    @property
    def phase(self) -> float: ...  # in [0, 1): where in the interval it is probed
    @property
    def removed(self) -> bool: ...  # left the target set during the round


S = TypeVar("S", bound=Phased)


class Ticks(Protocol[S]):
    """What one prober does on a tick; Rounds decides when ticks come."""

    last_tick_monotonic: float

    def order(self) -> Sequence[S]:
        """The targets by phase, as of the start of a round."""
        ...

    def before_sends(self, now: int) -> None:
        """A tick's first part: read what came, so replies are matched against the probes
        that were out when they came."""
        ...

    def fire(self, st: S, now: int) -> None:
        """Probe one target."""
        ...

    def after_sends(self, now: int) -> None:
        """A tick's last part (timeouts)."""
        ...

    def idle(self, now: int, first: bool) -> None:
        """A tick between rounds, while probes are in flight; ``first`` once a round."""
        ...

    def next_service_ns(self, now: int, width: int) -> int | None:
        """When the next tick must come for probes in flight; None with nothing in flight."""
        ...


class Rounds(Generic[S]):
    """The round schedule of one prober: ``run()`` forever."""

    def __init__(self, ticks: Ticks[S], interval: float, per_tick: int) -> None:
        self.ticks = ticks
        self.interval_ns = round(interval * 1e9)
        self.per_tick = per_tick
        self.stats = RoundStats()

    def tick_ns(self, n: int) -> int:
        return tick_ns(self.interval_ns, n, self.per_tick)

    async def run(self) -> None:
        t = self.ticks
        interval = self.interval_ns
        next_round = time.monotonic_ns()
        jitter_max = min(interval // 20, 10_000_000)
        while True:
            round_start = next_round + random.randrange(jitter_max + 1)
            order = t.order()
            n = len(order)
            width = self.tick_ns(n)
            half = width // 2
            i = 0
            max_lag = 0
            first_send = last_send = 0
            while i < n:
                t.before_sends(time.monotonic_ns())
                now = time.monotonic_ns()
                t.last_tick_monotonic = now / 1e9
                due = 0
                while i < n:
                    st = order[i]
                    due = round_start + int(st.phase * interval)
                    if due > now + half:
                        break
                    if not st.removed:
                        t.fire(st, now)
                        last_send = now
                        first_send = first_send or now
                        max_lag = max(max_lag, now - due)
                    i += 1
                t.after_sends(now)
                if i < n:
                    # The next probe goes out up to half a tick early; probes in flight may
                    # need a tick sooner than that.
                    wake = max(due - half, now + width)
                    in_flight = t.next_service_ns(now, width)
                    if in_flight is not None:
                        wake = min(wake, in_flight)
                    await asyncio.sleep(max(wake - now, MIN_TICK_NS) / 1e9)
            if n:
                r = self.stats
                r.rounds += 1
                r.last_duration_s = (last_send - first_send) / 1e9
                r.last_max_lag_s = max_lag / 1e9
                r.last_end_unix = time.time()
            next_round += interval
            now = time.monotonic_ns()
            if next_round < now - interval:
                # The loop was stalled for more than a round: skip ahead instead of bursting.
                skipped = (now - next_round) // interval
                self.stats.skipped += skipped
                next_round += skipped * interval
            await self._idle_until(next_round, width)

    async def _idle_until(self, wake_at: int, width: int) -> None:
        """Between rounds: ticks only while probes are in flight, then sleep until the next
        round. Bounded: one tick per tick width at most, and wake_at is one interval away at
        most."""
        t = self.ticks
        first = True
        for _ in range(self.interval_ns // MIN_TICK_NS + 2):
            now = time.monotonic_ns()
            t.last_tick_monotonic = now / 1e9
            t.idle(now, first)
            first = False
            wake = t.next_service_ns(now, width)
            wake = wake_at if wake is None else min(wake, wake_at)
            if wake >= wake_at:
                break
            await asyncio.sleep(max(wake - now, MIN_TICK_NS) / 1e9)
        await asyncio.sleep(max(wake_at - time.monotonic_ns(), 0) / 1e9)
