"""Writes grafana/pingmesh.json, the Grafana dashboard of pingmesh-exporter, from this file.

Run `python grafana/dashboard.py` after changing it; tests/test_dashboard.py fails when the JSON
is stale. Panels read the recording rules of deploy/rules/pingmesh.rules.yml where one exists
and compute the rest with `$__rate_interval`.

The dashboard is built with grafana-foundation-sdk, Grafana's typed builders (the `build`
extra): a misspelt option or a value of the wrong kind fails here, not in Grafana. The few
settings the SDK does not model (the table's per-field options, the dashboard's `__requires`
and schema version) are said where they are set.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Self

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, statushistory, table
from grafana_foundation_sdk.builders import stat as statpanel
from grafana_foundation_sdk.builders import timeseries as tspanel
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

OUT = Path(__file__).resolve().parent / "pingmesh.json"
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
JOB = 'job="pingmesh-exporter"'
WIDTH = 24
# Grafana 10.0's dashboard schema; the SDK writes its own oldest (36) unless told.
SCHEMA_VERSION = 39

Panel = Builder[dm.Panel]
Query = prometheus.Dataquery
Steps = tuple[tuple[str, float | None], ...]

# Selectors shared by the panels; multi-value variables only ever appear in regex matchers.
# source_network: pod-network and host-network exporters (deploy/overlays/host-network)
# probe the same node IPs from one node; the variable picks either path or both.
PAIR = (
    'source_node=~"$source_node", source_network=~"$source_network", '
    'target_node=~"$target_node", kind=~"$kind", ip_family=~"$ip_family"'
)
KIND_FAMILY = 'kind=~"$kind", ip_family=~"$ip_family", source_network=~"$source_network"'
SVC = (
    'namespace=~"$namespace", service=~"$service", source_node=~"$source_node", '
    'ip_family=~"$ip_family"'
)
SVC_EP = 'namespace=~"$namespace", service=~"$service", ip_family=~"$ip_family"'


def _steps(*steps: tuple[str, float | None]) -> Steps:
    return steps


def thresholds(steps: Steps) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(color=color, value=value) for color, value in steps])
    )


LOSS_STEPS = _steps(("green", None), ("yellow", 0.001), ("orange", 0.01), ("red", 0.05))
RTT_P50_STEPS = _steps(("green", None), ("yellow", 0.002), ("red", 0.01))
RTT_P99_STEPS = _steps(("green", None), ("yellow", 0.01), ("red", 0.1))
UP_MAPPINGS: list[dm.ValueMapping] = [
    dm.ValueMap(
        options={
            "0": dm.ValueMappingResult(text="down", color="red", index=0),
            "1": dm.ValueMappingResult(text="up", color="green", index=1),
        }
    )
]
UP_STEPS = _steps(("red", None), ("green", 1))


def target(expr: str, legend: str = "", *, table: bool = False) -> Query:
    """One Prometheus query; `table` makes it an instant query in table format."""
    q = Query().datasource(DS).expr(expr)
    if table:
        return q.format(pm.PromQueryFormat.TABLE).instant()
    return q.format(pm.PromQueryFormat.TIME_SERIES).range().legend_format(legend or "__auto")


def _queries(panel: Any, queries: list[Query]) -> None:
    """Each query of a panel gets its refId here, in order."""
    for ref, q in zip("ABCDEFGH", queries, strict=False):
        panel.with_target(q.ref_id(ref))


def quantile(q: str, histogram: str, by: str, sel: str = SVC) -> str:
    """A quantile of a histogram over the rate interval, from its native form where Prometheus
    keeps one and from its classic buckets where it does not (as the shipped rules do); where
    it keeps both, `or` drops the classic answer for the same labels."""
    window = "[$__rate_interval]"
    return (
        f"histogram_quantile({q}, sum by ({by}) (rate({histogram}{{{sel}}}{window}))) or "
        f"histogram_quantile({q}, sum by (le, {by}) (rate({histogram}_bucket{{{sel}}}{window})))"
    )


def timeseries(
    title: str,
    targets: list[Query],
    unit: str,
    *,
    description: str = "",
    stack: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    steps: Steps | None = None,
) -> Panel:
    p = (
        tspanel.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC))
        .draw_style(cm.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(10)
        .show_points(cm.VisibilityMode.NEVER)
        .span_nulls(False)
        .stacking(
            cb.StackingConfig()
            .mode(cm.StackingMode.NORMAL if stack else cm.StackingMode.NONE)
            .group("A")
        )
        .legend(
            cb.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        )
        .tooltip(
            cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)
        )
    )
    if minimum is not None:
        p.min(minimum)
    if maximum is not None:
        p.max(maximum)
    if steps is not None:
        p.thresholds(thresholds(steps))
    _queries(p, targets)
    return p


def stat(
    title: str,
    expr: str,
    unit: str,
    steps: Steps,
    *,
    description: str = "",
    decimals: int | None = None,
    texts: dict[str, str] | None = None,
) -> Panel:
    p = (
        statpanel.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .thresholds(thresholds(steps))
        .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.AREA)
        .text_mode(cm.BigValueTextMode.VALUE)
        .justify_mode(cm.BigValueJustifyMode.AUTO)
        .orientation(cm.VizOrientation.AUTO)
    )
    if decimals is not None:
        p.decimals(decimals)
    if texts:  # a value shown as words: what it means beats the number
        p.mappings(
            [
                dm.ValueMap(
                    options={
                        v: dm.ValueMappingResult(text=t, index=i)
                        for i, (v, t) in enumerate(texts.items())
                    }
                )
            ]
        )
    _queries(p, [target(expr, title)])
    return p


class Table(table.Panel):
    """The table panel with its per-field options (alignment, cell type), which the SDK's
    table builder leaves out although its models (TableFieldOptions) have them."""

    def field_options(self, options: cm.TableFieldOptions) -> Self:
        fc = self._internal.field_config
        if fc is None:
            fc = self._internal.field_config = dm.FieldConfigSource()
        if fc.defaults is None:
            fc.defaults = dm.FieldConfig()
        fc.defaults.custom = options
        return self


def _table(title: str, expr: str, unit: str, steps: Steps, description: str) -> Table:
    p = (
        Table()
        .title(title)
        .description(description)
        .unit(unit)
        .thresholds(thresholds(steps))
        .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
        .show_header(True)
        .cell_height(cm.TableCellHeight.SM)
        .footer(cb.TableFooterOptions().show(False))
    )
    _queries(p, [target(expr, table=True)])
    return p


def matrix(
    title: str,
    expr: str,
    unit: str,
    steps: Steps,
    *,
    row: str,
    column: str,
    description: str = "",
    mappings: list[dm.ValueMapping] | None = None,
    decimals: int | None = None,
) -> Panel:
    """A table with one row per `row` label value and one column per `column` label value,
    cells coloured by thresholds (the "Grouping to matrix" transformation)."""
    header = f"{row}\\{column}"  # the name the transformation gives the row-label column
    p = (
        _table(title, expr, unit, steps, description)
        .mappings(mappings or [])
        .field_options(
            cm.TableFieldOptions(
                align=cm.FieldTextAlignment.CENTER,
                cell_options=cm.TableColoredBackgroundCellOptions(
                    mode=cm.TableCellBackgroundDisplayMode.BASIC
                ),
            )
        )
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="groupingToMatrix",
                options={
                    "columnField": column,
                    "rowField": row,
                    "valueField": "Value",
                    "emptyValue": "empty",
                },
            )
        )
        .override_by_name(
            header,
            [
                dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "auto"}),
                dm.DynamicConfigValue(id_val="custom.align", value="left"),
                dm.DynamicConfigValue(id_val="displayName", value=row),
            ],
        )
        .sort_by([cb.TableSortByFieldState().display_name(row).desc(False)])
    )
    if decimals is not None:
        p.decimals(decimals)
    return p


def toplist(
    title: str,
    expr: str,
    unit: str,
    steps: Steps,
    value_name: str,
    *,
    description: str = "",
) -> Panel:
    """A table of an instant query's series, worst first."""
    return (
        _table(title, expr, unit, steps, description)
        .field_options(
            cm.TableFieldOptions(
                align=cm.FieldTextAlignment.AUTO, cell_options=cm.TableAutoCellOptions()
            )
        )
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True, "__name__": True},
                    "indexByName": {},
                    "renameByName": {"Value": value_name},
                },
            )
        )
        .override_by_name(
            value_name,
            [dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"})],
        )
        .sort_by([cb.TableSortByFieldState().display_name(value_name).desc(True)])
    )


