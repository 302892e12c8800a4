"""The Service test bed itself (tests/svcbed.py), proven with plain sockets from src."""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from tests import netbed_fixtures
from tests.netbed import Bed, Namespace
from tests.svcbed import (
    KUBERNETES_CLUSTER_IP,
    QTYPE_A,
    QTYPE_AAAA,
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    RCODE_REFUSED,
    KubeProxy,
    Protocol,
    ServiceBed,
    TcpService,
    build_dns_query,
    dns_query_tcp,
    dns_query_udp,
    parse_dns_reply,
)

bed = netbed_fixtures.bed

pytestmark = pytest.mark.netns

FAMILIES = [pytest.param(4, id="v4"), pytest.param(6, id="v6")]


@pytest.fixture
def svc(bed: Bed) -> Iterator[ServiceBed]:
    with ServiceBed(bed) as service_bed:
        yield service_bed


def _family(version: int) -> socket.AddressFamily:
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def connect(ns: Namespace, version: int, ip: str, port: int, timeout_s: float = 2.0) -> str:
    """Connect from ns and wait for the backend's close; returns the local address."""
    with ns.socket(_family(version), socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect((ip, port))
        local = str(sock.getsockname()[0])
        # The backend closes right after accepting: EOF proves it accepted.
        assert sock.recv(1) == b""
        return local


def connect_error(
    ns: Namespace, version: int, ip: str, port: int, timeout_s: float
) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    with ns.socket(_family(version), socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect((ip, port))
        except OSError as exc:
            return exc, time.monotonic() - started
    return None, time.monotonic() - started


def iptables_save(ns: Namespace) -> str:
    return str(ns.run(["iptables-save"]).stdout) + str(ns.run(["ip6tables-save"]).stdout)


@pytest.mark.parametrize("version", FAMILIES)
def test_cluster_ip_reaches_backend(svc: ServiceBed, version: int) -> None:
    service = svc.tcp_service(port=80, target_port=8080, family=version)
    (backend,) = service.backends
    local = connect(svc.src, version, service.cluster_ip, 80)
    assert backend.wait_connections(1) == 1
    # DNAT changes only the destination: the backend sees the node's address.
    assert backend.peers[0][0] == local
    assert backend.port == 8080
    # Nothing answers the ClusterIP itself on the backend port.
    exc, _ = connect_error(svc.src, version, service.cluster_ip, 8080, timeout_s=0.3)
    assert isinstance(exc, TimeoutError)


def test_backends_share_the_load(svc: ServiceBed) -> None:
    service = svc.tcp_service(n_backends=3)
    for _ in range(45):
        connect(svc.src, 4, service.cluster_ip, 80)
    # connect() saw each backend's close, which follows its ACCEPT line.
    counts = [b.connections() for b in service.backends]
    assert sum(counts) == 45
    # Each backend gets 1/3 on average; all 45 missing one backend is ~3e-8.
    assert all(c > 0 for c in counts), counts


def test_no_endpoints_rejects(svc: ServiceBed) -> None:
    v4 = svc.allocate_cluster_ip(4)
    v6 = svc.allocate_cluster_ip(6)
    svc.proxy.set_service(v4, 80, "tcp", [])
    svc.proxy.set_service(v6, 80, "tcp", [])
    # ICMP port unreachable from REJECT in OUTPUT: ECONNREFUSED (111), at once.
    exc, took = connect_error(svc.src, 4, v4, 80, timeout_s=5)
    assert isinstance(exc, ConnectionRefusedError) and exc.errno == errno.ECONNREFUSED
    assert took < 0.5, took
    # IPv6 ends with ECONNREFUSED too, but the first ICMPv6 error only counts
    # as a soft error; the one for the SYN retransmitted after ~1 s ends it.
    exc, took = connect_error(svc.src, 6, v6, 80, timeout_s=5)
    assert isinstance(exc, ConnectionRefusedError) and exc.errno == errno.ECONNREFUSED
    assert took < 3.0, took
    # A UDP datagram dropped by the local REJECT fails in send(): EPERM (1).
    svc.proxy.set_service(v4, 53, "udp", [])
    with svc.src.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((v4, 53))
        with pytest.raises(PermissionError) as info:
            sock.send(build_dns_query("x.cluster.local"))
        assert info.value.errno == errno.EPERM


def test_no_endpoints_tcp_reset_refuses_v6_at_once(bed: Bed) -> None:
    with ServiceBed(bed, n_v4=0, n_v6=1, reject_with="tcp-reset") as svc:
        ip = svc.allocate_cluster_ip(6)
        svc.proxy.set_service(ip, 443, "tcp", [])
        exc, took = connect_error(svc.src, 6, ip, 443, timeout_s=5)
        assert isinstance(exc, ConnectionRefusedError) and exc.errno == errno.ECONNREFUSED
        assert took < 0.5, took


def test_drop_syn_times_out(svc: ServiceBed) -> None:
    service = svc.tcp_service(drop_syn=True)
    exc, took = connect_error(svc.src, 4, service.cluster_ip, 80, timeout_s=1.0)
    assert isinstance(exc, TimeoutError), exc
    assert took >= 0.9
    assert service.connections() == 0
    service.backends[0].set_drop_syn(False)
    connect(svc.src, 4, service.cluster_ip, 80)
    assert service.backends[0].wait_connections(1) == 1


def test_dns_answers_through_cluster_ip(svc: ServiceBed) -> None:
    records: dict[str, str | list[str]] = {
        "kubernetes.default.svc.cluster.local": KUBERNETES_CLUSTER_IP,
        "dual.ns.svc.cluster.local": ["198.18.16.77", "2001:db8:cafe::77"],
    }
    dns = svc.dns_service(family=4, records=records)
    ip = dns.cluster_ip
    reply = dns_query_udp(svc.src, ip, "kubernetes.default.svc.cluster.local", QTYPE_A, 1.0)
    assert reply.rcode == RCODE_NOERROR
    assert reply.answers == [KUBERNETES_CLUSTER_IP]
    reply = dns_query_udp(svc.src, ip, "nope.default.svc.cluster.local", QTYPE_A, 1.0)
    assert reply.rcode == RCODE_NXDOMAIN and reply.answers == []
    # NXDOMAIN for everything by default, not only under cluster.local.
    assert dns_query_udp(svc.src, ip, "example.com", QTYPE_A, 1.0).rcode == RCODE_NXDOMAIN
    # A name with only an A record: AAAA is NODATA (NOERROR, no answers).
    reply = dns_query_udp(svc.src, ip, "kubernetes.default.svc.cluster.local", QTYPE_AAAA, 1.0)
    assert reply.rcode == RCODE_NOERROR and reply.answers == []
    reply = dns_query_tcp(svc.src, ip, "dual.ns.svc.cluster.local", QTYPE_AAAA, 1.0)
    assert reply.rcode == RCODE_NOERROR and reply.answers == ["2001:db8:cafe::77"]
    assert "nope.default.svc.cluster.local" in dns.backend.queries()


def test_dns_over_v6_cluster_ip_and_local_domain(svc: ServiceBed) -> None:
    dns = svc.dns_service(family=6, nxdomain_domains=("cluster.local",))
    reply = dns_query_udp(svc.src, dns.cluster_ip, "kubernetes.default.svc.cluster.local")
    assert (reply.rcode, reply.answers) == (RCODE_NOERROR, [KUBERNETES_CLUSTER_IP])
    reply = dns_query_udp(svc.src, dns.cluster_ip, "missing.svc.cluster.local")
    assert reply.rcode == RCODE_NXDOMAIN
    # Outside the local domains there is no upstream to ask: REFUSED.
    assert dns_query_udp(svc.src, dns.cluster_ip, "example.com").rcode == RCODE_REFUSED


def test_dns_silent_times_out(svc: ServiceBed) -> None:
    dns = svc.dns_service(silent=True)
    with pytest.raises(TimeoutError):
        dns_query_udp(svc.src, dns.cluster_ip, "kubernetes.default.svc.cluster.local", QTYPE_A, 1.0)
    dns.backend.set_silent(False)
    reply = dns_query_udp(svc.src, dns.cluster_ip, "kubernetes.default.svc.cluster.local")
    assert reply.rcode == RCODE_NOERROR


def test_set_service_replaces_backends(svc: ServiceBed) -> None:
    first = svc.tcp_service()
    (a,) = first.backends
    b = svc.start_tcp_backend(svc.backend_v4[1], 8080)
    ip = first.cluster_ip
    connect(svc.src, 4, ip, 80)
    assert a.wait_connections(1) == 1
    svc.proxy.set_service(ip, 80, "tcp", [b.endpoint])
    for _ in range(3):
        connect(svc.src, 4, ip, 80)
    assert b.wait_connections(3) == 3
    assert a.connections() == 1
    svc.proxy.set_service(ip, 80, "tcp", [])
    exc, _ = connect_error(svc.src, 4, ip, 80, timeout_s=2)
    assert isinstance(exc, ConnectionRefusedError)
    svc.proxy.set_service(ip, 80, "tcp", [a.endpoint])
    connect(svc.src, 4, ip, 80)
    assert a.wait_connections(2) == 2
    assert b.connections() == 3
    key = KubeProxy.key(ip, 80)
    rules = iptables_save(svc.src)
    assert rules.count(f":{key.chain} ") == 1, rules
    assert a.address in rules and b.address not in rules


def test_remove_and_clear_leave_no_rules(svc: ServiceBed) -> None:
    before = iptables_save(svc.src)
    assert "PMSVC" not in before
    web = svc.tcp_service(family=4)
    web6 = svc.tcp_service(family=6)
    empty = svc.allocate_cluster_ip(4)
    svc.proxy.set_service(empty, 443, "tcp", [])
    svc.proxy.set_service(empty, 53, "udp", [(svc.backend_v4[2], 53)])
    rules = iptables_save(svc.src)
    wanted: list[tuple[str, int, Protocol]] = [
        (web.cluster_ip, 80, "tcp"),
        (empty, 443, "tcp"),
        (empty, 53, "udp"),
    ]
    for ip, port, proto in wanted:
        assert f":{KubeProxy.key(ip, port, proto).chain} " in rules
    assert f":{KubeProxy.key(web6.cluster_ip, 80).chain} " in rules

    svc.proxy.remove_service(empty, 443, "tcp")
    rules = iptables_save(svc.src)
    assert KubeProxy.key(empty, 443).chain not in rules
    assert "REJECT" not in rules
    connect(svc.src, 4, web.cluster_ip, 80)  # the rest still works

    svc.proxy.remove_service(web6.cluster_ip, 80)
    assert "PMSVC" not in str(svc.src.run(["ip6tables-save"]).stdout)

    svc.proxy.clear()
    assert "PMSVC" not in iptables_save(svc.src)
    assert svc.proxy.services() == {}
    exc, _ = connect_error(svc.src, 4, web.cluster_ip, 80, timeout_s=0.3)
    assert isinstance(exc, TimeoutError)


def test_service_bed_close_is_complete(bed: Bed) -> None:
    with ServiceBed(bed) as svc:
        service: TcpService = svc.tcp_service(family=6, n_backends=2)
        dns = svc.dns_service()
        procs = [b.proc for b in service.backends] + [dns.backend.proc]
        workdir = svc.workdir
    assert all(p.poll() is not None for p in procs)
    assert not workdir.exists()
    assert "PMSVC" not in iptables_save(bed.src)


def test_rejects_addresses_outside_the_bed(bed: Bed) -> None:
    proxy = KubeProxy(bed.src)
    with pytest.raises(ValueError, match="outside"):
        proxy.set_service("10.96.0.1", 80, "tcp", [("198.18.32.1", 80)])
    with pytest.raises(ValueError, match="outside"):
        proxy.set_service("198.18.16.5", 80, "tcp", [("192.0.2.1", 80)])
    with pytest.raises(ValueError, match="family"):
        proxy.set_service("198.18.16.5", 80, "tcp", [("2001:db8:1::1", 80)])
    assert "PMSVC" not in iptables_save(bed.src)


def test_dns_message_helpers() -> None:
    query = build_dns_query("a.b.cluster.local", QTYPE_AAAA, txid=0x1234)
    assert query[:4] == b"\x12\x34\x01\x00"
    assert query.endswith(b"\x01a\x01b\x07cluster\x05local\x00\x00\x1c\x00\x01")
    # A reply to that query (QR, AA, RD, RA) with one compressed A answer.
    header = struct.pack("!HHHHHH", 0x1234, 0x8580, 1, 1, 0, 0)
    answer = struct.pack("!HHHIH4B", 0xC00C, QTYPE_A, 1, 5, 4, 198, 18, 16, 9)
    reply = parse_dns_reply(header + query[12:] + answer)
    assert (reply.txid, reply.rcode, reply.answers, reply.authoritative) == (
        0x1234,
        RCODE_NOERROR,
        ["198.18.16.9"],
        True,
    )
    with pytest.raises(ValueError):
        parse_dns_reply(header + query[12:] + answer[:8])
