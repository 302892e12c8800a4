"""The mesh page's pure parts: the last-minute ring, its figures, the view as JSON both
ways, which peers are asked, the matrix and its colours, the pages' HTML."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import replace
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.config import ProbeSettings, ServicesSettings, parse_settings
from exporter.metrics.view import (
    VERSION,
    View,
    Viewer,
    ViewError,
    from_json,
    quantile,
    summarize,
    to_json,
)
from exporter.pages.matrix import Peer, assemble, classify, peers_of
from exporter.pages.page import landing, mesh
from exporter.probing.engine import Prober
from exporter.probing.stats import (
    LOST,
    RECENT_MAX,
    UNTIMED,
    TargetState,
    recent_size,
    ring,
    ring_values,
)
from exporter.services.checker import ServiceChecker
from exporter.services.plan import Check, ServicePlan
from exporter.targets import index, static_target
from tests.support.views import mesh_views, node_name, peer_address, target, view


def test_recent_size_is_the_last_minute_bounded() -> None:
    assert recent_size(1.0) == 60
    assert recent_size(0.5) == 120
    assert recent_size(7.0) == 9
    assert recent_size(120.0) == 1
    assert recent_size(0.01) == RECENT_MAX


def test_recent_ring_keeps_only_its_size_and_costs_its_slots() -> None:
    st = TargetState(static_target("a", "198.18.0.1"), [1000], 3, 3, recent=3)
    assert st.recent_values() == []
    for rtt in (1, 2, 3, 4, 5):
        st.reply(rtt)
    assert sorted(st.recent_values()) == [3, 4, 5]
    # What README and the docstring say a target costs: 8 bytes a slot, small overheads.
    assert sys.getsizeof(ring(60)) <= 8 * 60 + 80
    assert ring_values(ring(4), 0) == []


def test_target_state_feeds_the_ring_and_full_size_states_have_none() -> None:
    st = TargetState(static_target("a", "198.18.0.1"), [1000], 3, 3, recent=4)
    st.reply(500)
    st.reply(None)
    st.lost()
    assert sorted(st.recent_values()) == [UNTIMED, LOST, 500]
    assert TargetState(static_target("a", "198.18.0.1"), [1000], 3, 3).recent is None


def test_quantile_is_nearest_rank() -> None:
    xs = list(range(1, 101))
    assert quantile(xs, 0.5) == 50
    assert quantile(xs, 0.99) == 99
    assert quantile([7], 0.99) == 7


def test_summarize_loss_and_quantiles() -> None:
    s = summarize([LOST, 1_000_000, 2_000_000, UNTIMED])
    assert (s.probes, s.received, s.loss) == (4, 3, 0.25)
    assert s.rtt_p50_seconds == 0.001 and s.rtt_p99_seconds == 0.002
    empty = summarize([])
    assert empty.loss is None and empty.rtt_p50_seconds is None
    dead = summarize([LOST, LOST])
    assert dead.loss == 1.0 and dead.rtt_p99_seconds is None


def test_viewer_reads_the_probers_states() -> None:
    prober = Prober(ProbeSettings(interval=0.5), {})
    a, b = static_target("a", "198.18.0.1"), static_target("b", "198.18.0.2")
    prober.set_targets(index([a, b]))
    sa, sb = prober.states
    sa.reply(400_000)
    sb.lost()
    v = Viewer(prober, None, "node-x", "pod", ["198.18.1.1"], lambda: ("a note",)).view()
    assert v.version == VERSION and v.node == "node-x" and v.window_seconds == 60.0
    assert v.notes == ("a note",) and v.addresses == ("198.18.1.1",)
    by_name = {t.name: t for t in v.targets}
    assert by_name["a"].up and by_name["a"].recent.rtt_p50_seconds == 0.0004
    assert not by_name["b"].up and by_name["b"].recent.loss == 1.0
    assert by_name["a"].labels == (("target", "a"),)


def test_json_round_trip() -> None:
    v = view("n1", ["198.18.0.1"], [target("n2", "198.18.0.2"), target("n3", "2001:db8::3")])
    assert from_json(to_json(v)) == v
    doc = json.loads(to_json(v))
    assert doc["version"] == VERSION
    assert set(doc["targets"][0]) == {
        "kind",
        "name",
        "ip_family",
        "address",
        "labels",
        "up",
        "probes",
        "received",
        "loss_ratio",
        "rtt_p50_seconds",
        "rtt_p99_seconds",
    }


@pytest.mark.parametrize(
    "change, why",
    [
        (lambda d: d.update(version=2), "version 2"),
        (lambda d: d.update(targets="x"), "'targets'"),
        (lambda d: d["targets"][0].update(loss_ratio=1.5), "not a ratio"),
        (lambda d: d["targets"][0].update(received=99), "received 99"),
        (lambda d: d["targets"][0].update(up=1), "'up'"),
        (lambda d: d["targets"][0].update(probes=True), "'probes'"),
        (lambda d: d["targets"][0].update(rtt_p99_seconds=-1), "not a duration"),
        (lambda d: d["targets"][0]["labels"].update(x=1), "labels"),
    ],
)
def test_from_json_refuses_what_is_not_a_view(change: Any, why: str) -> None:
    doc = json.loads(to_json(view("n1", ["198.18.0.1"], [target("n2", "198.18.0.2")])))
    change(doc)
    with pytest.raises(ViewError, match=why):
        from_json(json.dumps(doc).encode())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)


@given(json_values)
def test_from_json_of_any_json_is_a_view_or_a_view_error(doc: Any) -> None:
    with contextlib.suppress(ViewError):
        from_json(json.dumps(doc).encode())


@given(st.binary(max_size=64))
def test_from_json_of_any_bytes_is_a_view_or_a_view_error(data: bytes) -> None:
    with contextlib.suppress(ViewError):
        from_json(data)


def test_peers_one_per_name_ipv4_first_never_oneself() -> None:
    v = view(
        "me",
        ["198.18.0.1"],
        [
            target("b", "2001:db8::2", family="ipv6"),
            target("b", "198.18.0.2"),
            target("c", "2001:db8::3", family="ipv6"),
            target("me", "198.18.0.1", kind="pod"),
            target("d", "198.18.9.9", kind="node"),
        ],
    )
    assert peers_of(v, ("pod",)) == (Peer("b", "198.18.0.2"), Peer("c", "2001:db8::3"))
    assert peers_of(v, ("node",)) == (Peer("d", "198.18.9.9"),)


def test_classify() -> None:
    assert classify(True, None, None, 0.01) == "nodata"
    assert classify(False, 0.1, 0.001, 0.01) == "down"
    assert classify(True, 1.0, None, 0.01) == "down"
    assert classify(True, 0.05, 0.001, 0.01) == "lossy"
    assert classify(True, 0.0, 0.02, 0.01) == "slow"
    assert classify(True, 0.0, 0.002, 0.01) == "ok"


def test_assemble_one_cell_per_pair_and_the_broken_one_down() -> None:
    views = mesh_views(4, broken={(2, 3): 1.0})
    own, peers = views[0], views[1:]
    found = [(Peer(v.name, v.addresses[0]), v, None, 0.001) for v in peers]
    m = assemble(own, found, 0.01)
    assert [r.name for r in m.rows] == [node_name(i) for i in range(1, 5)]
    assert m.columns == tuple(node_name(i) for i in range(1, 5))
    assert len(m.cells) == 4 * 3 and m.kinds == ("pod",)
    states = {(c.source, c.target): c.state for c in m.cells.values()}
    assert states.pop((node_name(2), node_name(3))) == "down"
    assert set(states.values()) == {"ok"}


def test_assemble_names_static_targets_by_the_exporter_that_answers() -> None:
    """Static targets carry addresses only: the column is the node of the exporter that
    answered there."""
    a = view("a", ["198.18.0.1"], [target("198.18.0.2", "198.18.0.2", kind="static")])
    b = view("b", ["198.18.0.2"], [target("198.18.0.1", "198.18.0.1", kind="static")])
    m = assemble(a, [(Peer("198.18.0.2", "198.18.0.2"), b, None, 0.0)], 0.01)
    assert set(m.cells) == {("a", "b", "static"), ("b", "a", "static")}


def test_assemble_failed_peers_and_oneself() -> None:
    own = view("a", ["198.18.0.1"], [target("b", "198.18.0.2"), target("c", "198.18.0.3")])
    found = [
        (Peer("b", "198.18.0.2"), None, "timeout", 1.0),
        (Peer("c", "198.18.0.3"), replace(own, addresses=("198.18.0.3",)), None, 0.0),
    ]
    m = assemble(own, found, 0.01)
    assert [(r.name, r.error) for r in m.rows] == [("a", None), ("b", "timeout")]
    assert set(m.cells) == {("a", "b", "pod"), ("a", "c", "pod")}


def test_a_cell_of_two_families_takes_the_worst() -> None:
    own = view(
        "a",
        ["198.18.0.1"],
        [target("b", "198.18.0.2"), target("b", "2001:db8::2", loss=0.5, family="ipv6")],
    )
    c = assemble(own, [], 0.01).cells[("a", "b", "pod")]
    assert c.state == "lossy" and c.loss == 0.5 and c.families == ("ipv4", "ipv6")


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, str | None]] = []
        self.rows: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "td" and "data-s" in a:
            self.cells.append(a)
        if tag == "tr" and "data-name" in a:
            self.rows.append(a["data-name"])


def test_mesh_page_html_cells_and_escaping() -> None:
    views = mesh_views(3, broken={(1, 2): 0.25})
    evil = replace(views[2], node="<b>x</b>")
    found: list[tuple[Peer, View | None, str | None, float]] = [
        (Peer(v.name, v.addresses[0]), v, None, 0.0) for v in (views[1], evil)
    ]
    found.append((Peer("gone", "198.18.7.7"), None, "connection refused", 0.0))
    page = mesh(assemble(views[0], found, 0.01), "/metrics", 0.01).decode()
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    parsed = _Cells()
    parsed.feed(page)
    assert len(parsed.cells) == 6
    lossy = [c for c in parsed.cells if c["class"] == "lossy"]
    assert [(c["data-s"], c["data-t"]) for c in lossy] == [(node_name(1), node_name(2))]
    assert "no view from 198.18.7.7: connection refused" in page


def test_landing_page_lists_every_target() -> None:
    v = view("a", ["198.18.0.1"], [target(node_name(n), peer_address(n)) for n in range(1, 6)])
    v = replace(v, notes=("mesh: <4> peers",))
    page = landing(v, "/m").decode()
    parsed = _Cells()
    parsed.feed(page)
    assert parsed.rows == [node_name(n) for n in range(1, 6)]
    assert 'href="/m"' in page and "mesh: &lt;4&gt; peers" in page


def test_mesh_page_flags() -> None:
    s = parse_settings(["--mesh-page.deadline=3s", "--mesh-page.max-bytes=2048"], {})
    assert s.mesh_page.deadline == 3.0 and s.mesh_page.max_bytes == 2048
    assert s.mesh_page.concurrency == 16 and s.mesh_page.peer_timeout == 1.0


def test_a_bad_mesh_page_flag_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_settings(["--mesh-page.concurrency=0"], {})
    assert exc.value.code == 2
    assert "--mesh-page.concurrency" in capsys.readouterr().err


def test_the_view_and_the_landing_page_carry_the_service_checks() -> None:
    checker = ServiceChecker(ServicesSettings())
    checks = (
        Check("default", "kubernetes", "198.18.5.1", 4, 443, "tcp", "https"),
        Check("kube-system", "kube-dns", "198.18.5.10", 4, 53, "dns", "dns"),
    )
    checker.set_plan(ServicePlan(checks, (), ()), {})
    for state in checker.states.values():
        state.record("ok" if state.check.protocol == "tcp" else "timeout", None)
    prober = Prober(ProbeSettings(), {})
    v = Viewer(prober, checker).view()
    assert [(s.service, s.up, s.last_result, s.checks) for s in v.services] == [
        ("kubernetes", True, "ok", 1),
        ("kube-dns", False, "timeout", 1),
    ]
    assert from_json(to_json(v)) == v
    page = landing(v, "/metrics").decode()
    assert "Service checks (2)" in page and "kube-system/kube-dns" in page