def status_history(title: str, expr: str, legend: str, *, description: str = "") -> Panel:
    p = (
        statushistory.Panel()
        .title(title)
        .description(description)
        .unit("short")
        .thresholds(thresholds(UP_STEPS))
        .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
        .mappings(UP_MAPPINGS)
        .line_width(0)
        .fill_opacity(80)
        .show_value(cm.VisibilityMode.NEVER)
        .row_height(0.9)
        .col_width(0.9)
        .legend(
            cb.VizLegendOptions()
            .show_legend(False)
            .display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM)
        )
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.SINGLE).sort(cm.SortOrder.NONE))
    )
    _queries(p, [target(expr, legend)])
    return p


class Layout:
    """Assigns ids and grid positions: panels fill a line left to right, then wrap. Every
    panel gets an explicit position (the SDK's own placement wraps differently)."""

    def __init__(self) -> None:
        self.items: list[Panel | db.Row] = []
        self.x = 0
        self.y = 0
        self.line_height = 0

    def _newline(self) -> None:
        self.y += self.line_height
        self.x = 0
        self.line_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.items.append(
            db.Row(title)
            .id(len(self.items) + 1)
            .collapsed(False)
            .datasource(DS)
            .grid_pos(dm.GridPos(x=0, y=self.y, w=WIDTH, h=1))
        )
        self.y += 1

    def add(self, panel: Any, w: int, h: int) -> None:
        if self.x + w > WIDTH:
            self._newline()
        panel.id(len(self.items) + 1).datasource(DS).grid_pos(
            dm.GridPos(x=self.x, y=self.y, w=w, h=h)
        )
        self.items.append(panel)
        self.x += w
        self.line_height = max(self.line_height, h)

    def into(self, dash: db.Dashboard) -> db.Dashboard:
        for item in self.items:
            if isinstance(item, db.Row):
                dash.with_row(item)
            else:
                dash.with_panel(item)
        return dash


