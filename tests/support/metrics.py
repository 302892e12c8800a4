"""The one Prometheus metrics parser of the tests and the benches.

Parsing is prometheus_client's own (``text_string_to_metric_families``: escaping, histograms,
``# HELP``/``# TYPE``); a document becomes a flat list of samples ``(name, labels, value)``,
in document order, and ``value()`` reads one series (or the sum of several) out of it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Collection, Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, dict[str, str], float]
Samples = list[Sample]

# Sample names of a family are its name with one of these (histograms, summaries, counters).
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created", "_gcount", "_gsum", "_info")


def _wanted(name: str, names: Collection[str]) -> bool:
    return name in names or any(
        name.endswith(suffix) and name[: -len(suffix)] in names for suffix in _SUFFIXES
    )


def _only(text: str, names: Collection[str]) -> str:
    """The lines of ``text`` that belong to the named families or samples."""
    keep = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and _wanted(parts[2], names):
                keep.append(line)
            continue
        end = len(line)
        for stop in ("{", " "):
            at = line.find(stop)
            if at != -1:
                end = min(end, at)
        if line and _wanted(line[:end], names):
            keep.append(line)
    return "\n".join(keep) + "\n"


def samples(families: Iterable[Metric]) -> Samples:
    """The samples of metric families (parsed ones, or a collector's ``collect()``)."""
    return [(s.name, dict(s.labels), float(s.value)) for fam in families for s in fam.samples]


def parse(text: str, names: Collection[str] | None = None) -> Samples:
    """Every sample of a text exposition document.

    With ``names`` (family names like ``apiserver_watch_events_sizes``, or sample names like
    ``pingmesh_probe_sent_total``), only those: the lines of other families are dropped before
    the parser sees them, which keeps a document of 5,000 targets from taking seconds.
    """
    if names is not None:
        text = _only(text, frozenset(names))
    return samples(text_string_to_metric_families(text))


def value(samples: Samples, name: str, *, default: float | None = None, **labels: str) -> float:
    """The sum of the ``name`` samples whose labels include ``labels``.

    No such sample is a KeyError, unless a ``default`` is given: then it is the default.
    """
    hits = [
        v
        for n, lb, v in samples
        if n == name and all(lb.get(k) == want for k, want in labels.items())
    ]
    if not hits:
        if default is not None:
            return default
        raise KeyError(f"{name}{labels} not in metrics")
    return sum(hits)


def bucket_counts(samples: Samples, **labels: str) -> list[tuple[float, float]]:
    """(le, cumulative count) of one target's RTT histogram."""
    out = []
    for n, lb, v in samples:
        if n == "pingmesh_probe_rtt_seconds_bucket" and all(
            lb.get(k) == want for k, want in labels.items()
        ):
            out.append((float(lb["le"]), v))
    return sorted(out)


def median_bucket(samples: Samples, **labels: str) -> tuple[float, float]:
    """The (lower, upper] bucket bounds that hold the median RTT."""
    buckets = bucket_counts(samples, **labels)
    total = buckets[-1][1]
    lower = 0.0
    for le, cum in buckets:
        if cum >= total / 2:
            return lower, le
        lower = le
    raise AssertionError("empty histogram")


def assert_promtool_clean(document: bytes | str) -> None:
    """promtool check metrics passes on an exposition in the text format (lint included)."""
    data = document.encode() if isinstance(document, str) else document
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=data, capture_output=True, timeout=60
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
