"""rtnetlink messages of the interface-MTU lookup, packed and parsed without a socket; and one
lookup of this machine's loopback, which needs no privilege."""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.probing import route


def _answer(kind: int, seq: int, header: bytes, attrs: list[tuple[int, bytes]]) -> bytes:
    body = header + b"".join(route._attribute(k, v) for k, v in attrs)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 0) + body


def test_route_request_asks_for_one_host() -> None:
    msg = route.route_request("2001:db8::7", 9)
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), route.RTM_GETROUTE, route.NLM_F_REQUEST, 9)
    family, dst_len = msg[16], msg[17]
    assert (family, dst_len) == (socket.AF_INET6, 128)
    attr_len, attr_kind = struct.unpack_from("=HH", msg, 28)
    assert (attr_len, attr_kind) == (20, route.RTA_DST)
    assert msg[32:48] == socket.inet_pton(socket.AF_INET6, "2001:db8::7")
    assert route.route_request("198.18.0.1", 1)[17] == 32


def test_answers_give_the_interface_and_its_mtu() -> None:
    rtmsg = struct.pack("=BBBBBBBBI", socket.AF_INET, 32, 0, 0, 254, 0, 0, 1, 0)
    oif = struct.pack("=I", 7)
    # A stray answer of another sequence number comes first, and is skipped.
    stray = _answer(route.RTM_NEWROUTE, 4, rtmsg, [(route.RTA_OIF, struct.pack("=I", 1))])
    data = stray + _answer(
        route.RTM_NEWROUTE, 5, rtmsg, [(route.RTA_DST, b"\xc6\x12\0\1"), (route.RTA_OIF, oif)]
    )
    assert route.parse_route_oif(data, 5) == 7
    ifinfo = struct.pack("=BxHiII", 0, 1, 7, 0, 0)
    link = _answer(route.RTM_NEWLINK, 6, ifinfo, [(3, b"eth0\0"), (route.IFLA_MTU, b"\xdc\5\0\0")])
    assert route.parse_link_mtu(link, 6) == 1500


def test_an_error_answer_is_an_oserror() -> None:
    data = (
        struct.pack("=IHHII", 36, route.NLMSG_ERROR, 0, 3, 0)
        + struct.pack("=i", -errno.ENETUNREACH)
        + b"\0" * 16
    )
    with pytest.raises(OSError) as caught:
        route.parse_route_oif(data, 3)
    assert caught.value.errno == errno.ENETUNREACH
    with pytest.raises(OSError):
        route.parse_route_oif(b"", 3)


@given(st.binary(max_size=120), st.integers(0, 8))
def test_parsing_never_raises_anything_but_oserror(data: bytes, seq: int) -> None:
    for parse in (route.parse_route_oif, route.parse_link_mtu):
        with contextlib.suppress(OSError):
            parse(data, seq)


def test_loopback_route_leaves_by_lo() -> None:
    table = route.RouteMtu()
    try:
        lo_mtu = int(Path("/sys/class/net/lo/mtu").read_text())
        assert table.lookup("127.0.0.1") == lo_mtu
        assert table.lookup("127.0.0.2") == lo_mtu  # the socket is reused
    finally:
        table.close()
