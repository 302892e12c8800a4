"""The peers' views over HTTP or HTTPS: one fetch (the seam: a URL, limits and how to ask in,
bytes or an error out) and a bounded fan-out of them (at most so many at once, each within
its own timeout, all within one deadline)."""

from __future__ import annotations

import http.client
import ssl
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace

CHUNK = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """What one fetch may take: seconds in all (connect to last byte) and body bytes."""

    timeout: float
    max_bytes: int


@dataclass(frozen=True)
class Fetched:
    """A fetch's outcome: the body, or why there is none."""

    url: str
    body: bytes | None
    error: str | None
    seconds: float


@dataclass(frozen=True)
class Asking:
    """How to ask the peers: the TLS client context for https URLs (None: plain HTTP) and
    the Authorization header to send (the viewer's own, forwarded: every exporter of a
    DaemonSet serves the same web configuration)."""

    tls: ssl.SSLContext | None = None
    authorization: str | None = None


PLAIN = Asking()

Fetcher = Callable[[str, Limits, Asking], Fetched]


class _Connection(http.client.HTTPConnection):
    """A connection that keeps its socket until the fetch is over: http.client lets go of
    it once a reply is known to end with the connection, and the reply is still read
    through it, each read with the time left as its timeout."""

    def close(self) -> None:
        pass

    def finish(self) -> None:
        super().close()


class _TlsConnection(http.client.HTTPSConnection):
    """_Connection over TLS."""

    def close(self) -> None:
        pass

    def finish(self) -> None:
        super().close()


def fetch(url: str, limits: Limits, asking: Asking = PLAIN) -> Fetched:
    """GET url within limits; never raises for what a peer or the network does."""
    started = time.monotonic()
    deadline = started + limits.timeout

    def failed(why: str) -> Fetched:
        return Fetched(url, None, why, time.monotonic() - started)

    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or parts.scheme != ("https" if asking.tls else "http"):
        return failed(f"unsupported URL {url!r}")
    conn: _Connection | _TlsConnection
    if asking.tls is not None:
        conn = _TlsConnection(
            parts.hostname, parts.port or 443, timeout=limits.timeout, context=asking.tls
        )
    else:
        conn = _Connection(parts.hostname, parts.port or 80, timeout=limits.timeout)
    headers = {"Accept": "application/json"}
    if asking.authorization is not None:
        headers["Authorization"] = asking.authorization
    try:
        conn.request("GET", parts.path or "/", headers=headers)
        sock = conn.sock
        assert sock is not None
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        resp = conn.getresponse()
        if resp.status != 200:
            return failed(f"HTTP {resp.status}")
        length = resp.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > limits.max_bytes:
            return failed(f"reply of {length} bytes, more than {limits.max_bytes}")
        body = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return failed("timeout")
            sock.settimeout(left)
            piece = resp.read(min(CHUNK, limits.max_bytes + 1 - len(body)))
            if not piece:
                break
            body += piece
            if len(body) > limits.max_bytes:
                return failed(f"reply longer than {limits.max_bytes} bytes")
        resp.close()
        return Fetched(url, bytes(body), None, time.monotonic() - started)
    except TimeoutError:
        return failed("timeout")
    except ConnectionRefusedError:
        return failed("connection refused")
    except ssl.SSLError as exc:
        return failed(f"TLS: {exc.reason or exc}")
    except (OSError, http.client.HTTPException) as exc:
        return failed(getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
    finally:
        conn.finish()


def fan_out(
    urls: Sequence[str],
    limits: Limits,
    concurrency: int,
    deadline: float,
    fetcher: Fetcher = fetch,
    asking: Asking = PLAIN,
) -> list[Fetched]:
    """Every URL fetched, at most `concurrency` at once, in order of the URLs. A fetch that
    starts late gets only the time left before the deadline; one not done by then is a
    "deadline" error, and its thread ends within its own timeout, after this returns."""
    if not urls:
        return []
    started = time.monotonic()
    end = started + deadline

    def one(url: str) -> Fetched:
        left = end - time.monotonic()
        if left <= 0:
            return Fetched(url, None, "deadline", 0.0)
        return fetcher(url, replace(limits, timeout=min(limits.timeout, left)), asking)

    pool = ThreadPoolExecutor(max_workers=min(concurrency, len(urls)), thread_name_prefix="mesh")
    try:
        futures: list[Future[Fetched]] = [pool.submit(one, u) for u in urls]
        wait(futures, timeout=max(0.0, end - time.monotonic()))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    out = []
    for url, fut in zip(urls, futures, strict=True):
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            out.append(fut.result())
        else:
            out.append(Fetched(url, None, "deadline", time.monotonic() - started))
    return out


def view_url(address: str, port: int, scheme: str = "http") -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{scheme}://{host}:{port}/api/v1/view"
