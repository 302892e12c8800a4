"""ICMP and ICMPv6 echo messages and errors, as bytes. Pure functions, no sockets."""

from __future__ import annotations

import struct
from dataclasses import dataclass

ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}

# ICMP error types by family, named as they appear in the errors metric's reason label.
ERROR_REASONS: dict[int, dict[int, str]] = {
    4: {3: "unreachable", 11: "ttl_exceeded", 12: "parameter_problem", 4: "source_quench"},
    6: {1: "unreachable", 2: "packet_too_big", 3: "ttl_exceeded", 4: "parameter_problem"},
}

# IPv4 "fragmentation needed and DF set" is a destination unreachable of its own code.
FRAG_NEEDED = (3, 4)

_ECHO_HEAD = struct.Struct("!BBHHH8sQ")  # header, then cookie and nonce: the payload's head
PAYLOAD_HEAD = 16
_ID_SEQ = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(
    family: int, ident: int, seq: int, cookie: bytes, nonce: int, tail: bytes, with_checksum: bool
) -> bytes:
    """An echo request whose payload is a per-process cookie, a nonce, then tail. A reply must
    carry exactly these bytes back, which is how corrupt replies are told apart. Datagram
    ICMP sockets and raw ICMPv6 sockets have the kernel fill in the checksum; raw IPv4
    sockets need it here."""
    packet = _ECHO_HEAD.pack(ECHO_REQUEST[family], 0, 0, ident, seq, cookie, nonce) + tail
    if with_checksum:
        csum = checksum(packet)
        packet = packet[:2] + csum.to_bytes(2, "big") + packet[4:]
    return packet


@dataclass(frozen=True)
class EchoReply:
    """An echo reply as parsed off the wire."""

    ident: int
    seq: int
    payload: bytes


@dataclass(frozen=True)
class IcmpError:
    """An ICMP error quoting one of our requests."""

    reason: str
    icmp_type: int
    code: int
    ident: int  # of the quoted echo request
    seq: int
    inner_destination: str | None  # where the quoted request was going
    mtu: int = 0  # the next hop's MTU a packet-too-big error reports (0: none, or not said)


@dataclass(frozen=True)
class Ignored:
    """An ICMP message that is neither, with why."""

    why: str  # "malformed", "other_type"


Parsed = EchoReply | IcmpError | Ignored


def strip_ipv4_header(packet: bytes) -> bytes | None:
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl:
        return None
    return packet[ihl:]


def _ntop(family: int, raw: bytes) -> str:
    import socket

    return socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6, raw)


def _quoted_echo(family: int, quoted: bytes) -> tuple[int, int, str] | None:
    """(ident, seq, destination) of the echo request an ICMP error quotes."""
    if family == 4:
        if len(quoted) < 20 or quoted[0] >> 4 != 4 or quoted[9] != 1:
            return None
        ihl = (quoted[0] & 0x0F) * 4
        dst = _ntop(4, quoted[16:20])
        inner = quoted[ihl:]
    else:
        if len(quoted) < 40 or quoted[0] >> 4 != 6 or quoted[6] != 58:
            return None
        dst = _ntop(6, quoted[24:40])
        inner = quoted[40:]
    if len(inner) < 8 or inner[0] != ECHO_REQUEST[family]:
        return None
    ident, seq = _ID_SEQ.unpack_from(inner, 4)
    return ident, seq, dst


def parse_icmp(family: int, message: bytes) -> Parsed:
    """Parse an ICMP message that starts at the ICMP header."""
    if len(message) < 8:
        return Ignored("malformed")
    icmp_type, code = message[0], message[1]
    if icmp_type == ECHO_REPLY[family]:
        ident, seq = _ID_SEQ.unpack_from(message, 4)
        return EchoReply(ident, seq, message[8:])
    if icmp_type not in ERROR_REASONS[family]:
        return Ignored("other_type")
    quoted = _quoted_echo(family, message[8:])
    if quoted is None:
        return Ignored("malformed")
    reason = error_reason(family, icmp_type, code)
    mtu = 0
    if reason == "packet_too_big":
        # RFC 1191: the next-hop MTU in the low half of the second word; RFC 4443: all of it.
        mtu = _U16.unpack_from(message, 6)[0] if family == 4 else _U32.unpack_from(message, 4)[0]
    return IcmpError(reason, icmp_type, code, quoted[0], quoted[1], quoted[2], mtu)


def parse_quoted_request(family: int, data: bytes) -> tuple[int, int] | None:
    """(ident, seq) from the echo request a datagram socket's error queue hands back."""
    if len(data) < 8 or data[0] != ECHO_REQUEST[family]:
        return None
    ident, seq = _ID_SEQ.unpack_from(data, 4)
    return ident, seq


def error_reason(family: int, icmp_type: int, code: int = 0) -> str:
    if family == 4 and (icmp_type, code) == FRAG_NEEDED:
        return "packet_too_big"
    return ERROR_REASONS[family].get(icmp_type, "icmp_error")
