"""Tests of the namespace test bed and the impairing ICMP responder.

They need root (namespaces, veth, raw sockets) and skip without it, except
under CI where they fail instead (see tests/support/netbed_fixtures.py).
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import random
import re
import select
import socket
import statistics
import struct
import subprocess
import time
from dataclasses import dataclass

import pytest

from tests.support.netbed import (
    Bed,
    Dst,
    Namespace,
    NetbedError,
    Profile,
    list_namespaces,
    sweep_stale_namespaces,
)
from tests.support.netbed_fixtures import BedFactory

# -- helpers -------------------------------------------------------------------

FPING_LINE = re.compile(r"^(\S+)\s+:\s+((?:[\d.]+|-)(?:\s+(?:[\d.]+|-))*)\s*$")


def fping_c(
    bed: Bed,
    fping: str,
    targets: list[str],
    count: int,
    period_ms: int = 20,
    extra: tuple[str, ...] = (),
) -> tuple[dict[str, list[float | None]], str]:
    """Run ``fping -C`` in src; per target the RTTs (None = lost), and stderr."""
    argv = [fping, "-C", str(count), "-p", str(period_ms), "-q", "-t", "500", *extra, *targets]
    proc = bed.src.run(argv, check=False, timeout=30 + count * period_ms * len(targets) / 1000)
    # 0: all answered, 1: some did not; anything else is a usage/setup error.
    assert proc.returncode in (0, 1), proc.stderr
    results: dict[str, list[float | None]] = {}
    for line in proc.stderr.splitlines():
        match = FPING_LINE.match(line.strip())
        if match:
            values = match.group(2).split()
            results[match.group(1)] = [None if v == "-" else float(v) for v in values]
    assert set(results) == set(targets), proc.stderr
    return results, str(proc.stderr)


def answered(rtts: list[float | None]) -> list[float]:
    return [r for r in rtts if r is not None]


def icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


@dataclass
class Received:
    source: str
    icmp_type: int
    code: int
    ident: int
    seq: int
    body: bytes  # everything after the 8-byte ICMP header
    checksum_ok: bool


def raw_probe(
    ns: Namespace,
    target: str,
    count: int = 3,
    payload: bytes = bytes(range(48)),
    wait_s: float = 0.3,
    raw_requests: list[bytes] | None = None,
) -> tuple[int, list[Received]]:
    """Send echo requests from a raw socket in ``ns``; return all ICMP that
    relates to them (replies with our id, errors quoting our id).

    ``raw_requests`` replaces the generated requests with pre-built ICMP
    messages (for malformed-packet tests).
    """
    v6 = ":" in target
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    echo_type = 128 if v6 else 8
    ident = random.randrange(1, 0xFFFF)
    received: list[Received] = []
    with ns.socket(family, socket.SOCK_RAW, proto) as sock:
        sock.setblocking(False)
        if raw_requests is None:
            raw_requests = []
            for seq in range(count):
                head = struct.pack("!BBHHH", echo_type, 0, 0, ident, seq)
                csum = 0 if v6 else icmp_checksum(head + payload)
                raw_requests.append(struct.pack("!BBHHH", echo_type, 0, csum, ident, seq) + payload)
        for request in raw_requests:
            sock.sendto(request, (target, 0))
        deadline = time.monotonic() + wait_s
        for _ in range(10_000):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([sock], [], [], remaining)
            if not ready:
                break
            data, peer = sock.recvfrom(65535)
            if not v6:
                data = data[(data[0] & 0x0F) * 4 :]
            if len(data) < 8:
                continue
            kind, code, _, rid, rseq = struct.unpack_from("!BBHHH", data)
            body = bytes(data[8:])
            if kind in (0, 129):
                if rid != ident:
                    continue
            elif kind in (3, 1):
                # The echo header sits at the end of the quote.
                if len(body) < 8 or struct.unpack_from("!H", body, len(body) - 4)[0] != ident:
                    continue
            else:
                continue
            received.append(
                Received(
                    source=str(peer[0]).split("%")[0],
                    icmp_type=kind,
                    code=code,
                    ident=rid,
                    seq=rseq,
                    body=body,
                    # The kernel already verified ICMPv6 checksums on receive.
                    checksum_ok=v6 or icmp_checksum(data) == 0,
                )
            )
    return ident, received


def add_responder_dst(bed: Bed, n: int = 8) -> Dst:
    dst = bed.add_dst("resp", kernel_echo=False)
    dst.add_targets(n, n)
    return dst


# -- topology and kernel echo ----------------------------------------------------


def test_kernel_echo_dst_answers_v4_and_v6(bed: Bed, fping_path: str) -> None:
    dst = bed.add_dst("echo", kernel_echo=True)
    targets = dst.add_targets(2, 2)
    assert [ipaddress.ip_address(t).version for t in targets] == [4, 4, 6, 6]
    assert all(ipaddress.ip_address(t) in dst.v4_prefix for t in dst.targets_v4)
    assert all(ipaddress.ip_address(t) in dst.v6_prefix for t in dst.targets_v6)
    results, _ = fping_c(bed, fping_path, targets, count=3)
    for target, rtts in results.items():
        assert None not in rtts, f"{target}: {rtts}"


def test_routed_dsts_pass_small_packets_and_full_size_only_where_the_path_allows(
    bed: Bed, fping_path: str
) -> None:
    clean = bed.add_routed_dst("clean")
    narrow = bed.add_routed_dst("narrow", far_mtu=1400)
    hole = bed.add_routed_dst("hole", drop_longer_than=1400)
    for dst in (clean, narrow, hole):
        assert dst.router is not None and dst.router.exists()
        assert dst.router.get_sysctl("net.ipv4.ip_forward") == "1"
        assert dst.router_far_v4 is not None and dst.router_far_v4.startswith("198.18.8.")
    assert narrow.ns.run(["cat", f"/sys/class/net/{narrow.dst_if}/mtu"]).stdout.strip() == "1400"
    v4 = {name: dst.add_targets(1)[0] for name, dst in (("c", clean), ("n", narrow), ("h", hole))}
    small, _ = fping_c(bed, fping_path, list(v4.values()), count=3)
    assert all(None not in rtts for rtts in small.values()), small
    # Don't fragment, 1,500-byte IP packets: only the clean path carries them back.
    big, _ = fping_c(bed, fping_path, list(v4.values()), count=3, extra=("-M", "-b", "1472"))
    assert None not in big[v4["c"]], big
    assert answered(big[v4["n"]]) == [] and answered(big[v4["h"]]) == [], big
    # 1,400 bytes fit everywhere: the drop rule takes only longer packets.
    fits, _ = fping_c(bed, fping_path, list(v4.values()), count=3, extra=("-M", "-b", "1372"))
    assert all(None not in rtts for rtts in fits.values()), fits


def test_names_and_interfaces(bed: Bed) -> None:
    first = bed.add_dst("first")
    second = bed.add_dst("second", kernel_echo=False)
    assert first.ns.name.startswith(f"pmtb-{os.getpid()}-")
    assert bed.src.name.endswith("-src")
    for dst in (first, second):
        assert len(dst.src_if) <= 15 and len(dst.dst_if) <= 15
        assert dst.ns.exists()
    assert (first.dst_v4, second.dst_v4) == ("198.18.0.2", "198.18.0.6")
    assert second.dst_v6 == "2001:db8:ffff:2::2"
    assert not first.v4_prefix.overlaps(second.v4_prefix)
    assert second.ns.get_sysctl("net.ipv4.icmp_echo_ignore_all") == "1"
    assert second.ns.get_sysctl("net.ipv6.icmp.echo_ignore_all") == "1"
    assert first.ns.get_sysctl("net.ipv4.icmp_echo_ignore_all") == "0"
    with pytest.raises(NetbedError):
        bed.add_dst("outside", v4_prefix="10.0.0.0/24")
    with pytest.raises(NetbedError):
        bed.add_dst("overlap", v4_prefix=str(first.v4_prefix))


def test_ping_group_range_flag(bed_factory: BedFactory) -> None:
    open_bed = bed_factory()
    dst = open_bed.add_dst("echo")
    v4, v6 = dst.add_targets(1, 1)
    assert open_bed.src.get_sysctl("net.ipv4.ping_group_range").split() == ["0", "2147483647"]
    for family, proto, target, echo_type in (
        (socket.AF_INET, socket.IPPROTO_ICMP, v4, 8),
        (socket.AF_INET6, socket.IPPROTO_ICMPV6, v6, 128),
    ):
        with open_bed.src.socket(family, socket.SOCK_DGRAM, proto) as sock:
            sock.settimeout(2.0)
            # Datagram ICMP: the kernel fills in id and checksum.
            sock.sendto(struct.pack("!BBHHH", echo_type, 0, 0, 0, 1) + b"x" * 8, (target, 0))
            reply = sock.recv(1024)
            assert reply[0] in (0, 129) and reply[8:] == b"x" * 8

    closed_bed = bed_factory(unprivileged_ping=False)
    assert closed_bed.src.get_sysctl("net.ipv4.ping_group_range").split() == ["1", "0"]
    with pytest.raises(PermissionError):
        closed_bed.src.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)


# -- responder timing, loss and duplicates -----------------------------------------


def test_responder_delay_median(bed: Bed, fping_path: str) -> None:
    dst = add_responder_dst(bed, 1)
    bed.start_responder(
        dst,
        [
            Profile(prefix=str(dst.v4_prefix), delay_ms=3.0),
            Profile(prefix=str(dst.v6_prefix), delay_ms=3.0),
        ],
    )
    results, _ = fping_c(bed, fping_path, dst.targets, count=20)
    for target, rtts in results.items():
        got = answered(rtts)
        assert len(got) == 20, f"{target}: {rtts}"
        assert abs(statistics.median(got) - 3.0) <= 0.3, f"{target}: {rtts}"


def test_responder_jitter_spreads_delay(bed: Bed, fping_path: str) -> None:
    dst = add_responder_dst(bed, 1)
    bed.start_responder(dst, [Profile(prefix=str(dst.v4_prefix), delay_ms=3.0, jitter_ms=1.5)])
    results, _ = fping_c(bed, fping_path, dst.targets_v4, count=20)
    got = answered(results[dst.targets_v4[0]])
    assert len(got) == 20
    # Uniform in [1.5, 4.5] ms plus a little path latency. A reply is never early; one can be
    # late when the machine is busy (the responder's timer wakes late), so the upper bound
    # holds for most replies, not for every one.
    assert min(got) >= 1.4, got
    assert sum(rtt <= 5.0 for rtt in got) >= 15, got
    assert max(got) - min(got) > 0.8, got


def test_responder_loss(bed: Bed, fping_path: str) -> None:
    dst = add_responder_dst(bed, 1)
    prefix = str(dst.v4_prefix)
    responder = bed.start_responder(dst, [Profile(prefix=prefix, loss=0.5)])
    results, _ = fping_c(bed, fping_path, dst.targets_v4, count=40)
    lost = results[dst.targets_v4[0]].count(None)
    # Binomial(n=40, p=0.5): sd = sqrt(40 * 0.25) = 3.16 packets (7.9 %).
    # 20 %..80 % is 8..32 lost, +-12 packets = +-3.8 sd; P(outside) = 4e-5.
    # The responder's RNG is seeded, so in practice the count is fixed.
    assert 8 <= lost <= 32, results
    counters = responder.profile_stats(prefix)
    assert counters["requests"] == 40
    assert counters["dropped"] == lost
    assert counters["replies"] == 40 - lost


def test_iptables_loss(bed: Bed, fping_path: str) -> None:
    dst = bed.add_dst("echo", kernel_echo=True)
    v4, v6 = dst.add_targets(1, 1)
    bed.loss(dst, 1.0)
    results, _ = fping_c(bed, fping_path, [v4, v6], count=3)
    assert all(r is None for rtts in results.values() for r in rtts), results

    bed.loss(dst, 0.5)
    results, _ = fping_c(bed, fping_path, [v4, v6], count=40)
    for target, rtts in results.items():
        # The kernel's PRNG is not seeded; see test_responder_loss for the
        # +-3.8 sd tolerance of 8..32 lost out of 40.
        assert 8 <= rtts.count(None) <= 32, f"{target}: {rtts}"

    bed.clear_loss(dst)
    results, _ = fping_c(bed, fping_path, [v4, v6], count=3)
    assert all(r is not None for rtts in results.values() for r in rtts), results


def test_responder_duplicates_seen_by_fping(bed: Bed, fping_path: str) -> None:
    dst = add_responder_dst(bed, 1)
    responder = bed.start_responder(
        dst,
        [
            Profile(prefix=str(dst.v4_prefix), duplicate=1.0),
            Profile(prefix=str(dst.v6_prefix), duplicate=1.0),
        ],
    )
    results, stderr = fping_c(bed, fping_path, dst.targets, count=5)
    for target, rtts in results.items():
        assert None not in rtts
        # fping 5.x reports "<host> : duplicate for [<n>], <bytes> bytes, <rtt> ms".
        # It exits as soon as the last original reply is in, so the copy of
        # the last probe may go unseen.
        pattern = rf"^{re.escape(target)}\s+: duplicate for \[(\d+)\]"
        dups = re.findall(pattern, stderr, re.MULTILINE)
        assert set(range(4)) <= {int(d) for d in dups}, stderr
    stats = responder.stats()
    assert stats["profiles"][str(dst.v4_prefix)]["duplicated"] == 5
    assert stats["profiles"][str(dst.v6_prefix)]["duplicated"] == 5


# -- responder impairments, checked with a raw socket -------------------------------

KINDS = ("reply", "corrupt", "truncate", "misdirect", "wrong_seq", "unreachable")
COUNTER = {
    "reply": "replies",
    "corrupt": "corrupted",
    "truncate": "truncated",
    "misdirect": "misdirected",
    "wrong_seq": "wrong_seq",
    "unreachable": "unreachable",
}


@pytest.mark.parametrize("version", [4, 6])
def test_responder_impairments(bed: Bed, version: int) -> None:
    dst = bed.add_dst("imp", kernel_echo=False)
    block_len = 28 if version == 4 else 124  # 16 addresses per impairment
    prefix: ipaddress.IPv4Network | ipaddress.IPv6Network = (
        dst.v4_prefix if version == 4 else dst.v6_prefix
    )
    # islice: a /64 holds 2**60 /124s, far too many to list.
    blocks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = list(
        itertools.islice(prefix.subnets(new_prefix=block_len), len(KINDS))
    )
    dst.add_targets(16 * len(KINDS), 16 * len(KINDS))
    profiles = [
        Profile(prefix=str(block), **({} if kind == "reply" else {kind: 1.0}))
        for kind, block in zip(KINDS, blocks, strict=True)
    ]
    responder = bed.start_responder(dst, profiles)
    src_addr = dst.src_v4 if version == 4 else dst.src_v6
    payload = bytes(range(48))
    for kind, block in zip(KINDS, blocks, strict=True):
        target = str(block.network_address + 2)
        ident, got = raw_probe(bed.src, target, count=3, payload=payload)
        assert len(got) == 3, (kind, got)
        assert all(r.checksum_ok for r in got), kind
        if kind == "unreachable":
            for r in got:
                assert (r.icmp_type, r.code) == ((3, 1) if version == 4 else (1, 3))
                assert r.source == target
                quote = r.body
                if version == 4:
                    ihl = (quote[0] & 0x0F) * 4
                    assert len(quote) == ihl + 8
                    assert ipaddress.ip_address(quote[12:16]) == ipaddress.ip_address(src_addr)
                    assert ipaddress.ip_address(quote[16:20]) == ipaddress.ip_address(target)
                    assert quote[ihl] == 8 and quote[9] == socket.IPPROTO_ICMP
                else:
                    assert len(quote) == 48 and quote[0] >> 4 == 6
                    assert quote[6] == socket.IPPROTO_ICMPV6
                    assert ipaddress.ip_address(quote[8:24]) == ipaddress.ip_address(src_addr)
                    assert ipaddress.ip_address(quote[24:40]) == ipaddress.ip_address(target)
                    assert quote[40] == 128
                assert struct.unpack_from("!H", quote, len(quote) - 4)[0] == ident
            continue
        assert all(r.icmp_type == (0 if version == 4 else 129) for r in got), kind
        seqs = sorted(r.seq for r in got)
        if kind == "wrong_seq":
            assert seqs == [1, 2, 3]
        else:
            assert seqs == [0, 1, 2]
        for r in got:
            if kind == "corrupt":
                assert len(r.body) == len(payload) and r.body != payload
            elif kind == "truncate":
                assert r.body == payload[: len(payload) // 2]
            else:
                assert r.body == payload
            if kind == "misdirect":
                assert r.source != target
                assert ipaddress.ip_address(r.source) in block
            else:
                assert r.source == target
    stats = responder.stats()
    for kind, block in zip(KINDS, blocks, strict=True):
        counters = stats["profiles"][str(block)]
        assert counters["requests"] == 3, (kind, counters)
        assert counters[COUNTER[kind]] == 3, (kind, counters)
        assert counters["send_errors"] == 0, (kind, counters)


def test_responder_survives_malformed_requests(bed: Bed) -> None:
    dst = add_responder_dst(bed, 2)
    responder = bed.start_responder(
        dst,
        [Profile(prefix=str(dst.v4_prefix), corrupt=1.0), Profile(prefix=str(dst.v6_prefix))],
    )
    v4 = dst.targets_v4[0]
    v6 = dst.targets_v6[0]
    bad_checksum = struct.pack("!BBHHH", 8, 0, 0x1234, 7, 1) + b"abcd"
    bad_code = struct.pack("!BBHHH", 8, 9, 0, 7, 2)
    bad_code = bad_code[:2] + struct.pack("!H", icmp_checksum(bad_code)) + bad_code[4:]
    _, got = raw_probe(bed.src, v4, raw_requests=[bad_checksum, bad_code], wait_s=0.2)
    assert got == []
    _, got = raw_probe(bed.src, v6, raw_requests=[struct.pack("!BBHHH", 128, 9, 0, 7, 1)])
    assert got == []
    assert responder.running()
    assert responder.stats()["malformed"] == 3
    # An empty payload cannot be corrupted; it is answered plainly.
    _, got = raw_probe(bed.src, v4, count=1, payload=b"")
    assert [(r.icmp_type, r.seq, r.body) for r in got] == [(0, 0, b"")]
    _, got = raw_probe(bed.src, v6, count=2)
    assert len(got) == 2


def test_responder_learns_targets_added_later(bed: Bed) -> None:
    dst = add_responder_dst(bed, 1)
    bed.start_responder(dst, [Profile(prefix=str(dst.v4_prefix), misdirect=1.0)])
    first = dst.targets_v4[0]
    # Alone in its prefix, the target cannot be misdirected: plain reply.
    _, got = raw_probe(bed.src, first, count=1)
    assert [r.source for r in got] == [first]
    (second,) = dst.add_targets(1, 0)  # also makes the responder reload
    _, got = raw_probe(bed.src, first, count=1)
    assert [r.source for r in got] == [second]


# -- teardown ----------------------------------------------------------------------


def test_close_removes_everything(bed_factory: BedFactory, fping_path: str) -> None:
    test_bed = bed_factory()
    dst = add_responder_dst(test_bed, 1)
    responder = test_bed.start_responder(dst, [Profile(prefix=str(dst.v4_prefix))])
    sleeper = dst.ns.popen(["sleep", "60"])
    names = [ns.name for ns in test_bed.namespaces]
    assert set(names) <= set(list_namespaces())
    test_bed.close()
    assert not set(names) & set(list_namespaces())
    assert not responder.running() and sleeper.poll() is not None
    assert responder.final_stats is not None
    test_bed.close()  # idempotent
    with pytest.raises(NetbedError):
        test_bed.add_dst("late")


def test_close_removes_routers_too(bed_factory: BedFactory) -> None:
    test_bed = bed_factory()
    dst = test_bed.add_routed_dst("hole", drop_longer_than=1400)
    names = [ns.name for ns in test_bed.namespaces]
    assert len(names) == 3 and dst.router is not None and dst.router.name in names
    test_bed.close()
    assert not set(names) & set(list_namespaces())


def test_close_on_exception(bed_factory: BedFactory) -> None:
    names: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), bed_factory() as test_bed:
        dst = test_bed.add_dst("echo")
        dst.add_targets(4, 4)
        names = [ns.name for ns in test_bed.namespaces]
        raise RuntimeError("boom")
    assert len(names) == 2
    assert not set(names) & set(list_namespaces())


def test_sweep_removes_only_dead_owners(bed: Bed) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Namespace.create(f"pmtb-{dead.pid}-1-src")
    try:
        removed = sweep_stale_namespaces()
        assert stale.name in removed and not stale.exists()
        assert bed.src.exists()
    finally:
        stale.delete()


# -- scale -------------------------------------------------------------------------


def test_many_targets(bed: Bed, fping_path: str) -> None:
    dst = bed.add_dst("many", kernel_echo=True)
    started = time.monotonic()
    targets = dst.add_targets(1000, 1000)
    elapsed = time.monotonic() - started
    assert len(targets) == len(set(targets)) == 2000
    assert elapsed < 20.0, f"adding 2000 targets took {elapsed:.1f}s"
    rng = random.Random(0)
    sample = [targets[0], targets[999], targets[1000], targets[-1]]
    sample += rng.sample(targets, 12)
    results, _ = fping_c(bed, fping_path, sorted(set(sample)), count=1)
    assert all(None not in rtts for rtts in results.values()), results
