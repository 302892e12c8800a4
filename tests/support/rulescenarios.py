"""promtool test files for the localisation and lifecycle rules on a mesh of 20 nodes, written
at test time: every ordered pair's series over 40 minutes is too much to write, or keep, by
hand (tests/test_deploy.py writes them into a temporary directory and runs both promtools).

A scenario is a World (what every pair loses minute by minute, which exporters are gone or
new, what kube-state-metrics says of each node, if it is there) and the alerts expected at
some evaluation times; every localisation and lifecycle alert not expected is expected
silent then. Expected annotations are the rules' templates written out, so a template change
shows here as well as in the rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

NODES = tuple(f"n{i:02d}" for i in range(1, 21))
ZONES = {n: "a" if i < 6 else "b" if i < 13 else "c" for i, n in enumerate(NODES)}
MINUTES = 40  # samples at 0..MINUTES, one a minute
SENT = 60  # echo requests a pair sends a minute
JOB = "pingmesh-exporter"
ALERTS = (
    "PingmeshNodeUnreachable",
    "PingmeshNodeNetworkDegraded",
    "PingmeshZonePathLoss",
    "PingmeshPathLoss",
)
LONG_AGO = -3600  # an exporter's start time before the test's minute 0

# Recording rules a healthy mesh without zones leaves empty (the zone rules need
# --mesh.zones, the degraded and unreachable nodes a fault, the quiet nodes kube-state-metrics
# or an exporter in its first minutes): the end-to-end tests do not wait for them.
EMPTY_WHEN_HEALTHY = frozenset(
    {
        "pingmesh:node_zone:info",
        "pingmesh:pair_lossy_zoned:bool5m",
        "pingmesh:zone_pair_lossy:ratio5m",
        "pingmesh:node_target_degraded:ratio5m",
        "pingmesh:node_source_degraded:ratio5m",
        "pingmesh:node_unreachable:ratio",
        "pingmesh:node_quiet:info",
        "pingmesh:source_node_quiet:info",
        "pingmesh:target_node_quiet:info",
    }
)
_STARTING = re.compile(r"(process_start_time_seconds\{[^}]*\} < )600\b")


def shrink_starting(rules: str, seconds: int) -> str:
    """The rules with an exporter's quiet first 10 minutes cut to seconds, for the
    end-to-end tests that shrink the rate windows too."""
    out, n = _STARTING.subn(rf"\g<1>{seconds}", rules)
    assert n == 1, "the rules' starting window moved: update shrink_starting"
    return out


Loss = Callable[[str, str, int], float]  # (source, target, minute) -> share lost
NodeAt = Callable[[str, int], bool]  # (node, minute) -> whether it holds then


def _no_loss(s: str, t: str, m: int) -> float:
    return 0.0


def _never(n: str, m: int) -> bool:
    return False


@dataclass(frozen=True)
class World:
    """What the mesh does. `starts`: the minute each listed node's exporter pod was replaced
    (a new pod: a new instance, counters from 0, a new start time). `down`: minutes a node's
    exporter is not scraped (its series go stale). `ksm`: kube-state-metrics is scraped, and
    says `cordoned` and `not_ready` of the nodes."""

    loss: Loss = _no_loss
    kinds: tuple[str, ...] = ("pod",)
    zones: bool = False
    starts: Mapping[str, int] = field(default_factory=dict)
    down: NodeAt = _never
    ksm: bool = False
    cordoned: NodeAt = _never
    not_ready: NodeAt = _never


@dataclass(frozen=True)
class Expected:
    """An alert as promtool compares it."""

    alertname: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


@dataclass(frozen=True)
class Scenario:
    comment: str
    world: World
    # eval minute -> the alerts firing then (of ALERTS; the rest silent)
    checks: Mapping[int, Sequence[Expected]]
    # (PromQL, eval minute, expected samples as (labels, value))
    exprs: Sequence[tuple[str, int, Sequence[tuple[str, float]]]] = ()


def _pct(v: float) -> str:
    """Prometheus' humanizePercentage of the round shares the scenarios produce."""
    return f"{v * 100:.4g}%"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def _values(samples: Sequence[float | str | None]) -> str:
    """promtool's expanding notation: `a+bxn` for n+1 values of a constant step, `_xn` for n
    missing ones (a 400-pair mesh over 40 minutes, listed value by value, takes promtool
    twice as long to read)."""
    out: list[str] = []
    i = 0
    while i < len(samples):
        v = samples[i]
        if v is None or isinstance(v, str):
            j = i + 1
            while v is None and j < len(samples) and samples[j] is None:
                j += 1
            out.append(v if isinstance(v, str) else f"_x{j - i}")
            i = j
            continue
        run = [v]  # the numbers from i on that keep one step
        for later in samples[i + 1 :]:
            if later is None or isinstance(later, str):
                break
            if len(run) > 1 and later - run[-1] != run[1] - run[0]:
                break
            run.append(later)
        if len(run) == 1:
            out.append(_num(v))
        else:
            step = run[1] - run[0]
            sign = "+" if step >= 0 else "-"
            out.append(f"{_num(v)}{sign}{_num(abs(step))}x{len(run) - 1}")
        i += len(run)
    return " ".join(out)