def _overview(lay: Layout) -> None:
    lay.row("Mesh overview")
    count_steps = _steps(("green", None), ("red", 1))
    lay.add(
        stat(
            "Targets probed",
            f"sum(pingmesh_targets{{{KIND_FAMILY}}})",
            "short",
            _steps(("blue", None)),
            description="Targets all exporters probe, of the selected kinds and families.",
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Overall loss",
            f"1 - sum(pingmesh:probe_received:rate5m{{{KIND_FAMILY}}})\n"
            f"  / sum(pingmesh:probe_sent:rate5m{{{KIND_FAMILY}}})",
            "percentunit",
            LOSS_STEPS,
            decimals=2,
            description="Lost probes over sent probes, all pairs, last 5 minutes.",
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Pairs above 5% loss",
            f"count(pingmesh:probe_loss:ratio5m{{{KIND_FAMILY}}} > 0.05) or vector(0)",
            "short",
            count_steps,
            description="Source and target pairs the loss alerts consider.",
        ),
        3,
        4,
    )
    lay.add(
        stat(
            "Nodes unreachable from most peers",
            'count(pingmesh:target_reachable_peers:ratio{kind="pod"} < 0.5) or vector(0)',
            "short",
            count_steps,
            description="Nodes whose exporter pod answers fewer "
            "than half of the peers probing it (pod network).",
        ),
        3,
        4,
    )
    lay.add(
        stat(
            "Services failing somewhere",
            f"count(min by (namespace, service) (pingmesh_service_up{{{SVC}}}) == 0) or vector(0)",
            "short",
            count_steps,
            description="Services at least one node cannot reach through the ClusterIP.",
        ),
        3,
        4,
    )
    lay.add(
        stat(
            "Exporters down",
            f"count(up{{{JOB}}} == 0) or vector(0)",
            "short",
            count_steps,
            description="Exporter pods Prometheus cannot scrape.",
        ),
        3,
        4,
    )
    lay.add(
        stat(
            "Peer nodes",
            f"max(pingmesh_mesh_peers{{{JOB}}})",
            "short",
            _steps(("orange", None), ("green", 1)),
            texts={"0": "one node"},
            description="Nodes with an exporter each exporter can probe, besides its own "
            '(the most any exporter sees). "one node": a one-node cluster (minikube, kind), '
            "or every other exporter is gone: there is no pod network to measure, so the pod "
            "network panels stay empty and each exporter probes only its own node's IPs "
            "(the node network matrix's diagonal) and the Services. A second node forms the "
            "mesh without a restart.",
        ),
        4,
        4,
    )


