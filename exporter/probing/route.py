"""The MTU of the interface the route to an address leaves by, asked of the kernel over
rtnetlink: one RTM_GETROUTE for the output interface, one RTM_GETLINK for its MTU.

Why not IP_MTU on a connected socket: it answers the route's current MTU, which includes a
path MTU the kernel learned from an earlier "fragmentation needed" or "packet too big" (kept
for ten minutes), so a restarted exporter would quietly probe below the size it must test.
Why not the source address's interface: a source on lo, or on another device than the route
leaves by, names the wrong device. The route's output interface is what the kernel itself
uses as the limit under IP_PMTUDISC_PROBE. Message packing and parsing are pure; the socket
is opened once per lookup table, in the namespace of the thread that first asks.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import socket
import struct
from collections.abc import Iterator

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
RTA_DST, RTA_OIF = 1, 4
IFLA_MTU = 4

_NLMSG = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_IFINFO = struct.Struct("=BxHiII")
_RTATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
RECV_SIZE = 65536


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attribute(kind: int, data: bytes) -> bytes:
    length = _RTATTR.size + len(data)
    return _RTATTR.pack(length, kind) + data + b"\0" * (_align(length) - length)


def _message(kind: int, seq: int, body: bytes) -> bytes:
    return _NLMSG.pack(_NLMSG.size + len(body), kind, NLM_F_REQUEST, seq, 0) + body


def route_request(address: str, seq: int) -> bytes:
    """RTM_GETROUTE for one destination address."""
    ip = ipaddress.ip_address(address)
    fam = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    body = _RTMSG.pack(fam, ip.max_prefixlen, 0, 0, 0, 0, 0, 0, 0) + _attribute(RTA_DST, ip.packed)
    return _message(RTM_GETROUTE, seq, body)


def link_request(index: int, seq: int) -> bytes:
    """RTM_GETLINK for one interface index."""
    return _message(RTM_GETLINK, seq, _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0))


def _attributes(data: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, pos)
        if length < _RTATTR.size or pos + length > len(data):
            return
        yield kind & 0x3FFF, data[pos + _RTATTR.size : pos + length]
        pos += _align(length)


def _messages(data: bytes, seq: int) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + _NLMSG.size <= len(data):
        length, kind, _flags, their_seq, _pid = _NLMSG.unpack_from(data, pos)
        if length < _NLMSG.size or pos + length > len(data):
            return
        if their_seq == seq:
            yield kind, data[pos + _NLMSG.size : pos + length]
        pos += _align(length)


def _answer(data: bytes, seq: int, want: int, header: struct.Struct, attr: int) -> int:
    for kind, body in _messages(data, seq):
        if kind == NLMSG_ERROR:
            code = -_I32.unpack_from(body)[0] if len(body) >= _I32.size else errno.EIO
            raise OSError(code, f"rtnetlink: {errno.errorcode.get(code, code)}")
        if kind == want and len(body) >= header.size:
            for akind, value in _attributes(body[header.size :]):
                if akind == attr and len(value) >= _U32.size:
                    return int(_U32.unpack_from(value)[0])
    raise OSError(errno.ENOENT, "rtnetlink: no such attribute in the answer")


def parse_route_oif(data: bytes, seq: int) -> int:
    """The output interface index of a RTM_NEWROUTE answer; OSError for an error answer."""
    return _answer(data, seq, RTM_NEWROUTE, _RTMSG, RTA_OIF)


def parse_link_mtu(data: bytes, seq: int) -> int:
    """The MTU of a RTM_NEWLINK answer; OSError for an error answer."""
    return _answer(data, seq, RTM_NEWLINK, _IFINFO, IFLA_MTU)


class RouteMtu:
    """Looks up the MTU of the interface each destination's route leaves by. Called when a
    target is added or moves, never per packet."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = itertools.count(1)

    def _ask(self, message: bytes, seq: int) -> bytes:
        if self._sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            sock.settimeout(1.0)  # the kernel answers at once; this only bounds a surprise
            sock.bind((0, 0))
            self._sock = sock
        self._sock.send(message)
        for _ in range(8):  # answers to earlier, abandoned requests are skipped
            data = self._sock.recv(RECV_SIZE)
            if any(True for _ in _messages(data, seq)):
                return data
        raise OSError(errno.EIO, "rtnetlink: no answer to our request")

    def lookup(self, address: str) -> int:
        """The MTU of the route's output interface; OSError when there is no route."""
        seq = next(self._seq) & 0xFFFFFFFF
        oif = parse_route_oif(self._ask(route_request(address, seq), seq), seq)
        seq = next(self._seq) & 0xFFFFFFFF
        return parse_link_mtu(self._ask(link_request(oif, seq), seq), seq)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
