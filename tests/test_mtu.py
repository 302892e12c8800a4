"""Full-size (MTU) probes through the real exporter process, over real routers in network
namespaces, IPv4 and IPv6, with datagram and raw sockets.

Three paths from src, each through a router namespace of its own: a clean one (every link
MTU 1500); one whose far link has MTU 1400, so the router's kernel answers each full-size
request with "fragmentation needed" / "packet too big" carrying 1400; and one whose router
drops every packet longer than 1400 bytes without a word (an MTU black hole). The small
echoes pass on all three.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.exporter_proc import ExporterProcess
from tests.support.metrics import Samples, value
from tests.support.netbed import Bed
from tests.support.netbed_fixtures import ensure_bed_possible

pytestmark = pytest.mark.netns

PATHS = ("clean", "too_big", "black_hole")
RUN_SECONDS = 3.0
ARGS = ["--probe.interval=100ms", "--probe.timeout=300ms", "--probe.mtu-interval=100ms"]


@dataclass
class Paths:
    bed: Bed
    addresses: dict[tuple[str, int], str]  # (path, family) -> target address

    def run(self, *args: str) -> tuple[Samples, str]:
        """The exporter probing every target for RUN_SECONDS; its last scrape and output."""
        argv = [*ARGS, *args]
        for addr in self.addresses.values():
            argv += ["--target", addr]
        with ExporterProcess(self.bed.src, argv) as proc:
            proc.wait_ready()
            time.sleep(RUN_SECONDS)
            samples = proc.scrape()
            proc.stop()
            return samples, proc.output()


@pytest.fixture(scope="module")
def paths() -> Iterator[Paths]:
    ensure_bed_possible()
    with Bed() as bed:
        dsts = {
            "clean": bed.add_routed_dst("clean"),
            "too_big": bed.add_routed_dst("toobig", far_mtu=1400),
            "black_hole": bed.add_routed_dst("hole", drop_longer_than=1400),
        }
        addresses = {}
        for name, dst in dsts.items():
            v4, v6 = dst.add_targets(1, 1)
            addresses[(name, 4)], addresses[(name, 6)] = v4, v6
        yield Paths(bed, addresses)


def figures(s: Samples, target: str) -> dict[str, float]:
    """One target's full-size and small figures, -1 for a series that is absent."""
    out = {
        name: value(s, f"pingmesh_{name}", target=target, default=-1)
        for name in (
            "mtu_probe_sent_total",
            "mtu_probe_received_total",
            "path_mtu_bytes",
            "probe_sent_total",
            "probe_received_total",
        )
    }
    for n, lb, v in s:
        if n == "pingmesh_mtu_probe_errors_total" and lb.get("target") == target:
            out[f"error:{lb['reason']}"] = v
    return out


@pytest.mark.parametrize("mode", ["datagram", "raw"])
@pytest.mark.parametrize("family", [4, 6])
def test_each_path_reads_as_what_it_is(paths: Paths, mode: str, family: int) -> None:
    s, output = paths.run(f"--probe.socket={mode}")
    got = {name: figures(s, paths.addresses[(name, family)]) for name in PATHS}
    # About one full-size probe per 100 ms for 3 s; the first starts within a round.
    for name, f in got.items():
        assert f["mtu_probe_sent_total"] >= 20, (name, f, output)
        # The small echoes pass everywhere: only size tells these paths apart.
        assert f["probe_received_total"] == f["probe_sent_total"] >= 20, (name, f)
    clean, too_big, hole = (got[n] for n in PATHS)
    assert clean["mtu_probe_received_total"] == clean["mtu_probe_sent_total"], clean
    assert clean["path_mtu_bytes"] == 1500, clean
    assert not [k for k in clean if k.startswith("error:")], clean
    # The router's kernel answers each request; its MTU becomes the path MTU.
    assert too_big["mtu_probe_received_total"] == 0, too_big
    assert too_big["error:packet_too_big"] == too_big["mtu_probe_sent_total"], too_big
    assert too_big["path_mtu_bytes"] == 1400, too_big
    # A black hole: every full-size request lost, nothing said, no path MTU.
    assert hole["mtu_probe_received_total"] == 0, hole
    assert hole["path_mtu_bytes"] == -1, hole
    assert not [k for k in hole if k.startswith("error:")], hole


def test_a_set_size_that_fits_passes_everywhere(paths: Paths) -> None:
    s, output = paths.run("--probe.mtu=1400")
    for (name, _family), addr in paths.addresses.items():
        f = figures(s, addr)
        assert f["mtu_probe_sent_total"] >= 20, (name, f, output)
        assert f["mtu_probe_received_total"] == f["mtu_probe_sent_total"], (name, f)
        assert f["path_mtu_bytes"] == 1400, (name, f)


def test_a_size_beyond_the_interface_is_refused_at_home(paths: Paths) -> None:
    s, output = paths.run("--probe.mtu=1501")
    for (name, _family), addr in paths.addresses.items():
        f = figures(s, addr)
        # EMSGSIZE from the local send, counted and logged; nothing went out.
        assert f.get("error:send_failed", 0) >= 20, (name, f, output)
        assert f["mtu_probe_sent_total"] == 0, (name, f)
        assert f["path_mtu_bytes"] == -1, (name, f)
        assert f["probe_received_total"] == f["probe_sent_total"] >= 20, (name, f)
    assert "Message too long" in output
