"""The full-size (MTU) probes' per-target figures: sent, received, errors by reason, and the
path MTU once known. Four series a target at most, from the full-size prober's live target
table, so a target that leaves takes them with it."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.metrics.targets import PerTarget, TargetLabels
from exporter.probing.engine import Prober
from exporter.probing.stats import MtuState

SENT = "pingmesh_mtu_probe_sent"
RECEIVED = "pingmesh_mtu_probe_received"
ERRORS = "pingmesh_mtu_probe_errors"
PATH_MTU = "pingmesh_path_mtu_bytes"


class MtuCollector(Collector):
    """Renders the full-size prober's targets with the same labels as the small echoes'."""

    def __init__(self, prober: Prober, source_node: str | None) -> None:
        self.prober = prober
        names = TargetLabels(source_node)
        # Kept per state object (the full-size prober's own, not the small echoes'), made
        # when a scrape first sees the target.
        self.labels: PerTarget[dict[str, str]] = PerTarget(lambda st: dict(names.pairs(st)))

    def collect(self) -> Iterator[Metric]:
        sent = Metric(SENT, "Full-size echo requests whose outcome is known.", "counter")
        received = Metric(
            RECEIVED, "Full-size echo requests answered within the timeout.", "counter"
        )
        errors = Metric(
            ERRORS,
            "Full-size probes' ICMP errors (packet_too_big: a router's MTU is smaller), send "
            "failures and invalid replies, by reason.",
            "counter",
        )
        path_mtu = Metric(
            PATH_MTU,
            "The path MTU: the MTU a router reported, else the probed size once a full-size "
            "reply came back; absent while not known.",
            "gauge",
        )
        states = self.prober.states
        for st, labels in zip(states, self.labels.of(states), strict=True):
            # received before sent: a scrape never shows more replies than requests.
            n_received = st.received
            n_sent = st.sent
            sent.add_sample(SENT + "_total", labels, n_sent)
            received.add_sample(RECEIVED + "_total", labels, n_received)
            for reason, n in sorted(dict(st.errors).items()):
                errors.add_sample(ERRORS + "_total", {**labels, "reason": reason}, n)
            if isinstance(st, MtuState) and st.path_mtu:
                path_mtu.add_sample(PATH_MTU, labels, st.path_mtu)
        yield from (sent, received, errors, path_mtu)
