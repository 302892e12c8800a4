"""What exporter/discovery/kubeapi.py does at the HTTP edge, where no API server is needed or a
real one cannot produce the fault: its settings, its Accept headers, urllib3's retries turned
off, a refused connection, a stream that goes silent after its headers.

The rest of the edge (metadata-only lists and watches, label selectors) is tested on the real
kube-apiserver in tests/test_cluster_kubeapi.py.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from exporter.config import ConfigError, KubernetesSettings
from exporter.discovery.api import ConnectionFailed, Resource
from exporter.discovery.kubeapi import (
    METADATA_LIST,
    METADATA_OBJECT,
    KubeApi,
    accept_header,
    load_configuration,
)

NS = "monitoring"
SEL = "app.kubernetes.io/name=pingmesh-exporter"


def configuration(port: int) -> client.Configuration:
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{port}"
    return cfg


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
    api = KubeApi(configuration(1))  # also for a configuration made elsewhere
    retries = api._api_client.rest_client.pool_manager.connection_pool_kw["retries"]
    assert retries.total is False  # urllib3's Retry(False): raise at once, no retry


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
