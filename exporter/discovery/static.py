"""Static discovery: targets from flags and a file, host names resolved at start and on a
schedule. A name that stops resolving keeps its last known address; one that never resolved
is reported and retried, never fatal."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from exporter.config import ConfigError, StaticSettings
from exporter.targets import Target, static_target

log = logging.getLogger("exporter.discovery.static")

Resolver = Callable[[str], Awaitable[list[str]]]

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def is_host(text: str) -> bool:
    """An IP literal or a syntactically valid DNS name."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    name = text[:-1] if text.endswith(".") else text
    return 0 < len(name) <= 253 and all(_LABEL.match(part) for part in name.split("."))


@dataclass(frozen=True)
class BadLine:
    """A targets-file line that is not a target."""

    lineno: int
    text: str


def parse_targets_text(text: str) -> tuple[list[str], list[BadLine]]:
    """Hosts from a targets file (one a line, ``#`` comments), and the lines that are not."""
    hosts: list[str] = []
    bad: list[BadLine] = []
    for n, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if is_host(entry):
            hosts.append(entry)
        else:
            bad.append(BadLine(n, line.strip()))
    return hosts, bad


async def system_resolver(name: str) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(name, None, type=socket.SOCK_DGRAM)
    return [str(info[4][0]) for info in infos]


def pick_addresses(addresses: Iterable[str]) -> list[str]:
    """One address per family, the lowest, so the choice is stable across lookups."""
    best: dict[int, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
    for a in addresses:
        try:
            ip = ipaddress.ip_address(a.split("%", 1)[0])
        except ValueError:
            continue
        if ip.version not in best or ip < best[ip.version]:  # type: ignore[operator]
            best[ip.version] = ip
    return [str(best[v]) for v in sorted(best)]


class StaticDiscovery:
    """Targets from flags and a file, host names resolved again on each refresh."""

    def __init__(
        self,
        settings: StaticSettings,
        defaults: Iterable[str] = (),
        resolver: Resolver = system_resolver,
    ) -> None:
        self.settings = settings
        self.defaults = tuple(defaults)
        self.resolver = resolver
        self.errors: Counter[str] = Counter()
        self._known: dict[str, list[str]] = {}
        self._failing: set[str] = set()
        self._bad_lines_logged: set[tuple[int, str]] = set()

    def _count(self, reason: str, n: int = 1) -> None:
        self.errors[reason] += n

    def read_hosts(self, first: bool) -> list[str]:
        """Hosts from flags and the targets file. An unreadable file is fatal at start
        (ConfigError) and afterwards keeps the previous hosts."""
        hosts = list(self.settings.targets)
        bad_flags = [h for h in hosts if not is_host(h)]
        if bad_flags:
            raise ConfigError(f"flag --target: not an IP address or host name: {bad_flags[0]!r}")
        path = self.settings.targets_file
        if path:
            try:
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
            except (OSError, UnicodeDecodeError) as exc:
                if first:
                    raise ConfigError(f"flag --targets-file: cannot read {path}: {exc}") from None
                self._count("read")
                log.warning(
                    "cannot re-read targets file %s, keeping previous targets: %s", path, exc
                )
                return list(self._known)
            from_file, bad = parse_targets_text(text)
            for b in bad:
                self._count("invalid_line")
                if (b.lineno, b.text) not in self._bad_lines_logged:
                    self._bad_lines_logged.add((b.lineno, b.text))
                    log.warning(
                        "%s:%d: skipped, not an IP address or host name: %r", path, b.lineno, b.text
                    )
            hosts += from_file
        if not hosts and not path:
            hosts = list(self.defaults)
        return list(dict.fromkeys(hosts))

    async def resolve(self, hosts: Iterable[str]) -> list[Target]:
        hosts = list(hosts)
        results = await asyncio.gather(*(self._resolve_one(h) for h in hosts))
        targets: list[Target] = []
        for host, addresses in zip(hosts, results, strict=True):
            targets += [static_target(host, a) for a in addresses]
        self._known = {h: self._known.get(h, []) for h in hosts}
        for host, addresses in zip(hosts, results, strict=True):
            if addresses:
                self._known[host] = addresses
        return targets

    async def _resolve_one(self, host: str) -> list[str]:
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
        try:
            addresses = pick_addresses(await asyncio.wait_for(self.resolver(host), 10))
        except (OSError, TimeoutError, UnicodeError) as exc:
            addresses = []
            why = str(exc) or type(exc).__name__
        else:
            why = "no addresses"
        if addresses:
            if host in self._failing:
                self._failing.discard(host)
                log.info("host name %s resolves again: %s", host, ", ".join(addresses))
            return addresses
        self._count("resolve")
        previous = self._known.get(host, [])
        if host not in self._failing:
            self._failing.add(host)
            log.warning(
                "cannot resolve host name %s (%s)%s",
                host,
                why,
                "; keeping its last addresses" if previous else "; will retry",
            )
        return previous

    async def initial(self) -> list[Target]:
        """The first target list; raises ConfigError for unusable flags or file."""
        return await self.resolve(self.read_hosts(first=True))

    async def run(self, publish: Callable[[list[Target]], None]) -> None:
        """Re-read and re-resolve every refresh interval, publishing the result."""
        while True:
            await asyncio.sleep(self.settings.refresh_interval)
            publish(await self.resolve(self.read_hosts(first=False)))
