"""The Grafana dashboard grafana/pingmesh.json: it is current with grafana/dashboard.py, its
layout and variables are sound, every query is valid PromQL (checked offline by promtool) and
reads only metrics the README documents or the shipped rules record.

`dashboard_queries()` is also used by the end-to-end test that runs every query against a real
Prometheus.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from itertools import combinations
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "pingmesh.json"
GENERATOR = ROOT / "grafana" / "dashboard.py"
README = ROOT / "README.md"
RULES = ROOT / "deploy" / "rules" / "pingmesh.rules.yml"
DS = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24

# Values of Grafana's built-in variables when a query is taken out of the dashboard.
BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
# $name, ${name}, ${name:format}, [[name]]; `$1` in label_replace is a capture group.
VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")
REGEX_MATCHER = re.compile(r'[=!]~\s*"(?:[^"\\]|\\.)*"')


# ----- reading the dashboard -------------------------------------------------------------


@cache
def _dashboard_text() -> str:
    return DASHBOARD.read_text()


def load_dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_dashboard_text())
    return doc


def all_panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included, with the panels of collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in doc.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def template_variables(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in doc.get("templating", {}).get("list", [])}


def _variable_query(var: dict[str, Any]) -> str:
    query = var.get("query", "")
    return str(query.get("query", "") if isinstance(query, dict) else query)


def variable_names(text: str) -> set[str]:
    """Names of the template variables a string refers to (capture groups like $1 excluded)."""
    names = {next(g for g in m.groups() if g) for m in VARIABLE.finditer(text)}
    return {n for n in names if not n.isdigit()}


def substitute_variables(text: str, values: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name = next(g for g in m.groups() if g)
        if name.isdigit():
            return m.group(0)
        if name not in values:
            raise KeyError(f"no value for template variable ${name} in {text!r}")
        return values[name]

    return VARIABLE.sub(one, text)


def _default_values(doc: dict[str, Any]) -> dict[str, str]:
    values = dict(BUILTINS)
    for name, var in template_variables(doc).items():
        if var.get("type") != "datasource":
            values[name] = ".*"  # the "All" value; these are used in regex matchers only
    return values


def _panel_targets(doc: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in all_panels(doc):
        for t in panel.get("targets", []):
            yield panel, t


def dashboard_queries(substitute: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every panel query, template variables replaced.

    By default `$__rate_interval` is 5m, `$__interval` 1m, `$__range` 1h and every template
    variable `.*` (its "All" value); `substitute` maps variable names (without `$`) to other
    values.
    """
    doc = load_dashboard()
    values = _default_values(doc) | (substitute or {})
    return [
        (panel["title"], substitute_variables(t["expr"], values))
        for panel, t in _panel_targets(doc)
    ]


