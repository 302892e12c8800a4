"""Static discovery: file parsing, resolution through a fake resolver, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from exporter.config import ConfigError, StaticSettings
from exporter.discovery.static import StaticDiscovery, is_host, parse_targets_text

T = TypeVar("T")


def test_parse_targets_text() -> None:
    hosts, bad = parse_targets_text(
        "# comment\n198.18.0.1\n\n  node-a.example  # trailing\nbad host\n2001:db8::5\n!!!\n"
    )
    assert hosts == ["198.18.0.1", "node-a.example", "2001:db8::5"]
    assert [(b.lineno, b.text) for b in bad] == [(5, "bad host"), (7, "!!!")]


@pytest.mark.parametrize(
    "text,ok",
    [
        ("198.18.0.1", True),
        ("2001:db8::1", True),
        ("a.b-c.example.", True),
        ("-bad.example", False),
        ("a" * 64, False),
        ("", False),
        ("a..b", False),
    ],
)
def test_is_host(text: str, ok: bool) -> None:
    assert is_host(text) is ok


class FakeResolver:
    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def __call__(self, name: str) -> list[str]:
        self.calls.append(name)
        if name not in self.table:
            raise OSError(-2, "Name or service not known")
        return self.table[name]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_names_resolved_one_address_per_family() -> None:
    res = FakeResolver({"svc.example": ["198.18.0.9", "198.18.0.3", "2001:db8::2"]})
    d = StaticDiscovery(StaticSettings(targets=("svc.example", "198.18.0.1")), resolver=res)
    targets = run(d.initial())
    assert sorted((t.display, t.address) for t in targets) == [
        ("static/198.18.0.1/ipv4", "198.18.0.1"),
        ("static/svc.example/ipv4", "198.18.0.3"),
        ("static/svc.example/ipv6", "2001:db8::2"),
    ]
    assert res.calls == ["svc.example"]  # IP literals are never looked up


def test_unresolvable_name_is_reported_not_fatal_and_keeps_last_address() -> None:
    res = FakeResolver({"a.example": ["198.18.0.7"]})
    d = StaticDiscovery(StaticSettings(targets=("a.example", "gone.example")), resolver=res)
    first = run(d.initial())
    assert [t.address for t in first] == ["198.18.0.7"]
    assert d.errors == {"resolve": 1}
    del res.table["a.example"]
    again = run(d.resolve(d.read_hosts(first=False)))
    assert [t.address for t in again] == ["198.18.0.7"]
    assert d.errors == {"resolve": 3}


def test_targets_file_bad_lines_counted(tmp_path: Path) -> None:
    f = tmp_path / "targets"
    f.write_text("198.18.0.1\nnot a host\n")
    d = StaticDiscovery(StaticSettings(targets_file=str(f)), resolver=FakeResolver({}))
    assert [t.address for t in run(d.initial())] == ["198.18.0.1"]
    assert d.errors == {"invalid_line": 1}


def test_unreadable_file_fatal_at_start_then_tolerated(tmp_path: Path) -> None:
    missing = StaticDiscovery(StaticSettings(targets_file=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="--targets-file"):
        run(missing.initial())
    f = tmp_path / "targets"
    f.write_text("198.18.0.1\n")
    d = StaticDiscovery(StaticSettings(targets_file=str(f)))
    run(d.initial())
    f.unlink()
    assert [t.address for t in run(d.resolve(d.read_hosts(first=False)))] == ["198.18.0.1"]
    assert d.errors == {"read": 1}


def test_defaults_only_without_any_targets() -> None:
    d = StaticDiscovery(StaticSettings(), defaults=["127.0.0.1"])
    assert [t.address for t in run(d.initial())] == ["127.0.0.1"]


def test_bad_target_flag() -> None:
    with pytest.raises(ConfigError, match="--target"):
        run(StaticDiscovery(StaticSettings(targets=("bad host",))).initial())
