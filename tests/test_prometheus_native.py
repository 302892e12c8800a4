"""Native histograms in a real Prometheus: 3.16 (built from the Go module proxy) and Debian's
2.42, each scraping one exporter that probes a 3 ms responder path (IPv4 and IPv6) in the
namespace test bed.

Each version runs one Prometheus per way of scraping, side by side, all on the same exporter:

- `text`: no native histograms, the text format, classic buckets only (the default);
- `native`: native histograms only (3.x `scrape_native_histograms: true`; 2.42
  `--enable-feature=native-histograms`, which then keeps no classic buckets);
- `both`: native and classic (3.x only, `always_scrape_classic_histograms: true`; 2.42 has no
  way to keep both, `scrape_classic_histograms` came with 2.45).

Shown: the RTT series is a native histogram; its median lies within one classic bucket of the
classic answer and in the native bucket of the 3 ms path; the series per target fall from 25
to 4; the shipped recording rules and the dashboard's histogram queries answer on every kind
of Prometheus, and where both kinds are kept the native side answers alone. The rules' 5m
windows are shrunk to 30s, so a minute of scraping fills them.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.histogram import bucket_index, upper_bound

# The shared test infrastructure, in one block (it is moving to tests/support/).
from tests.support.exporter_proc import ExporterProcess, http_get
from tests.support.netbed import Bed, Namespace, Profile
from tests.support.netbed_fixtures import ensure_bed_possible, skip_or_fail
from tests.support.rulescenarios import EMPTY_WHEN_HEALTHY, shrink_starting
from tests.test_dashboard import dashboard_queries, metric_names

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "rules" / "pingmesh.rules.yml"
CACHE_BIN = Path(os.environ.get("PINGMESH_CACHE", "/var/cache/pingmesh-exporter")) / "bin"
PROMETHEUS = {"3.16": CACHE_BIN / "prometheus", "2.42": Path("/usr/bin/prometheus")}
MODES = {"3.16": ("text", "native", "both"), "2.42": ("text", "native")}

WINDOW = "30s"  # the rate window of the test's queries and of the shrunk rules
INTERVAL = "20ms"  # the exporter's probe interval: 50 RTTs a second per target
SCHEMA = 3  # the exporter's default --probe.rtt-native-schema
DEFAULT_BUCKETS = [25e-6 * 2**i for i in range(19)]  # the README's "25 us doubling to 6.5536 s"
DELAY = 0.003
RTT = "pingmesh_probe_rtt_seconds"
HISTOGRAMS = {RTT, "pingmesh_service_connect_seconds", "pingmesh_service_dns_query_seconds"}
SERVICE_HISTOGRAMS = HISTOGRAMS - {RTT}
READY_TIMEOUT = 60.0
FILL_TIMEOUT = 120.0


# ----- a Prometheus in the bed ---------------------------------------------------------------


def free_port(ns: Namespace) -> int:
    with ns.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def shrunk_rules() -> str:
    text = re.sub(r"\[5m\]", f"[{WINDOW}]", RULES.read_text())
    # An exporter's quiet start cut to one window: the fixture's fill wait is longer, so the
    # bed's exporter is past it before any rule is looked at.
    text = shrink_starting(text, 30)
    return re.sub(r"for: \d+m", "for: 5s", text)


def scrape_config(version: str, mode: str, exporter_port: int) -> dict[str, Any]:
    job: dict[str, Any] = {
        "job_name": "pingmesh-exporter",
        "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
        # The static targets dressed as a mesh, the IPv4 one as a pod, the IPv6 one as a node,
        # so the rules (kind=~"pod|node", by target_node) and the panels of both networks
        # select them as they select a cluster's.
        "metric_relabel_configs": [
            *(
                {
                    "source_labels": ["kind", "ip_family"],
                    "regex": f"static;{family}",
                    "target_label": "kind",
                    "replacement": kind,
                }
                for family, kind in (("ipv4", "pod"), ("ipv6", "node"))
            ),
            {"source_labels": ["target"], "target_label": "target_node"},
            {"target_label": "source_node", "replacement": "bed-src"},
        ],
    }
    if version == "3.16" and mode in ("native", "both"):
        job["scrape_native_histograms"] = True
        job["always_scrape_classic_histograms"] = mode == "both"
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [job],
    }


@dataclass
class Prom:
    version: str
    mode: str
    ns: Namespace
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    def start(self, exporter_port: int) -> None:
        self.workdir.mkdir(parents=True)
        (self.workdir / "rules.yml").write_text(shrunk_rules())
        config = scrape_config(self.version, self.mode, exporter_port)
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [
            str(PROMETHEUS[self.version]),
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        if self.version == "2.42" and self.mode == "native":
            argv.append("--enable-feature=native-histograms")
        self._log = (self.workdir / "prometheus.log").open("wb")
        self.proc = self.ns.popen(
            argv, cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        text = (self.workdir / "prometheus.log").read_text(errors="replace")
        return text[-3000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        code, _, body = http_get(self.ns, self.port, f"{path}?{query}" if query else path)
        doc = json.loads(body) if body.startswith(b"{") else {"status": body.decode()}
        assert code == 200 and doc.get("status") == "success", (self.name, path, params, doc)
        return doc["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        result: list[dict[str, Any]] = self.get("/api/v1/query", **params)["result"]
        return result

    def series(self, match: str) -> list[dict[str, str]]:
        found: list[dict[str, str]] = self.get("/api/v1/series", **{"match[]": match})
        return found

    @property
    def name(self) -> str:
        return f"prometheus {self.version} {self.mode}"


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout:.0f}s")
        time.sleep(0.5)


def wait_answered(p: Prom, exprs: list[tuple[str, str]], timeout: float) -> None:
    """Until every expression answers; then the ones that do not are the failure."""
    deadline = time.monotonic() + timeout
    while _empty(p, exprs) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _empty(p, exprs) == [], f"{p.name}: no data after {timeout:.0f}s"


def _ready(p: Prom) -> bool:
    assert p.proc is not None
    if p.proc.poll() is not None:
        raise AssertionError(f"{p.name} exited with {p.proc.returncode}:\n{p.log()}")
    try:
        code, _, _ = http_get(p.ns, p.port, "/-/ready", timeout=2)
    except OSError:
        return False
    return code == 200


def _filled(p: Prom, expr: str) -> bool:
    return len(p.query(expr)) == 2


@dataclass
class Mesh:
    targets: list[str]
    proms: dict[tuple[str, str], Prom]
    at: float  # the instant every comparison is made at


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    ensure_bed_possible()
    missing = [str(p) for p in PROMETHEUS.values() if not p.exists()]
    if missing:
        skip_or_fail(
            f"not installed: {missing} (tests/support/cluster/build-components.sh, Debian)"
        )
    root = tmp_path_factory.mktemp("prometheus-native")
    proms: dict[tuple[str, str], Prom] = {}
    with Bed() as bed:
        dst = bed.add_dst("delay", kernel_echo=False)
        v4, v6 = dst.add_targets(1, 1)
        bed.start_responder(
            dst,
            [
                Profile(prefix=f"{v4}/32", delay_ms=DELAY * 1e3),
                Profile(prefix=f"{v6}/128", delay_ms=DELAY * 1e3),
            ],
        )
        exporter_port = free_port(bed.src)
        args = ["--probe.interval", INTERVAL, "--target", v4, "--target", v6]
        with ExporterProcess(bed.src, args, port=exporter_port) as exporter:
            exporter.wait_ready()
            try:
                for version, modes in MODES.items():
                    for mode in modes:
                        p = Prom(version, mode, bed.src, free_port(bed.src), root / version / mode)
                        proms[(version, mode)] = p
                        p.start(exporter_port)
                for p in proms.values():
                    wait_for(partial(_ready, p), READY_TIMEOUT, f"{p.name} ready")
                # Every Prometheus has a full query window of samples of both targets.
                full = (
                    f'count_over_time(pingmesh_probe_sent_total{{target=~"{v4}|{v6}"}}'
                    f"[{WINDOW}]) >= 25"
                )
                for p in proms.values():
                    wait_for(partial(_filled, p, full), FILL_TIMEOUT, f"{p.name} fill")
                yield Mesh([v4, v6], proms, time.time())
            finally:
                for p in proms.values():
                    p.stop()


BY_VERSION = pytest.mark.parametrize("version", list(MODES))


def family_of(target: str) -> str:
    return "ipv6" if ":" in target else "ipv4"


# ----- (a) a native histogram, and its quantile -----------------------------------------------


def _one(result: list[dict[str, Any]], what: str) -> dict[str, Any]:
    assert len(result) == 1, (what, result)
    return result[0]


def _quantiles(mesh: Mesh, version: str, target: str) -> tuple[float, float]:
    """(native, classic) median RTT of one target over the window, both at one instant."""
    sel = f'{{target="{target}"}}'
    native_prom = mesh.proms[(version, "native")]
    classic_prom = mesh.proms[(version, "both" if version == "3.16" else "text")]
    native = _one(
        native_prom.query(f"histogram_quantile(0.5, rate({RTT}{sel}[{WINDOW}]))", mesh.at),
        "native quantile",
    )
    classic = _one(
        classic_prom.query(f"histogram_quantile(0.5, rate({RTT}_bucket{sel}[{WINDOW}]))", mesh.at),
        "classic quantile",
    )
    return float(native["value"][1]), float(classic["value"][1])


def classic_bucket(value: float) -> int:
    """Index of the default classic bucket (le bounds) that holds value."""
    return next((i for i, le in enumerate(DEFAULT_BUCKETS) if value <= le), len(DEFAULT_BUCKETS))


@BY_VERSION
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_rtt_is_native_and_its_median_agrees_with_the_classic_one(
    mesh: Mesh, version: str, family: str
) -> None:
    [target] = [t for t in mesh.targets if family_of(t) == family]
    for mode in ("native", "both"):
        if (version, mode) not in mesh.proms:
            continue
        [sample] = mesh.proms[(version, mode)].query(f'{RTT}{{target="{target}"}}', mesh.at)
        assert "histogram" in sample and "value" not in sample, (mode, sample)
        assert float(sample["histogram"][1]["count"]) > 100, sample
    native, classic = _quantiles(mesh, version, target)
    print(f"{version} {family}: p50 native {native * 1e3:.4f} ms, classic {classic * 1e3:.4f} ms")
    # Within one classic bucket of the classic answer: the same bucket or a neighbour.
    assert abs(classic_bucket(native) - classic_bucket(classic)) <= 1, (native, classic)
    # And in a native bucket of the 3 ms path: the true median is at least the responder's
    # 3 ms and at most 3.2 ms (test_realnet's bound), so the estimate lies in a schema-3
    # bucket that overlaps [3 ms, 3.2 ms].
    low = upper_bound(bucket_index(DELAY, SCHEMA) - 1, SCHEMA)
    high = upper_bound(bucket_index(0.0032, SCHEMA), SCHEMA)
    assert low < native <= high, (native, low, high)


# ----- (b) series per target ------------------------------------------------------------------


def series_per_target(p: Prom, target: str) -> list[str]:
    found = p.series(f'{{__name__=~"pingmesh_probe_.*|pingmesh_target_up", target="{target}"}}')
    return sorted(s["__name__"] + (f'{{le="{s["le"]}"}}' if "le" in s else "") for s in found)


@BY_VERSION
def test_series_per_target(mesh: Mesh, version: str) -> None:
    errors = "pingmesh_probe_errors_total"
    for target in mesh.targets:
        counts, per_reason = {}, {}
        for mode in MODES[version]:
            names = series_per_target(mesh.proms[(version, mode)], target)
            counts[mode] = len(names)
            # One series per error reason seen, the same in every format; a clean path has
            # none, but a rare send failure must not make the figures wrong.
            per_reason[mode] = names.count(errors)
            if mode == "native":
                assert not [n for n in names if n.startswith(f"{RTT}_")], names
                assert names.count(RTT) == 1, names
        print(f"{version} {family_of(target)}: series per target {counts}, errors {per_reason}")
        base = {mode: counts[mode] - per_reason[mode] for mode in counts}
        # 20 classic buckets (19 bounds and +Inf), _sum, _count, sent, received, up.
        assert base["text"] == len(DEFAULT_BUCKETS) + 1 + 2 + 3 == 25, counts
        assert base["native"] == 4, counts  # RTT, sent, received, up
        assert counts["native"] <= 6, counts
        if "both" in counts:
            assert base["both"] == base["text"] + 1, counts  # and the native RTT


# ----- (c) the rules and the dashboard ----------------------------------------------------------


def recording_rules() -> list[tuple[str, str]]:
    doc = yaml.safe_load(shrunk_rules())
    return [(r["record"], r["expr"]) for g in doc["groups"] for r in g["rules"] if "record" in r]


def needs_a_cluster(expr: str) -> bool:
    """Service checks, and TCP probes to peer pods, run only with Kubernetes discovery: the
    bed has none."""
    names = metric_names(expr)
    return any(n.startswith(("pingmesh_service_", "pingmesh_tcp_")) for n in names) or any(
        n.startswith(tuple(SERVICE_HISTOGRAMS)) for n in names
    )


def touches_a_histogram(expr: str) -> bool:
    names = metric_names(expr)
    return any(n.startswith(tuple(HISTOGRAMS)) or n.startswith("pingmesh:probe_rtt") for n in names)


def _empty(p: Prom, exprs: list[tuple[str, str]]) -> list[str]:
    return [what for what, expr in exprs if not p.query(expr)]


@BY_VERSION
def test_rules_and_dashboard_answer_on_every_kind_of_prometheus(mesh: Mesh, version: str) -> None:
    rules = [
        (record, expr)
        for record, expr in recording_rules()
        if not needs_a_cluster(expr) and record not in EMPTY_WHEN_HEALTHY
    ]
    assert len(rules) >= 6 and any("histogram_quantile" in e for _, e in rules)
    panels = [
        (title, expr)
        for title, expr in dashboard_queries({"__rate_interval": WINDOW})
        if touches_a_histogram(expr) and not needs_a_cluster(expr)
    ]
    assert len(panels) >= 4, panels
    for mode in MODES[version]:
        p = mesh.proms[(version, mode)]
        wait_answered(p, rules, 60)
        wait_answered(p, [(r, r) for r, _ in rules], 30)  # and Prometheus recorded them
        wait_answered(p, panels, 30)
        for record in ("pingmesh:probe_rtt_seconds:p50_5m", "pingmesh:probe_rtt_seconds:p99_5m"):
            got = p.query(record)
            # One series per pair, never one from each side of the `or`.
            assert sorted(r["metric"]["target_node"] for r in got) == sorted(mesh.targets), got
            assert all(0.002 < float(r["value"][1]) < 0.1 for r in got), got


def test_both_kept_the_native_side_answers(mesh: Mesh) -> None:
    """Where Prometheus keeps both, the rules' quantile is the native one, not the classic."""
    p = mesh.proms[("3.16", "both")]
    [(_, expr)] = [(r, e) for r, e in recording_rules() if r == "pingmesh:probe_rtt_seconds:p50_5m"]
    native_half, classic_half = (part.strip() for part in expr.split(" or "))
    both = {r["metric"]["target_node"]: float(r["value"][1]) for r in p.query(expr, mesh.at)}
    native = {
        r["metric"]["target_node"]: float(r["value"][1]) for r in p.query(native_half, mesh.at)
    }
    classic = {
        r["metric"]["target_node"]: float(r["value"][1]) for r in p.query(classic_half, mesh.at)
    }
    assert set(both) == set(native) == set(classic) == set(mesh.targets)
    assert both == native, (both, native, classic)
    assert all(not math.isclose(native[t], classic[t]) for t in mesh.targets), (native, classic)
