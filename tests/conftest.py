"""Registers the shared fixtures of ``tests/support`` for every test module.

- ``tests.support.netbed_fixtures``: ``bed``, ``bed_factory``, ``fping_path`` (network namespaces);
- ``tests.support.cluster.fixtures``: ``cluster`` (a real Kubernetes control plane and nodes).

Without root (or without the cluster binaries) those fixtures skip with the reason; under CI
they fail instead.
"""

pytest_plugins = [
    "tests.support.netbed_fixtures",
    "tests.support.cluster.fixtures",
]
