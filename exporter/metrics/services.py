"""The Service checks' figures: results, reachability and latency per ClusterIP and port,
and the endpoint counts beside them."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from exporter.metrics.families import DualHistogramFamily, Native
from exporter.metrics.text import format_le
from exporter.services.checker import BUCKETS, GOOD, ServiceChecker
from exporter.targets import family_label


class ServicesCollector(Collector):
    """The checker's results and the endpoint counts, told this exporter's node."""

    def __init__(self, checker: ServiceChecker, source_node: str | None) -> None:
        self.checker = checker
        self.source_node = source_node

    def collect(self) -> Iterator[Metric]:
        src = ["source_node"] if self.source_node else []
        srcv = [self.source_node] if self.source_node else []
        base = [*src, "namespace", "service", "ip_family", "port", "protocol"]
        total = CounterMetricFamily(
            "pingmesh_service_probe",
            "Service checks through the ClusterIP, by result.",
            labels=[*base, "result"],
        )
        up = GaugeMetricFamily(
            "pingmesh_service_up",
            "1 when the last check of this ClusterIP and port succeeded.",
            labels=base,
        )
        connect = DualHistogramFamily(
            "pingmesh_service_connect_seconds",
            "TCP connect time through the ClusterIP (successes).",
            labels=base,
        )
        query = DualHistogramFamily(
            "pingmesh_service_dns_query_seconds",
            "DNS query time through the ClusterIP (answers).",
            labels=base,
        )
        les = [format_le(b) for b in BUCKETS] + ["+Inf"]
        for st in sorted(self.checker.states.values(), key=lambda s: s.check.key):
            c = st.check
            values = [
                *srcv,
                c.namespace,
                c.service,
                family_label(c.family),
                str(c.port),
                c.protocol,
            ]
            for result, n in sorted(st.results.items()):
                total.add_metric([*values, result], n)
            if st.last:
                up.add_metric(values, 1 if st.last in GOOD else 0)
            native_counts, zero_count = st.native.copy()
            acc, cumulative = 0, []
            for le, n in zip(les, st.buckets[:], strict=True):
                acc += n
                cumulative.append((le, acc))
            (connect if c.protocol == "tcp" else query).add_dual(
                values,
                cumulative,
                st.seconds_sum,
                Native(st.native.schema, native_counts, zero_count),
            )
        yield from (total, up, connect, query)

        endpoints = GaugeMetricFamily(
            "pingmesh_service_endpoints",
            "Endpoints of the Service by condition, summed over its EndpointSlices.",
            labels=["namespace", "service", "condition", "ip_family"],
        )
        for (key, fam), counts in sorted(self.checker.endpoints.items()):
            ns, name = key.split("/", 1)
            for cond, n in sorted(counts.items()):
                endpoints.add_metric([ns, name, cond, fam], n)
        yield endpoints
        unc = GaugeMetricFamily(
            "pingmesh_service_uncheckable",
            "Selected Services that cannot be checked through a ClusterIP "
            "(headless, external_name, no_ports, no_tcp_ports).",
            labels=["namespace", "service", "reason"],
        )
        for ns, name, reason in self.checker.plan.uncheckable:
            unc.add_metric([ns, name, reason], 1)
        yield unc
        yield GaugeMetricFamily(
            "pingmesh_services_selected",
            "Services selected for checks.",
            value=len(self.checker.plan.selected),
        )
