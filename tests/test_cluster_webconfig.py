"""deploy/overlays/web-config on a real node (kubelet, containerd, runc, the image built
from the Dockerfile): the certificate's Secret made from openssl certificates as the README
says, the kubelet's HTTPS probes passing through --web.auth-exempt-probes while client
certificates are required, /metrics over the pod network only with the client certificate,
and a password added by updating the web configuration's Secret, taken without a restart."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from tests.support.certs import SERVER_NAME, Certs, make_certs
from tests.support.cluster.cluster import ROOT, Cluster
from tests.support.cluster.fixtures import apply_overlay, make_cluster, pod_on, wait_ready_pods
from tests.support.cluster.kubelet import build_images
from tests.support.metrics import parse, value
from tests.support.netbed import Namespace

pytestmark = pytest.mark.netns

WEB_OVERLAY = ROOT / "deploy" / "overlays" / "web-config"
NODE = "node-real"


@dataclass
class Scene:
    cluster: Cluster
    certs: Certs


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    images = build_images()
    certs = make_certs(tmp_path_factory.mktemp("certs"))
    with make_cluster() as c:
        c.start_kubelet(c.add_node(NODE))
        apply_overlay(c, c.dir / "overlay", base=WEB_OVERLAY, image=images.exporter_image)
        # The README's command, with the test's certificates.
        c.kubectl(
            "-n", "pingmesh", "create", "secret", "generic", "pingmesh-exporter-tls",
            f"--from-file=tls.crt={certs.path('server.crt')}",
            f"--from-file=tls.key={certs.path('server.key')}",
            f"--from-file=ca.crt={certs.path('ca.crt')}",
        )  # fmt: skip
        # Ready only once the kubelet's HTTPS readiness probe passes.
        wait_ready_pods(c, 1, timeout=240)
        yield Scene(c, certs)


def https_get(
    ns: Namespace,
    host: str,
    certs: Certs,
    path: str,
    cert: str | None = "client",
    password: str | None = None,
) -> tuple[int, bytes]:
    """GET over the pod network from inside ns, verifying the server against the CA under
    the name the certificate holds."""
    ctx = ssl.create_default_context(cafile=str(certs.path("ca.crt")))
    if cert is not None:
        ctx.load_cert_chain(str(certs.path(f"{cert}.crt")), str(certs.path(f"{cert}.key")))

    class Conn(http.client.HTTPSConnection):
        def connect(self) -> None:
            raw = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
            raw.settimeout(10)
            raw.connect((host, 9871))
            self.sock = ctx.wrap_socket(raw, server_hostname=SERVER_NAME)

    conn = Conn(host, 9871, timeout=10)
    headers = {}
    if password is not None:
        token = base64.b64encode(f"{certs.user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _pod(scene: Scene) -> dict[str, Any]:
    return pod_on(scene.cluster, NODE)


def test_the_kubelet_probes_pass_over_https_without_a_client_certificate(scene: Scene) -> None:
    pod = _pod(scene)
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] is True and status["restartCount"] == 0
    node = scene.cluster.nodes[NODE].ns
    ip = pod["status"]["podIP"]
    assert https_get(node, ip, scene.certs, "/readyz", cert=None)[0] == 200
    assert https_get(node, ip, scene.certs, "/healthz", cert=None)[0] == 200


def test_metrics_need_the_client_certificate(scene: Scene) -> None:
    pod = _pod(scene)
    node = scene.cluster.nodes[NODE].ns
    ip = pod["status"]["podIP"]
    code, body = https_get(node, ip, scene.certs, "/metrics")
    assert code == 200
    s = parse(body.decode())
    assert value(s, "pingmesh_web_config_last_reload_successful") == 1
    assert https_get(node, ip, scene.certs, "/metrics", cert=None)[0] == 401
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(node, ip, scene.certs, "/metrics", cert="untrusted")
    code, body = https_get(node, ip, scene.certs, "/metrics")
    s = parse(body.decode())
    assert value(s, "pingmesh_web_requests_unauthorized_total", reason="missing_certificate") >= 1
    assert (
        value(s, "pingmesh_web_tls_handshake_failures_total", reason="certificate_untrusted") >= 1
    )


def test_a_password_added_to_the_secret_is_taken_without_a_restart(
    scene: Scene, tmp_path: Path
) -> None:
    c, certs = scene.cluster, scene.certs
    before = _pod(scene)
    doc = yaml.safe_load((WEB_OVERLAY / "web-config.yml").read_text())
    doc["basic_auth_users"] = {
        certs.user: bcrypt.hashpw(b"cluster-secret", bcrypt.gensalt(10)).decode()
    }
    web = tmp_path / "web-config.yml"
    web.write_text(yaml.safe_dump(doc))
    secret = c.kubectl(
        "-n", "pingmesh", "create", "secret", "generic", "pingmesh-exporter-web-config",
        f"--from-file=web-config.yml={web}", "--dry-run=client", "-o", "yaml",
    ).stdout  # fmt: skip
    c.kubectl("apply", "-f", "-", input=secret)
    node = c.nodes[NODE].ns
    ip = before["status"]["podIP"]

    def refused_without_password() -> bool:
        try:
            return https_get(node, ip, certs, "/metrics")[0] == 401
        except (OSError, http.client.HTTPException):
            return False

    # The kubelet rewrites a Secret volume on its next sync of the pod (a minute or so).
    c.wait_for(refused_without_password, "the new web configuration in force", 180, interval=1)
    code, body = https_get(node, ip, certs, "/metrics", password="cluster-secret")
    assert code == 200
    s = parse(body.decode())
    assert value(s, "pingmesh_web_config_reloads_total", result="success") == 2
    assert https_get(node, ip, certs, "/metrics", password="wrong")[0] == 401
    # The probes still pass, and it is the same container.
    pods = wait_ready_pods(c, 1, timeout=30)
    after = pods[0]
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0