def _matrices(lay: Layout) -> None:
    for kind, network in (("pod", "Pod network"), ("node", "Node network")):
        lay.row(f"{network}: source x target")
        sel = (
            f'kind="{kind}", source_node=~"$source_node", target_node=~"$target_node", '
            'ip_family=~"$ip_family", source_network=~"$source_network"'
        )
        lay.add(
            matrix(
                f"{network} loss (5m)",
                f"max by (source_node, target_node) (pingmesh:probe_loss:ratio5m{{{sel}}})",
                "percentunit",
                LOSS_STEPS,
                row="source_node",
                column="target_node",
                decimals=1,
                description="Rows: the probing node. Columns: the probed "
                "node. The worse IP family of each pair."
                + (
                    " The diagonal: each node's own IPs from its exporter pod (--mesh.own-node)."
                    if kind == "node"
                    else ""
                ),
            ),
            12,
            12,
        )
        lay.add(
            matrix(
                f"{network} RTT p50 (5m)",
                f"max by (source_node, target_node) (pingmesh:probe_rtt_seconds:p50_5m{{{sel}}})",
                "s",
                RTT_P50_STEPS,
                row="source_node",
                column="target_node",
                description="Median round-trip time. Rows: the probing node. Columns: "
                "the probed node. The slower IP family of each pair.",
            ),
            12,
            12,
        )


def _worst(lay: Layout) -> None:
    lay.row("Worst pairs")
    lay.add(
        toplist(
            "Top 10 pairs by loss (5m)",
            f"topk(10, pingmesh:probe_loss:ratio5m{{{KIND_FAMILY}}})",
            "percentunit",
            LOSS_STEPS,
            "loss",
        ),
        12,
        9,
    )
    lay.add(
        toplist(
            "Top 10 pairs by RTT p99 (5m)",
            f"topk(10, pingmesh:probe_rtt_seconds:p99_5m{{{KIND_FAMILY}}})",
            "s",
            RTT_P99_STEPS,
            "RTT p99",
        ),
        12,
        9,
    )


def _per_node(lay: Layout) -> None:
    lay.row("Per node: $source_node to $target_node")
    pair = "{{source_node}} ({{source_network}}) -> {{target_node}} {{kind}} {{ip_family}}"
    lay.add(
        timeseries(
            "RTT p50 and p99",
            [
                target(f"pingmesh:probe_rtt_seconds:p50_5m{{{PAIR}}}", f"p50 {pair}"),
                target(f"pingmesh:probe_rtt_seconds:p99_5m{{{PAIR}}}", f"p99 {pair}"),
            ],
            "s",
            minimum=0,
            description="From the selected source nodes to the selected target nodes.",
        ),
        12,
        9,
    )
    lay.add(
        timeseries(
            "Loss",
            [target(f"pingmesh:probe_loss:ratio5m{{{PAIR}}}", pair)],
            "percentunit",
            minimum=0,
            maximum=1,
            description="Lost over sent probes, 5-minute windows.",
        ),
        12,
        9,
    )
    lay.add(
        status_history(
            "Target up (every selected source reaches it)",
            f"min by (target_node, kind, ip_family) (pingmesh_target_up{{{PAIR}}})",
            "{{target_node}} {{kind}} {{ip_family}}",
            description="Down when at least one selected source got no reply in its last probes.",
        ),
        12,
        9,
    )
    lay.add(
        timeseries(
            "Share of peers reaching each target",
            [
                target(
                    'pingmesh:target_reachable_peers:ratio{target_node=~"$target_node",'
                    ' kind=~"$kind"}',
                    "{{target_node}} {{kind}}",
                )
            ],
            "percentunit",
            minimum=0,
            maximum=1,
            description="Peers whose last probes got a reply, over all peers probing the target.",
        ),
        12,
        9,
    )
    expected = (
        "max by (target_node) (\n"
        "  label_replace(\n"
        f"    pingmesh_mesh_expected_probers{{{JOB}}}\n"
        "      * on (job, instance) group_left (source_node)\n"
        "      group by (job, instance, source_node)\n"
        '      (pingmesh_target_up{kind="pod", source_node=~"$target_node"}),\n'
        '    "target_node", "$1", "source_node", "(.*)"\n'
        "  )\n"
        ")"
    )
    probing = (
        "count by (target_node) (\n"
        "  group by (source_node, target_node)\n"
        '  (pingmesh_target_up{kind="pod", target_node=~"$target_node"})\n'
        ")"
    )
    lay.add(
        timeseries(
            "Probers per node: expected and probing",
            [
                target(expected, "{{target_node}} expected"),
                target(probing, "{{target_node}} probing"),
            ],
            "short",
            minimum=0,
            description="Expected: pingmesh_mesh_expected_probers of the exporter on the node. "
            "Probing: distinct source nodes with a pod-network target on it.",
        ),
        24,
        8,
    )


