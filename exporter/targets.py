"""Targets as values: what to probe, and how a set of them changes.

A target's identity is its label set plus its IP family; its address may change (a host name
that resolves elsewhere, a pod replaced by a rollout) without creating new series.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Labels = tuple[tuple[str, str], ...]
TargetKey = tuple[Labels, int]


def ip_family(address: str) -> int:
    """4 or 6; raises ValueError for anything that is not an IP literal."""
    return ipaddress.ip_address(address).version


def normalize_ip(address: str) -> str:
    """The canonical text form, the one the kernel reports as a reply's source."""
    return str(ipaddress.ip_address(address))


def family_label(family: int) -> str:
    return "ipv4" if family == 4 else "ipv6"


@dataclass(frozen=True)
class Target:
    """What is probed and the labels its series carry; the key is the labels and family."""

    labels: Labels
    family: int
    address: str

    def __post_init__(self) -> None:
        if self.family not in (4, 6):
            raise ValueError(f"bad IP family {self.family}")

    @property
    def key(self) -> TargetKey:
        return (self.labels, self.family)

    @property
    def kind(self) -> str:
        return dict(self.labels).get("kind", "")

    @property
    def display(self) -> str:
        values = [v for k, v in self.labels if k != "kind"]
        return f"{self.kind}/{'/'.join(values)}/{family_label(self.family)}"

    def phase(self) -> float:
        """Stable position in [0, 1) of this target inside each probe interval, so probes of
        all targets spread over the interval and keep their place across restarts."""
        digest = hashlib.blake2b(repr(self.key).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64


def static_target(name: str, address: str) -> Target:
    addr = normalize_ip(address)
    return Target(
        labels=(("kind", "static"), ("target", name)), family=ip_family(addr), address=addr
    )


@dataclass(frozen=True)
class TargetDiff:
    """How one target table differs from the next."""

    added: tuple[Target, ...]
    removed: tuple[Target, ...]
    moved: tuple[Target, ...]  # same identity, new address

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.moved)


def index(targets: Iterable[Target]) -> dict[TargetKey, Target]:
    """Targets by identity; the first of two targets with one identity wins."""
    out: dict[TargetKey, Target] = {}
    for t in targets:
        out.setdefault(t.key, t)
    return out


def diff(old: Mapping[TargetKey, Target], new: Mapping[TargetKey, Target]) -> TargetDiff:
    added = tuple(t for k, t in new.items() if k not in old)
    removed = tuple(t for k, t in old.items() if k not in new)
    moved = tuple(t for k, t in new.items() if k in old and old[k].address != t.address)
    return TargetDiff(added, removed, moved)


def merge(sources: Mapping[str, Iterable[Target]]) -> dict[TargetKey, Target]:
    """One table from every discovery source's targets, in a stable source order."""
    merged: dict[TargetKey, Target] = {}
    for name in sorted(sources):
        for t in sources[name]:
            merged.setdefault(t.key, t)
    return merged
