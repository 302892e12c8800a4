"""Metric families beyond prometheus_client's own: a histogram that carries its exponential
(native) buckets beside the classic ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from prometheus_client.core import HistogramMetricFamily


class Native(NamedTuple):
    """One series' exponential buckets, read for one scrape."""

    schema: int
    counts: dict[int, int]
    zero_count: int


class DualHistogramFamily(HistogramMetricFamily):
    """Classic buckets as samples, which every format writes, and each series' native buckets
    on the side, which only the protobuf exposition writes (the text format has no place for
    them)."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        super().__init__(name, documentation, labels=labels)
        self.label_names = tuple(labels)
        self.native: dict[tuple[str, ...], Native] = {}

    def add_dual(
        self,
        values: Sequence[str],
        cumulative: Sequence[tuple[str, float]],
        sum_value: float,
        native: Native,
    ) -> None:
        self.add_metric(list(values), list(cumulative), sum_value)
        self.native[tuple(values)] = native
