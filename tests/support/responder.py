#!/usr/bin/env python3
"""User-space ICMP echo responder with per-prefix impairments.

Runs inside a test-bed namespace where the kernel's own echo replies are
switched off, so every echo reply seen by the prober comes from here and
carries exactly the impairment the test asked for.

Usage: python3 tests/support/responder.py --config FILE [--control]

Config (JSON)::

    {"seed": 1,
     "profiles": [{"prefix": "198.18.16.0/24", "delay_ms": 3.0,
                   "jitter_ms": 0.0, "loss": 0.2, "duplicate": 0.1,
                   "corrupt": 0.05, "truncate": 0.05, "misdirect": 0.05,
                   "wrong_seq": 0.0, "unreachable": 0.0}]}

Requests whose destination matches no profile get a plain, immediate reply
and are counted under "default".  The most specific matching prefix wins.

Stdout protocol (one line each): ``READY`` once the sockets are open,
``STATS <json>`` in answer to the ``stats`` command (or SIGUSR1) and once
more on exit, ``RELOADED <json>`` after a ``reload`` command (or SIGHUP).
With ``--control`` commands are read from stdin and end of stdin means exit,
so a responder never outlives the harness that started it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import errno
import heapq
import ipaddress
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_HOST_UNREACH = 1
ICMP_ECHO_REQUEST = 8
ICMP6_DST_UNREACH = 1
ICMP6_ADDR_UNREACH = 3
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129

# Linux values; the socket module does not export all of them.
SOL_RAW = 255
ICMP_FILTER = 1
ICMP6_FILTER = 1
IP_PKTINFO = 8
IPV6_FLOWINFO = 11
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50
IPV6_RECVHOPLIMIT = 51
IPV6_HOPLIMIT = 52
IPV6_RECVTCLASS = 66
IPV6_TCLASS = 67
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
PR_SET_TIMERSLACK = 29

NETLINK_ROUTE = 0
RTM_GETADDR = 22
RTM_NEWADDR = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
IFA_ADDRESS = 1
IFA_LOCAL = 2

DUPLICATE_GAP_S = 0.0002
# Bounds for the busy-wait that follows an early timer wake-up (see
# Responder.wait_timeout); the actual value adapts to the measured timer
# overshoot of this machine.
SPIN_MARGIN_MIN_S = 0.00002
SPIN_MARGIN_MAX_S = 0.0005
# Upper bounds keep every loop finite even under a packet flood.
MAX_DRAIN_PER_WAKEUP = 512
MAX_SENDS_PER_WAKEUP = 4096
MAX_NETLINK_READS = 100_000

PROBABILITY_KEYS = (
    "loss",
    "duplicate",
    "corrupt",
    "truncate",
    "misdirect",
    "wrong_seq",
    "unreachable",
)
# Order matters: it is the precedence among the reply-replacing impairments.
EXCLUSIVE_KEYS = ("corrupt", "truncate", "misdirect", "wrong_seq", "unreachable")
COUNTER_KEYS = (
    "requests",
    "replies",
    "dropped",
    "duplicated",
    "corrupted",
    "truncated",
    "misdirected",
    "wrong_seq",
    "unreachable",
    "send_errors",
)
COUNTER_FOR = {
    "corrupt": "corrupted",
    "truncate": "truncated",
    "misdirect": "misdirected",
    "wrong_seq": "wrong_seq",
    "unreachable": "unreachable",
}


class ConfigError(ValueError):
    pass


@dataclass
class Profile:
    name: str
    prefix: IPNetwork | None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    probabilities: dict[str, float] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_KEYS, 0))
    # Local addresses inside the prefix, for picking a misdirected source.
    candidates: list[IPAddress] = field(default_factory=list)
    candidate_set: set[IPAddress] = field(default_factory=set)

    def chance(self, key: str) -> float:
        return self.probabilities.get(key, 0.0)

    def add_candidate(self, addr: IPAddress) -> None:
        if addr not in self.candidate_set:
            self.candidate_set.add(addr)
            self.candidates.append(addr)


def parse_profile(raw: Any, index: int) -> Profile:
    if not isinstance(raw, dict):
        raise ConfigError(f"profile #{index} is not an object")
    known = {"prefix", "delay_ms", "jitter_ms", "name", *PROBABILITY_KEYS}
    unknown = sorted(set(raw) - known)
    if unknown:
        # A typo in a key would silently disable an impairment otherwise.
        raise ConfigError(f"profile #{index}: unknown keys {unknown}")
    if "prefix" not in raw:
        raise ConfigError(f"profile #{index}: missing prefix")
    try:
        prefix = ipaddress.ip_network(str(raw["prefix"]), strict=False)
    except ValueError as exc:
        raise ConfigError(f"profile #{index}: {exc}") from exc
    delay = float(raw.get("delay_ms", 0.0))
    jitter = float(raw.get("jitter_ms", 0.0))
    if delay < 0 or jitter < 0:
        raise ConfigError(f"profile #{index}: delay_ms and jitter_ms must be >= 0")
    probs: dict[str, float] = {}
    for key in PROBABILITY_KEYS:
        value = float(raw.get(key, 0.0))
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"profile #{index}: {key}={value} is not a probability")
        probs[key] = value
    name = str(raw.get("name", prefix))
    return Profile(name=name, prefix=prefix, delay_ms=delay, jitter_ms=jitter, probabilities=probs)


def load_config(path: str) -> tuple[list[Profile], int]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ConfigError("config must be a JSON object")
    raw_profiles = data.get("profiles", [])
    if not isinstance(raw_profiles, list):
        raise ConfigError("profiles must be a list")
    profiles = [parse_profile(raw, i) for i, raw in enumerate(raw_profiles)]
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise ConfigError("profile names/prefixes must be unique")
    seed = int(data.get("seed", 1))
    return profiles, seed


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp4_packet(icmp_type: int, code: int, rest: bytes) -> bytes:
    """`rest` is everything after the 4-byte type/code/checksum head."""
    head = struct.pack("!BBH", icmp_type, code, 0)
    csum = checksum(head + rest)
    return struct.pack("!BBH", icmp_type, code, csum) + rest


def icmp6_packet(icmp_type: int, code: int, rest: bytes) -> bytes:
    # The kernel always computes the ICMPv6 checksum on raw ICMPv6 sockets
    # (it covers the pseudo-header, which only the kernel knows for sure).
    return struct.pack("!BBH", icmp_type, code, 0) + rest


@dataclass
class Request:
    family: int
    src: IPAddress
    dst: IPAddress
    ident: int
    seq: int
    payload: bytes
    # Bytes quoted in an error message: original IP header + first 8 ICMP bytes.
    quote: bytes
    peer: tuple[Any, ...]


def parse_v4(packet: bytes, peer: tuple[Any, ...]) -> Request | None:
    if len(packet) < 28 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    if ihl < 20 or total < ihl + 8 or total > len(packet):
        return None
    packet = packet[:total]
    icmp = packet[ihl:]
    if icmp[0] != ICMP_ECHO_REQUEST or icmp[1] != 0 or checksum(icmp) != 0:
        return None
    src = ipaddress.IPv4Address(packet[12:16])
    dst = ipaddress.IPv4Address(packet[16:20])
    if dst.is_multicast or dst == ipaddress.IPv4Address("255.255.255.255"):
        return None
    ident, seq = struct.unpack_from("!HH", icmp, 4)
    return Request(
        family=socket.AF_INET,
        src=src,
        dst=dst,
        ident=ident,
        seq=seq,
        payload=bytes(icmp[8:]),
        quote=bytes(packet[: ihl + 8]),
        peer=(str(src), 0),
    )


def parse_v6(
    icmp: bytes, ancdata: list[tuple[int, int, bytes]], peer: tuple[Any, ...]
) -> Request | None:
    if len(icmp) < 8 or icmp[0] != ICMP6_ECHO_REQUEST or icmp[1] != 0:
        return None
    dst: ipaddress.IPv6Address | None = None
    hop_limit = 64
    flowinfo: int | None = None
    tclass = 0
    for level, kind, data in ancdata:
        if level != socket.IPPROTO_IPV6:
            continue
        if kind == IPV6_PKTINFO and len(data) >= 20:
            dst = ipaddress.IPv6Address(data[:16])
        elif kind == IPV6_HOPLIMIT and len(data) >= 4:
            hop_limit = struct.unpack("=i", data[:4])[0] & 0xFF
        elif kind == IPV6_TCLASS and len(data) >= 4:
            tclass = struct.unpack("=i", data[:4])[0] & 0xFF
        elif kind == IPV6_FLOWINFO and len(data) >= 4:
            flowinfo = struct.unpack("!I", data[:4])[0]
    if dst is None or dst.is_multicast:
        return None
    src = ipaddress.IPv6Address(peer[0].split("%", 1)[0])
    first_word = 0x60000000 | ((flowinfo & 0x0FFFFFFF) if flowinfo is not None else (tclass << 20))
    # Raw ICMPv6 sockets never see the IPv6 header, so the quoted header is
    # rebuilt from ancillary data; a prober matches on addresses and the
    # echo id/seq, which are exact.
    header = struct.pack("!IHBB", first_word, len(icmp), socket.IPPROTO_ICMPV6, hop_limit)
    header += src.packed + dst.packed
    ident, seq = struct.unpack_from("!HH", icmp, 4)
    return Request(
        family=socket.AF_INET6,
        src=src,
        dst=dst,
        ident=ident,
        seq=seq,
        payload=bytes(icmp[8:]),
        quote=header + bytes(icmp[:8]),
        peer=peer,
    )


def local_addresses() -> list[IPAddress]:
    """All addresses configured in this network namespace (netlink dump)."""
    found: list[IPAddress] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as nl:
        nl.settimeout(5.0)
        nl.bind((0, 0))
        ifaddrmsg = struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0)
        header = struct.pack(
            "=IHHII", 16 + len(ifaddrmsg), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
        )
        nl.send(header + ifaddrmsg)
        for _ in range(MAX_NETLINK_READS):
            chunk = nl.recv(1 << 20)
            done, addrs = _parse_netlink_addrs(chunk)
            found.extend(addrs)
            if done:
                return found
    raise RuntimeError("netlink address dump did not finish")


def _parse_netlink_addrs(chunk: bytes) -> tuple[bool, list[IPAddress]]:
    addrs: list[IPAddress] = []
    offset = 0
    while offset + 16 <= len(chunk):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", chunk, offset)
        if length < 16:
            return True, addrs
        if kind == NLMSG_DONE:
            return True, addrs
        if kind == NLMSG_ERROR:
            raise OSError("netlink address dump failed")
        if kind == RTM_NEWADDR:
            family = chunk[offset + 16]
            chosen: bytes | None = None
            attr = offset + 16 + 8
            end = offset + length
            while attr + 4 <= end:
                alen, atype = struct.unpack_from("=HH", chunk, attr)
                if alen < 4:
                    break
                value = chunk[attr + 4 : attr + alen]
                # IFA_LOCAL is the local side on point-to-point links;
                # elsewhere only IFA_ADDRESS exists.
                if atype == IFA_LOCAL or (atype == IFA_ADDRESS and chosen is None):
                    chosen = value
                attr += (alen + 3) & ~3
            if chosen is not None:
                if family == socket.AF_INET and len(chosen) == 4:
                    addrs.append(ipaddress.IPv4Address(chosen))
                elif family == socket.AF_INET6 and len(chosen) == 16:
                    addrs.append(ipaddress.IPv6Address(chosen))
        offset += (length + 3) & ~3
    return False, addrs


def arrival_time(ancdata: list[tuple[int, int, bytes]]) -> float:
    """Monotonic time the kernel received the packet (now, if unknown)."""
    now_mono = time.monotonic()
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("=qq", data[:16])
            age = time.time() - (int(sec) + int(nsec) / 1e9)
            # A stepped wall clock must not turn into a bogus delay.
            if 0.0 <= age < 1.0:
                return now_mono - age
            break
    return now_mono


@dataclass(order=True)
class Pending:
    due: float
    order: int
    family: int = field(compare=False)
    data: bytes = field(compare=False)
    source: IPAddress = field(compare=False)
    peer: tuple[Any, ...] = field(compare=False)
    profile: Profile = field(compare=False)


class Responder:
    def __init__(self, profiles: list[Profile], seed: int) -> None:
        # Most specific prefix first, so a /24 profile can override a /20.
        self.profiles = sorted(
            profiles, key=lambda p: p.prefix.prefixlen if p.prefix else -1, reverse=True
        )
        self.default = Profile(name="default", prefix=None)
        self.rng = random.Random(seed)
        self.heap: list[Pending] = []
        self.order = 0
        self.malformed = 0
        self.overshoot_s = 0.0001
        self.local_v4 = 0
        self.local_v6 = 0
        self.sock4 = self._open_v4()
        self.sock6 = self._open_v6()
        self.reload_addresses()

    @staticmethod
    def _tune(sock: socket.socket) -> None:
        sock.setblocking(False)
        # Kernel receive stamps let the delay count from the packet's
        # arrival, not from when this process got around to reading it.
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
                break
            except OSError:
                continue

    def _open_v4(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        # Bit set == type blocked: let only echo requests through.
        mask = ~(1 << ICMP_ECHO_REQUEST) & 0xFFFFFFFF
        sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", mask))
        self._tune(sock)
        return sock

    def _open_v6(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        words = [0xFFFFFFFF] * 8
        words[ICMP6_ECHO_REQUEST >> 5] &= ~(1 << (ICMP6_ECHO_REQUEST & 31)) & 0xFFFFFFFF
        sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *words))
        for opt in (IPV6_RECVPKTINFO, IPV6_RECVHOPLIMIT, IPV6_RECVTCLASS, IPV6_FLOWINFO):
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, opt, 1)
            except OSError:
                # Only the destination address is essential; the rest only
                # refines the quoted header of error messages.
                if opt == IPV6_RECVPKTINFO:
                    raise
        self._tune(sock)
        return sock

    def close(self) -> None:
        self.sock4.close()
        self.sock6.close()

    def reload_addresses(self) -> dict[str, int]:
        addrs = local_addresses()
        for profile in self.profiles:
            profile.candidates.clear()
            profile.candidate_set.clear()
        v4 = v6 = 0
        for addr in sorted(addrs, key=lambda a: (a.version, int(a))):
            if addr.version == 4:
                v4 += 1
            else:
                v6 += 1
            for profile in self.profiles:
                if profile.prefix is not None and addr in profile.prefix:
                    profile.add_candidate(addr)
        self.local_v4, self.local_v6 = v4, v6
        return {"v4": v4, "v6": v6}

    def profile_for(self, addr: IPAddress) -> Profile:
        for profile in self.profiles:
            if profile.prefix is not None and addr in profile.prefix:
                return profile
        return self.default

    def stats(self) -> dict[str, Any]:
        return {
            "profiles": {p.name: dict(p.counters) for p in self.profiles},
            "default": dict(self.default.counters),
            "malformed": self.malformed,
            "local_addresses": {"v4": self.local_v4, "v6": self.local_v6},
            "pending": len(self.heap),
        }

    # -- receive side -----------------------------------------------------

    def drain(self, sock: socket.socket) -> None:
        for _ in range(MAX_DRAIN_PER_WAKEUP):
            try:
                data, ancdata, _flags, peer = sock.recvmsg(65535, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # Queued ICMP errors and the like; nothing to answer.
                self.malformed += 1
                return
            arrived = arrival_time(ancdata)
            try:
                if sock is self.sock4:
                    request = parse_v4(data, peer)
                else:
                    request = parse_v6(data, ancdata, peer)
            except (ValueError, struct.error, IndexError):
                request = None
            if request is None:
                self.malformed += 1
                continue
            self.handle(request, arrived)

    def handle(self, req: Request, arrived: float) -> None:
        profile = self.profile_for(req.dst)
        counters = profile.counters
        counters["requests"] += 1
        profile.add_candidate(req.dst)
        # Draw every decision each time so that, for a fixed seed, the
        # outcome of request N does not depend on which knobs are non-zero.
        draws = {key: self.rng.random() for key in PROBABILITY_KEYS}
        jitter_draw = self.rng.uniform(-1.0, 1.0)
        if draws["loss"] < profile.chance("loss"):
            counters["dropped"] += 1
            return
        kind = "reply"
        for key in EXCLUSIVE_KEYS:
            if draws[key] < profile.chance(key):
                kind = key
                break
        source: IPAddress = req.dst
        payload = req.payload
        seq = req.seq
        if kind == "corrupt":
            if payload:
                payload = self._corrupt(payload)
            else:
                kind = "reply"
        elif kind == "truncate":
            if payload:
                payload = payload[: len(payload) // 2]
            else:
                kind = "reply"
        elif kind == "misdirect":
            other = self._other_address(profile, req.dst)
            if other is None:
                kind = "reply"
            else:
                source = other
        elif kind == "wrong_seq":
            seq = (seq + 1) & 0xFFFF
        if kind == "unreachable":
            data = self._unreachable(req)
        else:
            data = self._echo_reply(req.family, req.ident, seq, payload)
            counters["replies"] += 1
        if kind != "reply":
            counters[COUNTER_FOR[kind]] += 1
        delay_s = max(0.0, profile.delay_ms + jitter_draw * profile.jitter_ms) / 1000.0
        due = arrived + delay_s
        self._schedule(due, req, data, source, profile)
        if draws["duplicate"] < profile.chance("duplicate"):
            counters["duplicated"] += 1
            self._schedule(due + DUPLICATE_GAP_S, req, data, source, profile)

    def _corrupt(self, payload: bytes) -> bytes:
        buf = bytearray(payload)
        for _ in range(min(4, len(buf))):
            pos = self.rng.randrange(len(buf))
            # A non-zero XOR guarantees the byte really changes.
            buf[pos] ^= self.rng.randrange(1, 256)
        return bytes(buf)

    def _other_address(self, profile: Profile, current: IPAddress) -> IPAddress | None:
        candidates = profile.candidates
        if len(candidates) < 2:
            return None
        pick = candidates[self.rng.randrange(len(candidates))]
        if pick == current:
            idx = candidates.index(pick)
            pick = candidates[(idx + 1) % len(candidates)]
        return pick if pick != current else None

    @staticmethod
    def _echo_reply(family: int, ident: int, seq: int, payload: bytes) -> bytes:
        rest = struct.pack("!HH", ident, seq) + payload
        if family == socket.AF_INET:
            return icmp4_packet(ICMP_ECHO_REPLY, 0, rest)
        return icmp6_packet(ICMP6_ECHO_REPLY, 0, rest)

    @staticmethod
    def _unreachable(req: Request) -> bytes:
        rest = b"\0\0\0\0" + req.quote
        if req.family == socket.AF_INET:
            return icmp4_packet(ICMP_DEST_UNREACH, ICMP_HOST_UNREACH, rest)
        return icmp6_packet(ICMP6_DST_UNREACH, ICMP6_ADDR_UNREACH, rest)

    def _schedule(
        self, due: float, req: Request, data: bytes, source: IPAddress, profile: Profile
    ) -> None:
        self.order += 1
        heapq.heappush(
            self.heap,
            Pending(
                due=due,
                order=self.order,
                family=req.family,
                data=data,
                source=source,
                peer=req.peer,
                profile=profile,
            ),
        )

    # -- send side --------------------------------------------------------

    def wait_timeout(self) -> float | None:
        """How long select() may block before the next reply is due.

        Timer wake-ups overshoot by tens to hundreds of microseconds (more
        in VMs), a visible error on a millisecond delay.  So wake up early
        by the typical overshoot and busy-wait the remainder with select()
        timeouts of zero, which still serves incoming packets meanwhile.
        """
        if not self.heap:
            return None
        margin = min(max(1.5 * self.overshoot_s, SPIN_MARGIN_MIN_S), SPIN_MARGIN_MAX_S)
        return max(0.0, self.heap[0].due - time.monotonic() - margin)

    def note_wakeup(self, asked_s: float, slept_s: float) -> None:
        """Track how late timer wake-ups are (exponential moving average)."""
        if asked_s > 0.0:
            late = max(0.0, slept_s - asked_s)
            self.overshoot_s += 0.1 * (late - self.overshoot_s)

    def send_due(self) -> None:
        for _ in range(MAX_SENDS_PER_WAKEUP):
            if not self.heap or self.heap[0].due > time.monotonic():
                return
            item = heapq.heappop(self.heap)
            try:
                self._send(item)
            except OSError:
                item.profile.counters["send_errors"] += 1

    def _send(self, item: Pending) -> None:
        # The kernel would pick the veth address as source; the reply must
        # come from the target (or, when misdirecting, another local one).
        if item.family == socket.AF_INET:
            info = struct.pack("=I4s4s", 0, item.source.packed, b"\0\0\0\0")
            self.sock4.sendmsg([item.data], [(socket.IPPROTO_IP, IP_PKTINFO, info)], 0, item.peer)
        else:
            info = struct.pack("=16sI", item.source.packed, 0)
            self.sock6.sendmsg(
                [item.data], [(socket.IPPROTO_IPV6, IPV6_PKTINFO, info)], 0, item.peer
            )


def _tighten_timer_slack() -> None:
    # The default 50 us timer slack is a visible share of a 0.2 ms budget.
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(1), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def emit(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass


def run(config_path: str, control: bool) -> int:
    profiles, seed = load_config(config_path)
    responder = Responder(profiles, seed)
    _tighten_timer_slack()

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    flags = {"stop": False, "stats": False, "reload": False}

    def on_signal(signum: int, _frame: Any) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            flags["stop"] = True
        elif signum == signal.SIGUSR1:
            flags["stats"] = True
        elif signum == signal.SIGHUP:
            flags["reload"] = True

    # The wakeup fd makes select() return at once: Python would otherwise
    # resume the wait after running the handler (PEP 475).
    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(sig, on_signal)

    inputs: list[Any] = [responder.sock4, responder.sock6, wake_r]
    stdin_fd = sys.stdin.fileno() if control else -1
    if control:
        inputs.append(stdin_fd)
    command_buf = b""
    emit("READY")
    try:
        while not flags["stop"]:
            timeout = responder.wait_timeout()
            started = time.monotonic()
            try:
                readable, _, _ = select.select(inputs, [], [], timeout)
            except InterruptedError:
                readable = []
            if not readable and timeout is not None:
                responder.note_wakeup(timeout, time.monotonic() - started)
            for ready in readable:
                if ready is responder.sock4 or ready is responder.sock6:
                    responder.drain(ready)
                elif ready == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                elif ready == stdin_fd:
                    chunk = os.read(stdin_fd, 4096)
                    if not chunk:
                        flags["stop"] = True
                        break
                    command_buf += chunk
                    *lines, rest = command_buf.split(b"\n")
                    command_buf = rest[-4096:]
                    for raw in lines:
                        command = raw.strip().decode("ascii", "replace")
                        if command == "stats":
                            flags["stats"] = True
                        elif command == "reload":
                            flags["reload"] = True
                        elif command in ("quit", "exit"):
                            flags["stop"] = True
            responder.send_due()
            if flags["reload"]:
                flags["reload"] = False
                emit("RELOADED " + json.dumps(responder.reload_addresses()))
            if flags["stats"]:
                flags["stats"] = False
                emit("STATS " + json.dumps(responder.stats()))
    finally:
        emit("STATS " + json.dumps(responder.stats()))
        responder.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", required=True, help="JSON config file")
    parser.add_argument(
        "--control",
        action="store_true",
        help="read commands (stats, reload, quit) from stdin; exit on EOF",
    )
    args = parser.parse_args(argv)
    try:
        return run(args.config, args.control)
    except ConfigError as exc:
        print(f"responder: bad config: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            print(f"responder: raw sockets need CAP_NET_RAW: {exc}", file=sys.stderr)
            return 3
        raise


if __name__ == "__main__":
    sys.exit(main())
