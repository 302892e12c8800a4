"""The web configuration's figures: reloads, refused TLS handshakes and refused requests."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.web.guard import WebGuard


class WebCollector(Collector):
    """pingmesh_web_*: present only with --web.config.file."""

    def __init__(self, guard: WebGuard) -> None:
        self.guard = guard

    def collect(self) -> Iterator[Metric]:
        c = self.guard.counters
        reloads = CounterMetricFamily(
            "pingmesh_web_config_reloads",
            "Loads of --web.config.file and the files it names, by result.",
            labels=["result"],
        )
        for result, n in sorted(c.reloads.items()):
            reloads.add_metric([result], n)
        yield reloads
        yield GaugeMetricFamily(
            "pingmesh_web_config_last_reload_successful",
            "1 when the last load of --web.config.file succeeded (0: a bad file is being "
            "ignored and the previous configuration serves).",
            value=1 if c.last_reload_ok else 0,
        )
        yield GaugeMetricFamily(
            "pingmesh_web_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful load of --web.config.file.",
            value=c.last_reload_success_time,
        )
        tls = CounterMetricFamily(
            "pingmesh_web_tls_handshake_failures",
            "TLS handshakes the server refused or that failed, by reason.",
            labels=["reason"],
        )
        for reason, n in c.handshake_failures.items():
            tls.add_metric([reason], n)
        yield tls
        denied = CounterMetricFamily(
            "pingmesh_web_requests_unauthorized",
            "HTTP requests refused with 401 by basic auth, by reason.",
            labels=["reason"],
        )
        for reason, n in c.denied.items():
            denied.add_metric([reason], n)
        yield denied
