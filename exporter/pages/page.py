"""The pages (pure): `/`, this exporter's view as sortable tables, and `/mesh`, the cluster
matrix. Plain HTML, one stylesheet and one small script (column sorting), no framework."""

from __future__ import annotations

import html
from collections.abc import Sequence

from exporter import __version__
from exporter.metrics.view import View
from exporter.pages.matrix import STATES, Cell, Matrix

# The colours of the states, also read back from screenshots by the browser tests.
COLOURS = {
    "ok": "#1a9850",
    "slow": "#fee08b",
    "lossy": "#fc8d59",
    "down": "#d73027",
    "nodata": "#bdbdbd",
}

STYLE = (
    "body{font:14px sans-serif;margin:1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "th,td{border:1px solid #ccc;padding:2px 6px;text-align:left}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}"
    "table.sortable th{cursor:pointer;background:#f3f3f3;user-select:none}"
    "th[aria-sort=ascending]::after{content:' \\25B2'}"
    "th[aria-sort=descending]::after{content:' \\25BC'}"
    "tr.down td{background:#fde0dc}"
    # Fixed layout: a browser lays out 10,000 cells without measuring each one's text.
    "table.matrix{table-layout:fixed}"
    "table.matrix td{width:24px;min-width:24px;height:20px;padding:0;font-size:10px;"
    "text-align:center;border:1px solid #fff}"
    "table.matrix th.col{writing-mode:vertical-rl;transform:rotate(180deg);font-weight:normal;"
    "padding:4px 0}"
    "table.matrix th.row{font-weight:normal;white-space:nowrap}"
    "td.failed{background:#eee;color:#900;text-align:left!important;padding-left:6px!important}"
    + "".join(f"td.{state}{{background:{colour}}}" for state, colour in COLOURS.items())
    + ".legend span{display:inline-block;padding:2px 8px;margin-right:4px}"
    + "p.status{font-weight:bold}"
)

# Sorts a table by the clicked column: numbers by data-v (empty sorts last), else by text.
SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('thead th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var down = th.getAttribute('aria-sort') === 'ascending';
      table.querySelectorAll('thead th').forEach(function (o) { o.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', down ? 'descending' : 'ascending');
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col];
        var v = cell.getAttribute('data-v');
        return v === null ? cell.textContent : (v === '' ? null : parseFloat(v));
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === y) { return 0; }
        if (x === null) { return 1; }
        if (y === null) { return -1; }
        var c = (typeof x === 'number' && typeof y === 'number') ? x - y
          : String(x).localeCompare(String(y));
        return down ? -c : c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


# A matrix cell's tooltip, written when the mouse first comes over it.
MATRIX_SCRIPT = """
document.querySelectorAll('table.matrix').forEach(function (table) {
  table.addEventListener('mouseover', function (event) {
    var c = event.target;
    if (c.tagName !== 'TD' || !c.dataset.f || c.title) { return; }
    var f = c.dataset.f.split('|');
    c.title = c.dataset.s + ' \u2192 ' + c.dataset.t + ' (' + table.dataset.kind + ', ' + f[0]
      + '): ' + c.className + ', loss ' + (f[1] || '-') + ' %, p50 ' + (f[2] || '-')
      + ' ms, p99 ' + (f[3] || '-') + ' ms';
  });
});
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.3f}"


def _pct(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio * 100:.1f}"


def _num(value: float | None, shown: str, cls: str = "n") -> str:
    v = "" if value is None else repr(float(value))
    return f'<td class="{cls}" data-v="{v}">{shown}</td>'


def _head(title: str) -> str:
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{STYLE}</style></head><body>"
    )


def _links(telemetry_path: str) -> str:
    items = [
        ("/", "this exporter"),
        ("/mesh", "mesh"),
        (telemetry_path, "metrics"),
        ("/api/v1/view", "view (JSON)"),
        ("/healthz", "healthz"),
        ("/readyz", "readyz"),
    ]
    return "<p>" + " | ".join(f'<a href="{_e(p)}">{_e(t)}</a>' for p, t in items) + "</p>"


def _table(name: str, headers: Sequence[str], rows: Sequence[str]) -> str:
    head = "".join(f'<th data-key="{_e(h)}">{_e(h)}</th>' for h in headers)
    return (
        f'<table class="sortable" id="{_e(name)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def landing(view: View, telemetry_path: str) -> bytes:
    """This exporter's own view: every target's last minute and the Service checks."""
    said = "".join(f'<p class="status">{_e(n)}</p>' for n in view.notes)
    who = _e(view.node or view.host)
    rows = []
    for t in view.targets:
        r = t.recent
        cls = ' class="down"' if not t.up else ""
        rows.append(
            f'<tr{cls} data-name="{_e(t.name)}" data-family="{_e(t.ip_family)}">'
            f"<td>{_e(t.kind)}</td><td>{_e(t.name)}</td><td>{_e(t.ip_family)}</td>"
            f"<td>{_e(t.address)}</td>"
            f'<td data-v="{int(t.up)}">{"up" if t.up else "down"}</td>'
            f"{_num(r.loss, _pct(r.loss))}"
            f"{_num(r.rtt_p50_seconds, _ms(r.rtt_p50_seconds))}"
            f"{_num(r.rtt_p99_seconds, _ms(r.rtt_p99_seconds))}"
            f"{_num(r.probes, str(r.probes))}</tr>"
        )
    services = [
        f"<tr{'' if s.up else ' class=down'}>"
        f"<td>{_e(s.namespace)}/{_e(s.service)}</td><td>{_e(s.ip_family)}</td>"
        f"{_num(s.port, str(s.port))}<td>{_e(s.protocol)}</td>"
        f'<td data-v="{int(s.up)}">{"up" if s.up else "down"}</td>'
        f"<td>{_e(s.last_result)}</td>{_num(s.checks, str(s.checks))}</tr>"
        for s in view.services
    ]
    window = f"{view.window_seconds:g}"
    body = (
        f"{_head('pingmesh-exporter')}<h1>pingmesh-exporter {_e(__version__)} on {who}</h1>"
        f"{_links(telemetry_path)}{said}"
        f"<h2>Targets ({len(view.targets)})</h2>"
        f"<p>Loss and RTT over the last {window} s of probes (at most the last "
        f"{round(view.window_seconds / view.interval_seconds)} per target); up as in "
        "pingmesh_target_up. Click a column to sort.</p>"
        + _table(
            "targets",
            ["kind", "target", "family", "address", "up", "loss %", "p50 ms", "p99 ms", "probes"],
            rows,
        )
        + (
            f"<h2>Service checks ({len(view.services)})</h2>"
            + _table(
                "services",
                ["service", "family", "port", "protocol", "up", "last result", "checks"],
                services,
            )
            if view.services
            else ""
        )
        + f"<script>{SCRIPT}</script></body></html>\n"
    )
    return body.encode()


def _figures(c: Cell) -> str:
    """A cell's figures, compact (a 100-node page has 10,000 cells): families, loss in %,
    p50 and p99 in ms; MATRIX_SCRIPT makes the tooltip of them when the mouse is over."""
    return (
        f"{'/'.join(c.families)}|{_pct(c.loss)}|{_ms(c.rtt_p50_seconds)}|{_ms(c.rtt_p99_seconds)}"
    )


def _shown(c: Cell) -> str:
    if c.loss:
        return f"{c.loss * 100:.0f}"
    return ""


def mesh(m: Matrix, telemetry_path: str, seconds: float) -> bytes:
    """The matrix, one table per kind: a row per source, a column per target."""
    legend = "".join(
        f'<span class="{s}" style="background:{COLOURS[s]}">{s}</span>' for s in STATES
    )
    parts = [
        _head("pingmesh-exporter: mesh"),
        "<h1>Mesh</h1>",
        _links(telemetry_path),
        f"<p>{len(m.rows)} sources, {len(m.columns)} targets, assembled in {seconds:.3f} s "
        "from each exporter's own view (last minute). A cell shows the loss in % when there "
        f"is any; slow: p99 RTT above {m.slow_seconds * 1e3:g} ms.</p>",
        f'<p class="legend">{legend}</p>',
    ]
    cols = m.columns
    for kind in m.kinds:
        head = "".join(f'<th class="col">{_e(c)}</th>' for c in cols)
        lines = [
            f'<h2>{_e(kind)}</h2><table class="matrix" data-kind="{_e(kind)}">'
            f"<thead><tr><th>source \\ target</th>{head}</tr></thead><tbody>"
        ]
        for row in m.rows:
            name = _e(row.name)
            if row.view is None:
                lines.append(
                    f'<tr data-source="{name}"><th class="row">{name}</th>'
                    f'<td class="failed" colspan="{len(cols)}">no view from '
                    f"{_e(row.address)}: {_e(row.error)}</td></tr>"
                )
                continue
            tds = []
            for col in cols:
                c = m.cell(row.name, col, kind)
                if c is None:
                    tds.append("<td></td>")
                else:
                    tds.append(
                        f'<td class="{c.state}" data-s="{name}" data-t="{_e(col)}" '
                        f'data-f="{_figures(c)}">{_shown(c)}</td>'
                    )
            lines.append(f'<tr data-source="{name}"><th class="row">{name}</th>{"".join(tds)}</tr>')
        lines.append("</tbody></table>")
        parts.append("".join(lines))
    peers = []
    for r in m.rows:
        count = len(r.view.targets) if r.view is not None else None
        peers.append(
            f"<tr><td>{_e(r.name)}</td><td>{_e(r.address or '(this exporter)')}</td>"
            f"<td>{'ok' if r.view is not None else _e(r.error)}</td>"
            f"{_num(r.seconds, f'{r.seconds * 1e3:.1f}')}"
            f"{_num(count, '' if count is None else str(count))}</tr>"
        )
    parts.append(
        "<h2>Sources</h2>"
        + _table("sources", ["source", "address", "view", "fetch ms", "targets"], peers)
    )
    parts.append(f"<script>{SCRIPT}{MATRIX_SCRIPT}</script></body></html>\n")
    return "".join(parts).encode()