def variable_selectors(substitute: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(variable name, series selector) of every `label_values(selector, label)` variable."""
    doc = load_dashboard()
    values = _default_values(doc) | (substitute or {})
    out = []
    for name, var in template_variables(doc).items():
        if var.get("type") != "query":
            continue
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", _variable_query(var))
        assert m, f"${name}: not a label_values(selector, label) query"
        out.append((name, substitute_variables(m.group(1), values)))
    return out


# ----- metric names in PromQL ------------------------------------------------------------

PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "start",
    "end",
}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, aggregations,
    keywords, label names, strings, numbers or durations."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+\S+", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", s):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def documented_metrics() -> dict[str, str]:
    """Metric name -> type, from the README's metric tables (`| `name` | type | ...`)."""
    out = {}
    for m in re.finditer(
        r"^\|\s*`([a-zA-Z_:][a-zA-Z0-9_:]*\*?)`\s*\|\s*"
        r"(counter|gauge|histogram|summary|untyped|)\s*\|",
        README.read_text(),
        re.MULTILINE,
    ):
        out[m.group(1)] = m.group(2)
    return out


def recorded_metrics() -> set[str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}


def is_known_metric(name: str, documented: dict[str, str], recorded: set[str]) -> bool:
    if name in recorded or name in documented or name == "up":
        return True
    if any(pattern.endswith("*") and name.startswith(pattern[:-1]) for pattern in documented):
        return True  # `process_*`
    if name.startswith("process_"):
        return True
    for suffix, types in (
        ("_bucket", {"histogram"}),
        ("_sum", {"histogram", "summary"}),
        ("_count", {"histogram", "summary"}),
        ("_total", {"counter"}),
    ):
        if name.endswith(suffix) and documented.get(name.removesuffix(suffix)) in types:
            return True
    return False


# ----- the generator ---------------------------------------------------------------------


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pingmesh_grafana_dashboard", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_json_is_current() -> None:
    assert _dashboard_text() == _generator().render(), (
        "grafana/pingmesh.json is stale: run python grafana/dashboard.py"
    )


# ----- structure ---------------------------------------------------------------------------


def test_dashboard_identity() -> None:
    doc = load_dashboard()
    assert doc["uid"] and doc["title"]
    assert 36 <= doc["schemaVersion"] <= 41
    assert doc.get("id") is None  # importable into any Grafana


def test_panel_ids_unique() -> None:
    ids = [p.get("id") for p in all_panels(load_dashboard())]
    assert all(isinstance(i, int) for i in ids), ids
    assert len(ids) == len(set(ids)), [i for i in set(ids) if ids.count(i) > 1]


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    for panel, t in _panel_targets(load_dashboard()):
        assert t.get("datasource") == DS, (panel["title"], t.get("datasource"))
    for panel in all_panels(load_dashboard()):
        assert panel.get("datasource") == DS, (panel["title"], panel.get("datasource"))
        if panel["type"] != "row":
            assert panel.get("targets"), f"{panel['title']}: no query"


def test_layout_has_no_overlaps() -> None:
    boxes = []
    for panel in all_panels(load_dashboard()):
        g = panel["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, panel["title"]
        assert g["x"] + g["w"] <= GRID_WIDTH, panel["title"]
        boxes.append((panel["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
    for (ta, ax0, ay0, ax1, ay1), (tb, bx0, by0, bx1, by1) in combinations(boxes, 2):
        overlap = ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1
        assert not overlap, f"{ta!r} overlaps {tb!r}"


def test_units_and_refids() -> None:
    for panel in all_panels(load_dashboard()):
        if panel["type"] == "row":
            continue
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"
        refs = [t["refId"] for t in panel["targets"]]
        assert all(refs) and len(refs) == len(set(refs)), (panel["title"], refs)


def test_template_variables() -> None:
    variables = template_variables(load_dashboard())
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    names = ("source_network", "source_node", "target_node", "kind", "ip_family", "namespace")
    for name in (*names, "service"):
        var = variables[name]
        assert var["type"] == "query", name
        assert var["datasource"] == DS, name
        assert var["multi"] and var["includeAll"], name
        assert _variable_query(var).startswith("label_values("), name
    assert _variable_query(variables["source_node"]) == (
        "label_values(pingmesh_probe_sent_total, source_node)"
    )


def test_every_variable_used_is_defined() -> None:
    doc = load_dashboard()
    defined = set(template_variables(doc)) | set(BUILTINS)
    strings: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, str):
            strings.append(node)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc["panels"])
    walk([_variable_query(v) for v in template_variables(doc).values()])
    used = set().union(*(variable_names(s) for s in strings))
    assert used - defined == set(), f"undefined variables: {sorted(used - defined)}"
    # and the variables a variable query uses come before it, so Grafana resolves them first
    order = list(template_variables(doc))
    for i, (name, var) in enumerate(template_variables(doc).items()):
        for dep in variable_names(_variable_query(var)):
            assert dep in order[:i], f"${name} uses ${dep}, defined after it"


def test_multi_value_variables_only_in_regex_matchers() -> None:
    """`.*` and `a|b` only mean what they should inside =~ and !~."""
    doc = load_dashboard()
    exprs = [t["expr"] for _, t in _panel_targets(doc)]
    exprs += [_variable_query(v) for v in template_variables(doc).values()]
    for expr in exprs:
        outside = REGEX_MATCHER.sub('=~""', expr)
        stray = variable_names(outside) - set(BUILTINS)
        assert not stray, f"{sorted(stray)} outside a regex matcher in {expr!r}"


def test_rates_use_rate_interval() -> None:
    for panel, t in _panel_targets(load_dashboard()):
        for m in re.finditer(r"\b(?:rate|irate|increase)\s*\(", t["expr"]):
            window = re.search(r"\[([^\]]*)\]", t["expr"][m.end() :])
            assert window and window.group(1) == "$__rate_interval", (panel["title"], t["expr"])


def test_matrices() -> None:
    """Source x target tables: instant table queries grouped into a matrix."""
    doc = load_dashboard()
    matrices = {}
    for panel in all_panels(doc):
        for tr in panel.get("transformations", []):
            if tr["id"] == "groupingToMatrix":
                matrices[panel["title"]] = (panel, tr["options"])
    exprs = set()
    for title, (panel, opts) in matrices.items():
        assert panel["type"] == "table", title
        assert opts["rowField"] == "source_node" and opts["valueField"] == "Value", title
        [t] = panel["targets"]
        assert t["instant"] and t["format"] == "table", title
        assert panel["fieldConfig"]["defaults"]["custom"]["cellOptions"]["type"] == (
            "color-background"
        ), title
        assert len(panel["fieldConfig"]["defaults"]["thresholds"]["steps"]) >= 2, title
        exprs.add(t["expr"])
    for kind in ("pod", "node"):
        for rule in ("pingmesh:probe_loss:ratio5m", "pingmesh:probe_rtt_seconds:p50_5m"):
            assert any(rule in e and f'kind="{kind}"' in e for e in exprs), (rule, kind)


# ----- queries -------------------------------------------------------------------------------


def test_dashboard_queries_substitutes() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 30
    for title, expr in queries:
        assert "$" not in expr.replace('"$1"', ""), (title, expr)
    chosen = dashboard_queries({"source_node": "node-1", "__rate_interval": "1m"})
    assert any('source_node=~"node-1"' in e for _, e in chosen)
    assert any("[1m]" in e for _, e in chosen)
    with pytest.raises(KeyError):
        substitute_variables('up{a=~"$nope"}', BUILTINS)


def test_metric_names_parser() -> None:
    expr = (
        'sum by (le, source_node) (rate(pingmesh_probe_rtt_seconds_bucket{kind=~"$kind"}'
        '[$__rate_interval])) / on (job) group_left (x) up{job="a"} or '
        'label_replace(vector(0), "r", "$1", "", "") offset 5m > bool 1e3'
    )
    assert metric_names(expr) == {"pingmesh_probe_rtt_seconds_bucket", "up"}
    assert metric_names("topk(10, pingmesh:probe_loss:ratio5m)") == {"pingmesh:probe_loss:ratio5m"}
    documented = {
        "pingmesh_x_seconds": "histogram",
        "pingmesh_y": "gauge",
        "pingmesh_z_total": "counter",
        "process_*": "",
    }
    for name in (
        "pingmesh_x_seconds_bucket",
        "pingmesh_x_seconds_count",
        "pingmesh_z_total",
        "pingmesh:r",
        "up",
        "process_cpu_seconds_total",
    ):
        assert is_known_metric(name, documented, {"pingmesh:r"}), name
    for name in ("pingmesh_y_bucket", "pingmesh_y_total", "pingmesh_w", "pingmesh:s"):
        assert not is_known_metric(name, documented, {"pingmesh:r"}), name


def test_every_metric_is_documented_or_recorded() -> None:
    documented = documented_metrics()
    assert "pingmesh_probe_rtt_seconds" in documented  # the README table was found
    recorded = recorded_metrics()
    used: dict[str, set[str]] = {}
    for title, expr in dashboard_queries():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(title)
    for name, sel in variable_selectors():
        for metric in metric_names(sel):
            used.setdefault(metric, set()).add(f"${name}")
    unknown = {
        name: sorted(titles)
        for name, titles in used.items()
        if not is_known_metric(name, documented, recorded)
    }
    assert not unknown, (
        "metrics neither in README.md's metric tables nor recorded by "
        f"deploy/rules/pingmesh.rules.yml: {unknown}"
    )


PROMTOOL = shutil.which("promtool")


def _promtool_check(tmp_path: Path, exprs: list[str]) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    rules = [{"record": f"dashboard:q{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False, width=1000
        )
    )
    return subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)"
)
def test_queries_are_valid_promql(tmp_path: Path) -> None:
    queries = dashboard_queries() + [(f"${n}", sel) for n, sel in variable_selectors()]
    proc = _promtool_check(tmp_path, [expr for _, expr in queries])
    index = "\n".join(f"dashboard:q{i}: {title}" for i, (title, _) in enumerate(queries))
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\n{index}"
    assert f"SUCCESS: {len(queries)} rules found" in proc.stdout, proc.stdout


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)"
)
def test_promtool_rejects_bad_promql(tmp_path: Path) -> None:
    """The check above can fail: an unbalanced parenthesis and a raw variable are errors."""
    assert _promtool_check(tmp_path, ["sum(rate(up[5m])"]).returncode != 0
    assert _promtool_check(tmp_path, ["rate(up[$__rate_interval])"]).returncode != 0


