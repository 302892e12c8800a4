"""The /metrics document: the per-target probe families, then every registered collector,
and the registry they are registered in."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.metrics.targets import TargetLabels, render_target_chunks
from exporter.probing.engine import Prober

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _icmplib_version() -> str:
    try:
        from importlib.metadata import version

        return version("icmplib")
    except Exception:
        return "unknown"


class BuildInfo(Collector):
    """pingmesh_build_info, the versions as labels."""

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "pingmesh_build_info",
            "Build information; always 1.",
            labels=["version", "python_version", "icmplib_version"],
        )
        info.add_metric([__version__, platform.python_version(), _icmplib_version()], 1)
        yield info


def build_registry(collectors: Iterable[Collector]) -> CollectorRegistry:
    """The exporter's own metrics: build information, the collectors given, and the process's
    CPU and memory."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BuildInfo())
    for collector in collectors:
        registry.register(collector)
    if sys.platform.startswith("linux"):
        ProcessCollector(registry=registry)
    return registry


class MetricsDocument:
    """Builds the whole /metrics text; called from HTTP server threads."""

    def __init__(self, prober: Prober, registry: CollectorRegistry, labels: TargetLabels) -> None:
        self.prober = prober
        self.registry = registry
        self.labels = labels
        self.last_render_seconds = 0.0
        registry.register(_RenderCollector(self))

    def chunks(self) -> Iterator[bytes]:
        """The document in pieces, for a streamed response. The render time counts only the
        time spent here, not compressing or writing to the client in between."""
        busy = 0.0
        started = time.perf_counter()
        data = generate_latest(self.registry)
        p = self.prober
        for chunk in render_target_chunks(p.states, p.buckets, self.labels):
            busy += time.perf_counter() - started
            yield data
            started = time.perf_counter()
            data = chunk.encode()
        busy += time.perf_counter() - started
        self.last_render_seconds = busy
        yield data

    def render(self) -> bytes:
        return b"".join(self.chunks())


class _RenderCollector(Collector):
    """How long the previous render took, read by the next scrape."""

    def __init__(self, doc: MetricsDocument) -> None:
        self.doc = doc

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "pingmesh_metrics_render_seconds",
            "Time the previous /metrics render took.",
            value=self.doc.last_render_seconds,
        )
