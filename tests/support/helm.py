"""The real helm client (pinned, built by tests/support/cluster/build-components.sh) run on
the chart under deploy/helm: render, lint, and the argv for a cluster's kubeconfig.

Without the binary the tests skip with the reason; under CI they fail instead."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.support.netbed_fixtures import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "pingmesh-exporter"
CACHE = Path(os.environ.get("PINGMESH_CACHE", "/var/cache/pingmesh-exporter"))
HELM = CACHE / "bin" / "helm"
BUILD_SCRIPT = ROOT / "tests" / "support" / "cluster" / "build-components.sh"
RELEASE = "pingmesh-exporter"


def operator_crds() -> Path:
    """The Prometheus Operator's CRDs of the version build-components.sh pins."""
    pin = re.search(r"^PROMETHEUS_OPERATOR_VERSION=(\S+)", BUILD_SCRIPT.read_text(), re.M)
    assert pin, f"no PROMETHEUS_OPERATOR_VERSION in {BUILD_SCRIPT}"
    out = CACHE / "crds" / f"prometheus-operator-{pin.group(1)}"
    if not (out / ".complete").is_file():
        skip_or_fail(f"{out} is missing: fetch it with `bash {BUILD_SCRIPT.relative_to(ROOT)}`")
    return out


def helm_bin() -> Path:
    if not HELM.is_file():
        skip_or_fail(f"{HELM} is missing: build it with `bash {BUILD_SCRIPT.relative_to(ROOT)}`")
    return HELM


def helm_env(home: Path) -> dict[str, str]:
    """helm's cache, config and data under ``home``: nothing written to the user's home,
    no repository index read from it."""
    env = dict(os.environ)
    for kind in ("CACHE", "CONFIG", "DATA"):
        env[f"HELM_{kind}_HOME"] = str(home / kind.lower())
    return env


def run(
    home: Path, *args: str, check: bool = True, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(helm_bin()), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=helm_env(home),
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}: {proc.stdout}{proc.stderr}")
    return proc


def values_args(home: Path, values: Mapping[str, Any] | None) -> list[str]:
    """A values file for ``values`` (deep structures as data, not --set strings)."""
    if not values:
        return []
    text = yaml.safe_dump(dict(values))
    home.mkdir(parents=True, exist_ok=True)
    path = home / f"values-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
    path.write_text(text)
    return ["--values", str(path)]


def template(
    home: Path, values: Mapping[str, Any] | None = None, extra: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """`helm template` of the chart, as parsed objects."""
    out = run(home, "template", RELEASE, str(CHART), *values_args(home, values), *extra).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def key(doc: Mapping[str, Any]) -> tuple[str, str, str, str]:
    meta = doc["metadata"]
    return (doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta["name"])


def by_key(docs: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str, str], Any]:
    out: dict[tuple[str, str, str, str], Any] = {}
    for d in docs:
        assert key(d) not in out, f"rendered twice: {key(d)}"
        out[key(d)] = d
    return out