# Below 1280 (the smallest MTU IPv6 allows) a path MTU is suspect; above it only a fact.
MTU_STEPS = _steps(("orange", None), ("blue", 1280))


def _mtu(lay: Layout) -> None:
    """Full-size (MTU) probes: black holes and smaller path MTUs, per pair."""
    lay.row("MTU: full-size probes (don't fragment)")
    sel = (
        'source_node=~"$source_node", target_node=~"$target_node", kind=~"$kind", '
        'ip_family=~"$ip_family"'
    )
    lay.add(
        matrix(
            "Full-size probe loss (5m)",
            f"max by (source_node, target_node) (pingmesh:mtu_probe_loss:ratio5m{{{sel}}})",
            "percentunit",
            LOSS_STEPS,
            row="source_node",
            column="target_node",
            decimals=1,
            description="Echo requests of the interface MTU with don't-fragment set, lost "
            "(a router's packet-too-big answer counts as lost). Red where small echoes pass: "
            "an MTU black hole (PingmeshMTUBlackHole). The selected kinds and families, the "
            "worst of them.",
        ),
        12,
        10,
    )
    lay.add(
        matrix(
            "Path MTU",
            f"min by (source_node, target_node) (pingmesh_path_mtu_bytes{{{sel}}})",
            "none",
            MTU_STEPS,
            row="source_node",
            column="target_node",
            decimals=0,
            description="The MTU a router reported, else the probed size once a full-size "
            "reply came back; empty where nothing is known (a black hole). The smallest of "
            "the selected kinds and families.",
        ),
        12,
        10,
    )
    pair = "{{source_node}} -> {{target_node}} {{kind}} {{ip_family}}"
    # PingmeshMTUBlackHole's expression without its threshold: every pair whose small echoes
    # pass and that no router answered with packet too big, worst first (black holes on top).
    silent = (
        f"topk(10, pingmesh:mtu_probe_loss:ratio5m{{{PAIR}}}\n"
        f"and on (source_node, target_node, kind, ip_family) "
        f"(pingmesh:probe_loss:ratio5m{{{PAIR}}} < 0.05)\n"
        f"unless on (source_node, target_node, kind, ip_family) "
        f"(pingmesh:mtu_probe_too_big:rate5m{{{PAIR}}} > 0))"
    )
    lay.add(
        toplist(
            "Top 10 silent full-size loss",
            silent,
            "percentunit",
            LOSS_STEPS,
            "full-size loss",
            description="Pairs whose small echoes pass and that no router answered with "
            "packet too big, by full-size probe loss: above 50 % for 10 minutes is "
            "PingmeshMTUBlackHole.",
        ),
        8,
        9,
    )
    lay.add(
        timeseries(
            "Full-size and small loss",
            [
                target(f"pingmesh:mtu_probe_loss:ratio5m{{{PAIR}}}", f"full-size {pair}"),
                target(f"pingmesh:probe_loss:ratio5m{{{PAIR}}}", f"small {pair}"),
            ],
            "percentunit",
            minimum=0,
            maximum=1,
            description="Lost over sent probes, 5-minute windows, full-size and small side by "
            "side for the selected pairs.",
        ),
        8,
        9,
    )
    lay.add(
        timeseries(
            "Packet too big answers",
            [target(f"pingmesh:mtu_probe_too_big:rate5m{{{PAIR}}}", pair)],
            "reqps",
            minimum=0,
            description="Full-size probes a router refused with fragmentation needed / packet "
            "too big: a smaller MTU on the path that says so (path MTU discovery works).",
        ),
        8,
        9,
    )


