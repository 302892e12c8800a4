"""Exponential (native) histogram buckets, as Prometheus defines them: at schema s, bucket i
holds the values in (base**(i-1), base**i] with base = 2**(2**-s), so every bucket is the same
relative width (about 9 % at schema 3) and only the buckets that were hit are kept.

Values exactly at or below the zero threshold count in the zero bucket. Pure functions and one
small counter class, shared by the probe and the Service check histograms.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping

# The smallest normal float64's neighbourhood, as Prometheus' own clients use: nothing the
# exporter measures comes near it, so only a true zero lands in the zero bucket.
ZERO_THRESHOLD = 2.0**-128
MIN_SCHEMA, MAX_SCHEMA = -4, 8
SPAN_GAP = 2  # empty buckets a span rather carries than starting a new one


def _bounds(schema: int) -> list[float]:
    """The fractions in [0.5, 1) at which the buckets of one power of two begin."""
    n = 1 << schema
    return [math.ldexp(2.0 ** (i / n), -1) for i in range(n)]


_BOUNDS = {s: _bounds(s) for s in range(1, MAX_SCHEMA + 1)}


def bucket_index(value: float, schema: int) -> int:
    """The index of the bucket that holds value (> 0) at schema. Exact at the boundaries: a
    power of the base falls in the bucket it closes, not the next one."""
    frac, exp = math.frexp(value)  # value = frac * 2**exp, 0.5 <= frac < 1
    if schema > 0:
        bounds = _BOUNDS[schema]
        return bisect_left(bounds, frac) + (exp - 1) * len(bounds)
    index = exp - 1 if frac == 0.5 else exp
    return (index + (1 << -schema) - 1) >> -schema


def upper_bound(index: int, schema: int) -> float:
    """Where bucket index ends (for tests and for reading a histogram back)."""
    return float(2.0 ** math.ldexp(index, -schema))


def spans(counts: Mapping[int, int]) -> tuple[list[tuple[int, int]], list[int]]:
    """Sparse buckets as Prometheus' spans and deltas: (offset, length) runs, each offset
    counted from the end of the previous run, and each bucket's count as the difference to
    the one before it. Short gaps are carried as empty buckets inside a run, which costs
    less than a new span."""
    runs: list[tuple[int, int]] = []
    deltas: list[int] = []
    previous_index: int | None = None
    previous_count = 0
    for index in sorted(counts):
        if previous_index is not None and index - previous_index <= SPAN_GAP + 1:
            for _ in range(index - previous_index - 1):
                deltas.append(-previous_count)
                previous_count = 0
            offset, length = runs[-1]
            runs[-1] = (offset, length + index - previous_index)
        else:
            start = 0 if previous_index is None else previous_index + 1
            runs.append((index - start, 1))
        deltas.append(counts[index] - previous_count)
        previous_count = counts[index]
        previous_index = index
    return runs, deltas


class Exponential:
    """One histogram's exponential buckets: hit buckets only, plus the zero bucket."""

    __slots__ = ("counts", "schema", "zero_count")

    def __init__(self, schema: int) -> None:
        self.schema = schema
        self.counts: dict[int, int] = {}
        self.zero_count = 0

    def observe(self, value: float) -> None:
        if value <= ZERO_THRESHOLD:
            self.zero_count += 1
            return
        index = bucket_index(value, self.schema)
        self.counts[index] = self.counts.get(index, 0) + 1

    def copy(self) -> tuple[dict[int, int], int]:
        """The buckets and the zero count, read for one scrape."""
        return dict(self.counts), self.zero_count
