"""Kubernetes manifests checked against the API's OpenAPI schemas by kubernetes-validate."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


def assert_schema_valid(docs: Sequence[dict[str, Any]], out: Path) -> None:
    """Every object of docs, written to out, passes `kubernetes-validate --strict`."""
    out.write_text(yaml.safe_dump_all(docs))
    validate = Path(sys.executable).parent / "kubernetes-validate"
    cmd = [str(validate)] if validate.exists() else [sys.executable, "-m", "kubernetes_validate"]
    proc = subprocess.run([*cmd, "--strict", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("passed") == len(docs), proc.stdout
