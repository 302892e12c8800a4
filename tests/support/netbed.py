"""Network-namespace test bed for probing real ICMP paths.

A :class:`Bed` builds a star topology: one ``src`` namespace (where the
program under test runs) linked by a veth pair to each ``dst`` namespace.
Targets are /32 and /128 addresses on a dst namespace's ``lo``, reached from
src through one route per prefix.  A dst either answers with the kernel's
echo replies or, with ``kernel_echo=False``, through ``tests/support/responder.py``,
which adds delay, loss, duplicates and malformed replies per prefix.

Addressing, all inside the documentation/benchmark ranges::

    links     198.18.0.0/20        (dst N: 198.18.0.{4(N-1)+1,+2}/30)
              2001:db8:ffff::/48   (dst N: 2001:db8:ffff:N::1 and ::2 /64)
    targets   dst N by default the N-th /19 of 198.18.0.0/15 (198.18.32.0/19,
              198.18.64.0/19, ...; room for 8190 each) and 2001:db8:N::/64

Nothing here sends traffic anywhere else, and every namespace carries the
``pmtb-`` prefix so leftovers of a crashed run can be recognised.

Needs root.  Call :func:`require_root` first to get a skip reason.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import functools
import ipaddress
import itertools
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

NS_PREFIX = "pmtb-"
NETNS_RUN_DIR = Path("/var/run/netns")
RESPONDER_PATH = Path(__file__).resolve().with_name("responder.py")

V4_SPACE = ipaddress.IPv4Network("198.18.0.0/15")
V6_SPACE = ipaddress.IPv6Network("2001:db8::/32")
V4_LINKS = ipaddress.IPv4Network("198.18.0.0/20")
V6_LINKS = ipaddress.IPv6Network("2001:db8:ffff::/48")
DEFAULT_V4_PREFIXLEN = 19
MAX_DSTS = 15  # /19 target blocks left in 198.18.0.0/15 after the link block

# fib_multipath_hash_fields: source and destination address, protocol, source and
# destination port.
MULTIPATH_HASH_FIELDS = 0x01 | 0x02 | 0x04 | 0x10 | 0x20

DEFAULT_TIMEOUT_S = 60.0
KILL_GRACE_S = 3.0
CLONE_NEWNET = 0x40000000

_counter = itertools.count(1)
_sweep_lock = threading.Lock()
_swept = False
_open_beds: weakref.WeakSet[Bed] = weakref.WeakSet()


class NetbedError(RuntimeError):
    pass


class CommandError(subprocess.CalledProcessError):
    """CalledProcessError whose message includes what the command printed."""

    def __str__(self) -> str:
        detail = self.stderr or self.stdout or ""
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        return f"{super().__str__()}\n{detail.strip()}"


def _run(
    argv: Sequence[str],
    check: bool = True,
    **kw: Any,
) -> subprocess.CompletedProcess[Any]:
    if "stdout" not in kw and "stderr" not in kw:
        kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", DEFAULT_TIMEOUT_S)
    proc = subprocess.run(list(argv), check=False, **kw)
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, list(argv), proc.stdout, proc.stderr)
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_pids(pids: Iterable[int], grace_s: float = KILL_GRACE_S) -> None:
    pending = {p for p in pids if p != os.getpid()}
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pending and time.monotonic() < deadline:
        pending = {p for p in pending if _pid_alive(p) and not _is_zombie(p)}
        if pending:
            time.sleep(0.02)
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            # The state follows the parenthesised command name, which may
            # itself contain spaces or parentheses.
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class Namespace:
    """A named network namespace (``ip netns``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._procs: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    @classmethod
    def create(cls, name: str) -> Namespace:
        _run(["ip", "netns", "add", name])
        return cls(name)

    @property
    def path(self) -> Path:
        return NETNS_RUN_DIR / self.name

    def exists(self) -> bool:
        return self.path.exists()

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], check: bool = True, **kw: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run a command inside the namespace and wait for it.

        Output is captured as text unless the caller says otherwise; the
        default timeout keeps a hung tool from hanging the test run.
        """
        return _run(self.argv(argv), check=check, **kw)

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a command inside the namespace; it is killed on delete()."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(argv), **kw)
        self._procs.append(proc)
        return proc

    def ip_batch(self, commands: Iterable[str]) -> None:
        """Run many ``ip`` commands with one process (fast for 1000s of addrs)."""
        script = "\n".join(commands) + "\n"
        if script.strip():
            _run(["ip", "-n", self.name, "-batch", "-"], input=script)

    def sysctl(self, key: str, value: str | int) -> None:
        self.sysctls({key: value})

    def sysctls(self, values: Mapping[str, str | int]) -> None:
        if values:
            self.run(["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())])

    def get_sysctl(self, key: str) -> str:
        return str(self.run(["sysctl", "-n", key]).stdout).strip()

    def socket(
        self, family: int, kind: int, proto: int = 0, timeout_s: float = 10.0
    ) -> socket.socket:
        """Create a socket that lives in this namespace, from this process.

        setns() only moves the calling thread, so a short-lived helper thread
        enters the namespace, creates the socket and exits; the socket stays
        bound to the namespace it was created in.
        """
        result: list[socket.socket | BaseException] = []

        def worker() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if _libc().setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns({self.name}): {os.strerror(err)}")
                finally:
                    os.close(fd)
                result.append(socket.socket(family, kind, proto))
            except BaseException as exc:  # re-raised in the caller's thread
                result.append(exc)

        thread = threading.Thread(target=worker, name=f"setns-{self.name}", daemon=True)
        thread.start()
        thread.join(timeout_s)
        if not result:
            raise NetbedError(f"creating a socket in {self.name} timed out")
        got = result[0]
        if isinstance(got, BaseException):
            raise got
        return got

    def pids(self) -> list[int]:
        if not self.exists():
            return []
        proc = _run(["ip", "netns", "pids", self.name], check=False)
        return [int(tok) for tok in str(proc.stdout).split() if tok.isdigit()]

    def kill_all(self) -> None:
        """End every process in the namespace: ours first, then stragglers."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + KILL_GRACE_S
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=KILL_GRACE_S)
        for proc in self._procs:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self._procs.clear()
        # Processes not started through popen() (e.g. grandchildren) would
        # keep the namespace alive after its name is deleted.
        for _ in range(3):
            pids = self.pids()
            if not pids:
                break
            _kill_pids(pids)

    def delete(self) -> None:
        """Kill processes inside, then delete the namespace.  Idempotent."""
        if not self.exists():
            self._procs.clear()
            return
        self.kill_all()
        proc = _run(["ip", "netns", "delete", self.name], check=False)
        if proc.returncode != 0 and self.exists():
            raise NetbedError(f"cannot delete namespace {self.name}: {proc.stderr.strip()}")


