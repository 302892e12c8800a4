"""What exporter/discovery/kubeapi.py does at the HTTP edge, where no API server is needed or a
real one cannot produce the fault: its settings (kubeconfig and service account), its Accept
headers, urllib3's retries turned off, a refused connection, a stream that goes silent after
its headers, a server that ignores a watch-list's sendInitialEvents.

The rest of the edge (metadata-only lists and watches, label selectors) is tested on the real
kube-apiserver in tests/test_cluster_kubeapi.py.
"""

from __future__ import annotations

import http.server
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.config import ConfigError, KubernetesSettings
from exporter.discovery.api import ConnectionFailed, Resource
from exporter.discovery.kubeapi import (
    METADATA_LIST,
    METADATA_OBJECT,
    Configuration,
    KubeApi,
    TokenSource,
    accept_header,
    load_configuration,
)

NS = "monitoring"
SEL = "app.kubernetes.io/name=pingmesh-exporter"


def configuration(port: int) -> Configuration:
    return Configuration(host=f"http://127.0.0.1:{port}")


def test_settings_errors_name_the_cause(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--kubeconfig: no such file"):
        load_configuration(KubernetesSettings(kubeconfig=str(tmp_path / "nope")))
    bad = tmp_path / "kubeconfig"
    bad.write_text("this: [is not a kubeconfig")
    with pytest.raises(ConfigError, match="--kubeconfig: cannot use"):
        load_configuration(KubernetesSettings(kubeconfig=str(bad)))
    with pytest.raises(ConfigError, match="no Kubernetes credentials"):
        load_configuration(KubernetesSettings())


def test_accept_header_asks_for_a_list_only_on_lists() -> None:
    meta = Resource("nodes", metadata_only=True)
    assert accept_header(meta, watch=False) == METADATA_LIST
    assert accept_header(meta, watch=True) == METADATA_OBJECT
    assert "as=PartialObjectMetadataList;" in METADATA_LIST
    assert "as=PartialObjectMetadata;" in METADATA_OBJECT
    assert accept_header(Resource("pods", NS, SEL), watch=True) is None
    assert accept_header(Resource("pods", NS, SEL), watch=False) is None


def test_configuration_disables_urllib3_retries(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    cfg = load_configuration(KubernetesSettings(kubeconfig=str(kubeconfig)))
    assert cfg.retries is False
    assert cfg.host == "http://127.0.0.1:1"
    assert cfg.token is not None and cfg.token.get() == "t"
    api = KubeApi(configuration(1))  # also for a configuration made elsewhere
    retries = api._pool.connection_pool_kw["retries"]
    assert retries.total is False  # urllib3's Retry(False): raise at once, no retry


def kubeconfig_with(
    tmp_path: Path, user: str, cluster: str = "server: 'https://127.0.0.1:1'"
) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{{cluster}}}}}]\n"
        f"users: [{{name: u, user: {{{user}}}}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    return path


@pytest.mark.parametrize(
    ("user", "what"),
    [
        ("exec: {command: aws, apiVersion: client.authentication.k8s.io/v1}", "exec credential"),
        ("auth-provider: {name: oidc}", "auth-provider"),
        ("username: a, password: b", "basic authentication"),
    ],
)
def test_kubeconfig_plugins_are_refused_with_the_remedy(
    tmp_path: Path, user: str, what: str
) -> None:
    path = kubeconfig_with(tmp_path, user)
    with pytest.raises(ConfigError, match=f"--kubeconfig: .*{what}.*kubectl create token"):
        load_configuration(KubernetesSettings(kubeconfig=str(path)))


