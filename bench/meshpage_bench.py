#!/usr/bin/env python3
"""What the mesh page costs: /mesh of an N-node mesh assembled from N - 1 real HTTP servers
of made-up views (each on its own loopback address and one port, as peer exporters answer
on their pod IPs and the exporter's port), served by the exporter's own HTTP server and
loaded in headless Chromium; and what one /api/v1/view costs the exporter that answers it.

The peers' servers run in a process of their own. Figures per node count: the server side
of one /mesh (fetch every peer's view, parse, assemble, write the HTML; median and max of
RUNS), the page's size, and Chromium's load of the page by its own navigation timing: the
first byte of the reply (the server side, as the browser waits for it) and the end of the
load event (the page parsed, laid out and its script run); median and max of
BROWSER_RUNS. Then the view
of an exporter with 200 and 1,000 probed targets and full rings: Viewer.view() plus the
JSON, and the ring's memory per target.

Usage: ``python -m bench.meshpage_bench [--nodes 10,50,100,200] [--no-browser]``. Prints
Markdown tables. Needs no root (everything is on loopback).
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import machine_facts
from exporter.config import MeshPageSettings, ProbeSettings
from exporter.http import Health, HttpServer
from exporter.metrics.view import Viewer, to_json
from exporter.pages.site import Site
from exporter.probing.engine import Prober
from exporter.probing.stats import ring
from exporter.targets import index, static_target
from tests.support.browser import Browser, chromium_path
from tests.support.views import FixedView, free_port, mesh_views, peer_address

RUNS = 10
BROWSER_RUNS = 10


def _times(action: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        out.append(time.perf_counter() - started)
    return out


def _ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:.0f} / {max(xs) * 1e3:.0f}"


@contextmanager
def peers(n: int, port: int) -> Iterator[None]:
    """The peers' servers in a process of their own: in the exporter's process they would
    take its GIL and count their own work as the page's."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.views", str(n), str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def mesh_figures(n: int, browser: bool) -> dict[str, str]:
    views = mesh_views(n, broken={(2, 3): 1.0})
    port = free_port(peer_address(1))
    with peers(n, port):
        site = Site(FixedView(views[0]), MeshPageSettings(), "/metrics", port, ("pod",))
        server = HttpServer(peer_address(1), port, "/metrics", lambda a: ("", []), Health())
        server.set_routes(site.routes())
        server.start()
        try:
            url = f"http://{peer_address(1)}:{port}/mesh"
            page = urllib.request.urlopen(url, timeout=10).read()
            row = {
                "nodes": str(n),
                "cells": str(n * (n - 1)),
                "one view (bytes)": f"{len(to_json(views[1])):,}",
                "page (bytes)": f"{len(page):,}",
                "/mesh server side, median / max (ms)": _ms(_times(site.mesh, RUNS)),
            }
            if browser:
                with (
                    tempfile.TemporaryDirectory(prefix="pmtb-bench-") as tmp,
                    Browser(None, Path(tmp), 1600, 1200) as b,
                ):
                    b.load(url)  # the first load starts the renderer
                    first: list[float] = []
                    loaded: list[float] = []
                    for _ in range(BROWSER_RUNS):
                        b.load(url)
                        # The browser's own clock, from the navigation's start.
                        nav = b.evaluate(
                            "(function(){var e=performance.getEntriesByType('navigation')[0];"
                            "return [e.responseStart, e.loadEventEnd];})()"
                        )
                        first.append(nav[0] / 1e3)
                        loaded.append(nav[1] / 1e3)
                    cells = b.evaluate("document.querySelectorAll('td[data-s]').length")
                    assert cells == n * (n - 1), cells
                row["Chromium: first byte, median / max (ms)"] = _ms(first)
                row["Chromium: loaded, median / max (ms)"] = _ms(loaded)
            return row
        finally:
            server.stop()


def view_figures(targets: int) -> dict[str, str]:
    prober = Prober(ProbeSettings(), {})
    prober.set_targets(index(static_target(f"t{i}", f"198.18.{i // 250}.{i % 250 + 1}")
                             for i in range(targets)))  # fmt: skip
    rng = random.Random(1)
    for st in prober.states:
        for _ in range(60):
            if rng.random() < 0.01:
                st.lost()
            else:
                st.reply(rng.randrange(50_000, 500_000))
    viewer = Viewer(prober)
    took = _times(lambda: to_json(viewer.view()), RUNS)
    st = prober.states[-1]
    # The ring and the count of outcomes written to it (an int object past 256).
    per_target = sys.getsizeof(ring(60)) + sys.getsizeof(st.recent_count)
    return {
        "targets": str(targets),
        "view + JSON, median / max (ms)": _ms(took),
        "JSON (bytes)": f"{len(to_json(viewer.view())):,}",
        "ring per target at 1 s (bytes)": str(per_target),
        "rings in all (KiB)": f"{per_target * targets / 1024:.0f}",
    }


def table(rows: list[dict[str, str]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(r.get(k, "") for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="10,50,100,200")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    browser = not args.no_browser and chromium_path() is not None
    facts = machine_facts()
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[0]
    print(
        f"{facts['date_utc']}, {facts['nproc']} CPUs ({facts['cpu_model']}), commit "
        f"{facts['commit']}, load average {load} at the start"
    )
    print(table([mesh_figures(int(n), browser) for n in args.nodes.split(",")]))
    print()
    print(table([view_figures(n) for n in (200, 1000)]))


if __name__ == "__main__":
    main()
