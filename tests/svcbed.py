"""Kubernetes Service emulation on top of the namespace test bed (tests/netbed.py).

The exporter checks Services from each node: a TCP connect to each Service
port through its ClusterIP and a DNS query to the cluster DNS ClusterIP,
both relying on kube-proxy's translation.  This module gives a netbed
``src`` namespace (the "node") the netfilter rules kube-proxy's iptables
mode would install, and runs real backends in a dst namespace:

* :class:`KubeProxy` -- per-Service DNAT (random spread over the backends
  with ``-m statistic``, like kube-proxy) in the nat table's OUTPUT path,
  and the REJECT rule of a Service without endpoints in the filter table.
* :class:`TcpBackend` -- a stdlib TCP server that counts accepted
  connections; ``drop_syn`` makes connects to it time out.
* :class:`DnsBackend` -- dnsmasq answering a few records; ``silent`` makes
  queries time out.
* :class:`ServiceBed` -- one backend namespace, ClusterIP allocation and
  shortcuts that wire the pieces together.

Behaviour established on this bed (kernel 6.x, iptables 1.8 nf_tables and
legacy alike, since both use the same xtables targets):

* TCP connect to a Service with no endpoints (``REJECT`` with the default
  ICMP port unreachable, as kube-proxy installs it): IPv4 fails at once with
  ECONNREFUSED.  IPv6 fails with ECONNREFUSED too, but only after about one
  second: the first ICMPv6 error is handled while connect() still holds the
  socket lock, so it is recorded as a soft error, and only the error for the
  retransmitted SYN (initial RTO 1 s) ends the attempt.  With
  ``KubeProxy(reject_with="tcp-reset")`` both families fail at once.
* UDP send to a Service with no endpoints: send() itself fails with EPERM,
  because a packet dropped by a netfilter verdict on the local output path
  returns that error to the sender.
* dnsmasq with ``--local=/<domain>/`` answers unknown names under the domain
  with NXDOMAIN; ``--local=/#/`` (the default here) extends that to every
  name.  Names outside every local domain get REFUSED, since there is no
  upstream.  A name with only an A record answers AAAA queries with NOERROR
  and no answers (NODATA).
* Conntrack keeps the translation of a flow it already tracks: after
  set_service() changes the backends, an existing UDP flow (same source
  port) still reaches the old backend until its entry expires.  New sockets
  get new source ports and see the new rules.

Addresses: ClusterIPs default to 198.18.16.0/24 and 2001:db8:cafe::/64.  The
IPv4 range sits in the gap between netbed's link block (198.18.0.0/20) and
the first dst's default target block (198.18.32.0/19), so it never shadows
targets of a bed with many dsts.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import itertools
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tests.netbed import (
    NS_PREFIX,
    V4_SPACE,
    V6_SPACE,
    Bed,
    Closing,
    Dst,
    Namespace,
    NetbedError,
)

Protocol = Literal["tcp", "udp"]
RejectWith = Literal["icmp", "tcp-reset"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CLUSTER_IP_RANGE_V4 = "198.18.16.0/24"
CLUSTER_IP_RANGE_V6 = "2001:db8:cafe::/64"
KUBERNETES_CLUSTER_IP = "198.18.16.1"
DEFAULT_RECORDS: Mapping[str, Sequence[str]] = {
    "kubernetes.default.svc.cluster.local": (KUBERNETES_CLUSTER_IP,),
}
DNSMASQ = "/usr/sbin/dnsmasq"

QTYPE_A = 1
QTYPE_AAAA = 28
RCODE_NOERROR = 0
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_REFUSED = 5

TOP_CHAIN = "PMSVC"
_TOOLS = {4: "iptables", 6: "ip6tables"}
_ICMP_REJECT = {4: "icmp-port-unreachable", 6: "icmp6-port-unreachable"}
# kube-proxy hooks its filter chain for new connections only; the nat table
# sees only the first packet of a connection anyway.
_HOOKS: dict[str, list[str]] = {
    "nat": ["-j", TOP_CHAIN],
    "filter": ["-m", "conntrack", "--ctstate", "NEW", "-j", TOP_CHAIN],
}
_MAX_HOOK_COPIES = 16
_MAX_READS = 100_000
_STOP_GRACE_S = 3.0
_READY_PROBE_NAME = "ready.pmsvc.invalid"


def _address(text: str) -> IPAddress:
    """Parse an address and refuse anything outside the bed's ranges."""
    addr = ipaddress.ip_address(text)
    space = V4_SPACE if addr.version == 4 else V6_SPACE
    if addr not in space:
        raise ValueError(f"{text} is outside the test ranges {V4_SPACE} and {V6_SPACE}")
    return addr


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")