def test_kubeconfig_tls_settings(tmp_path: Path) -> None:
    insecure = kubeconfig_with(
        tmp_path, "token: t", "server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true"
    )
    cfg = load_configuration(KubernetesSettings(kubeconfig=str(insecure)))
    assert cfg.ssl_context is not None and cfg.ssl_context.verify_mode == ssl.CERT_NONE
    missing_ca = kubeconfig_with(
        tmp_path, "token: t", "server: 'https://127.0.0.1:1', certificate-authority: nope.crt"
    )
    with pytest.raises(ConfigError, match="--kubeconfig: cannot use"):
        load_configuration(KubernetesSettings(kubeconfig=str(missing_ca)))
    half_cert = kubeconfig_with(tmp_path, "client-certificate: a.crt")
    with pytest.raises(ConfigError, match="both the certificate and its key"):
        load_configuration(KubernetesSettings(kubeconfig=str(half_cert)))


def test_token_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    """Bound service-account tokens rotate: the kubelet swaps the projected file's symlink."""
    data = tmp_path / "..data"
    data.mkdir()
    (data / "token").write_text("first\n")
    link = tmp_path / "token"
    link.symlink_to(data / "token")
    source = TokenSource(path=str(link))
    assert source.get() == "first"
    fresh = tmp_path / "..data2"
    fresh.mkdir()
    (fresh / "token").write_text("second")
    tmp_link = tmp_path / "token.tmp"
    tmp_link.symlink_to(fresh / "token")
    tmp_link.replace(link)
    assert source.get() == "second"
    link.unlink()  # mid-rotation: the last token read stays in use
    assert source.get() == "second"


def closed_port() -> int:
    """A port nothing listens on: the kernel refuses connections to it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_connection_failure_surfaces_at_once_without_urllib3_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = KubeApi(configuration(closed_port()))
    with caplog.at_level(logging.DEBUG, logger="urllib3"), pytest.raises(ConnectionFailed):
        api.list(Resource("pods", NS, SEL), 5.0)
    # urllib3 logs each retry it makes; none may be made (the reflector backs off itself).
    assert not any("Retrying" in m for m in caplog.messages)


@pytest.fixture
def silent_stream() -> Iterator[int]:
    """The smallest HTTP stand-in: answers one request with the headers of a chunked 200
    (as a watch starts) and then sends nothing. A real API server always sends bookmarks
    or ends the watch; a dead peer or a stuck proxy does this."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        conn, _ = server.accept()
        held.append(conn)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        for conn in held:
            conn.close()
        server.close()
        thread.join(5)


def test_silent_watch_stream_fails_after_the_read_timeout(silent_stream: int) -> None:
    api = KubeApi(configuration(silent_stream))
    watch = api.watch(Resource("pods", NS, SEL), "1", 300, read_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed):
        list(watch.events())
    assert 0.9 <= time.monotonic() - started < 5


@pytest.fixture
def pre_watchlist_server() -> Iterator[tuple[int, list[str]]]:
    """A stand-in for an API server older than 1.27, which no real server here can be: it
    ignores sendInitialEvents, so a watch-list is a plain watch (an ADDED event, then a
    bookmark without the k8s.io/initial-events-end annotation), and it answers LISTs."""
    paths: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            paths.append(self.path)
            pod = {"metadata": {"name": "p", "namespace": NS, "resourceVersion": "7"}}
            if "watch=true" in self.path:
                lines = [
                    {"type": "ADDED", "object": pod},
                    {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "8"}}},
                ]
                body = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
            else:
                body = json.dumps({"metadata": {"resourceVersion": "9"}, "items": [pod]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], paths
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_server_that_ignores_send_initial_events_gets_paginated_lists(
    pre_watchlist_server: tuple[int, list[str]],
) -> None:
    port, paths = pre_watchlist_server
    api = KubeApi(configuration(port))
    items, rv = api.list(Resource("pods", NS, SEL), 5.0)
    assert [obj["metadata"]["name"] for obj in items] == ["p"]
    assert rv == "9"  # the LIST's, not the plain watch's bookmark
    assert "sendInitialEvents=true" in paths[0]
    assert "watch" not in paths[1] and "resourceVersion" not in paths[1]
    api.list(Resource("pods", NS, SEL), 5.0)
    assert len(paths) == 3 and "watch" not in paths[2]  # no second try at streaming
