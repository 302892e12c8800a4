"""ruff and mypy, as part of the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_clean() -> None:
    proc = _run("ruff", "check", "exporter", "tests", "bench", "deploy", "grafana")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_clean() -> None:
    proc = _run("ruff", "format", "--check", "exporter", "tests", "bench", "deploy", "grafana")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_clean() -> None:
    # exporter/ strict; tests and bench strict too, but for pyproject's overrides.
    proc = _run("mypy", "exporter", "tests", "bench", "deploy", "grafana")
    assert proc.returncode == 0, proc.stdout + proc.stderr
