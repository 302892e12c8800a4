"""A DNS query and the parts of its answer a reachability check needs. Pure functions."""

from __future__ import annotations

import struct

RCODES = {0: "noerror", 1: "formerr", 2: "servfail", 3: "nxdomain", 4: "notimp", 5: "refused"}
TYPE_A, TYPE_AAAA = 1, 28


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("idna") if label else b""
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad DNS name {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def build_query(ident: int, name: str, qtype: int = TYPE_A) -> bytes:
    """A recursive query for one name."""
    header = struct.pack("!HHHHHH", ident & 0xFFFF, 0x0100, 1, 0, 0, 0)
    return header + encode_name(name) + struct.pack("!HH", qtype, 1)


def answer_result(ident: int, packet: bytes) -> str | None:
    """The result label for an answer to our query, or None when the packet is not one
    (too short, not a response, another ID). ``noerror`` needs at least one answer record:
    an empty NOERROR for a name that must exist is counted as ``nodata``."""
    if len(packet) < 12:
        return None
    rid, flags, _qd, ancount, _ns, _ar = struct.unpack_from("!HHHHHH", packet)
    if rid != ident or not flags & 0x8000:
        return None
    result = RCODES.get(flags & 0x000F, "rcode_other")
    if result == "noerror" and ancount == 0:
        return "nodata"
    return result