def _check_protocol(protocol: str) -> None:
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"protocol must be 'tcp' or 'udp', not {protocol!r}")


def _endpoint(addr: IPAddress, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def _iptables(ns: Namespace, version: int, args: Sequence[str], check: bool = True) -> bool:
    proc = ns.run([_TOOLS[version], "-w", *args], check=check)
    return proc.returncode == 0


# -- kube-proxy ----------------------------------------------------------------


@dataclass(frozen=True)
class ServiceKey:
    cluster_ip: str
    port: int
    protocol: Protocol

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.cluster_ip).version

    @property
    def chain(self) -> str:
        digest = hashlib.sha256(f"{self.cluster_ip}/{self.port}/{self.protocol}".encode())
        # iptables chain names are limited to 28 characters.
        return f"{TOP_CHAIN}-{digest.hexdigest()[:16].upper()}"

    def __str__(self) -> str:
        addr = ipaddress.ip_address(self.cluster_ip)
        return f"{_endpoint(addr, self.port)}/{self.protocol}"


class KubeProxy:
    """kube-proxy's iptables mode for locally generated traffic, v4 and v6.

    Rules live in chain ``PMSVC`` of the nat and filter tables, hooked from
    OUTPUT (kube-proxy's KUBE-SERVICES), and in one ``PMSVC-<hash>`` chain
    per Service (KUBE-SVC-*).  Every change rewrites the affected family
    with one ``iptables-restore --noflush`` per table, as kube-proxy does,
    so a replaced Service is never briefly without rules.

    ClusterIPs are virtual: no address is assigned and nothing answers them.
    The namespace still needs a route covering them (see ServiceBed): the
    route lookup at connect()/send() happens before the nat OUTPUT hook, and
    without one the socket call fails with ENETUNREACH.  After DNAT the
    kernel routes the packet again towards the backend.
    """

    def __init__(self, ns: Namespace, reject_with: RejectWith = "icmp") -> None:
        if reject_with not in ("icmp", "tcp-reset"):
            raise ValueError(f"reject_with must be 'icmp' or 'tcp-reset', not {reject_with!r}")
        self.ns = ns
        self.reject_with = reject_with
        self._services: dict[ServiceKey, tuple[tuple[IPAddress, int], ...]] = {}
        self._hooked: set[tuple[int, str]] = set()

    def __repr__(self) -> str:
        return f"KubeProxy({self.ns.name!r}, services={len(self._services)})"

    @staticmethod
    def key(cluster_ip: str, port: int, protocol: Protocol = "tcp") -> ServiceKey:
        _check_port(port)
        _check_protocol(protocol)
        return ServiceKey(str(_address(cluster_ip)), port, protocol)

    def set_service(
        self,
        cluster_ip: str,
        port: int,
        protocol: Protocol = "tcp",
        backends: Sequence[tuple[str, int]] = (),
    ) -> None:
        """Install or replace the rules of one Service port.

        An empty ``backends`` list installs the REJECT rule of a Service
        without endpoints.
        """
        key = self.key(cluster_ip, port, protocol)
        parsed: list[tuple[IPAddress, int]] = []
        for addr_text, backend_port in backends:
            addr = _address(addr_text)
            _check_port(backend_port)
            if addr.version != key.version:
                raise ValueError(f"backend {addr} is not of the family of {key.cluster_ip}")
            parsed.append((addr, backend_port))
        self._services[key] = tuple(parsed)
        self._sync(key.version, nat_first=bool(parsed))

    def remove_service(self, cluster_ip: str, port: int, protocol: Protocol = "tcp") -> None:
        key = self.key(cluster_ip, port, protocol)
        if self._services.pop(key, None) is not None:
            self._sync(key.version)

    def services(self) -> dict[ServiceKey, list[tuple[str, int]]]:
        return {k: [(str(a), p) for a, p in v] for k, v in self._services.items()}

    def clear(self) -> None:
        """Remove every PMSVC rule and chain, including ones of earlier instances."""
        self._services.clear()
        for version in (4, 6):
            self._teardown(version)

    # -- internals -------------------------------------------------------------

    def _existing_chains(self, version: int, table: str) -> list[str]:
        proc = self.ns.run([_TOOLS[version], "-w", "-t", table, "-S"])
        chains = []
        for line in str(proc.stdout).splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "-N" and parts[1].startswith(TOP_CHAIN):
                chains.append(parts[1])
        return chains

    def _teardown(self, version: int) -> None:
        for table, hook in _HOOKS.items():
            for _ in range(_MAX_HOOK_COPIES):
                if not _iptables(self.ns, version, ["-t", table, "-C", "OUTPUT", *hook], False):
                    break
                _iptables(self.ns, version, ["-t", table, "-D", "OUTPUT", *hook])
            self._hooked.discard((version, table))
            chains = self._existing_chains(version, table)
            if chains:
                # Declaring a chain in a --noflush restore flushes it, which
                # drops the references between our chains before -X.
                lines = [f"*{table}"]
                lines += [f":{c} - [0:0]" for c in chains]
                lines += [f"-X {c}" for c in chains]
                lines.append("COMMIT")
                self._restore(version, lines)

    def _restore(self, version: int, lines: Sequence[str]) -> None:
        text = "\n".join(lines) + "\n"
        self.ns.run([f"{_TOOLS[version]}-restore", "-w", "10", "--noflush"], input=text)

    def _match(self, key: ServiceKey) -> list[str]:
        prefix = 32 if key.version == 4 else 128
        return [
            "-d", f"{key.cluster_ip}/{prefix}",
            "-p", key.protocol, "-m", key.protocol, "--dport", str(key.port),
            "-m", "comment", "--comment", f'"pmsvc {key}"',
        ]  # fmt: skip

    def _dnat_rules(self, key: ServiceKey, backends: Sequence[tuple[IPAddress, int]]) -> list[str]:
        rules = []
        for i, (addr, port) in enumerate(backends):
            remaining = len(backends) - i
            # Each rule takes 1/remaining of what earlier rules left over, so
            # every backend gets the same share, as in kube-proxy's KUBE-SVC.
            stat = (
                ["-m", "statistic", "--mode", "random", "--probability", f"{1 / remaining:.10f}"]
                if remaining > 1
                else []
            )
            rule = ["-A", key.chain, "-p", key.protocol, *stat, "-j", "DNAT"]
            rules.append(" ".join([*rule, "--to-destination", _endpoint(addr, port)]))
        return rules

    def _reject_rule(self, key: ServiceKey) -> str:
        reject = (
            "tcp-reset"
            if key.protocol == "tcp" and self.reject_with == "tcp-reset"
            else _ICMP_REJECT[key.version]
        )
        return f"-A {key.chain} -p {key.protocol} -j REJECT --reject-with {reject}"

    def _sync(self, version: int, nat_first: bool = True) -> None:
        mine = sorted(
            ((k, b) for k, b in self._services.items() if k.version == version),
            key=lambda item: str(item[0]),
        )
        if not mine:
            # Rules exist only while Services do: the last removal leaves
            # the tables as they were before.
            self._teardown(version)
            return
        # nat and filter are separate transactions.  filter OUTPUT sees
        # packets after DNAT, so a REJECT for a ClusterIP never hits
        # translated traffic: installing the new kind of rule before removing
        # the old one leaves no moment in which the ClusterIP is neither
        # translated nor rejected.
        tables = ("nat", "filter") if nat_first else ("filter", "nat")
        for table in tables:
            wanted: dict[str, list[str]] = {}
            jumps: list[str] = []
            for key, backends in mine:
                if table == "nat" and backends:
                    wanted[key.chain] = self._dnat_rules(key, backends)
                elif table == "filter" and not backends:
                    wanted[key.chain] = [self._reject_rule(key)]
                else:
                    continue
                jumps.append(" ".join(["-A", TOP_CHAIN, *self._match(key), "-j", key.chain]))
            existing = self._existing_chains(version, table)
            stale = [c for c in existing if c not in wanted and c != TOP_CHAIN]
            lines = [f"*{table}", f":{TOP_CHAIN} - [0:0]"]
            lines += [f":{c} - [0:0]" for c in [*wanted, *stale]]
            lines += jumps
            for rules in wanted.values():
                lines += rules
            lines += [f"-X {c}" for c in stale]
            lines.append("COMMIT")
            self._restore(version, lines)
            self._hook(version, table)

    def _hook(self, version: int, table: str) -> None:
        if (version, table) in self._hooked:
            return
        hook = _HOOKS[table]
        if not _iptables(self.ns, version, ["-t", table, "-C", "OUTPUT", *hook], check=False):
            _iptables(self.ns, version, ["-t", table, "-I", "OUTPUT", "1", *hook])
        self._hooked.add((version, table))


