"""The one place where ICMP sockets are opened, configured and read. icmplib types stop here.

One socket per address family serves every target. Replies carry the kernel's receive time
(SO_TIMESTAMPNS), so the event loop's own delay never shows up as latency; SO_RXQ_OVFL reports
how many packets the kernel dropped because our receive buffer was full.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from typing import Protocol

import icmplib

from exporter.probing import wire

# Linux constants the socket module does not export.
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
SO_RXQ_OVFL = 40
SO_RCVBUFFORCE = 33
IP_RECVERR = 11
IPV6_RECVERR = 25
SOL_RAW = 255
ICMP_FILTER = 1
IP_MTU_DISCOVER = 10
IP_PMTUDISC_PROBE = 3
IPV6_MTU_DISCOVER = 23
IPV6_PMTUDISC_PROBE = 3
IPV6_DONTFRAG = 62
ICMP6_FILTER = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3

_TIMESPEC = struct.Struct("@qq")
_U32 = struct.Struct("@I")
_EXT_ERR = struct.Struct("@IBBBBII")
_SOL_SOCKET = int(socket.SOL_SOCKET)
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_U32.size) + 64
_ERR_ANC_SIZE = 512


class ProbeSocket(Protocol):
    """What the engine needs of a socket; IcmpSocket is the real one."""

    family: int
    mode: str
    raw: bool
    ident: int
    rcvbuf: int
    drops: int

    def fileno(self) -> int: ...
    def destination(self, address: str) -> tuple[str, int] | tuple[str, int, int, int]: ...
    def send(
        self, packet: bytes, destination: tuple[str, int] | tuple[str, int, int, int]
    ) -> None: ...
    def recv_many(self, limit: int) -> tuple[list[Received], bool]: ...
    def recv_error(self) -> QueuedError | None: ...
    def resize(self, wanted: int) -> None: ...
    def close(self) -> None: ...


class PrivilegeError(Exception):
    """No kind of ICMP socket could be opened; the message names the remedies."""


# One received packet: (ICMP message from its header on, source address, kernel receive time
# in CLOCK_REALTIME ns or None, truncated). A plain tuple: this is built once per reply.
Received = tuple[bytes, str, int | None, bool]
_MSG_TRUNC = int(socket.MSG_TRUNC)


@dataclass(frozen=True)
class QueuedError:
    """An ICMP error a datagram socket queued for one of our requests."""

    icmp_type: int
    code: int
    destination: str  # where our request was going
    quoted: bytes  # our request as the error quoted it, from its ICMP header
    info: int = 0  # ee_info: the next hop's MTU for a packet-too-big error


def _ping_group_range() -> str:
    try:
        with open("/proc/sys/net/ipv4/ping_group_range") as fh:
            return " ".join(fh.read().split())
    except OSError:
        return "unknown"


def privilege_message(mode: str) -> str:
    gid = os.getgid()
    lines = [f"cannot open an ICMP socket (--probe.socket={mode})."]
    if mode in ("auto", "datagram"):
        lines.append(
            f"  Datagram ICMP needs this process's group ({gid}) inside net.ipv4.ping_group_range "
            f"(now '{_ping_group_range()}'): sysctl -w net.ipv4.ping_group_range='0 2147483647', "
            "or in Kubernetes set it in the pod's securityContext.sysctls (a hostNetwork pod "
            "cannot: set it on the node)."
        )
    if mode in ("auto", "raw"):
        lines.append(
            "  Raw ICMP needs the CAP_NET_RAW capability in effect: run as root (in a "
            "container: as user 0 with NET_RAW added; Kubernetes sets no ambient capabilities, "
            "so a non-root container never holds the capabilities it adds)."
        )
    return "\n".join(lines)


# What an ICMP error leaves as a socket's pending error (unreachable, time exceeded, packet
# too big, parameter problem, source quench): the next send reports it instead of sending.
ASYNC_ERRORS = frozenset(
    {
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ECONNREFUSED,
        errno.EHOSTDOWN,
        errno.ENONET,
        errno.ENOPROTOOPT,
        errno.EOPNOTSUPP,
        errno.EACCES,
        errno.EMSGSIZE,
        errno.EPROTO,
    }
)
# A few errors can queue up between two sends; a real failure of the send itself repeats.
PENDING_ERROR_RETRIES = 3


class IcmpSocket:
    """A non-blocking ICMP socket of one family, in datagram or raw mode."""

    def __init__(self, family: int, mode: str, ttl: int, traffic_class: int, rcvbuf: int) -> None:
        if mode not in ("datagram", "raw"):
            raise ValueError(mode)
        self.family = family
        self.mode = mode
        self.raw = mode == "raw"
        # Raw sockets see every ICMP packet on the host: a random identifier (not the PID,
        # which is often 1 in a container) tells our replies apart. Datagram sockets get
        # the identifier from the kernel, which also hands us only our own replies.
        self.ident = int.from_bytes(os.urandom(2), "big") if self.raw else 0
        cls = icmplib.ICMPv4Socket if family == 4 else icmplib.ICMPv6Socket
        try:
            self._icmplib_socket = cls(privileged=self.raw)
        except icmplib.SocketPermissionError as exc:
            raise PermissionError(str(exc)) from None
        except icmplib.ICMPSocketError as exc:
            raise OSError(errno.EAFNOSUPPORT, str(exc)) from None
        sock: socket.socket = self._icmplib_socket.sock
        self.sock = sock
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        self.rcvbuf = self._size_receive_buffer(rcvbuf)
        if family == 4:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, traffic_class)
            if self.raw:
                wanted = (1 << 0) | (1 << 3) | (1 << 11) | (1 << 12)
                sock.setsockopt(SOL_RAW, ICMP_FILTER, _U32.pack(~wanted & 0xFFFFFFFF))
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, traffic_class)
            if self.raw:
                blocked = [0xFFFFFFFF] * 8
                for t in (1, 2, 3, 4, 129):
                    blocked[t >> 5] &= ~(1 << (t & 31))
                sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("@8I", *blocked))
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        self._bufsize = 65535
        self._drops_seen = 0
        self.drops = 0

    def forbid_fragments(self) -> None:
        """Don't fragment, and send at the interface's MTU whatever path MTU the kernel has
        learned (PMTUDISC_PROBE): a full-size probe must keep testing the size the
        interface allows, and a router on the way must answer it or drop it. A request
        larger than the interface's MTU is refused at once with EMSGSIZE."""
        if self.family == 4:
            self.sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
        else:
            self.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE)
            self.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)

    def _size_receive_buffer(self, wanted: int) -> int:
        # SO_RCVBUFFORCE goes past net.core.rmem_max where we hold CAP_NET_ADMIN; without it
        # the kernel clamps SO_RCVBUF to rmem_max, which is still better than the default.
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, wanted)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
        return int(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    def resize(self, wanted: int) -> None:
        if wanted > self.rcvbuf:
            self.rcvbuf = self._size_receive_buffer(wanted)

    def fileno(self) -> int:
        return self.sock.fileno()

    def destination(self, address: str) -> tuple[str, int] | tuple[str, int, int, int]:
        """The sockaddr tuple for sendto, built once per target, not once per packet."""
        return (address, 0) if self.family == 4 else (address, 0, 0, 0)

    def send(self, packet: bytes, destination: tuple[str, int] | tuple[str, int, int, int]) -> None:
        """Send one packet. An ICMP error for any earlier request also sets the socket's
        pending error, which the kernel hands to the next send, whatever its destination,
        and clears: such a refusal belongs to another target (its details wait on the error
        queue, where the reader finds them), so the send is tried again. A failure of this
        send itself repeats."""
        try:
            self.sock.sendto(packet, destination)
        except OSError as exc:
            if exc.errno not in ASYNC_ERRORS:
                raise
            self._send_again(packet, destination)

    def _send_again(
        self, packet: bytes, destination: tuple[str, int] | tuple[str, int, int, int]
    ) -> None:
        for attempt in range(PENDING_ERROR_RETRIES):
            try:
                self.sock.sendto(packet, destination)
                return
            except OSError as exc:
                if exc.errno not in ASYNC_ERRORS or attempt == PENDING_ERROR_RETRIES - 1:
                    raise

    def recv_many(self, limit: int) -> tuple[list[Received], bool]:
        """Up to limit queued packets, and whether the kernel reported an error on the socket
        itself (its details then wait on the error queue)."""
        out: list[Received] = []
        recvmsg = self.sock.recvmsg
        bufsize = self._bufsize
        strip = self.raw and self.family == 4
        for _ in range(limit):
            try:
                data, anc, flags, addr = recvmsg(bufsize, _ANC_SIZE)
            except BlockingIOError:
                return out, False
            except InterruptedError:
                continue
            except OSError:
                return out, True
            rx_ns = None
            for level, kind, cdata in anc:
                if level != _SOL_SOCKET:
                    continue
                if kind == SCM_TIMESTAMPNS and len(cdata) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack_from(cdata)
                    rx_ns = sec * 1_000_000_000 + nsec
                elif kind == SO_RXQ_OVFL and len(cdata) >= _U32.size:
                    self._note_drops(_U32.unpack_from(cdata)[0])
            if strip:
                data = wire.strip_ipv4_header(data) or b""
            out.append((data, addr[0], rx_ns, bool(flags & _MSG_TRUNC)))
        return out, False

    def _note_drops(self, counter: int) -> None:
        # The kernel's counter is cumulative per socket and wraps at 2**32.
        delta = (counter - self._drops_seen) & 0xFFFFFFFF
        self._drops_seen = counter
        self.drops += delta

    def recv_error(self) -> QueuedError | None:
        """The next ICMP error queued on a datagram socket (IP_RECVERR), or None."""
        if self.raw:
            return None
        try:
            data, anc, _flags, addr = self.sock.recvmsg(
                self._bufsize, _ERR_ANC_SIZE, socket.MSG_ERRQUEUE
            )
        except (BlockingIOError, InterruptedError):
            return None
        for level, kind, cdata in anc:
            is_err = (level == socket.IPPROTO_IP and kind == IP_RECVERR) or (
                level == socket.IPPROTO_IPV6 and kind == IPV6_RECVERR
            )
            if not is_err or len(cdata) < _EXT_ERR.size:
                continue
            _errno, origin, icmp_type, code, _pad, info, _data = _EXT_ERR.unpack_from(cdata)
            if origin not in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6):
                continue
            return QueuedError(icmp_type, code, addr[0] if addr else "", data, info)
        # Local errors (no route, message too long) were already raised by send().
        return QueuedError(-1, -1, addr[0] if addr else "", data)

    def close(self) -> None:
        self._icmplib_socket.close()


def open_socket(family: int, mode: str, ttl: int, traffic_class: int, rcvbuf: int) -> IcmpSocket:
    """Open the family's socket in the mode asked for; ``auto`` tries datagram, then raw.
    Raises PrivilegeError naming both remedies when neither is allowed."""
    modes = ("datagram", "raw") if mode == "auto" else (mode,)
    for candidate in modes:
        try:
            return IcmpSocket(family, candidate, ttl, traffic_class, rcvbuf)
        except PermissionError:
            continue
    raise PrivilegeError(privilege_message(mode))


def open_full_size_socket(
    family: int, mode: str, ttl: int, traffic_class: int, rcvbuf: int
) -> IcmpSocket:
    """A socket for the full-size probes: as open_socket, with fragmentation forbidden."""
    sock = open_socket(family, mode, ttl, traffic_class, rcvbuf)
    try:
        sock.forbid_fragments()
    except OSError:
        sock.close()
        raise
    return sock
