"""--web.config.file against a real Prometheus (3.16, built from the Go module proxy): one
exporter in the namespace test bed serving over TLS with client certificates required and
basic auth, and one Prometheus scraping it as five jobs that differ only in what they
present: the right certificate and password, a wrong password, an expired client
certificate, a client certificate from another CA, and no client certificate.

Shown: `up` is 1 for the right job only; the exporter counts each refusal under its reason
(read back through the right job's own scrape of `pingmesh_web_*`) and logs it; the
certificates are made by openssl into the test's directory.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.certs import Certs, make_certs
from tests.support.exporter_proc import ExporterProcess
from tests.support.netbed import Bed, Namespace
from tests.support.netbed_fixtures import ensure_bed_possible, skip_or_fail
from tests.test_prometheus_native import Prom, _ready, free_port, wait_for

pytestmark = pytest.mark.netns

CACHE_BIN = Path(os.environ.get("PINGMESH_CACHE", "/var/cache/pingmesh-exporter")) / "bin"
PROMETHEUS = CACHE_BIN / "prometheus"
# What each job presents, and the exporter's reason for refusing it (None: let in).
UNAUTHORIZED = "pingmesh_web_requests_unauthorized_total"
HANDSHAKE = "pingmesh_web_tls_handshake_failures_total"
JOBS: dict[str, tuple[str | None, str, tuple[str, str] | None]] = {
    "right": ("client", "right", None),
    "wrong-password": ("client", "wrong", (UNAUTHORIZED, "wrong_credentials")),
    "expired-cert": ("expired", "right", (HANDSHAKE, "certificate_expired")),
    "untrusted-cert": ("untrusted", "right", (HANDSHAKE, "certificate_untrusted")),
    "no-cert": (None, "right", (HANDSHAKE, "certificate_missing")),
}
SETTLE_TIMEOUT = 60.0


def scrape_configs(certs: Certs, exporter_port: int) -> list[dict[str, Any]]:
    jobs = []
    for job, (cert, password, _) in JOBS.items():
        tls: dict[str, Any] = {"ca_file": str(certs.path("ca.crt"))}
        if cert is not None:
            tls["cert_file"] = str(certs.path(f"{cert}.crt"))
            tls["key_file"] = str(certs.path(f"{cert}.key"))
        jobs.append(
            {
                "job_name": job,
                "scheme": "https",
                "tls_config": tls,
                "basic_auth": {
                    "username": certs.user,
                    "password": certs.password if password == "right" else "not-the-password",
                },
                "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
            }
        )
    return jobs


@dataclass
class Scene:
    prom: Prom
    exporter: ExporterProcess
    certs: Certs


class TlsProm(Prom):
    """The test's Prometheus with the five jobs instead of the native-histogram ones."""

    jobs: list[dict[str, Any]]

    def start(self, exporter_port: int) -> None:
        self.workdir.mkdir(parents=True)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": self.jobs,
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [
            str(PROMETHEUS),
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self._log = (self.workdir / "prometheus.log").open("wb")
        self.proc = self.ns.popen(
            argv, cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT
        )


def web_config(certs: Certs) -> str:
    d = certs.dir
    text: str = yaml.safe_dump(
        {
            "tls_server_config": {
                "cert_file": str(d / "server.crt"),
                "key_file": str(d / "server.key"),
                "client_auth_type": "RequireAndVerifyClientCert",
                "client_ca_file": str(d / "ca.crt"),
            },
            "basic_auth_users": {certs.user: certs.password_hash},
        }
    )
    return text


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    ensure_bed_possible()
    if not PROMETHEUS.exists():
        skip_or_fail(f"not installed: {PROMETHEUS} (tests/support/cluster/build-components.sh)")
    root = tmp_path_factory.mktemp("web-prometheus")
    certs = make_certs(root / "certs")
    # The exporter runs as root in the bed; the certificates' directory is readable to it.
    (root / "web-config.yml").write_text(web_config(certs))
    with Bed() as bed:
        dst = bed.add_dst("tls")
        [v4] = dst.add_targets(1, 0)
        ns: Namespace = bed.src
        port = free_port(ns)
        # Info, not the helper's debug: a debug line per request would fill the stderr pipe
        # nobody reads until the end, and block the exporter's logging.
        args = [
            "--target",
            v4,
            f"--web.config.file={root / 'web-config.yml'}",
            "--log.level=info",
        ]
        # Its /readyz needs the client certificate and the password now: Prometheus'
        # first scrapes are the readiness wait.
        with ExporterProcess(ns, args, port=port) as exporter:
            prom = TlsProm("3.16", "tls", ns, free_port(ns), root / "prometheus")
            prom.jobs = scrape_configs(certs, port)
            try:
                prom.start(port)
                wait_for(lambda: _ready(prom), 60, "prometheus ready")
                yield Scene(prom, exporter, certs)
            finally:
                prom.stop()


def _up(prom: Prom) -> dict[str, float]:
    return {r["metric"]["job"]: float(r["value"][1]) for r in prom.query("up")}


def _settled(prom: Prom) -> bool:
    """Every job scraped at least three times, and the refusals counted."""
    counts = prom.query("count_over_time(up[1m]) >= 3")
    if {r["metric"]["job"] for r in counts} != set(JOBS):
        return False
    for _, _, refusal in JOBS.values():
        if refusal is not None:
            name, reason = refusal
            if not prom.query(f'{name}{{job="right",reason="{reason}"}} >= 2'):
                return False
    return True


@pytest.fixture(scope="module")
def settled(scene: Scene) -> Scene:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while not _settled(scene.prom):
        assert scene.exporter.proc.poll() is None, scene.exporter.output()
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not settled in {SETTLE_TIMEOUT:.0f}s: up {_up(scene.prom)}\n{scene.prom.log()}"
            )
        time.sleep(0.5)
    return scene