# -- backends ------------------------------------------------------------------


def _stop_process(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=_STOP_GRACE_S)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


class _DropRules:
    """INPUT DROP rules in a backend namespace, switchable at run time."""

    def __init__(self, ns: Namespace, version: int, specs: Sequence[Sequence[str]]) -> None:
        self.ns = ns
        self.version = version
        self.specs = [list(s) for s in specs]
        self.active = False

    def set(self, on: bool) -> None:
        if on == self.active:
            return
        for spec in self.specs:
            if on:
                _iptables(self.ns, self.version, ["-I", "INPUT", "1", *spec, "-j", "DROP"])
            else:
                _iptables(self.ns, self.version, ["-D", "INPUT", *spec, "-j", "DROP"], False)
        self.active = on


class _LineLog:
    """Complete lines appended to a file since the last read.

    A file rather than a pipe: the writer never blocks however long nobody
    reads, and a line written before an event is readable right after it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def read_new(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self._offset += end
        return data[:end].decode(errors="replace").splitlines()


# Accepts and closes at once, one "ACCEPT <addr> <port>" line per connection
# written before close(), so a client that saw EOF is already counted.
# End of stdin means the harness is gone: exit rather than linger.
_TCP_SERVER = r"""
import os, socket, sys, threading
def watch_stdin():
    sys.stdin.buffer.read()
    os._exit(0)
