"""Exponential (native) histogram buckets: indexes, bounds, spans."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.histogram import MAX_SCHEMA, MIN_SCHEMA, Exponential, bucket_index, spans, upper_bound

SCHEMAS = st.integers(MIN_SCHEMA, MAX_SCHEMA)
VALUES = st.floats(min_value=1e-9, max_value=1e4, allow_nan=False, allow_infinity=False)


@given(VALUES, SCHEMAS)
def test_a_value_lies_in_its_bucket(value: float, schema: int) -> None:
    i = bucket_index(value, schema)
    assert upper_bound(i - 1, schema) < value * (1 + 1e-12)
    assert value <= upper_bound(i, schema) * (1 + 1e-12)


@pytest.mark.parametrize("schema", range(1, MAX_SCHEMA + 1))
def test_a_boundary_closes_its_bucket(schema: int) -> None:
    """At a boundary itself the value belongs to the bucket the boundary closes."""
    n = 1 << schema
    for exp in (-30, -7, 0, 1, 20):
        for j in range(n):
            bound = math.ldexp(math.ldexp(2.0 ** (j / n), -1), exp)  # exact scaling
            assert bucket_index(bound, schema) == j + (exp - 1) * n


@pytest.mark.parametrize("schema", range(MIN_SCHEMA, 1))
def test_a_power_of_two_closes_its_bucket(schema: int) -> None:
    for i in range(-9, 8):
        assert bucket_index(upper_bound(i, schema), schema) == i


def test_known_indexes() -> None:
    assert bucket_index(1.0, 0) == 0  # (0.5, 1]
    assert bucket_index(1.0000001, 0) == 1
    assert bucket_index(2.0, 0) == 1
    assert bucket_index(0.003, 3) == math.ceil(math.log2(0.003) * 8)
    assert bucket_index(300e-6, 3) == math.ceil(math.log2(300e-6) * 8)
    assert bucket_index(4.0, -1) == 1  # (1, 4]
    assert bucket_index(5.0, -1) == 2


@given(st.dictionaries(st.integers(-200, 200), st.integers(1, 1000), max_size=40))
def test_spans_and_deltas_give_the_buckets_back(counts: dict[int, int]) -> None:
    runs, deltas = spans(counts)
    assert sum(length for _, length in runs) == len(deltas)
    back: dict[int, int] = {}
    index, count, d = 0, 0, iter(deltas)
    for n, (offset, length) in enumerate(runs):
        index = offset if n == 0 else index + offset
        for _ in range(length):
            count += next(d)
            if count:
                back[index] = count
            index += 1
    assert back == counts
    # A gap of more than two empty buckets starts a new span.
    assert all(offset > 2 for offset, _ in runs[1:])


def test_observe_counts_zero_apart() -> None:
    h = Exponential(3)
    for v in (0.0, 300e-6, 301e-6, 0.003):
        h.observe(v)
    counts, zero = h.copy()
    assert zero == 1 and sum(counts.values()) == 3
    assert counts[bucket_index(300e-6, 3)] == 2  # 300 and 301 us share a 9 % bucket