def test_only_the_right_certificate_and_password_scrape(settled: Scene) -> None:
    up = _up(settled.prom)
    assert up == {job: 1.0 if job == "right" else 0.0 for job in JOBS}, up
    # And the right job got the whole document, not an error page.
    [samples] = settled.prom.query('scrape_samples_scraped{job="right"}')
    assert float(samples["value"][1]) > 50


@pytest.mark.parametrize("job", [j for j, (_, _, r) in JOBS.items() if r is not None])
def test_every_refusal_is_counted_under_its_reason(settled: Scene, job: str) -> None:
    refusal = JOBS[job][2]
    assert refusal is not None
    name, reason = refusal
    [sample] = settled.prom.query(f'{name}{{job="right",reason="{reason}"}}')
    # One refusal a scrape interval: at least one per scrape Prometheus made of that job.
    [scrapes] = settled.prom.query(f'count_over_time(up{{job="{job}"}}[1m])')
    assert float(sample["value"][1]) >= 2, (job, sample)
    assert float(scrapes["value"][1]) >= 3


def test_no_refusal_is_counted_under_another_reason(settled: Scene) -> None:
    expected = {r[1] for _, _, r in JOBS.values() if r is not None}
    seen = set()
    for name in (
        "pingmesh_web_requests_unauthorized_total",
        "pingmesh_web_tls_handshake_failures_total",
    ):
        for r in settled.prom.query(f'{name}{{job="right"}} > 0'):
            seen.add(r["metric"]["reason"])
    assert seen == expected


def test_refusals_are_logged(settled: Scene) -> None:
    settled.exporter.stop()
    log = settled.exporter.output()
    for reason in ("certificate_expired", "certificate_untrusted", "certificate_missing"):
        assert f"TLS handshake with 127.0.0.1 failed: {reason}" in log, reason
    assert "as user 'prometheus' refused: wrong_credentials" in log
    # Rate-limited: at most one line per kind of refusal every 10 s, not one per scrape.
    assert log.count("wrong_credentials") <= 1 + int(SETTLE_TIMEOUT / 10) + 2
