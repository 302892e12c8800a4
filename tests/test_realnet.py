"""The real exporter process against real ICMP paths in network namespaces.

One bed serves the module: a dst namespace whose kernel echo is off and whose user-space
responder impairs each target address differently, IPv4 and IPv6. The exporter probes all of
them every 20 ms; the tests compare its /metrics with what the responder says it did.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypedDict

import pytest

from tests.support.exporter_proc import ExporterProcess
from tests.support.metrics import Samples, median_bucket, value
from tests.support.netbed import Bed, Dst, Profile, Responder
from tests.support.netbed_fixtures import ensure_bed_possible

pytestmark = pytest.mark.netns

INTERVAL = 0.02
TIMEOUT = 0.2
RUN_SECONDS = 7.0
# Fine buckets around 3 ms so the median can be read from the histogram to 0.1 ms.
BUCKETS = "100us,500us,1ms,2ms,2.7ms,2.8ms,2.9ms,3ms,3.1ms,3.2ms,3.3ms,4ms,10ms,100ms,1s"

SCENARIOS = {
    "clean": {},
    "loss": {"loss": 0.2},
    "dup": {"duplicate": 0.3},
    "corrupt": {"corrupt": 0.25},
    "truncate": {"truncate": 0.25},
    "unreach": {"unreachable": 0.25},
}


class TargetLabels(TypedDict):
    target: str
    ip_family: str


@dataclass
class Mesh:
    bed: Bed
    dst: Dst
    responder: Responder
    addresses: dict[tuple[str, int], str]  # (scenario, family) -> address
    before: Samples
    stats: dict[str, Any]
    after: Samples
    proc_output: str

    def labels(self, scenario: str, family: int) -> TargetLabels:
        return {
            "target": self.addresses[(scenario, family)],
            "ip_family": "ipv4" if family == 4 else "ipv6",
        }

    def counters(self, scenario: str, family: int) -> dict[str, int]:
        addr = self.addresses[(scenario, family)]
        for prefix, result in self.stats["profiles"].items():
            if ipaddress.ip_address(addr) in ipaddress.ip_network(prefix):
                return dict(result)
        raise KeyError(addr)
        return result


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    ensure_bed_possible()
    with Bed() as bed:
        dst = bed.add_dst("impaired", kernel_echo=False)
        n = len(SCENARIOS)
        v4 = dst.add_targets(n, n)
        addresses: dict[tuple[str, int], str] = {}
        profiles = []
        for i, (name, impairment) in enumerate(SCENARIOS.items()):
            for family, addr in ((4, v4[i]), (6, v4[n + i])):
                addresses[(name, family)] = addr
                plen = 32 if family == 4 else 128
                profiles.append(Profile(prefix=f"{addr}/{plen}", **impairment))
        # A misdirected reply comes from another address of the profile's prefix: give the
        # misdirect target an aligned /31 (/127) of its own, holding a spare address.
        extra = dst.add_targets(4, 4)
        for family, pool, plen in ((4, extra[:4], 31), (6, extra[4:], 127)):
            pair = next(
                ipaddress.ip_network(f"{a}/{plen}", strict=False)
                for a in pool
                if ipaddress.ip_address(a)
                == ipaddress.ip_network(f"{a}/{plen}", strict=False).network_address
            )
            addresses[("misdirect", family)] = str(pair.network_address)
            profiles.append(Profile(prefix=str(pair), misdirect=0.25))
        responder = bed.start_responder(dst, profiles, seed=7)
        args = [
            "--probe.interval",
            f"{INTERVAL * 1000:g}ms",
            "--probe.timeout",
            f"{TIMEOUT * 1000:g}ms",
            "--probe.rtt-buckets",
            BUCKETS,
        ]
        for addr in addresses.values():
            args += ["--target", addr]
        with ExporterProcess(bed.src, args) as proc:
            proc.wait_ready()
            time.sleep(RUN_SECONDS)
            before = proc.scrape()
            stats = responder.stats()
            after = proc.scrape()
            proc.stop()
            output = proc.output()
        yield Mesh(bed, dst, responder, addresses, before, stats, after, output)


FAMILIES = pytest.mark.parametrize("family", [4, 6])
# Requests that can be in flight or not yet resolved between the two scrapes: the timeout
# plus the time the three reads take, at one probe per interval, with margin.
IN_FLIGHT = math.ceil((TIMEOUT + 0.3) / INTERVAL)


def _sent(m: Mesh, samples: Samples, scenario: str, family: int) -> float:
    return value(samples, "pingmesh_probe_sent_total", **m.labels(scenario, family))


def _received(m: Mesh, samples: Samples, scenario: str, family: int) -> float:
    return value(samples, "pingmesh_probe_received_total", **m.labels(scenario, family))


def _errors(m: Mesh, samples: Samples, scenario: str, family: int, reason: str) -> float:
    return value(
        samples,
        "pingmesh_probe_errors_total",
        default=0.0,
        reason=reason,
        **m.labels(scenario, family),
    )


@FAMILIES
def test_injected_loss_reads_true(mesh: Mesh, family: int) -> None:
    sent = _sent(mesh, mesh.before, "loss", family)
    lost = sent - _received(mesh, mesh.before, "loss", family)
    dropped = mesh.counters("loss", family)["dropped"]
    # Exact bookkeeping: every request the responder dropped and whose timeout passed is
    # counted lost, and nothing else is.
    assert 0 <= dropped - lost <= IN_FLIGHT * 0.2 + 5, (dropped, lost)
    # And the figure itself: with n probes the loss ratio has a binomial standard deviation
    # sqrt(p(1-p)/n), 0.023 for n = 300; four of them make a false failure ~1 in 15,000.
    ratio = lost / sent
    tolerance = 4 * math.sqrt(0.2 * 0.8 / sent)
    assert abs(ratio - 0.2) < tolerance, (ratio, tolerance, sent)


@FAMILIES
def test_duplicates_counted_not_received_twice(mesh: Mesh, family: int) -> None:
    sent = _sent(mesh, mesh.before, "dup", family)
    received = _received(mesh, mesh.before, "dup", family)
    dups = _errors(mesh, mesh.before, "dup", family, "duplicate")
    assert received == sent  # nothing lost, nothing double counted
    duplicated = mesh.counters("dup", family)["duplicated"]
    assert 0 <= duplicated - dups <= IN_FLIGHT, (duplicated, dups)
    assert dups > 0.15 * sent


@FAMILIES
@pytest.mark.parametrize(
    "scenario,reason,counter",
    [
        ("corrupt", "corrupt", "corrupted"),
        ("truncate", "truncated", "truncated"),
        ("misdirect", "wrong_source", "misdirected"),
        ("unreach", "unreachable", "unreachable"),
    ],
)
def test_bad_replies_counted_by_reason_and_never_as_received(
    mesh: Mesh, family: int, scenario: str, reason: str, counter: str
) -> None:
    before, after = mesh.before, mesh.after
    seen_before = _errors(mesh, before, scenario, family, reason)
    seen_after = _errors(mesh, after, scenario, family, reason)
    injected = mesh.counters(scenario, family)[counter]
    assert injected > 20
    assert seen_before <= injected <= seen_after + IN_FLIGHT, (seen_before, injected, seen_after)
    sent = _sent(mesh, before, scenario, family)
    lost = sent - _received(mesh, before, scenario, family)
    # A bad reply replaces the good one, so the probe is lost; it never reads as received.
    assert abs(lost - seen_before) <= IN_FLIGHT, (lost, seen_before)
    # and the RTT histogram only holds valid replies
    labels = mesh.labels(scenario, family)
    assert value(before, "pingmesh_probe_rtt_seconds_count", **labels) == sent - lost


def test_one_targets_faults_do_not_touch_others(mesh: Mesh) -> None:
    for family in (4, 6):
        labels = mesh.labels("clean", family)
        assert (
            _sent(mesh, mesh.after, "clean", family)
            == _received(mesh, mesh.after, "clean", family)
            > 0.8 * RUN_SECONDS / INTERVAL
        )
        errors = [
            (lb["reason"], v)
            for n, lb, v in mesh.after
            if n == "pingmesh_probe_errors_total" and all(lb.get(k) == x for k, x in labels.items())
        ]
        assert errors == [], mesh.proc_output[-2000:]
    assert value(mesh.after, "pingmesh_socket_receive_drops_total", default=0.0) == 0


def test_self_metrics(mesh: Mesh) -> None:
    s = mesh.after
    assert value(s, "pingmesh_targets", kind="static") == len(mesh.addresses)
    assert value(s, "pingmesh_socket_info", mode="datagram") > 0
    assert value(s, "pingmesh_probe_rounds_total") > RUN_SECONDS / INTERVAL * 0.8
    assert value(s, "pingmesh_last_round_max_lag_seconds") < 0.1
    assert value(s, "pingmesh_build_info") == 1


def test_wrong_sequence_replies_are_unmatched(bed: Bed) -> None:
    dst = bed.add_dst("wrongseq", kernel_echo=False)
    (addr,) = dst.add_targets(1)
    responder = bed.start_responder(dst, [Profile(prefix=f"{addr}/32", wrong_seq=0.5)])
    with ExporterProcess(
        bed.src, ["--probe.interval", "50ms", "--probe.timeout", "200ms", "--target", addr]
    ) as proc:
        proc.wait_ready()
        time.sleep(3)
        samples = proc.scrape()
        wrong = responder.profile_stats(f"{addr}/32")["wrong_seq"]
    unmatched = value(
        samples, "pingmesh_unmatched_packets_total", default=0.0, reason="unknown_sequence"
    )
    sent = value(samples, "pingmesh_probe_sent_total", target=addr)
    received = value(samples, "pingmesh_probe_received_total", target=addr)
    assert wrong > 5
    assert abs(unmatched - wrong) <= 6
    assert abs((sent - received) - wrong) <= 6


def test_three_ms_path_reads_three_ms(bed: Bed) -> None:
    """The responder adds 3 ms (fping reads 3.05 ms through it, the responder's own
    overhead); the exporter must read the same, IPv4 and IPv6, median and mean."""
    dst = bed.add_dst("delay", kernel_echo=False)
    v4, v6 = dst.add_targets(1, 1)
    bed.start_responder(
        dst, [Profile(prefix=f"{v4}/32", delay_ms=3.0), Profile(prefix=f"{v6}/128", delay_ms=3.0)]
    )
    with ExporterProcess(
        bed.src,
        [
            "--probe.interval",
            "20ms",
            "--probe.rtt-buckets",
            BUCKETS,
            "--target",
            v4,
            "--target",
            v6,
        ],
    ) as proc:
        proc.wait_ready()
        time.sleep(4)
        samples = proc.scrape()
    for addr in (v4, v6):
        lower, upper = median_bucket(samples, target=addr)
        assert lower >= 0.0028 and upper <= 0.0032, (addr, lower, upper)
        count = value(samples, "pingmesh_probe_rtt_seconds_count", target=addr)
        mean = value(samples, "pingmesh_probe_rtt_seconds_sum", target=addr) / count
        # The mean also carries the responder's own scheduling outliers on a loaded machine;
        # the median is the figure that must be right.
        assert 0.0028 < mean < 0.005, (addr, mean)
        assert count > 100
        assert value(samples, "pingmesh_probe_sent_total", target=addr) == count
        assert value(samples, "pingmesh_target_up", target=addr) == 1