def list_namespaces(prefix: str = NS_PREFIX) -> list[str]:
    try:
        names = os.listdir(NETNS_RUN_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


_NAME_RE = re.compile(rf"^{re.escape(NS_PREFIX)}(\d+)-")


def sweep_stale_namespaces() -> list[str]:
    """Delete ``pmtb-<pid>-...`` namespaces whose creating process is gone.

    Only a crashed run leaves those behind; namespaces of live processes
    (e.g. a parallel test run) are left alone.
    """
    removed = []
    for name in list_namespaces():
        match = _NAME_RE.match(name)
        if not match:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            Namespace(name).delete()
            removed.append(name)
        except (NetbedError, subprocess.SubprocessError, OSError):
            continue
    return removed


def _sweep_stale_workdirs() -> None:
    # Config files of responders from a crashed run; same ownership rule.
    tmp = Path(tempfile.gettempdir())
    for path in tmp.glob(f"{NS_PREFIX}*"):
        match = _NAME_RE.match(path.name)
        if match and path.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def _sweep_once() -> None:
    global _swept
    with _sweep_lock:
        if not _swept:
            _swept = True
            sweep_stale_namespaces()
            _sweep_stale_workdirs()


@functools.lru_cache(maxsize=1)
def require_root() -> str | None:
    """Return why a test bed cannot be built here, or None if it can."""
    if os.geteuid() != 0:
        return f"network test bed needs root (netns, veth, raw sockets); euid={os.geteuid()}"
    for tool in ("ip", "sysctl", "iptables", "ip6tables"):
        if shutil.which(tool) is None:
            return f"network test bed needs '{tool}' on PATH"
    probe = f"{NS_PREFIX}{os.getpid()}-0-probe"
    try:
        _run(["ip", "netns", "add", probe], timeout=20)
        try:
            _run(["ip", "netns", "exec", probe, "ip", "link", "set", "lo", "up"], timeout=20)
        finally:
            _run(["ip", "netns", "delete", probe], check=False, timeout=20)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"'ip netns' is not usable here: {exc}"
    return None


@dataclass
class Profile:
    """Impairments the responder applies to echo requests for one prefix."""

    prefix: str
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    truncate: float = 0.0
    misdirect: float = 0.0
    wrong_seq: float = 0.0
    unreachable: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ProfileLike = Profile | Mapping[str, Any]


class _LineReader:
    """Reads lines from a pipe with a deadline (file.readline() can block)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False

    def readline(self, deadline: float) -> str | None:
        """Next line without newline, or None at EOF or when time runs out."""
        while b"\n" not in self.buf:
            if self.eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True
                if self.buf:
                    line, self.buf = self.buf, b""
                    return line.decode(errors="replace")
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode(errors="replace")


class Responder:
    """Handle on a running tests/support/responder.py."""

    def __init__(self, proc: subprocess.Popen[bytes], stderr_path: Path, dst: Dst) -> None:
        self.proc = proc
        self.dst = dst
        self.stderr_path = stderr_path
        self.final_stats: dict[str, Any] | None = None
        assert proc.stdout is not None
        self._reader = _LineReader(proc.stdout.fileno())
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def _expect(self, word: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        for _ in range(10_000):
            line = self._reader.readline(deadline)
            if line is None:
                break
            if line == word or line.startswith(word + " "):
                return line[len(word) :].strip()
            if line.startswith("STATS "):
                # An unsolicited dump (SIGUSR1, exit); keep the latest.
                self.final_stats = json.loads(line[6:])
        state = "exited" if self.proc.poll() is not None else "still running"
        raise NetbedError(
            f"responder (pid {self.proc.pid}, {state}) did not say {word!r} "
            f"within {timeout_s:.1f}s; stderr:\n{self.stderr_text()}"
        )

    def wait_ready(self, timeout_s: float = 15.0) -> None:
        self._expect("READY", timeout_s)

    def _command(self, command: str, answer: str, timeout_s: float) -> str:
        with self._lock:
            if not self.running() or self.proc.stdin is None:
                raise NetbedError(f"responder is not running; stderr:\n{self.stderr_text()}")
            self.proc.stdin.write(command.encode() + b"\n")
            self.proc.stdin.flush()
            return self._expect(answer, timeout_s)

    def stats(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """Counters so far: ``{"profiles": {prefix: {...}}, "default": {...}, ...}``.

        Answers are ordered after every packet the responder has already
        read, so counters include all requests that reached it before.
        """
        if not self.running() and self.final_stats is not None:
            return self.final_stats
        result: dict[str, Any] = json.loads(self._command("stats", "STATS", timeout_s))
        return result

    def profile_stats(self, prefix: str, timeout_s: float = 5.0) -> dict[str, int]:
        counters: dict[str, int] = self.stats(timeout_s)["profiles"][str(prefix)]
        return counters

    def reload(self, timeout_s: float = 10.0) -> dict[str, int]:
        """Re-read local addresses (candidates for misdirected replies)."""
        result: dict[str, int] = json.loads(self._command("reload", "RELOADED", timeout_s))
        return result

    def stop(self, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """SIGTERM the responder; returns its final counters.  Idempotent."""
        with self._lock:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + timeout_s
                for _ in range(10_000):
                    line = self._reader.readline(deadline)
                    if line is None:
                        break
                    if line.startswith("STATS "):
                        with contextlib.suppress(ValueError):
                            self.final_stats = json.loads(line[6:])
                try:
                    self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=KILL_GRACE_S)
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            return self.final_stats


class Dst:
    """A destination namespace and the targets it owns."""

    def __init__(
        self,
        bed: Bed,
        ns: Namespace,
        index: int,
        kernel_echo: bool,
        v4_prefix: ipaddress.IPv4Network,
        v6_prefix: ipaddress.IPv6Network,
        src_if: str,
        dst_if: str,
    ) -> None:
        self.bed = bed
        self.ns = ns
        self.index = index
        self.kernel_echo = kernel_echo
        self.v4_prefix = v4_prefix
        self.v6_prefix = v6_prefix
        self.src_if = src_if
        self.dst_if = dst_if
        base = int(V4_LINKS.network_address) + 4 * (index - 1)
        self.src_v4 = str(ipaddress.IPv4Address(base + 1))
        self.dst_v4 = str(ipaddress.IPv4Address(base + 2))
        link6 = ipaddress.IPv6Network(f"2001:db8:ffff:{index:x}::/64")
        self.src_v6 = str(link6.network_address + 1)
        self.dst_v6 = str(link6.network_address + 2)
        self.targets_v4: list[str] = []
        self.targets_v6: list[str] = []
        self.responders: list[Responder] = []
        self._next_v4 = int(v4_prefix.network_address) + 1
        self._next_v6 = int(v6_prefix.network_address) + 1
        self._loss_chain_ready = False
        # With add_routed_dst: the router between src and this namespace (it holds dst_v4
        # and dst_v6 then), and the router's own addresses on the far link.
        self.router: Namespace | None = None
        self.router_far_v4: str | None = None
        self.router_far_v6: str | None = None

    def __repr__(self) -> str:
        return f"Dst({self.ns.name!r}, {self.v4_prefix}, {self.v6_prefix})"

    @property
    def name(self) -> str:
        return self.ns.name

    @property
    def targets(self) -> list[str]:
        return [*self.targets_v4, *self.targets_v6]

    def add_targets(self, n_v4: int, n_v6: int = 0) -> list[str]:
        """Add target addresses on this namespace's lo; returns them (v4 first)."""
        if n_v4 < 0 or n_v6 < 0:
            raise ValueError("target counts must be >= 0")
        last_v4 = int(self.v4_prefix.broadcast_address) - 1
        last_v6 = int(self.v6_prefix.broadcast_address) - 1
        if self._next_v4 + n_v4 - 1 > last_v4:
            raise NetbedError(f"{self.v4_prefix} has no room for {n_v4} more targets")
        if self._next_v6 + n_v6 - 1 > last_v6:
            raise NetbedError(f"{self.v6_prefix} has no room for {n_v6} more targets")
        new_v4 = [str(ipaddress.IPv4Address(self._next_v4 + i)) for i in range(n_v4)]
        new_v6 = [str(ipaddress.IPv6Address(self._next_v6 + i)) for i in range(n_v6)]
        commands = [f"address add {a}/32 dev lo" for a in new_v4]
        commands += [f"address add {a}/128 dev lo nodad" for a in new_v6]
        self.ns.ip_batch(commands)
        self._next_v4 += n_v4
        self._next_v6 += n_v6
        self.targets_v4.extend(new_v4)
        self.targets_v6.extend(new_v6)
        for responder in self.responders:
            if responder.running():
                responder.reload()
        return [*new_v4, *new_v6]


class MultipathDst(Dst):
    """A dst reached through a router namespace that spreads flows over two equal-cost
    paths by the kernel's multipath hash (addresses, protocol and ports), with
    a fixed hash seed so the same flow always takes the same path. Replies all come back
    over path a; path b can be made to drop what is forwarded on it (drop_path_b)."""

    router: Namespace  # always there, unlike a plain Dst's

    def __init__(
        self,
        bed: Bed,
        ns: Namespace,
        router: Namespace,
        index: int,
        v4_prefix: ipaddress.IPv4Network,
        v6_prefix: ipaddress.IPv6Network,
        src_if: str,
        router_if: str,
        paths: dict[str, tuple[str, str]],
    ) -> None:
        # The src link's far end is the router: Dst's dst_v4/dst_v6 are its addresses.
        super().__init__(bed, ns, index, True, v4_prefix, v6_prefix, src_if, router_if)
        self.router = router
        self.router_if = router_if
        self.paths = paths  # "a"/"b" -> (router's interface, dst's interface)

    @staticmethod
    def path_links(index: int, path: str) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]:
        """The two path links of a multipath dst, from the top of the link block (dsts
        take theirs from the bottom)."""
        n = 1023 - 2 * (index - 1) - (0 if path == "a" else 1)
        v4 = ipaddress.IPv4Network((int(V4_LINKS.network_address) + 4 * n, 30))
        v6 = ipaddress.IPv6Network(f"2001:db8:ffff:{0x8000 + n:x}::/64")
        return v4, v6

    def path_of(self, target: str, source: str, proto: str, sport: int, dport: int) -> str:
        """The path ("a" or "b") the router's hash picks for one flow from src."""
        out = self.router.run(
            [
                "ip", "route", "get", target, "from", source, "iif", self.router_if,
                "ipproto", proto, "sport", str(sport), "dport", str(dport),
            ]
        ).stdout  # fmt: skip
        devs = {rif: name for name, (rif, _) in self.paths.items()}
        for dev, name in devs.items():
            if f" dev {dev} " in f" {out} ":
                return name
        raise NetbedError(f"no path in {out!r}")

    def drop_path_b(self) -> None:
        """Everything the router forwards over path b is dropped (v4 and v6)."""
        rif = self.paths["b"][0]
        for tool in ("iptables", "ip6tables"):
            self.router.run([tool, "-w", "-A", "FORWARD", "-o", rif, "-j", "DROP"])