# A small mesh of three nodes for `promtool test rules`: a loses half its probes to b (pod
# network), c answers nobody, b cannot reach the Kubernetes Service, c's exporter is down.
_JOB = 'job="pingmesh-exporter"'
_MESH_SERIES = [
    *[
        (
            f'pingmesh_target_up{{{_JOB},instance="{s}:9871",source_node="{s}",target_node="{t}",'
            f'kind="pod",ip_family="{fam}"}}',
            v,
        )
        for s, t, fam, v in [
            ("a", "b", "ipv4", "1"),
            ("a", "b", "ipv6", "1"),
            ("a", "c", "ipv4", "0"),
            ("b", "a", "ipv4", "1"),
            ("b", "c", "ipv4", "0"),
            ("c", "a", "ipv4", "1"),
        ]
    ],
    *[
        (f'pingmesh_mesh_expected_probers{{{_JOB},instance="{n}:9871"}}', v)
        for n, v in [("a", "2"), ("b", "1"), ("c", "3")]
    ],
    *[
        (
            f'pingmesh_probe_{what}_total{{{_JOB},instance="a:9871",source_node="a",'
            f'target_node="{t}",kind="pod",ip_family="ipv4"}}',
            v,
        )
        for what, t, v in [
            ("sent", "b", "0+60x15"),
            ("received", "b", "0+30x15"),
            ("sent", "c", "0+60x15"),
            ("received", "c", "0+60x15"),
        ]
    ],
    *[
        (
            f'pingmesh_service_up{{{_JOB},instance="{n}:9871",source_node="{n}",'
            f'namespace="default",service="kubernetes",ip_family="ipv4",port="443",'
            f'protocol="tcp"}}',
            v,
        )
        for n, v in [("a", "1"), ("b", "0")]
    ],
    *[(f'up{{{_JOB},instance="{n}:9871"}}', v) for n, v in [("a", "1"), ("b", "1"), ("c", "0")]],
    # Full-size probes (every 10 s): a->b passes them at 1500 bytes; a->c, whose small echoes
    # all pass, loses every one without a word: a black hole.
    *[
        (
            f'pingmesh_{what}{{{_JOB},instance="a:9871",source_node="a",'
            f'target_node="{t}",kind="pod",ip_family="ipv4"}}',
            v,
        )
        for what, t, v in [
            ("mtu_probe_sent_total", "b", "0+6x15"),
            ("mtu_probe_received_total", "b", "0+6x15"),
            ("path_mtu_bytes", "b", "1500"),
            ("mtu_probe_sent_total", "c", "0+6x15"),
            ("mtu_probe_received_total", "c", "0+0x15"),
        ]
    ],
]
# (panel title, query index in the panel) -> expected samples at 10m
_EXPECTED: dict[tuple[str, int], list[tuple[str, float]]] = {
    ("Probers per node: expected and probing", 0): [
        ('{target_node="a"}', 2),
        ('{target_node="b"}', 1),
        ('{target_node="c"}', 3),
    ],
    ("Probers per node: expected and probing", 1): [  # distinct sources, not families
        ('{target_node="a"}', 2),
        ('{target_node="b"}', 1),
        ('{target_node="c"}', 2),
    ],
    ("Overall loss", 0): [("{}", 0.25)],
    ("Pairs above 5% loss", 0): [("{}", 1)],
    ("Pod network loss (5m)", 0): [
        ('{source_node="a",target_node="b"}', 0.5),
        ('{source_node="a",target_node="c"}', 0),
    ],
    ("Nodes unreachable from most peers", 0): [("{}", 1)],
    ("Services failing somewhere", 0): [("{}", 1)],
    ("Service reachability by node", 0): [
        (
            f'{{source_node="{n}",namespace="default",service="kubernetes",'
            f'svc="default/kubernetes"}}',
            v,
        )
        for n, v in [("a", 1), ("b", 0)]
    ],
    ("Exporters down", 0): [("{}", 1)],
    ("Probe errors by reason", 0): [('{reason="none"}', 0)],
    ("Full-size probe loss (5m)", 0): [
        ('{source_node="a",target_node="b"}', 0),
        ('{source_node="a",target_node="c"}', 1),
    ],
    ("Path MTU", 0): [('{source_node="a",target_node="b"}', 1500)],
    ("Top 10 silent full-size loss", 0): [
        (
            'pingmesh:mtu_probe_loss:ratio5m{source_node="a",target_node="c",kind="pod",ip_family="ipv4"}',
            1,
        )
    ],
}


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)"
)
def test_key_queries_evaluate_as_intended(tmp_path: Path) -> None:
    """The joins and fallbacks give the intended answers on a small mesh (promtool's
    offline evaluator, with the shipped recording rules loaded)."""
    assert PROMTOOL is not None
    by_title: dict[str, list[str]] = {}
    for title, expr in dashboard_queries():
        by_title.setdefault(title, []).append(expr)
    tests = [
        {
            "expr": by_title[title][i],
            "eval_time": "10m",
            "exp_samples": [{"labels": labels, "value": value} for labels, value in samples],
        }
        for (title, i), samples in _EXPECTED.items()
    ]
    doc = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": s, "values": v if "x" in v else f"{v}x15"} for s, v in _MESH_SERIES
                ],
                "promql_expr_test": tests,
            }
        ],
    }
    path = tmp_path / "dashboard.test.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=1000))
    proc = subprocess.run(
        [PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# Prometheus 3's promtool, built by tests/support/cluster/build-components.sh: it reads
# native-histogram input series (`{{schema:0 ...}}`), which Debian's 2.42 cannot.
PROMTOOL_3 = (
    Path(os.environ.get("PINGMESH_CACHE", "/var/cache/pingmesh-exporter")) / "bin" / "promtool"
)
SERVICE_HISTOGRAMS = ("pingmesh_service_connect_seconds", "pingmesh_service_dns_query_seconds")
_SVC_LABELS = (
    'source_node="a",namespace="default",service="kubernetes",ip_family="ipv4",port="443",'
    'protocol="tcp"'
)
# Every check takes 3 ms: native bucket -8 of schema 0, (1/512 s, 1/256 s], interpolated on a
# log scale; classic bucket (1.6 ms, 3.2 ms], interpolated linearly. In ns, by quantile.
_NATIVE_NS = {"0.5": 2762136, "0.99": 3879268}
_CLASSIC_NS = {"0.5": 2400000, "0.99": 3184000}


def _service_input(native: bool, classic: bool) -> list[dict[str, str]]:
    series = []
    for name in SERVICE_HISTOGRAMS:
        if native:
            zero, step = (
                f"{{{{schema:0 sum:{s} count:{n} buckets:[{n}] offset:-8}}}}"
                for s, n in ((0, 0), (0.18, 60))
            )
            series.append({"series": f"{name}{{{_SVC_LABELS}}}", "values": f"{zero}+{step}x20"})
        if classic:
            for le, values in (("0.0016", "0x20"), ("0.0032", "0+60x20"), ("+Inf", "0+60x20")):
                series.append(
                    {"series": f'{name}_bucket{{{_SVC_LABELS},le="{le}"}}', "values": values}
                )
    return series


@pytest.mark.skipif(not PROMTOOL_3.exists(), reason=f"{PROMTOOL_3} is not built")
def test_service_histogram_queries_on_native_classic_and_both(tmp_path: Path) -> None:
    """The Service histogram panels (which only a cluster feeds: the netns test of native
    histograms covers the RTT ones) answer on a Prometheus keeping native histograms only,
    classic buckets only, or both, and where both are kept with the native answer alone."""
    queries = [
        expr for _, expr in dashboard_queries() if metric_names(expr) & set(SERVICE_HISTOGRAMS)
    ]
    assert len(queries) == 3, queries
    tests = []
    for native, classic in ((True, False), (False, True), (True, True)):
        cases = []
        for expr in queries:
            m = re.match(r"histogram_quantile\(([0-9.]+),", expr)
            assert m, expr
            want = (_NATIVE_NS if native else _CLASSIC_NS)[m.group(1)]
            cases.append(
                {
                    "expr": f"round(({expr}) * 1e9)",
                    "eval_time": "10m",
                    "exp_samples": [
                        {"labels": '{namespace="default",service="kubernetes"}', "value": want}
                    ],
                }
            )
        tests.append(
            {
                "interval": "1m",
                "input_series": _service_input(native, classic),
                "promql_expr_test": cases,
            }
        )
    path = tmp_path / "service-histograms.test.yml"
    doc = {"rule_files": [], "evaluation_interval": "1m", "tests": tests}
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=1000))
    proc = subprocess.run(
        [str(PROMTOOL_3), "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
