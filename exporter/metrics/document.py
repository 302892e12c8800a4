"""The /metrics document, in the format the scraper asks for: the text format, or the
protobuf exposition with native histograms. Every registered collector's families, then the
per-target probe families; and the registry the collectors are registered in."""

from __future__ import annotations

import logging
import platform
import sys
import time
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.metrics import mtu
from exporter.metrics import tcp as tcp_families
from exporter.metrics.targets import TargetLabels, render_target_chunks
from exporter.probing.engine import Prober
from exporter.probing.tcp import TcpProber

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROTOBUF = "application/vnd.google.protobuf"
PROTOBUF_PROTO = "io.prometheus.client.MetricFamily"

log = logging.getLogger("exporter.metrics")


def wants_protobuf(accept: str) -> bool:
    """Whether the Accept header prefers the delimited protobuf exposition to the text
    format: the first, by quality, of the media types this exporter can serve. OpenMetrics
    text is not served, so asking for it counts for nothing."""
    ranked: list[tuple[float, int, bool]] = []
    for position, item in enumerate(accept.split(",")):
        media, *params = (part.strip() for part in item.split(";"))
        options = {}
        for param in params:
            key, _, value = param.partition("=")
            options[key.strip().lower()] = value.strip().strip('"')
        try:
            q = float(options.get("q", "1"))
        except ValueError:
            continue
        media = media.lower()
        if q <= 0:
            continue
        if media == PROTOBUF:
            if options.get("proto") == PROTOBUF_PROTO and options.get("encoding") == "delimited":
                ranked.append((-q, position, True))
        elif media in ("text/plain", "text/*", "*/*"):
            ranked.append((-q, position, False))
    return bool(ranked) and min(ranked)[2]


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


def _protobuf() -> ModuleType | None:
    try:
        from exporter.metrics import protobuf
    except ImportError as exc:  # a build that skipped generate.sh
        log.warning("protobuf exposition unavailable, serving the text format: %s", exc)
        return None
    return protobuf


class MetricsDocument:
    """Builds the whole /metrics document; called from HTTP server threads."""

    def __init__(
        self,
        prober: Prober,
        registry: CollectorRegistry,
        labels: TargetLabels,
        protobuf_classic_buckets: bool = True,
        tcp: TcpProber | None = None,
        full_size: mtu.FullSize | None = None,
    ) -> None:
        self.prober = prober
        self.tcp = tcp
        self.tcp_labels = tcp_families.TcpLabels(labels.source)
        self.tcp_label_bytes = tcp_families.TcpLabelBytes(labels.source)
        self.full_size = full_size
        self.registry = registry
        self.labels = labels
        self.classic = protobuf_classic_buckets
        self.last_render_seconds = 0.0
        self._protobuf: ModuleType | bool | None = False  # False: not imported yet
        self._label_bytes: Any = None  # protobuf.LabelBytes, once the module is imported
        registry.register(_RenderCollector(self))

    def negotiate(self, accept: str) -> tuple[str, Iterator[bytes]]:
        """The content type and the document in pieces, for a streamed response."""
        if wants_protobuf(accept):
            if self._protobuf is False:
                self._protobuf = _protobuf()
            if isinstance(self._protobuf, ModuleType):
                return self._protobuf.CONTENT_TYPE, self._timed(self._proto(self._protobuf))
        return CONTENT_TYPE, self._timed(self._text())

    def _text(self) -> Iterator[bytes]:
        yield generate_latest(self.registry)
        p = self.prober
        for chunk in render_target_chunks(p.states, p.buckets, self.labels):
            yield chunk.encode()
        fs = self.full_size
        if fs is not None:
            for chunk in mtu.render_text(fs.prober.states, fs.labels):
                yield chunk.encode()
        if self.tcp is not None:
            for chunk in tcp_families.text_chunks(self.tcp.states, p.buckets, self.tcp_labels):
                yield chunk.encode()

    def _proto(self, protobuf: ModuleType) -> Iterator[bytes]:
        yield protobuf.encode(self.registry.collect(), self.classic)
        p = self.prober
        if self._label_bytes is None:
            self._label_bytes = protobuf.LabelBytes(self.labels)
        yield from protobuf.target_chunks(p.states, p.buckets, self._label_bytes, self.classic)
        fs = self.full_size
        if fs is not None:
            if fs.label_bytes is None:
                fs.label_bytes = protobuf.LabelBytes(fs.labels)
            yield from protobuf.mtu_chunks(fs.prober.states, fs.label_bytes)
        if self.tcp is not None:
            yield from tcp_families.protobuf_chunks(
                self.tcp.states, p.buckets, self.tcp_label_bytes, self.classic
            )

    def _timed(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        """The render time counts only the time spent making pieces, not compressing or
        writing them to the client in between."""
        busy = 0.0
        while True:
            started = time.perf_counter()
            piece = next(pieces, None)
            busy += time.perf_counter() - started
            if piece is None:
                break
            yield piece
        self.last_render_seconds = busy

    def render(self, accept: str = "") -> bytes:
        return b"".join(self.negotiate(accept)[1])


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