def _series(name: str, labels: Mapping[str, str], samples: Sequence[float | str | None]) -> str:
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"      - series: '{name}{{{sel}}}'\n        values: '{_values(samples)}'"


def _generations(w: World, node: str) -> list[tuple[str, int, int]]:
    """(instance, first minute, start time) of each exporter pod a node runs."""
    if node not in w.starts:
        return [(f"{node}-a:9871", 0, LONG_AGO)]
    m = w.starts[node]
    return [(f"{node}-a:9871", 0, LONG_AGO), (f"{node}-b:9871", m, m * 60)]


def _per_minute(
    scraped: Sequence[bool], values: Sequence[float], counter: bool
) -> list[float | str | None]:
    """One series' samples: a gauge's values, or a counter from 0 adding each minute's value;
    a scrape that fails, or a pod that is gone, leaves a stale marker, then nothing."""
    samples: list[float | str | None] = []
    total = 0.0
    seen = False
    for ok, value in zip(scraped, values, strict=True):
        if not ok:
            samples.append("stale" if seen and samples[-1] != "stale" else None)
            continue
        if counter and seen:
            total += value
        samples.append(total if counter else value)
        seen = True
    return samples


def _source_series(w: World, s: str) -> list[str]:
    """Everything one node's exporters' scrapes put into Prometheus."""
    out: list[str] = []
    gens = _generations(w, s)
    minutes = range(MINUTES + 1)
    for i, (instance, first, started) in enumerate(gens):
        last = gens[i + 1][1] if i + 1 < len(gens) else MINUTES + 1
        scraped = [first <= m < last and not w.down(s, m) for m in minutes]
        job = {"job": JOB, "instance": instance}
        start = _per_minute(scraped, [started] * len(minutes), False)
        out.append(_series("process_start_time_seconds", job, start))
        for kind in w.kinds:
            for t in NODES:
                labels = {**job, "source_node": s, "target_node": t, "kind": kind}
                labels["ip_family"] = "ipv4"
                if w.zones:
                    labels["target_zone"] = ZONES[t]
                lost = [0.0 if s == t else w.loss(s, t, m) for m in minutes]
                sent = _per_minute(scraped, [SENT] * len(minutes), True)
                got = _per_minute(scraped, [round(SENT * (1 - x)) for x in lost], True)
                up = _per_minute(scraped, [0.0 if x >= 1 else 1.0 for x in lost], False)
                out += [
                    _series("pingmesh_probe_sent_total", labels, sent),
                    _series("pingmesh_probe_received_total", labels, got),
                    _series("pingmesh_target_up", labels, up),
                ]
    return out


def _ksm_series(w: World) -> list[str]:
    out: list[str] = []
    ksm = {"job": "kube-state-metrics", "instance": "ksm:8080"}
    for n in NODES:
        cordoned = [1 if w.cordoned(n, m) else 0 for m in range(MINUTES + 1)]
        ready = [0 if w.not_ready(n, m) else 1 for m in range(MINUTES + 1)]
        out.append(_series("kube_node_spec_unschedulable", {**ksm, "node": n}, cordoned))
        for status, values in (("true", ready), ("false", [1 - r for r in ready])):
            labels = {**ksm, "node": n, "condition": "Ready", "status": status}
            out.append(_series("kube_node_status_condition", labels, values))
    return out


