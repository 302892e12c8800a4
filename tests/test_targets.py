"""Targets as values: identity, diffs, phases."""

from __future__ import annotations

from exporter.targets import diff, index, merge, static_target


def test_identity_ignores_address() -> None:
    a = static_target("web", "198.18.0.1")
    b = static_target("web", "198.18.0.9")
    assert a.key == b.key and a != b


def test_diff_added_removed_moved() -> None:
    old = index([static_target("a", "198.18.0.1"), static_target("b", "198.18.0.2")])
    new = index([static_target("b", "198.18.0.3"), static_target("c", "2001:db8::1")])
    d = diff(old, new)
    assert [t.address for t in d.added] == ["2001:db8::1"]
    assert [t.address for t in d.removed] == ["198.18.0.1"]
    assert [t.address for t in d.moved] == ["198.18.0.3"]
    assert diff(new, new).empty


def test_ipv6_normalized() -> None:
    assert static_target("x", "2001:DB8:0::1").address == "2001:db8::1"


def test_phase_stable_and_spread() -> None:
    ts = [static_target(f"198.18.1.{i}", f"198.18.1.{i}") for i in range(200)]
    phases = [t.phase() for t in ts]
    assert phases == [t.phase() for t in ts]
    assert all(0 <= p < 1 for p in phases)
    # spread: every tenth of the interval holds some targets
    assert len({int(p * 10) for p in phases}) == 10


def test_merge_first_source_wins_per_identity() -> None:
    t1 = static_target("a", "198.18.0.1")
    t2 = static_target("a", "198.18.0.2")
    assert list(merge({"b": [t2], "a": [t1]}).values()) == [t1]