def _services(lay: Layout) -> None:
    lay.row("Services")
    lay.add(
        matrix(
            "Service reachability by node",
            "label_join(min by (source_node, namespace, service) "
            f'(pingmesh_service_up{{{SVC}}}), "svc", "/", "namespace", "service")',
            "short",
            UP_STEPS,
            row="source_node",
            column="svc",
            mappings=UP_MAPPINGS,
            description="Rows: the checking node. Columns: namespace/service. Down "
            "when the last check of any port or IP family failed.",
        ),
        24,
        10,
    )
    lay.add(
        timeseries(
            "Nodes failing each Service",
            [
                target(
                    "sum by (namespace, service) (1 - min by (source_node, namespace, service) "
                    f"(pingmesh_service_up{{{SVC}}}))",
                    "{{namespace}}/{{service}}",
                )
            ],
            "short",
            minimum=0,
            description="Nodes whose last check of the Service failed.",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Check results",
            [
                target(
                    "sum by (namespace, service, result) "
                    f"(rate(pingmesh_service_probe_total{{{SVC}}}[$__rate_interval]))",
                    "{{namespace}}/{{service}} {{result}}",
                )
            ],
            "short",
            stack=True,
            minimum=0,
            description="Checks per second through the ClusterIPs, by result.",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Ready endpoints",
            [
                target(
                    "pingmesh:service_endpoints_ready:max"
                    '{namespace=~"$namespace", service=~"$service"}',
                    "{{namespace}}/{{service}}",
                )
            ],
            "short",
            minimum=0,
            description="Ready endpoints over the Service's EndpointSlices.",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Endpoints by condition",
            [
                target(
                    "max by (namespace, service, condition) "
                    f"(pingmesh_service_endpoints{{{SVC_EP}}})",
                    "{{namespace}}/{{service}} {{condition}}",
                )
            ],
            "short",
            minimum=0,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "TCP connect time p99",
            [
                target(
                    quantile("0.99", "pingmesh_service_connect_seconds", "namespace, service"),
                    "{{namespace}}/{{service}}",
                )
            ],
            "s",
            minimum=0,
            description="TCP connects through the ClusterIP that succeeded, all nodes.",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "DNS query time p50 and p99",
            [
                target(
                    quantile("0.5", "pingmesh_service_dns_query_seconds", "namespace, service"),
                    "p50 {{namespace}}/{{service}}",
                ),
                target(
                    quantile("0.99", "pingmesh_service_dns_query_seconds", "namespace, service"),
                    "p99 {{namespace}}/{{service}}",
                ),
            ],
            "s",
            minimum=0,
            description="DNS queries answered through the ClusterIP.",
        ),
        12,
        8,
    )


