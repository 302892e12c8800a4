"""ICMP encoding and decoding; nothing a peer sends may raise."""

from __future__ import annotations

import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from exporter.probing import wire


def test_checksum_of_echo_verifies_to_zero() -> None:
    pkt = wire.echo_request(4, 0x1234, 7, b"C" * 8, 1, b"hello world!", with_checksum=True)
    assert wire.checksum(pkt) == 0


def test_echo_reply_parses() -> None:
    req = wire.echo_request(6, 9, 513, b"x" * 8, 7, b"x" * 20, with_checksum=False)
    reply = bytes([129]) + req[1:]
    parsed = wire.parse_icmp(6, reply)
    assert parsed == wire.EchoReply(9, 513, b"x" * 8 + struct.pack("!Q", 7) + b"x" * 20)


def test_payload_layout() -> None:
    p = wire.echo_request(4, 1, 2, b"C" * 8, 5, bytes(range(40)), with_checksum=False)[8:]
    assert len(p) == 56 and p[:8] == b"C" * 8 and p[8:16] == struct.pack("!Q", 5)
    assert len(wire.echo_request(4, 1, 2, b"C" * 8, 5, b"", with_checksum=False)[8:]) == 16


def _v4_header(dst: str, proto: int = 1) -> bytes:
    return (
        bytes([0x45, 0, 0, 84, 0, 0, 0, 0, 64, proto, 0, 0])
        + socket.inet_aton("198.18.0.1")
        + socket.inet_aton(dst)
    )


def test_v4_unreachable_quotes_request() -> None:
    req = wire.echo_request(4, 77, 88, b"p" * 8, 0, b"", with_checksum=True)
    msg = struct.pack("!BBHI", 3, 1, 0, 0) + _v4_header("198.18.5.5") + req[:8]
    parsed = wire.parse_icmp(4, msg)
    assert parsed == wire.IcmpError("unreachable", 3, 1, 77, 88, "198.18.5.5")


def test_v6_time_exceeded_quotes_request() -> None:
    req = wire.echo_request(6, 1, 2, b"\0" * 8, 0, b"", with_checksum=False)
    inner = (
        bytes([0x60, 0, 0, 0, 0, 8, 58, 64])
        + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
        + socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    )
    msg = struct.pack("!BBHI", 3, 0, 0, 0) + inner + req
    assert wire.parse_icmp(6, msg) == wire.IcmpError("ttl_exceeded", 3, 0, 1, 2, "2001:db8::2")


def test_v4_fragmentation_needed_is_packet_too_big_with_the_next_hop_mtu() -> None:
    req = wire.echo_request(4, 77, 88, b"p" * 8, 0, b"", with_checksum=True)
    # RFC 1191: unused (16 bits), then the next-hop MTU.
    msg = struct.pack("!BBHHH", 3, 4, 0, 0, 1400) + _v4_header("198.18.5.5") + req[:8]
    assert wire.parse_icmp(4, msg) == wire.IcmpError(
        "packet_too_big", 3, 4, 77, 88, "198.18.5.5", 1400
    )
    assert wire.error_reason(4, 3, 4) == "packet_too_big"
    assert wire.error_reason(4, 3, 1) == "unreachable"


def test_v6_packet_too_big_carries_the_mtu() -> None:
    req = wire.echo_request(6, 1, 2, b"\0" * 8, 0, b"", with_checksum=False)
    inner = (
        bytes([0x60, 0, 0, 0, 0, 8, 58, 64])
        + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
        + socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    )
    msg = struct.pack("!BBHI", 2, 0, 0, 1280) + inner + req
    assert wire.parse_icmp(6, msg) == wire.IcmpError(
        "packet_too_big", 2, 0, 1, 2, "2001:db8::2", 1280
    )


def test_other_errors_carry_no_mtu() -> None:
    req = wire.echo_request(4, 77, 88, b"p" * 8, 0, b"", with_checksum=True)
    msg = struct.pack("!BBHHH", 3, 1, 0, 0, 1400) + _v4_header("198.18.5.5") + req[:8]
    parsed = wire.parse_icmp(4, msg)
    assert isinstance(parsed, wire.IcmpError) and parsed.mtu == 0


def test_error_quoting_non_icmp_is_ignored() -> None:
    msg = struct.pack("!BBHI", 3, 3, 0, 0) + _v4_header("198.18.5.5", proto=17) + b"\0" * 8
    assert isinstance(wire.parse_icmp(4, msg), wire.Ignored)


def test_strip_ipv4_header() -> None:
    assert wire.strip_ipv4_header(_v4_header("198.18.0.2") + b"abc") == b"abc"
    assert wire.strip_ipv4_header(b"\x4f" + b"\0" * 10) is None


@given(st.binary(max_size=200), st.sampled_from([4, 6]))
def test_parse_never_raises(data: bytes, family: int) -> None:
    wire.parse_icmp(family, data)
    wire.parse_quoted_request(family, data)
    wire.strip_ipv4_header(data)
