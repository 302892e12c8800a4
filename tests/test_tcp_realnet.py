"""TCP probes with real packets between namespaces: to a real peer exporter, to a port behind
a REJECT with tcp-reset, behind a DROP and behind an ICMP host unreachable, IPv4 and IPv6;
and flows over a real two-path router whose multipath hash reads L4 ports."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypedDict

import pytest

from tests.support.exporter_proc import ExporterProcess
from tests.support.metrics import Samples, value
from tests.support.netbed import Bed, Dst, MultipathDst
from tests.support.netbed_fixtures import ensure_bed_possible

pytestmark = pytest.mark.netns

PEER_PORT = 9872
INTERVAL = "100ms"
TIMEOUT = "300ms"
RUN_SECONDS = 3.0
OUTCOMES = ("ok", "refused", "timeout", "unreachable")


class Labels(TypedDict):
    target: str
    ip_family: str


@dataclass
class Run:
    dst: Dst
    targets: dict[tuple[str, int], str]  # (outcome, family) -> address
    samples: Samples
    peer_output: str
    output: str


def _reject_rules(dst: Dst, targets: dict[tuple[str, int], str]) -> None:
    for fam, tool in ((4, "iptables"), (6, "ip6tables")):
        port = ["-p", "tcp", "--dport", str(PEER_PORT)]
        refused = ["-d", targets[("refused", fam)], *port, "-j", "REJECT"]
        dst.ns.run([tool, "-w", "-A", "INPUT", *refused, "--reject-with", "tcp-reset"])
        dropped = ["-d", targets[("timeout", fam)], *port, "-j", "DROP"]
        dst.ns.run([tool, "-w", "-A", "INPUT", *dropped])
    # IPv4: a host unreachable from afar. IPv6 from afar did not work here: with an ICMPv6
    # address unreachable from the dst's REJECT, the first SYN's error did not end the
    # connect (the rule counted two SYNs, the retransmitted one a second later, before
    # connect() failed with EHOSTUNREACH), likely because over a veth the error arrives
    # while connect() still holds the socket, where the kernel keeps it as a soft error.
    # A route that says unreachable in src gives the same result at once.
    unreach = ["-d", targets[("unreachable", 4)], "-p", "tcp", "-j", "REJECT"]
    dst.ns.run(
        ["iptables", "-w", "-A", "INPUT", *unreach, "--reject-with", "icmp-host-unreachable"]
    )
    dst.bed.src.ip_batch([f"route add unreachable {targets[('unreachable', 6)]}/128"])
    # Every connect's error is answered, not rate limited to one a second.
    dst.ns.sysctls({"net.ipv4.icmp_ratelimit": 0})


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    ensure_bed_possible()
    with Bed() as bed:
        dst = bed.add_dst("peer")
        v4 = dst.add_targets(len(OUTCOMES), 0)
        v6 = dst.add_targets(0, len(OUTCOMES))
        targets = {(o, 4): a for o, a in zip(OUTCOMES, v4, strict=True)}
        targets |= {(o, 6): a for o, a in zip(OUTCOMES, v6, strict=True)}
        _reject_rules(dst, targets)
        peer_args = ["--web.listen-address", f":{PEER_PORT}", "--target", "127.0.0.1"]
        with ExporterProcess(dst.ns, peer_args, port=PEER_PORT) as peer:
            peer.wait_ready()
            args = [
                "--probe.tcp=true",
                f"--probe.tcp-port={PEER_PORT}",
                f"--probe.interval={INTERVAL}",
                f"--probe.timeout={TIMEOUT}",
                "--probe.flows=4",
            ]
            for address in targets.values():
                args += ["--target", address]
            with ExporterProcess(bed.src, args) as exporter:
                exporter.wait_ready()
                time.sleep(RUN_SECONDS)
                samples = exporter.scrape()
                exporter.stop()
                output = exporter.output()
            peer.stop()
            yield Run(dst, targets, samples, peer.output(), output)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("outcome", OUTCOMES)
def test_each_target_reads_its_one_outcome(run: Run, outcome: str, family: int) -> None:
    labels: Labels = {"target": run.targets[(outcome, family)], "ip_family": f"ipv{family}"}
    got = {
        lb["result"]: v
        for name, lb, v in run.samples
        if name == "pingmesh_tcp_probe_total" and all(lb.get(k) == w for k, w in labels.items())
    }
    # 3 s at 100 ms: about 30 connects; the last ones may still be in flight.
    assert set(got) == {outcome}, got
    assert got[outcome] >= 20, got
    connects = value(run.samples, "pingmesh_tcp_connect_seconds_count", **labels)
    lossy = value(run.samples, "pingmesh_tcp_lossy_flows", **labels)
    if outcome == "ok":
        assert connects == got["ok"]
        assert lossy == 0
        # The kernel's handshake RTT over a veth: well under a millisecond each.
        total = value(run.samples, "pingmesh_tcp_connect_seconds_sum", **labels)
        assert 0 < total / connects < 0.001
    else:
        assert connects == 0
        assert lossy == 4  # every flow failed
    if (outcome, family) == ("unreachable", 6):
        return  # its unreachable route stops the echo too
    # The TCP rules leave ICMP alone: every target answers its echo requests.
    sent = value(run.samples, "pingmesh_probe_sent_total", **labels)
    assert sent > 0 and value(run.samples, "pingmesh_probe_received_total", **labels) == sent


def test_the_peer_exporter_takes_the_resets_quietly(run: Run) -> None:
    assert "Traceback" not in run.peer_output
    assert "Exception" not in run.peer_output
    assert "level=error" not in run.output


def test_flows_keep_their_ports(run: Run) -> None:
    assert value(run.samples, "pingmesh_tcp_flows") == 4
    for fam in ("ipv4", "ipv6"):
        assert value(run.samples, "pingmesh_tcp_flow_port_changes_total", ip_family=fam) == 0


# ----- flows over a two-path router -------------------------------------------------------

FLOW_PORTS = (40000, 40007)  # the src namespace's ephemeral range: exactly 8 ports
MP_INTERVAL = "100ms"
MP_SECONDS = 4.0
ICMP_SOCKETS = 16


class Listener:
    """A TCP listener in a namespace that records the source port of every connection."""

    def __init__(self, dst: Dst) -> None:
        self.sock = dst.ns.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.bind(("::", PEER_PORT))
        self.sock.listen(128)
        self.sock.settimeout(0.1)
        self.seen: set[tuple[str, int]] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():  # ends when the test sets stop
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            host = peer[0].removeprefix("::ffff:")
            self.seen.add((host, peer[1]))
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def _icmp_identifiers_answered(bed: Bed, target: str, family: int) -> int:
    """How many of ICMP_SOCKETS datagram ICMP sockets (each its own identifier) get an echo
    reply from target through the router."""
    fam, proto, kind = (
        (socket.AF_INET, socket.IPPROTO_ICMP, 8)
        if family == 4
        else (socket.AF_INET6, socket.IPPROTO_ICMPV6, 128)
    )
    socks = [bed.src.socket(fam, socket.SOCK_DGRAM, proto) for _ in range(ICMP_SOCKETS)]
    try:
        for s in socks:
            s.settimeout(0.3)
            for seq in range(3):
                s.sendto(bytes([kind, 0, 0, 0, 0, 0, 0, seq]) + b"pingmesh", (target, 0))
        answered = 0
        for s in socks:
            try:
                s.recv(1024)
                answered += 1
            except TimeoutError:
                pass
        return answered
    finally:
        for s in socks:
            s.close()


@dataclass
class Multipath:
    bed: Bed
    mp: MultipathDst
    targets: dict[int, str]
    bad_ports: set[int]  # the IPv4 flow ports the router sends over path b


@pytest.fixture(scope="module")
def multipath() -> Iterator[Multipath]:
    ensure_bed_possible()
    with Bed() as bed:
        bed.src.sysctl("net.ipv4.ip_local_port_range", f"{FLOW_PORTS[0]} {FLOW_PORTS[1]}")
        mp = bed.add_multipath_dst()
        t4, t6 = mp.add_targets(1, 1)
        targets = {4: t4, 6: t6}
        ports = range(FLOW_PORTS[0], FLOW_PORTS[1] + 1)
        # The hash is deterministic for a seed: take the first seed under which the eight
        # IPv4 flows split over both paths, as the router's own route lookup tells
        # (bounded search). Its IPv6 lookup does not foretell what forwarding does with
        # ports (the forwarded split differs from it), so IPv6 is read from what arrives.
        for seed in range(1, 64):
            mp.router.sysctl("net.ipv4.fib_multipath_hash_seed", seed)
            bad = {p for p in ports if mp.path_of(t4, mp.src_v4, "tcp", p, PEER_PORT) == "b"}
            if 0 < len(bad) < len(ports):
                break
        else:
            pytest.fail("no seed below 64 splits eight flows over two paths")
        mp.drop_path_b()
        yield Multipath(bed, mp, targets, bad)


def _run_flows(m: Multipath, flows: int) -> tuple[Samples, set[tuple[str, int]]]:
    listener = Listener(m.mp)
    try:
        args = [
            "--web.listen-address=:9871",
            "--probe.tcp=true",
            f"--probe.tcp-port={PEER_PORT}",
            f"--probe.interval={MP_INTERVAL}",
            "--probe.timeout=200ms",
            f"--probe.flows={flows}",
            f"--target={m.targets[4]}",
            f"--target={m.targets[6]}",
        ]
        # Scraped from the router, so the test's own connections take no port of the
        # src namespace's eight.
        with ExporterProcess(m.bed.src, args, client=(m.mp.router, m.mp.src_v4)) as exporter:
            exporter.wait_ready()
            time.sleep(MP_SECONDS)
            samples = exporter.scrape()
            exporter.stop()
    finally:
        listener.close()
    return samples, listener.seen


@pytest.mark.parametrize("family", [4, 6])
def test_icmp_takes_one_path_whatever_its_identifier(multipath: Multipath, family: int) -> None:
    answered = _icmp_identifiers_answered(multipath.bed, multipath.targets[family], family)
    assert answered in (0, ICMP_SOCKETS)


def test_one_flow_sees_all_or_nothing(multipath: Multipath) -> None:
    samples, seen = _run_flows(multipath, 1)
    for fam in (4, 6):
        labels: Labels = {"target": multipath.targets[fam], "ip_family": f"ipv{fam}"}
        ok = value(samples, "pingmesh_tcp_probe_total", default=0, result="ok", **labels)
        lost = value(samples, "pingmesh_tcp_probe_total", default=0, result="timeout", **labels)
        assert ok + lost >= 30
        assert ok == 0 or lost == 0, (ok, lost)
        assert value(samples, "pingmesh_tcp_lossy_flows", **labels) == (1 if lost else 0)
        # The ICMP echo, one identifier: all or nothing as well.
        sent = value(samples, "pingmesh_probe_sent_total", **labels)
        received = value(samples, "pingmesh_probe_received_total", **labels)
        assert sent > 0 and received in (0, sent)
        # The one flow kept one port: it reached the listener from one port or not at all.
        source = multipath.mp.src_v4 if fam == 4 else multipath.mp.src_v6
        arrived = {p for host, p in seen if host == source}
        assert len(arrived) == (1 if ok else 0), arrived


def test_eight_flows_see_the_broken_path(multipath: Multipath) -> None:
    samples, seen = _run_flows(multipath, 8)
    all_ports = set(range(FLOW_PORTS[0], FLOW_PORTS[1] + 1))
    for fam, source in ((4, multipath.mp.src_v4), (6, multipath.mp.src_v6)):
        labels: Labels = {"target": multipath.targets[fam], "ip_family": f"ipv{fam}"}
        ok = value(samples, "pingmesh_tcp_probe_total", default=0, result="ok", **labels)
        lost = value(samples, "pingmesh_tcp_probe_total", default=0, result="timeout", **labels)
        total = ok + lost
        assert total >= 32
        # The flows are the eight ports, each kept: the good-path ones reached the listener
        # from this family's source address, the others never did.
        arrived = {p for host, p in seen if host == source}
        bad = all_ports - arrived
        if fam == 4:
            assert bad == multipath.bad_ports
        assert 1 <= len(bad) <= 7
        assert value(samples, "pingmesh_tcp_lossy_flows", **labels) == len(bad)
        # Probed in turn, each flow got total/8 probes give or take one.
        rounds = total / 8
        assert len(bad) * (rounds - 1) <= lost <= len(bad) * (rounds + 1), (lost, total, bad)
        # The echo to the same target, one identifier: all or nothing.
        sent = value(samples, "pingmesh_probe_sent_total", **labels)
        received = value(samples, "pingmesh_probe_received_total", **labels)
        assert sent > 0 and received in (0, sent)