def _sanitize(hint: str) -> str:
    cleaned = re.sub(r"[^a-z0-9]", "", hint.lower())[:12]
    return cleaned or "dst"


class Closing:
    """A context manager that closes on exit, without letting a cleanup failure hide the
    error that got there."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except Exception:
            # A cleanup failure must not hide the error that got us here.
            if exc_type is None:
                raise


class Bed(Closing):
    """A src namespace plus dst namespaces; use as a context manager.

    ``unprivileged_ping=False`` leaves ``net.ipv4.ping_group_range`` at the
    kernel default "1 0" in src, so datagram ICMP sockets are refused there
    (for testing fallbacks to raw sockets or to fping).
    """

    def __init__(self, unprivileged_ping: bool = True) -> None:
        _sweep_once()
        self._closed = False
        self._namespaces: list[Namespace] = []
        self.dsts: list[Dst] = []
        self.unprivileged_ping = unprivileged_ping
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{NS_PREFIX}{os.getpid()}-"))
        self._responder_seq = itertools.count(1)
        _open_beds.add(self)
        try:
            self.src = self._new_namespace("src")
            sysctls: dict[str, str | int] = {}
            if unprivileged_ping:
                # Covers IPv4 and IPv6 datagram ICMP ("ping") sockets alike.
                sysctls["net.ipv4.ping_group_range"] = "0 2147483647"
            self.src.sysctls(sysctls)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"Bed(src={self.src.name!r}, dsts={len(self.dsts)})"

    @property
    def namespaces(self) -> list[Namespace]:
        return list(self._namespaces)

    def _new_namespace(self, role: str) -> Namespace:
        name = f"{NS_PREFIX}{os.getpid()}-{next(_counter)}-{role}"
        ns = Namespace.create(name)
        self._namespaces.append(ns)
        # Before any interface exists, so the veth ends and lo inherit it:
        # duplicate address detection would otherwise hold new IPv6
        # addresses (incl. link-local) back for about a second.
        ns.sysctls(
            {
                "net.ipv6.conf.all.accept_dad": 0,
                "net.ipv6.conf.default.accept_dad": 0,
                "net.ipv6.conf.default.accept_ra": 0,
            }
        )
        ns.ip_batch(["link set lo up"])
        return ns

    def _check_open(self) -> None:
        if self._closed:
            raise NetbedError("bed is closed")

    def _pick_prefixes(
        self, index: int, v4_prefix: str | None, v6_prefix: str | None
    ) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]:
        if v4_prefix is None:
            if index > MAX_DSTS:
                raise NetbedError(f"only {MAX_DSTS} dsts get a default IPv4 prefix")
            v4 = list(V4_SPACE.subnets(new_prefix=DEFAULT_V4_PREFIXLEN))[index]
        else:
            v4 = ipaddress.IPv4Network(v4_prefix)
        v6 = (
            ipaddress.IPv6Network(f"2001:db8:{index:x}::/64")
            if v6_prefix is None
            else ipaddress.IPv6Network(v6_prefix)
        )
        # Test traffic must stay inside the reserved ranges and must not
        # shadow the link networks or another dst's targets.
        if not v4.subnet_of(V4_SPACE) or v4.overlaps(V4_LINKS):
            raise NetbedError(f"{v4} must be inside {V4_SPACE} and outside {V4_LINKS}")
        if not v6.subnet_of(V6_SPACE) or v6.overlaps(V6_LINKS):
            raise NetbedError(f"{v6} must be inside {V6_SPACE} and outside {V6_LINKS}")
        for other in self.dsts:
            if v4.overlaps(other.v4_prefix) or v6.overlaps(other.v6_prefix):
                raise NetbedError(f"{v4}/{v6} overlaps the prefixes of {other}")
        return v4, v6

    def add_dst(
        self,
        name_hint: str = "dst",
        kernel_echo: bool = True,
        v4_prefix: str | None = None,
        v6_prefix: str | None = None,
    ) -> Dst:
        """Create a dst namespace linked to src; targets come via add_targets()."""
        self._check_open()
        index = len(self.dsts) + 1
        if index > V4_LINKS.num_addresses // 4:
            raise NetbedError("too many dsts")
        v4, v6 = self._pick_prefixes(index, v4_prefix, v6_prefix)
        ns = self._new_namespace(_sanitize(name_hint))
        tag = next(_counter)
        src_if, dst_if = f"pmv{tag}a", f"pmv{tag}b"
        dst = Dst(self, ns, index, kernel_echo, v4, v6, src_if, dst_if)
        if not kernel_echo:
            ns.sysctls({"net.ipv4.icmp_echo_ignore_all": 1, "net.ipv6.icmp.echo_ignore_all": 1})
        # Created straight inside the namespaces, so the names only need to
        # be unique per namespace and never touch the host's interfaces.
        _run(
            [
                "ip", "link", "add", src_if, "netns", self.src.name, "type", "veth",
                "peer", "name", dst_if, "netns", ns.name,
            ]
        )  # fmt: skip
        # The star topology needs no forwarding: every namespace only
        # originates or terminates traffic.  The dst's routes back to the
        # whole link block let src use any of its link addresses as source.
        ns.ip_batch(
            [
                f"link set {dst_if} up",
                f"address add {dst.dst_v4}/30 dev {dst_if}",
                f"address add {dst.dst_v6}/64 dev {dst_if} nodad",
                f"route add {V4_LINKS} via {dst.src_v4} dev {dst_if}",
                f"route add {V6_LINKS} via {dst.src_v6} dev {dst_if}",
            ]
        )
        self._link_src(dst, src_if)
        self.dsts.append(dst)
        return dst

    def _link_src(self, dst: Dst, src_if: str) -> None:
        """src's end of the link to a dst (or to the router in front of it), and src's routes
        to the dst's target prefixes over it."""
        self.src.ip_batch(
            [
                f"link set {src_if} up",
                f"address add {dst.src_v4}/30 dev {src_if}",
                f"address add {dst.src_v6}/64 dev {src_if} nodad",
                f"route add {dst.v4_prefix} via {dst.dst_v4} dev {src_if}",
                f"route add {dst.v6_prefix} via {dst.dst_v6} dev {src_if}",
            ]
        )

    def add_routed_dst(
        self,
        name_hint: str = "routed",
        far_mtu: int = 1500,
        drop_longer_than: int | None = None,
    ) -> Dst:
        """A dst behind a router namespace: src -- router -- dst, every link a veth pair.

        ``far_mtu`` is the MTU of the router-dst link: a larger request with don't-fragment
        set makes the router's kernel answer "fragmentation needed" (IPv4) or "packet too
        big" (IPv6) with that MTU. ``drop_longer_than`` makes the router drop every
        forwarded IP packet longer than that many bytes without a word (iptables and
        ip6tables ``-m length``): a path MTU black hole. The router's ICMP rate limits are
        off, so each full-size request gets its answer. Targets come via add_targets()."""
        self._check_open()
        index = len(self.dsts) + 1
        if index > 512:
            raise NetbedError("too many dsts")
        v4, v6 = self._pick_prefixes(index, None, None)
        router = self._new_namespace(f"rt{_sanitize(name_hint)}"[:12])
        ns = self._new_namespace(_sanitize(name_hint))
        tag = next(_counter)
        src_if, near_if = f"pmv{tag}a", f"pmv{tag}b"
        far_if, dst_if = f"pmv{tag}c", f"pmv{tag}d"
        dst = Dst(self, ns, index, True, v4, v6, src_if, dst_if)
        dst.router = router
        # The far link: a /30 in the upper half of the link block (add_dst's links use
        # the first /30s) and a /64 above the near links'.
        far_base = int(V4_LINKS.network_address) + V4_LINKS.num_addresses // 2 + 4 * (index - 1)
        far_r4, far_d4 = (str(ipaddress.IPv4Address(far_base + k)) for k in (1, 2))
        far6 = ipaddress.IPv6Network(f"2001:db8:ffff:{0x100 + index:x}::/64")
        far_r6, far_d6 = str(far6.network_address + 1), str(far6.network_address + 2)
        dst.router_far_v4, dst.router_far_v6 = far_r4, far_r6
        for a, b, na, nb in ((src_if, near_if, self.src, router), (far_if, dst_if, router, ns)):
            _run(
                [
                    "ip", "link", "add", a, "netns", na.name, "type", "veth",
                    "peer", "name", b, "netns", nb.name,
                ]
            )  # fmt: skip
        router.sysctls(
            {
                "net.ipv4.ip_forward": 1,
                "net.ipv6.conf.all.forwarding": 1,
                "net.ipv4.icmp_ratelimit": 0,
                "net.ipv6.icmp.ratelimit": 0,
            }
        )
        router.ip_batch(
            [
                f"link set {near_if} up",
                f"link set {far_if} mtu {far_mtu} up",
                f"address add {dst.dst_v4}/30 dev {near_if}",
                f"address add {dst.dst_v6}/64 dev {near_if} nodad",
                f"address add {far_r4}/30 dev {far_if}",
                f"address add {far_r6}/64 dev {far_if} nodad",
                f"route add {v4} via {far_d4} dev {far_if}",
                f"route add {v6} via {far_d6} dev {far_if}",
            ]
        )
        ns.ip_batch(
            [
                f"link set {dst_if} mtu {far_mtu} up",
                f"address add {far_d4}/30 dev {dst_if}",
                f"address add {far_d6}/64 dev {dst_if} nodad",
                f"route add {V4_LINKS} via {far_r4} dev {dst_if}",
                f"route add {V6_LINKS} via {far_r6} dev {dst_if}",
            ]
        )
        self._link_src(dst, src_if)
        if drop_longer_than is not None:
            for tool in ("iptables", "ip6tables"):
                router.run(
                    [
                        tool, "-w", "-A", "FORWARD", "-m", "length",
                        "--length", f"{drop_longer_than + 1}:65535", "-j", "DROP",
                    ]
                )  # fmt: skip
        self.dsts.append(dst)
        return dst

    def add_multipath_dst(self, name_hint: str = "mp", hash_seed: int = 1) -> MultipathDst:
        """A dst behind a router namespace with a two-nexthop route to its targets (IPv4 and
        IPv6), hashed on addresses, protocol and ports with the given seed."""
        self._check_open()
        index = len(self.dsts) + 1
        v4, v6 = self._pick_prefixes(index, None, None)
        router = self._new_namespace("rtr")
        ns = self._new_namespace(_sanitize(name_hint))
        tag = next(_counter)
        src_if, router_if = f"pmv{tag}a", f"pmv{tag}b"
        paths = {p: (f"pmv{tag}r{p}", f"pmv{tag}d{p}") for p in ("a", "b")}
        dst = MultipathDst(self, ns, router, index, v4, v6, src_if, router_if, paths)
        router.sysctls(
            {
                "net.ipv4.ip_forward": 1,
                "net.ipv6.conf.all.forwarding": 1,
                # Policy 3 (these fields: addresses, protocol, ports) and not policy 1:
                # under policy 1 a packet that already carries an L4 hash is routed by it,
                # and over a veth that hash is the sending socket's random txhash, so each
                # connection of one 4-tuple took a path at random. A real NIC's receive
                # hash is one of the 4-tuple; policy 3 reads the headers, as it would.
                "net.ipv4.fib_multipath_hash_policy": 3,
                "net.ipv6.fib_multipath_hash_policy": 3,
                "net.ipv4.fib_multipath_hash_fields": MULTIPATH_HASH_FIELDS,
                "net.ipv6.fib_multipath_hash_fields": MULTIPATH_HASH_FIELDS,
                "net.ipv4.fib_multipath_hash_seed": hash_seed,
            }
        )
        _run(
            [
                "ip", "link", "add", src_if, "netns", self.src.name, "type", "veth",
                "peer", "name", router_if, "netns", router.name,
            ]
        )  # fmt: skip
        router_cmds = [
            f"link set {router_if} up",
            f"address add {dst.dst_v4}/30 dev {router_if}",
            f"address add {dst.dst_v6}/64 dev {router_if} nodad",
        ]
        dst_cmds = []
        hops4, hops6 = [], []
        for p, (rif, dif) in paths.items():
            link4, link6 = MultipathDst.path_links(index, p)
            r4, d4 = link4.network_address + 1, link4.network_address + 2
            r6, d6 = link6.network_address + 1, link6.network_address + 2
            _run(
                [
                    "ip", "link", "add", rif, "netns", router.name, "type", "veth",
                    "peer", "name", dif, "netns", ns.name,
                ]
            )  # fmt: skip
            router_cmds += [
                f"link set {rif} up",
                f"address add {r4}/30 dev {rif}",
                f"address add {r6}/64 dev {rif} nodad",
            ]
            dst_cmds += [
                f"link set {dif} up",
                f"address add {d4}/30 dev {dif}",
                f"address add {d6}/64 dev {dif} nodad",
            ]
            hops4.append(f"nexthop via {d4} dev {rif}")
            hops6.append(f"nexthop via {d6} dev {rif}")
            if p == "a":
                # Replies come back over path a only: a drop on b touches requests alone.
                dst_cmds += [
                    f"route add {V4_LINKS} via {r4} dev {dif}",
                    f"route add {V6_LINKS} via {r6} dev {dif}",
                ]
        router_cmds += [f"route add {v4} {' '.join(hops4)}", f"route add {v6} {' '.join(hops6)}"]
        router.ip_batch(router_cmds)
        ns.ip_batch(dst_cmds)
        self._link_src(dst, src_if)
        self.dsts.append(dst)
        return dst

    # -- impairments ---------------------------------------------------------

    _LOSS_CHAIN: ClassVar[str] = "PMTB_LOSS"
    _LOSS_MATCH: ClassVar[dict[str, list[str]]] = {
        "iptables": ["-p", "icmp", "--icmp-type", "echo-request"],
        "ip6tables": ["-p", "ipv6-icmp", "--icmpv6-type", "echo-request"],
    }

    def loss(self, dst: Dst, fraction: float) -> None:
        """Drop this fraction of incoming echo requests in dst (v4 and v6)."""
        self._check_open()
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"loss fraction {fraction} is not in [0, 1]")
        chain = self._LOSS_CHAIN
        for tool, match in self._LOSS_MATCH.items():
            if not dst._loss_chain_ready:
                # A private chain makes replacing/clearing the rule a flush.
                dst.ns.run([tool, "-w", "-N", chain])
                dst.ns.run([tool, "-w", "-I", "INPUT", "-j", chain])
            dst.ns.run([tool, "-w", "-F", chain])
            if fraction > 0.0:
                dst.ns.run(
                    [
                        tool, "-w", "-A", chain, *match,
                        "-m", "statistic", "--mode", "random",
                        "--probability", f"{fraction:.6f}", "-j", "DROP",
                    ]
                )  # fmt: skip
        dst._loss_chain_ready = True

    def clear_loss(self, dst: Dst) -> None:
        if dst._loss_chain_ready:
            self.loss(dst, 0.0)

    # -- responder -------------------------------------------------------------

    def start_responder(
        self,
        dst: Dst,
        profiles: Sequence[ProfileLike],
        seed: int = 1,
        timeout_s: float = 15.0,
    ) -> Responder:
        """Run tests/support/responder.py in dst and wait until it is listening."""
        self._check_open()
        if dst.kernel_echo:
            # Both the kernel and the responder would answer every request.
            raise NetbedError(f"{dst} has kernel echo on; use add_dst(kernel_echo=False)")
        raw_profiles = [p.to_dict() if isinstance(p, Profile) else dict(p) for p in profiles]
        seq = next(self._responder_seq)
        config = self._workdir / f"responder-{seq}.json"
        config.write_text(json.dumps({"profiles": raw_profiles, "seed": seed}, indent=1))
        stderr_path = self._workdir / f"responder-{seq}.stderr"
        with open(stderr_path, "wb") as err:
            proc = dst.ns.popen(
                [sys.executable, str(RESPONDER_PATH), "--config", str(config), "--control"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        responder = Responder(proc, stderr_path, dst)
        dst.responders.append(responder)
        try:
            responder.wait_ready(timeout_s)
        except BaseException:
            responder.stop()
            raise
        return responder

    # -- teardown --------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop processes and delete every namespace of this bed.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for dst in self.dsts:
            for responder in dst.responders:
                try:
                    responder.stop()
                except Exception as exc:  # keep tearing down the rest
                    errors.append(f"stopping responder {responder.pid}: {exc}")
        for ns in reversed(self._namespaces):
            try:
                ns.delete()
            except Exception as exc:  # keep tearing down the rest
                errors.append(f"deleting {ns.name}: {exc}")
        shutil.rmtree(self._workdir, ignore_errors=True)
        _open_beds.discard(self)
        if errors:
            raise NetbedError("test bed cleanup incomplete: " + "; ".join(errors))


@atexit.register
def _close_forgotten_beds() -> None:
    # Last line of defence for a caller that never closed its bed.
    for bed in list(_open_beds):
        # The interpreter is exiting: report nothing, clean what we can.
        with contextlib.suppress(Exception):
            bed.close()


__all__ = [
    "Bed",
    "CommandError",
    "Dst",
    "MultipathDst",
    "Namespace",
    "NetbedError",
    "Profile",
    "Responder",
    "list_namespaces",
    "require_root",
    "sweep_stale_namespaces",
]