def _quoted(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _alert_block(m: int, name: str, expected: Sequence[Expected]) -> list[str]:
    lines = [f"      - eval_time: {m}m", f"        alertname: {name}"]
    exp = [a for a in expected if a.alertname == name]
    if not exp:
        return [*lines, "        exp_alerts: []"]
    lines.append("        exp_alerts:")
    for a in exp:
        labels = ", ".join(f"{k}: {v}" for k, v in a.labels.items())
        lines += [f"          - exp_labels: {{{labels}}}", "            exp_annotations:"]
        lines += [f"              {k}: {_quoted(v)}" for k, v in sorted(a.annotations.items())]
    return lines


def _test(sc: Scenario) -> str:
    w = sc.world
    lines = [f"  # {sc.comment}", "  - interval: 1m", "    input_series:"]
    for s in NODES:
        lines += _source_series(w, s)
    if w.ksm:
        lines += _ksm_series(w)
    lines.append("    alert_rule_test:")
    for m, expected in sorted(sc.checks.items()):
        for name in ALERTS:
            lines += _alert_block(m, name, expected)
    if sc.exprs:
        lines.append("    promql_expr_test:")
        for expr, m, samples in sc.exprs:
            lines += [f"      - expr: {_quoted(expr)}", f"        eval_time: {m}m"]
            if not samples:
                lines.append("        exp_samples: []")
                continue
            lines.append("        exp_samples:")
            for labels, value in samples:
                lines += [f"          - labels: {_quoted(labels)}", f"            value: {value}"]
    return "\n".join(lines) + "\n"


def write(scenarios: Sequence[Scenario], rules: Path, out: Path) -> Path:
    """One promtool test file of the scenarios, reading the rules at their absolute path."""
    head = f"rule_files:\n  - {rules}\nevaluation_interval: 1m\n\ntests:\n"
    out.write_text(head + "\n".join(_test(sc) for sc in scenarios))
    return out


# ----- the expected alerts, as the rules' templates render them -------------------------------


def degraded(base: str, node: str, side: str, share: float, kind: str = "pod") -> Expected:
    who = (
        f"peers probing {node} lose echoes to it"
        if side == "target"
        else f"peers {node} probes lose its echoes"
    )
    return Expected(
        "PingmeshNodeNetworkDegraded",
        {"severity": "warning", "kind": kind, "node": node, "side": side},
        {
            "summary": f"Node {node} loses {kind} network packets ({side} side)",
            "description": f"{_pct(share)} of the {who} ({kind} network, more than 5 % over 5"
            f" minutes): the fault is on {node}, not between pairs.",
            "runbook_url": f"{base}#pingmeshnodenetworkdegraded",
        },
    )


def path(base: str, s: str, t: str, share: float) -> Expected:
    return Expected(
        "PingmeshPathLoss",
        {"severity": "warning", "kind": "pod", "source_node": s, "target_node": t},
        {
            "summary": f"Pod network loss {_pct(share)} from {s} to {t}",
            "description": f"Echo requests from {s} to the exporter pod on {t} lost"
            f" {_pct(share)} over 5 minutes (the worse family); no node or zone alert explains"
            " it: the path between the two.",
            "runbook_url": f"{base}#pingmeshpathloss",
        },
    )


def zone(base: str, s: str, t: str) -> Expected:
    return Expected(
        "PingmeshZonePathLoss",
        {"severity": "warning", "kind": "pod", "source_zone": s, "target_zone": t},
        {
            "summary": f"Zone {s} loses pod network packets to zone {t}",
            "description": f"100% of the node pairs from zone {s} to zone {t} (pod network)"
            " lose more than 5 % of their echoes over 5 minutes: the path between the zones,"
            " not a node.",
            "runbook_url": f"{base}#pingmeshzonepathloss",
        },
    )


def unreachable(base: str, node: str, share: float) -> Expected:
    return Expected(
        "PingmeshNodeUnreachable",
        {"severity": "critical", "kind": "pod", "target_node": node},
        {
            "summary": f"Node {node} unreachable from most of its peers",
            "description": f"{_pct(share)} of the peers probing {node} get no echo reply from"
            " its exporter pod: the node, its CNI or its uplink is down.",
            "runbook_url": f"{base}#pingmeshnodeunreachable",
        },
    )


# ----- the scenarios ----------------------------------------------------------------------------

BAD = "n07"  # the faulty node of the node scenarios


def localisation(base: str) -> list[Scenario]:
    """Issue 13 item 1: one alert per fault, naming its place."""
    cut = "a"

    def across_the_cut(s: str, t: str) -> bool:
        return (ZONES[s] == cut) != (ZONES[t] == cut)

    zones_cut = [zone(base, "a", "b"), zone(base, "a", "c"), zone(base, "b", "a")]
    zones_cut.append(zone(base, "c", "a"))
    return [
        Scenario(
            "A healthy mesh: no alert; own-node pairs are not peers.",
            World(),
            {25: []},
            [
                ("count(pingmesh:pair_lossy:bool5m)", 25, [("{}", len(NODES) * (len(NODES) - 1))]),
                ("pingmesh:node_quiet:info", 25, []),
            ],
        ),
        Scenario(
            "One bad target node among 20: one alert naming it, target side.",
            World(loss=lambda s, t, m: 0.5 if t == BAD else 0.0),
            {25: [degraded(base, BAD, "target", 1.0)]},
        ),
        Scenario(
            "One bad source node: one alert naming it, source side.",
            World(loss=lambda s, t, m: 0.5 if s == "n03" else 0.0),
            {25: [degraded(base, "n03", "source", 1.0)]},
        ),
        Scenario(
            "One bad pair: the path alert for that pair only.",
            World(loss=lambda s, t, m: 0.5 if (s, t) == ("n01", "n02") else 0.0),
            {25: [path(base, "n01", "n02", 0.5)]},
        ),
        Scenario(
            "A bad target node and, elsewhere, a bad pair: one alert each.",
            World(loss=lambda s, t, m: 0.5 if t == BAD or (s, t) == ("n01", "n02") else 0.0),
            {25: [degraded(base, BAD, "target", 1.0), path(base, "n01", "n02", 0.5)]},
        ),
        Scenario(
            "Zone a lossy towards b and c and back: one alert per zone pair, none per node.",
            World(loss=lambda s, t, m: 0.5 if across_the_cut(s, t) else 0.0, zones=True),
            {25: zones_cut},
        ),
        Scenario(
            "Zone a cut off (no reply across): still one alert per zone pair, and no"
            " PingmeshNodeUnreachable for each of zone a's nodes.",
            World(loss=lambda s, t, m: 1.0 if across_the_cut(s, t) else 0.0, zones=True),
            {25: zones_cut},
        ),
        Scenario(
            "A dead node (no reply on either network, its exporter gone): one page,"
            " PingmeshNodeUnreachable, and no PingmeshNodeNetworkDegraded of either kind.",
            World(
                loss=lambda s, t, m: 1.0 if t == BAD and m >= 2 else 0.0,
                kinds=("pod", "node"),
                down=lambda n, m: n == BAD and m >= 2,
            ),
            {25: [unreachable(base, BAD, 1.0)]},
        ),
    ]


def lifecycle(base: str) -> list[Scenario]:
    """Issue 13 item 2: a cordoned, draining or NotReady node, and a rollout, page nothing;
    the same loss on a schedulable, Ready node pages (and without kube-state-metrics: the
    node scenarios of localisation(), which have none)."""
    lossy_both_ways = World(loss=lambda s, t, m: 0.5 if BAD in (s, t) else 0.0, ksm=True)

    def dead(m: int) -> bool:
        return m >= 8

    drained = World(
        loss=lambda s, t, m: 1.0 if t == BAD and dead(m) else 0.0,
        down=lambda n, m: n == BAD and dead(m),
        ksm=True,
    )
    rollout_at = {n: 2 * (i + 1) for i, n in enumerate(NODES[:12])}  # one node every 2 minutes

    def rolling(s: str, t: str, m: int) -> float:
        # A new pod's first minutes: its peers lose everything to and from it for 6 minutes
        # (the CNI not yet programmed for it), then nothing.
        hit = [rollout_at[n] for n in (s, t) if n in rollout_at]
        return 1.0 if any(start <= m < start + 6 for start in hit) else 0.0

    schedulable = "The same loss on a schedulable, Ready node (kube-state-metrics there): a page."
    return [
        Scenario(
            f"{BAD} cordoned while it loses half its packets both ways: no page.",
            replace(lossy_both_ways, cordoned=lambda n, m: n == BAD),
            {25: []},
            [('pingmesh:node_quiet:info{reason="cordoned"}', 25, [(_node(BAD, "cordoned"), 1)])],
        ),
        Scenario(schedulable, lossy_both_ways, {25: [degraded(base, BAD, "target", 1.0)]}),
        Scenario(
            f"{BAD} drained: cordoned at minute 2, its pods go, then it goes down at minute 8"
            " for its reboot: no page.",
            replace(drained, cordoned=lambda n, m: n == BAD and m >= 2),
            {6: [], 15: [], 25: []},
        ),
        Scenario(
            f"{BAD} goes down at minute 8 and turns NotReady a minute later: no page.",
            replace(drained, not_ready=lambda n, m: n == BAD and m >= 9),
            {15: [], 25: []},
            [('pingmesh:node_quiet:info{reason="not_ready"}', 25, [(_node(BAD, "not_ready"), 1)])],
        ),
        Scenario(
            f"{schedulable} The dead node: one PingmeshNodeUnreachable.",
            drained,
            {25: [unreachable(base, BAD, 1.0)]},
        ),
        Scenario(
            "A DaemonSet rollout, one node every 2 minutes, each new pod unreachable for its"
            " first 6 minutes: no page while a new exporter is under 10 minutes old.",
            World(loss=rolling, starts=rollout_at),
            {6: [], 12: [], 20: [], 30: [], 38: []},
            [('pingmesh:node_quiet:info{node="n01"}', 6, [(_node("n01", "starting"), 1)])],
        ),
        Scenario(
            "The same loss from exporters that did not just start (no rollout): n01, lost"
            " since minute 2, pages at minute 6; n02, since minute 4, is still pending.",
            World(loss=rolling),
            {6: [unreachable(base, "n01", 1.0)]},
        ),
    ]


def _node(node: str, reason: str) -> str:
    return f'pingmesh:node_quiet:info{{node="{node}", reason="{reason}"}}'
