"""The layer contract of exporter/: who may import whom, lazy imports included.

Ground floor: settings and how they are declared, targets, the Kubernetes objects as values,
selectors and logging. Above it the feature packages: probing, selection, mesh, discovery
(which may use mesh and selection to plan), services; discovery and services never import
each other, and none of them renders metrics. Above those the metrics layer, which turns
each component's plain state into families (and the view of the mesh page); beside them web
(--web.config.file: TLS and auth, on the ground floor only); the pages (pages), which read the
view; then HTTP; only app (and cli) wire everything."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "exporter"

GROUND = {
    "exporter",
    "exporter.config",
    "exporter.options",
    "exporter.histogram",
    "exporter.targets",
    "exporter.objects",
    "exporter.selectors",
    "exporter.logs",
}
ALLOWED = {
    "ground": {"ground"},
    "probing": {"ground", "probing"},
    "selection": {"ground", "selection"},
    "mesh": {"ground", "mesh", "selection"},
    "services": {"ground", "services"},
    "discovery": {"ground", "discovery", "mesh", "selection"},
    "web": {"ground", "web"},
    "metrics": {"ground", "metrics", "probing", "discovery", "services", "web"},
    "pages": {"ground", "pages", "metrics"},
    "http": {"ground", "http", "metrics", "web"},
    "app": {
        "ground",
        "probing",
        "selection",
        "mesh",
        "services",
        "discovery",
        "metrics",
        "http",
        "web",
        "pages",
        "app",
    },
}


def group(module: str) -> str:
    if module in GROUND:
        return "ground"
    part = module.split(".")[1]
    return {"cli": "app", "__main__": "app"}.get(part, part)


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from exporter import x`: x may be a module of its own.
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_every_import_goes_down_or_sideways_within_a_package() -> None:
    mods = modules()
    assert set(ALLOWED) >= {group(m) for m in mods}, "a module outside every layer"
    wrong = []
    for name, path in sorted(mods.items()):
        for target in sorted(imports(path)):
            if target not in mods or target == name:
                continue
            if group(target) not in ALLOWED[group(name)]:
                wrong.append(f"{name} ({group(name)}) imports {target} ({group(target)})")
    assert wrong == []


def test_only_the_metrics_layer_and_app_speak_prometheus_client() -> None:
    speakers = sorted(
        name
        for name, path in modules().items()
        if any(t.split(".")[0] == "prometheus_client" for t in imports(path))
    )
    assert {group(m) for m in speakers} <= {"metrics", "app"}, speakers


def test_the_contract_catches_a_wrong_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from exporter.discovery.objects import parse_pod\n")
    assert group("exporter.services.plan") == "services"
    assert "exporter.discovery.objects" in imports(bad)
    assert "discovery" not in ALLOWED["services"]


def test_readme_layout_table_matches_the_tree() -> None:
    """Every path README's layout table names exists, and every module of exporter/ is in a
    row (by its own path or its package's)."""
    readme = (ROOT.parent / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    named = {p for row in rows for p in re.findall(r"`([\w./*-]+)`", row.split(" | ")[0])}
    missing = sorted(p for p in named if not list(ROOT.parent.glob(p.rstrip("/"))))
    assert missing == []
    uncovered = sorted(
        str(path.relative_to(ROOT.parent))
        for path in ROOT.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
        and not any(
            str(path.relative_to(ROOT.parent)) == p
            or (p.endswith("/") and str(path.relative_to(ROOT.parent)).startswith(p))
            for p in named
        )
    )
    assert uncovered == []