def _health(lay: Layout) -> None:
    lay.row("Exporter health")
    lay.add(
        timeseries(
            "Exporters scraped and up",
            [target(f"sum(up{{{JOB}}})", "up"), target(f"count(up{{{JOB}}})", "scraped")],
            "short",
            minimum=0,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Exporters with discovery failing",
            [target(f"sum by (source) (1 - pingmesh_discovery_up{{{JOB}}})", "{{source}}")],
            "short",
            minimum=0,
            description="pingmesh_discovery_up is 0 while a watched resource is not "
            "synced or its last request failed.",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Discovery API errors",
            [
                target(
                    "sum by (resource, code) "
                    f"(rate(pingmesh_discovery_api_errors_total{{{JOB}}}[$__rate_interval]))\n"
                    'or on () label_replace(vector(0), "code", "none", "", "")',
                    "{{resource}} {{code}}",
                )
            ],
            "short",
            minimum=0,
            description="Failed API requests per second, all exporters.",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Send lag behind schedule (last round)",
            [
                target(f"max(pingmesh_last_round_max_lag_seconds{{{JOB}}})", "max"),
                target(f"quantile(0.5, pingmesh_last_round_max_lag_seconds{{{JOB}}})", "median"),
            ],
            "s",
            minimum=0,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Socket receive drops",
            [
                target(
                    "sum by (instance, ip_family) "
                    f"(rate(pingmesh_socket_receive_drops_total{{{JOB}}}[$__rate_interval]))",
                    "{{instance}} {{ip_family}}",
                )
            ],
            "short",
            minimum=0,
            description="Packets per second the kernel dropped on a full receive buffer.",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "/metrics render time",
            [
                target(f"max(pingmesh_metrics_render_seconds{{{JOB}}})", "max"),
                target(f"quantile(0.5, pingmesh_metrics_render_seconds{{{JOB}}})", "median"),
            ],
            "s",
            minimum=0,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "CPU",
            [
                target(f"max(rate(process_cpu_seconds_total{{{JOB}}}[$__rate_interval]))", "max"),
                target(
                    f"quantile(0.5, rate(process_cpu_seconds_total{{{JOB}}}[$__rate_interval]))",
                    "median",
                ),
            ],
            "percentunit",
            minimum=0,
            description="CPU seconds per second of one exporter (1 = one core).",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Resident memory",
            [
                target(f"max(process_resident_memory_bytes{{{JOB}}})", "max"),
                target(f"quantile(0.5, process_resident_memory_bytes{{{JOB}}})", "median"),
            ],
            "bytes",
            minimum=0,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Probe errors by reason",
            [
                target(
                    "sum by (reason) (rate(pingmesh_probe_errors_total"
                    f"{{{PAIR}}}[$__rate_interval]))\n"
                    'or on () label_replace(vector(0), "reason", "none", "", "")',
                    "{{reason}}",
                )
            ],
            "short",
            minimum=0,
            stack=True,
            description="ICMP errors, invalid replies and send failures per second; they never "
            "count as RTT or loss.",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Nodes cordoned (their exporters unready)",
            [
                target(f"sum(pingmesh_node_unschedulable{{{JOB}}}) or vector(0)", "cordoned"),
                target(f"count(pingmesh_node_unschedulable{{{JOB}}})", "known"),
            ],
            "short",
            minimum=0,
            description="Exporters whose node is cordoned (spec.unschedulable, "
            "--health.unready-when-cordoned): their /readyz answers 503, they keep probing "
            "and being probed.",
        ),
        8,
        8,
    )


class DatasourceVariable(db.DatasourceVariable):
    """The data source variable with its refresh, which the SDK's builder leaves out although
    its model (VariableModel) has it."""

    def refresh(self, refresh: dm.VariableRefresh) -> Self:
        self._internal.refresh = refresh
        return self


def _query_variable(name: str, label: str, query: str, *, multi: bool = True) -> db.QueryVariable:
    return (
        db.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query({"query": query, "refId": "StandardVariableQuery"})
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .regex("")
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .hide(dm.VariableHide.DONT_HIDE)
        .multi(multi)
        .include_all(True)
        .all_value(".*")
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
        .options([])
    )


def variables() -> list[Builder[dm.VariableModel]]:
    mesh = 'pingmesh_probe_sent_total{kind=~"pod|node"}'
    return [
        DatasourceVariable("datasource")
        .label("Data source")
        .refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD)
        .type("prometheus")
        .regex("")
        .hide(dm.VariableHide.DONT_HIDE)
        .multi(False)
        .include_all(False),
        _query_variable("kind", "Kind", f"label_values({mesh}, kind)"),
        _query_variable("ip_family", "IP family", f"label_values({mesh}, ip_family)"),
        _query_variable(
            "source_network",
            "Source network",
            f"label_values({mesh}, source_network)",
        ),
        _query_variable(
            "source_node", "Source node", "label_values(pingmesh_probe_sent_total, source_node)"
        ),
        _query_variable(
            "target_node",
            "Target node",
            'label_values(pingmesh_probe_sent_total{kind=~"$kind"}, target_node)',
        ),
        _query_variable(
            "namespace", "Service namespace", "label_values(pingmesh_service_up, namespace)"
        ),
        _query_variable(
            "service",
            "Service",
            'label_values(pingmesh_service_up{namespace=~"$namespace"}, service)',
        ),
    ]


