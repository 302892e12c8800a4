"""Shared pieces of the Kubernetes end-to-end tests: an API fake inside the test bed's src
namespace, and the exporter flags that point at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.exporter_proc import in_namespace
from tests.kubefake import KubeFake
from tests.netbed import Bed

NS = "monitoring"


@pytest.fixture
def fake_in_src(bed: Bed) -> Iterator[KubeFake]:
    fake = KubeFake(bookmark_interval=0.5)
    in_namespace(bed.src, fake.start)
    try:
        yield fake
    finally:
        fake.close()


def exporter_args(fake: KubeFake, tmp: Path, *extra: str, node: str = "node-0",
                  namespace: str = NS) -> list[str]:
    cfg = fake.kubeconfig(tmp / f"kubeconfig-{node}")
    return ["--discovery", "kubernetes", "--kubeconfig", str(cfg),
            "--kubernetes.node-name", node, "--kubernetes.pod-name", f"pm-{node}",
            "--kubernetes.namespace", namespace, "--kubernetes.retry-max-delay", "200ms",
            "--probe.interval", "100ms", "--probe.timeout", "500ms", *extra]


