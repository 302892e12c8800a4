"""Basic auth against the file's bcrypt hashes, with verified credentials cached.

A cost-10 bcrypt takes tens of milliseconds of CPU: paid on every scrape of every
Prometheus replica it would be most of the exporter's idle cost. As exporter-toolkit does,
the outcome of one check is kept for the exact (user, stored hash, password): a different
password, a changed hash (a reloaded file) or another user is a new check. The key is an
HMAC under a per-process random key, so the cache never holds a password or anything a
password can be tested against offline; it is bounded (least recently used goes first), and
checks that miss it run one at a time, so a flood of wrong passwords costs one core at most.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping

import bcrypt

CACHE_SIZE = 256


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an Authorization header, None without basic credentials."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _check(hashed: bytes, password: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode("utf-8"), hashed)
    except ValueError:
        return False


class BasicAuth:
    """Who may in: the users of one configuration, and the cache shared across reloads."""

    def __init__(
        self, size: int = CACHE_SIZE, check: Callable[[bytes, str], bool] = _check
    ) -> None:
        self._size = size
        self._check = check
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        self._lock = threading.Lock()  # the cache
        self._bcrypt = threading.Lock()  # one bcrypt at a time
        self.checks = 0  # bcrypt comparisons run (cache misses)
        # bcrypt of a random password, compared against for unknown users so that a missing
        # user takes as long as a wrong password (no user enumeration by timing). Made here,
        # not at import: an exporter without --web.config.file never pays for it.
        self._decoy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(10))

    def _cache_key(self, user: str, hashed: str, password: str) -> bytes:
        msg = b"\0".join(s.encode("utf-8") for s in (user, hashed, password))
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def verify(self, users: Mapping[str, str], user: str, password: str) -> bool:
        hashed = users.get(user)
        known = hashed is not None
        stored = hashed.encode() if hashed is not None else self._decoy
        key = self._cache_key(user, stored.decode(), password)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached and known
        with self._bcrypt:
            ok = self._check(stored, password) and known
            self.checks += 1
        with self._lock:
            self._cache[key] = ok
            self._cache.move_to_end(key)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return ok

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)