threading.Thread(target=watch_stdin, daemon=True).start()
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
srv = socket.socket(family, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(512)
print("READY", flush=True)
while True:
    conn, peer = srv.accept()
    print("ACCEPT", peer[0], peer[1], flush=True)
    conn.close()
"""
_POLL_S = 0.01
_backend_seq = itertools.count(1)


def _workdir(given: Path | None, role: str) -> tuple[Path, bool]:
    """The directory for a backend's files, and whether the backend owns it."""
    if given is not None:
        return given, False
    # The netbed prefix and our pid let netbed sweep it after a crash.
    return Path(tempfile.mkdtemp(prefix=f"{NS_PREFIX}{os.getpid()}-{role}-")), True


class TcpBackend:
    """A real TCP server in a backend namespace that counts accepted connections.

    ``drop_syn=True`` drops SYNs to address:port in the backend's INPUT, so
    connects time out (no RST, no ICMP); toggle later with set_drop_syn().
    """

    def __init__(
        self,
        ns: Namespace,
        address: str,
        port: int = 8080,
        drop_syn: bool = False,
        workdir: Path | None = None,
        ready_timeout_s: float = 10.0,
    ) -> None:
        addr = _address(address)
        _check_port(port)
        self.ns = ns
        self.address = str(addr)
        self.port = port
        self.peers: list[tuple[str, int]] = []
        self.output: list[str] = []
        self._ready = False
        self.workdir, self._own_workdir = _workdir(workdir, "tcp")
        safe = self.address.replace(":", "_")
        self._log = _LineLog(self.workdir / f"tcp-{safe}-{port}-{next(_backend_seq)}.log")
        prefix = 32 if addr.version == 4 else 128
        self._drop = _DropRules(
            ns,
            addr.version,
            [["-d", f"{addr}/{prefix}", "-p", "tcp", "--dport", str(port), "--syn"]],
        )
        with open(self._log.path, "wb") as log:
            self.proc: subprocess.Popen[bytes] = ns.popen(
                [sys.executable, "-c", _TCP_SERVER, self.address, str(port)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready(ready_timeout_s)
            self._drop.set(drop_syn)
        except BaseException:
            self.stop()
            raise

    def __repr__(self) -> str:
        return f"TcpBackend({_endpoint(ipaddress.ip_address(self.address), self.port)})"

    @property
    def endpoint(self) -> tuple[str, int]:
        return (self.address, self.port)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for _ in range(_MAX_READS):
            self._absorb()
            if self._ready or self.proc.poll() is not None or time.monotonic() >= deadline:
                break
            time.sleep(_POLL_S)
        self._absorb()
        if not self._ready:
            raise NetbedError(f"{self!r} did not start: {' | '.join(self.output[-5:])}")

    def _absorb(self) -> None:
        for line in self._log.read_new():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "ACCEPT":
                self.peers.append((parts[1], int(parts[2])))
            elif line == "READY":
                self._ready = True
            else:
                self.output.append(line)

    def running(self) -> bool:
        return self.proc.poll() is None

    def connections(self) -> int:
        """Connections accepted so far."""
        self._absorb()
        return len(self.peers)

    def wait_connections(self, n: int, timeout_s: float = 5.0) -> int:
        """Wait until at least n connections were accepted; returns the count.

        A client's connect() can return before the server accepted, so a test
        that expects a count waits for it rather than reading it once.
        """
        deadline = time.monotonic() + timeout_s
        for _ in range(_MAX_READS):
            count = self.connections()
            if count >= n or time.monotonic() >= deadline or self.proc.poll() is not None:
                return count
            time.sleep(_POLL_S)
        return self.connections()

    def set_drop_syn(self, on: bool) -> None:
        self._drop.set(on)

    def stop(self) -> None:
        """Stop the server and remove its DROP rule.  Idempotent.

        The counters stay readable; the log goes with the workdir.
        """
        if self.ns.exists():
            self._drop.set(False)
        _stop_process(self.proc)
        self._absorb()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


# -- DNS -----------------------------------------------------------------------


@dataclass(frozen=True)
class DnsReply:
    txid: int
    rcode: int
    answers: list[str]
    truncated: bool = False
    authoritative: bool = False


def build_dns_query(name: str, qtype: int = QTYPE_A, txid: int = 0) -> bytes:
    """A standard query (RD set) for one name, class IN."""
    labels = [label.encode("ascii") for label in name.rstrip(".").split(".") if label]
    if any(len(label) > 63 for label in labels):
        raise ValueError(f"{name!r} has a label longer than 63 bytes")
    header = struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(struct.pack("!B", len(label)) + label for label in labels) + b"\x00"
    return header + qname + struct.pack("!HH", qtype, 1)


def _skip_name(data: bytes, offset: int) -> int:
    for _ in range(128):
        if offset >= len(data):
            raise ValueError("DNS name runs past the message")
        length = data[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            if offset + 2 > len(data):
                raise ValueError("DNS compression pointer runs past the message")
            return offset + 2
        offset += 1 + length
    raise ValueError("DNS name has too many labels")


def parse_dns_reply(data: bytes) -> DnsReply:
    """Header fields and the A/AAAA addresses of the answer section."""
    if len(data) < 12:
        raise ValueError(f"DNS message of {len(data)} bytes is shorter than a header")
    txid, flags, qdcount, ancount, _, _ = struct.unpack_from("!HHHHHH", data)
    offset = 12
    for _ in range(qdcount):
        offset = _skip_name(data, offset) + 4
    answers: list[str] = []
    for _ in range(ancount):
        offset = _skip_name(data, offset)
        if offset + 10 > len(data):
            raise ValueError("DNS resource record runs past the message")
        rtype, _, _, rdlength = struct.unpack_from("!HHIH", data, offset)
        offset += 10
        rdata = data[offset : offset + rdlength]
        if len(rdata) != rdlength:
            raise ValueError("DNS record data runs past the message")
        offset += rdlength
        if rtype == QTYPE_A and rdlength == 4:
            answers.append(str(ipaddress.IPv4Address(rdata)))
        elif rtype == QTYPE_AAAA and rdlength == 16:
            answers.append(str(ipaddress.IPv6Address(rdata)))
    return DnsReply(
        txid=txid,
        rcode=flags & 0x000F,
        answers=answers,
        truncated=bool(flags & 0x0200),
        authoritative=bool(flags & 0x0400),
    )


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if _address(address).version == 6 else socket.AF_INET


def dns_query_udp(
    ns: Namespace,
    server: str,
    name: str,
    qtype: int = QTYPE_A,
    timeout_s: float = 2.0,
    port: int = 53,
) -> DnsReply:
    """One UDP query from inside ns; raises TimeoutError when nothing answers."""
    txid = random.randrange(1 << 16)
    with ns.socket(_family(server), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect((server, port))
        sock.send(build_dns_query(name, qtype, txid))
        deadline = time.monotonic() + timeout_s
        for _ in range(64):
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            reply = parse_dns_reply(sock.recv(65535))
            if reply.txid == txid:
                return reply
    raise TimeoutError(f"no reply with id {txid} from {server}")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    for _ in range(n + 1):
        if len(buf) >= n:
            break
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def dns_query_tcp(
    ns: Namespace,
    server: str,
    name: str,
    qtype: int = QTYPE_A,
    timeout_s: float = 2.0,
    port: int = 53,
) -> DnsReply:
    """One query over TCP (two-byte length prefix) from inside ns."""
    txid = random.randrange(1 << 16)
    query = build_dns_query(name, qtype, txid)
    with ns.socket(_family(server), socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect((server, port))
        sock.sendall(struct.pack("!H", len(query)) + query)
        (length,) = struct.unpack("!H", _recv_exact(sock, 2))
        return parse_dns_reply(_recv_exact(sock, length))


class DnsBackend:
    """dnsmasq serving a few records on one address, port 53 UDP and TCP.

    ``records`` maps names to their addresses (A and/or AAAA), answered for
    the exact name only, like cluster DNS.  Unknown names under any of
    ``nxdomain_domains`` get NXDOMAIN; ``"#"`` (the default) means every
    name; names outside them get REFUSED.  ``silent=True`` drops queries in
    the backend's INPUT so they time out; toggle later with set_silent().
    """

    def __init__(
        self,
        ns: Namespace,
        address: str,
        records: Mapping[str, str | Sequence[str]] | None = None,
        silent: bool = False,
        nxdomain_domains: Sequence[str] = ("#",),
        workdir: Path | None = None,
        ready_timeout_s: float = 10.0,
    ) -> None:
        addr = _address(address)
        self.ns = ns
        self.address = str(addr)
        self.records: dict[str, list[str]] = {}
        for name, value in (DEFAULT_RECORDS if records is None else records).items():
            values = [value] if isinstance(value, str) else list(value)
            self.records[name.rstrip(".")] = [str(_address(v)) for v in values]
        self.workdir, self._own_workdir = _workdir(workdir, "dns")
        safe = self.address.replace(":", "_")
        self.log_path = self.workdir / f"dnsmasq-{safe}-{next(_backend_seq)}.log"
        prefix = 32 if addr.version == 4 else 128
        self._drop = _DropRules(
            ns,
            addr.version,
            [["-d", f"{addr}/{prefix}", "-p", p, "--dport", "53"] for p in ("udp", "tcp")],
        )
        argv = [
            DNSMASQ,
            "--keep-in-foreground",
            # Nothing from the host's configuration, files or resolvers.
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            f"--listen-address={self.address}",
            "--port=53",
            # Stay root: the default user may not exist in a minimal image,
            # and no privilege separation is needed inside a test namespace.
            "--user=root",
            # No pid file, so instances in several namespaces do not collide.
            "--pid-file",
            "--log-facility=-",
            "--log-queries",
            *(f"--local=/{d.strip('.')}/" for d in nxdomain_domains),
            *(f"--host-record={n},{','.join(a)}" for n, a in self.records.items()),
        ]
        with open(self.log_path, "wb") as log:
            self.proc: subprocess.Popen[bytes] = ns.popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_ready(ready_timeout_s)
            self._drop.set(silent)
        except BaseException:
            self.stop()
            raise

    def __repr__(self) -> str:
        return f"DnsBackend({self.address})"

    def _wait_ready(self, timeout_s: float) -> None:
        # A real query proves both the socket and the configuration.
        deadline = time.monotonic() + timeout_s
        for _ in range(_MAX_READS):
            if self.proc.poll() is not None:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                dns_query_udp(self.ns, self.address, _READY_PROBE_NAME, timeout_s=0.2)
                return
            except (TimeoutError, ConnectionRefusedError):
                time.sleep(min(0.05, max(0.0, remaining)))
        raise NetbedError(f"{self!r} did not start: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def queries(self) -> list[str]:
        """Names queried so far, in order (from dnsmasq's query log)."""
        names = []
        for line in self.log_text().splitlines():
            # "dnsmasq[PID]: query[A] NAME from ADDR"
            parts = line.split()
            if len(parts) >= 3 and parts[1].startswith("query[") and parts[2] != _READY_PROBE_NAME:
                names.append(parts[2])
        return names

    def running(self) -> bool:
        return self.proc.poll() is None

    def set_silent(self, on: bool) -> None:
        self._drop.set(on)

    def stop(self) -> None:
        """Stop dnsmasq and remove its DROP rules.  Idempotent."""
        if self.ns.exists():
            self._drop.set(False)
        _stop_process(self.proc)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


# -- the whole bed ---------------------------------------------------------------


@dataclass
class TcpService:
    cluster_ip: str
    port: int
    backends: list[TcpBackend] = field(default_factory=list)

    def connections(self) -> int:
        return sum(b.connections() for b in self.backends)


@dataclass
class DnsService:
    cluster_ip: str
    backend: DnsBackend
    port: int = 53


class ServiceBed(Closing):
    """Services for a netbed Bed: a backend namespace, ClusterIPs, a KubeProxy.

    The backend dst has ``n_v4`` + ``n_v6`` addresses for backends.  Routes
    for both ClusterIP ranges point from src at that dst's link; which link
    does not matter once DNAT re-routes, and traffic to a ClusterIP without
    rules is dropped there (the dst does not forward), i.e. times out like a
    ClusterIP no proxy knows.  A dummy device would serve as well but needs a
    kernel module that is not always available.

    The first address of each range is kept for the ``kubernetes`` Service
    (what DEFAULT_RECORDS points at); allocate_cluster_ip() hands out the rest.
    """

    def __init__(
        self,
        bed: Bed,
        n_v4: int = 4,
        n_v6: int = 4,
        cluster_range_v4: str = CLUSTER_IP_RANGE_V4,
        cluster_range_v6: str = CLUSTER_IP_RANGE_V6,
        reject_with: RejectWith = "icmp",
    ) -> None:
        self.bed = bed
        self.cluster_range_v4 = ipaddress.IPv4Network(cluster_range_v4)
        self.cluster_range_v6 = ipaddress.IPv6Network(cluster_range_v6)
        if not self.cluster_range_v4.subnet_of(V4_SPACE):
            raise ValueError(f"ClusterIP range {self.cluster_range_v4} is outside {V4_SPACE}")
        if not self.cluster_range_v6.subnet_of(V6_SPACE):
            raise ValueError(f"ClusterIP range {self.cluster_range_v6} is outside {V6_SPACE}")
        for other in bed.dsts:
            if self.cluster_range_v4.overlaps(other.v4_prefix) or self.cluster_range_v6.overlaps(
                other.v6_prefix
            ):
                raise NetbedError(f"the ClusterIP ranges overlap the targets of {other}")
        self.tcp_backends: list[TcpBackend] = []
        self.dns_backends: list[DnsBackend] = []
        self._used: set[tuple[str, int]] = set()
        self._next = {4: 2, 6: 2}
        self._closed = False
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{NS_PREFIX}{os.getpid()}-svc-"))
        try:
            self.dst: Dst = bed.add_dst("svc", kernel_echo=True)
            addrs = self.dst.add_targets(n_v4, n_v6)
            self.backend_v4: list[str] = addrs[:n_v4]
            self.backend_v6: list[str] = addrs[n_v4:]
            link = self.dst.src_if
            bed.src.ip_batch(
                [
                    f"route add {self.cluster_range_v4} via {self.dst.dst_v4} dev {link}",
                    f"route add {self.cluster_range_v6} via {self.dst.dst_v6} dev {link}",
                ]
            )
            self.proxy = KubeProxy(bed.src, reject_with=reject_with)
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise

    def __repr__(self) -> str:
        return f"ServiceBed({self.bed!r}, backends in {self.dst.name})"

    @property
    def src(self) -> Namespace:
        return self.bed.src

    @property
    def kubernetes_ip(self) -> str:
        return str(self.cluster_range_v4.network_address + 1)

    def backend_addresses(self, family: int = 4) -> list[str]:
        return list(self.backend_v4 if family == 4 else self.backend_v6)

    def allocate_cluster_ip(self, family: int = 4) -> str:
        net = self.cluster_range_v4 if family == 4 else self.cluster_range_v6
        index = self._next[family]
        if index >= min(net.num_addresses - 1, 1 << 16):
            raise NetbedError(f"ClusterIP range {net} is exhausted")
        self._next[family] = index + 1
        return str(net.network_address + index)

    def _backend_endpoints(self, family: int, port: int, count: int) -> list[str]:
        free = [a for a in self.backend_addresses(family) if (a, port) not in self._used]
        if len(free) < count:
            raise NetbedError(f"only {len(free)} IPv{family} backend addresses have {port} free")
        return free[:count]

    def start_tcp_backend(
        self, address: str, port: int = 8080, drop_syn: bool = False
    ) -> TcpBackend:
        backend = TcpBackend(self.dst.ns, address, port, drop_syn=drop_syn, workdir=self.workdir)
        self.tcp_backends.append(backend)
        self._used.add((backend.address, port))
        return backend

    def start_dns_backend(
        self,
        address: str,
        records: Mapping[str, str | Sequence[str]] | None = None,
        silent: bool = False,
        nxdomain_domains: Sequence[str] = ("#",),
    ) -> DnsBackend:
        backend = DnsBackend(
            self.dst.ns,
            address,
            records=records,
            silent=silent,
            nxdomain_domains=nxdomain_domains,
            workdir=self.workdir,
        )
        self.dns_backends.append(backend)
        self._used.add((backend.address, 53))
        return backend

    def tcp_service(
        self,
        port: int = 80,
        target_port: int = 8080,
        family: int = 4,
        n_backends: int = 1,
        drop_syn: bool = False,
        cluster_ip: str | None = None,
    ) -> TcpService:
        """A TCP Service with n_backends running servers (0: no endpoints)."""
        ip = self.allocate_cluster_ip(family) if cluster_ip is None else cluster_ip
        service = TcpService(ip, port)
        for addr in self._backend_endpoints(family, target_port, n_backends):
            service.backends.append(self.start_tcp_backend(addr, target_port, drop_syn=drop_syn))
        self.proxy.set_service(ip, port, "tcp", [b.endpoint for b in service.backends])
        return service

    def dns_service(
        self,
        family: int = 4,
        records: Mapping[str, str | Sequence[str]] | None = None,
        silent: bool = False,
        nxdomain_domains: Sequence[str] = ("#",),
        cluster_ip: str | None = None,
    ) -> DnsService:
        """The cluster DNS Service: port 53 over UDP and TCP to one dnsmasq."""
        ip = self.allocate_cluster_ip(family) if cluster_ip is None else cluster_ip
        (addr,) = self._backend_endpoints(family, 53, 1)
        backend = self.start_dns_backend(addr, records, silent, nxdomain_domains)
        for protocol in ("tcp", "udp"):
            self.proxy.set_service(ip, 53, protocol, [(backend.address, 53)])
        return DnsService(ip, backend)

    def close(self) -> None:
        """Stop backends, remove the proxy rules and the workdir.  Idempotent.

        The namespaces themselves belong to the Bed and go with Bed.close().
        """
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        backends: list[TcpBackend | DnsBackend] = [*self.tcp_backends, *self.dns_backends]
        for backend in backends:
            try:
                backend.stop()
            except Exception as exc:  # keep tearing down the rest
                errors.append(f"stopping {backend!r}: {exc}")
        if self.bed.src.exists():
            try:
                self.proxy.clear()
            except Exception as exc:  # keep tearing down the rest
                errors.append(f"clearing proxy rules: {exc}")
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise NetbedError("service bed cleanup incomplete: " + "; ".join(errors))


__all__ = [
    "CLUSTER_IP_RANGE_V4",
    "CLUSTER_IP_RANGE_V6",
    "DEFAULT_RECORDS",
    "KUBERNETES_CLUSTER_IP",
    "QTYPE_A",
    "QTYPE_AAAA",
    "RCODE_NOERROR",
    "RCODE_NXDOMAIN",
    "RCODE_REFUSED",
    "RCODE_SERVFAIL",
    "DnsBackend",
    "DnsReply",
    "DnsService",
    "KubeProxy",
    "Protocol",
    "RejectWith",
    "ServiceBed",
    "ServiceKey",
    "TcpBackend",
    "TcpService",
    "build_dns_query",
    "dns_query_tcp",
    "dns_query_udp",
    "parse_dns_reply",
]