def _tcp(lay: Layout) -> None:
    """TCP to the peer exporters beside the echo, and the flows that tell one broken path
    apart (kind="pod" from the pod network, kind="node" from the host network)."""
    lay.row("TCP to peers and flows")
    sel = (
        'source_node=~"$source_node", source_network=~"$source_network", '
        'target_node=~"$target_node", ip_family=~"$ip_family"'
    )
    lay.add(
        matrix(
            "TCP connect failures (5m)",
            f"max by (source_node, target_node) (pingmesh:tcp_probe_failed:ratio5m{{{sel}}})",
            "percentunit",
            LOSS_STEPS,
            row="source_node",
            column="target_node",
            decimals=1,
            description="Share of TCP connects to the peer exporter pod that failed. Beside "
            "an echo that passes, a NetworkPolicy, conntrack or the CNI's TCP datapath.",
        ),
        12,
        12,
    )
    lay.add(
        timeseries(
            "TCP results",
            [
                target(
                    f"sum by (result) (rate(pingmesh_tcp_probe_total{{{PAIR}}}[$__rate_interval]))",
                    "{{result}}",
                )
            ],
            "reqps",
            stack=True,
            description="Connects per second by result: ok, refused (a RST or a REJECT), "
            "timeout (SYN lost), reset, unreachable (ICMP error), error.",
        ),
        12,
        6,
    )
    lay.add(
        timeseries(
            "TCP handshake time p50 / p99",
            [
                target(
                    quantile("0.5", "pingmesh_tcp_connect_seconds", "ip_family", PAIR),
                    "p50 {{ip_family}}",
                ),
                target(
                    quantile("0.99", "pingmesh_tcp_connect_seconds", "ip_family", PAIR),
                    "p99 {{ip_family}}",
                ),
            ],
            "s",
            description="The kernel's SYN to SYN-ACK round trip of successful connects.",
        ),
        12,
        6,
    )
    lay.add(
        timeseries(
            "Lossy flows",
            [
                target(
                    f"max by (source_node, target_node, ip_family) "
                    f"(pingmesh_tcp_lossy_flows{{{PAIR}}})",
                    "{{source_node}} -> {{target_node}} {{ip_family}}",
                ),
                target(f"max(pingmesh_tcp_flows{{{JOB}}})", "flows per target"),
            ],
            "short",
            minimum=0,
            description="Flows (source ports) of a pair with a failed connect among their "
            "last probes. Some but not all of the flows: one of several paths drops "
            "traffic (PingmeshPartialPathLoss). All of them: plain loss.",
        ),
        24,
        8,
    )


# What Grafana's import checks; the SDK has no field for it.
REQUIRES = [
    {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
    {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
    {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
    {"type": "panel", "id": "table", "name": "Table", "version": ""},
    {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
    {"type": "panel", "id": "status-history", "name": "Status history", "version": ""},
]


def dashboard() -> dict[str, Any]:
    lay = Layout()
    for section in (_overview, _matrices, _worst, _tcp, _per_node, _mtu, _services, _health):
        section(lay)
    dash = (
        db.Dashboard("Pingmesh: cluster network")
        .uid("pingmesh-exporter")
        .description(
            "Pod, node and Service networks of a Kubernetes cluster, measured from "
            "every node by pingmesh-exporter."
        )
        .tags(["pingmesh", "network", "kubernetes"])
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .fiscal_year_start_month(0)
        .live_now(False)
        .refresh("1m")
        .time("now-3h", "now")
        .timezone("browser")
        .week_start("")
        .version(1)
        .links([])
        .annotation(
            db.AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
        )
        .variables(variables())
    )
    doc: dict[str, Any] = json.loads(json.dumps(lay.into(dash).build(), cls=JSONEncoder))
    # Not modelled by the SDK: what an import needs, an id that lets any Grafana import it,
    # and the schema version the panels are written for.
    doc.pop("style", None)  # removed from Grafana's schema (v10)
    # The built-in annotation must say it is, or Grafana adds a second one on load.
    for annotation in doc["annotations"]["list"]:
        annotation["builtIn"] = 1
    return {"__requires": REQUIRES, "id": None, **doc, "schemaVersion": SCHEMA_VERSION}


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    OUT.write_text(render())
    print(f"wrote {OUT.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
