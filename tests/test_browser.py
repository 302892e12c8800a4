"""The pages in a real browser: three real exporters, one per namespace, each probing the
other two (real ICMP), one pair broken (its echo replies dropped), and headless Chromium
loading `/` and `/mesh` from one of them. The page loads, the matrix has one cell per pair,
the broken pair's cell is coloured broken in the DOM and in the screenshot's pixels, and
clicking a column header sorts the targets. The screenshots are kept: under
$PINGMESH_ARTEFACTS/browser/ when set, else under the test's tmp_path."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.pages.page import COLOURS
from tests.support.browser import Browser, chromium_path
from tests.support.exporter_proc import ExporterProcess
from tests.support.netbed import V4_SPACE, Bed, Dst
from tests.support.netbed_fixtures import skip_or_fail
from tests.support.png import Image, decode, encode_rgb

pytestmark = pytest.mark.netns

PORT = 9871
NODES = 3
BROKEN = (0, 1)  # node-0's probes of node-1 get no reply


def artefacts(tmp_path: Path) -> Path:
    base = os.environ.get("PINGMESH_ARTEFACTS")
    out = (Path(base) if base else tmp_path) / "browser"
    out.mkdir(parents=True, exist_ok=True)
    return out


def node(i: int) -> str:
    return f"node-{i}"


def address(d: Dst) -> str:
    return d.targets_v4[0]


def wait_for(proc: ExporterProcess, broken: list[str], healthy: list[str]) -> None:
    """Until this exporter's view shows its broken targets down after a few probes and every
    other one answered (bounded)."""
    deadline = time.monotonic() + 20
    seen: object = None
    while time.monotonic() < deadline:
        code, _, body = proc.get("/api/v1/view", timeout=5)
        if code == 200:
            targets = {t["name"]: t for t in json.loads(body)["targets"]}
            seen = targets
            if all(targets[h]["up"] and targets[h]["received"] > 0 for h in healthy) and all(
                not targets[b]["up"] and targets[b]["probes"] >= 3 for b in broken
            ):
                return
        time.sleep(0.2)
    raise AssertionError(f"the view did not settle: {seen}")


@pytest.fixture
def mesh(bed: Bed) -> Iterator[tuple[Bed, list[Dst], list[ExporterProcess]]]:
    """NODES exporters, each in a namespace of its own, listening on its own test address;
    src routes between them."""
    if chromium_path() is None:
        skip_or_fail("chromium is not installed (make system-deps installs it)")
    dsts = [bed.add_dst(f"node{i}") for i in range(NODES)]
    for d in dsts:
        d.add_targets(1)
        d.ns.ip_batch([f"route add {V4_SPACE} via {d.src_v4} dev {d.dst_if}"])
    bed.src.sysctl("net.ipv4.ip_forward", 1)
    a, b = dsts[BROKEN[0]], dsts[BROKEN[1]]
    b.ns.run(
        ["iptables", "-w", "-A", "OUTPUT", "-d", a.dst_v4, "-p", "icmp",
         "--icmp-type", "echo-reply", "-j", "DROP"]
    )  # fmt: skip
    procs: list[ExporterProcess] = []
    try:
        for i, d in enumerate(dsts):
            others = [address(o) for o in dsts if o is not d]
            procs.append(
                ExporterProcess(
                    d.ns,
                    [
                        "--web.listen-address", f"{address(d)}:{PORT}",
                        "--kubernetes.node-name", node(i),
                        "--target", ",".join(others),
                        "--probe.interval", "200ms",
                        "--probe.timeout", "150ms",
                        "--probe.mtu-interval", "0",
                        # Loss is what this test colours; a loaded machine's RTT spike must
                        # not turn a pair "slow" (tests/test_view.py holds that colour).
                        "--mesh-page.slow-rtt", "1s",
                        "--log.level", "info",
                    ],
                    port=PORT,
                    client=(d.ns, address(d)),
                )
            )  # fmt: skip
        for p in procs:
            p.wait_ready()
        yield bed, dsts, procs
    finally:
        for p in procs:
            p.__exit__()


def region(img: Image, r: dict[str, float], inset: int = 3) -> list[tuple[int, int, int]]:
    x0, y0 = int(r["x"]) + inset, int(r["y"]) + inset
    x1, y1 = int(r["x"] + r["width"]) - inset, int(r["y"] + r["height"]) - inset
    return [img.pixel(x, y) for y in range(y0, y1) for x in range(x0, x1)]


def rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def mostly(pixels: list[tuple[int, int, int]], colour: str, share: float = 0.6) -> bool:
    want = rgb(colour)
    near = [p for p in pixels if all(abs(a - b) <= 6 for a, b in zip(p, want, strict=True))]
    return len(near) >= share * len(pixels)


def test_png_decoder_reads_its_own_picture() -> None:
    img = decode(encode_rgb(3, 2, (1, 2, 3)))
    assert (img.width, img.height, img.pixel(2, 1)) == (3, 2, (1, 2, 3))


def test_mesh_and_landing_pages_in_chromium(
    mesh: tuple[Bed, list[Dst], list[ExporterProcess]], tmp_path: Path
) -> None:
    bed, dsts, procs = mesh
    names = [node(i) for i in range(NODES)]
    src, dst = names[BROKEN[0]], names[BROKEN[1]]
    # Every exporter's view settled, or a pair still without outcomes would be grey.
    for i, (d, p) in enumerate(zip(dsts, procs, strict=True)):
        others = [address(o) for o in dsts if o is not d]
        lost = [address(dsts[BROKEN[1]])] if i == BROKEN[0] else []
        wait_for(p, lost, [o for o in others if o not in lost])
    out = artefacts(tmp_path)
    with Browser(bed.src, tmp_path / "chromium") as browser:
        base = f"http://{address(dsts[0])}:{PORT}"
        started = time.monotonic()
        browser.load(f"{base}/mesh")
        load_seconds = time.monotonic() - started
        shot = decode(browser.screenshot(out / "mesh.png"))
        assert browser.evaluate("document.title") == "pingmesh-exporter: mesh"
        cells = browser.evaluate(
            "Array.from(document.querySelectorAll('table.matrix td[data-s]'))"
            ".map(function(c){return [c.dataset.s, c.dataset.t, c.className];})"
        )
        pairs = {(s, t) for s, t, _ in cells}
        assert len(cells) == NODES * (NODES - 1)
        assert pairs == {(s, t) for s in names for t in names if s != t}
        states = {(s, t): c for s, t, c in cells}
        assert states.pop((src, dst)) == "down"
        assert set(states.values()) == {"ok"}
        assert browser.evaluate("document.querySelectorAll('td.failed').length") == 0
        broken = browser.rect(f'td[data-s="{src}"][data-t="{dst}"]')
        healthy = browser.rect(f'td[data-s="{dst}"][data-t="{src}"]')
        assert mostly(region(shot, broken), COLOURS["down"]), region(shot, broken)[:5]
        assert mostly(region(shot, healthy), COLOURS["ok"]), region(shot, healthy)[:5]
        assert load_seconds < 10  # a bound on the test, not a figure
        browser.hover(f'td[data-s="{src}"][data-t="{dst}"]')
        title = browser.evaluate(
            f'document.querySelector(\'td[data-s="{src}"][data-t="{dst}"]\').title'
        )
        assert title.startswith(f"{src} \u2192 {dst} (static, ipv4): down, loss 100.0 %"), title

        browser.load(f"{base}/")
        browser.screenshot(out / "landing.png")

        def order() -> list[str]:
            found: list[str] = browser.evaluate(
                "Array.from(document.querySelectorAll('#targets tbody tr'))"
                ".map(function(r){return r.dataset.name;})"
            )
            return found

        by_name = sorted([address(dsts[1]), address(dsts[2])])
        assert order() == by_name
        assert (
            browser.evaluate(
                f"document.querySelector('tr[data-name=\"{address(dsts[1])}\"]').className"
            )
            == "down"
        )
        browser.click('#targets th[data-key="loss %"]')
        assert order() == [address(dsts[2]), address(dsts[1])]  # 0 % before 100 %
        assert (
            browser.evaluate(
                "document.querySelector('#targets th[data-key=\"loss %\"]')"
                ".getAttribute('aria-sort')"
            )
            == "ascending"
        )
        browser.click('#targets th[data-key="loss %"]')
        assert order() == [address(dsts[1]), address(dsts[2])]
        browser.screenshot(out / "landing-sorted.png")
    assert (out / "mesh.png").stat().st_size > 0
