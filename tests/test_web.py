"""--web.config.file: the parser and the basic-auth cache as pure code, then the HTTP server
in-process over loopback with certificates made by openssl: client certificates good,
expired, untrusted and missing, passwords right and wrong, the probes' exemption, reloads
good and bad, and a silent client that must not hold up the others."""

from __future__ import annotations

import asyncio
import base64
import http.client
import logging
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from exporter.app import EXIT_CONFIG, App
from exporter.config import MeshPageSettings, parse_settings
from exporter.http import Health, HttpServer
from exporter.metrics.web import WebCollector
from exporter.pages.site import Site
from exporter.web.auth import BasicAuth, parse_basic
from exporter.web.config import CIPHER_SUITES, WebConfigError, parse_text
from exporter.web.guard import WebGuard
from exporter.web.tls import REASONS
from tests.support.certs import Certs, make_certs
from tests.support.views import FixedView, free_port, mesh_views, peer_address

HASH = "$2y$10$" + "a" * 53  # well-formed; matches no password


# ----- the parser (pure) ----------------------------------------------------------------------


def test_a_full_file_parses_into_values() -> None:
    cfg = parse_text(
        f"""
tls_server_config:
  cert_file: /certs/tls.crt
  key_file: /certs/tls.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: /certs/ca.crt
  client_allowed_sans: [prometheus.monitoring.svc]
  min_version: TLS13
  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
  prefer_server_cipher_suites: false
  curve_preferences: [X25519]
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
  alice: '{HASH}'
"""
    )
    assert cfg.tls is not None
    assert (cfg.tls.cert.path, cfg.tls.key.path) == ("/certs/tls.crt", "/certs/tls.key")
    assert cfg.tls.client_auth == "RequireAndVerifyClientCert"
    assert cfg.tls.client_allowed_sans == ("prometheus.monitoring.svc",)
    assert (cfg.tls.min_version, cfg.tls.max_version) == ("TLS13", "TLS13")
    assert cfg.tls.ciphers == ("ECDHE-RSA-AES128-GCM-SHA256",)
    assert cfg.tls.prefer_server_ciphers is False
    assert cfg.tls.curve == "X25519"
    assert cfg.files == ("/certs/tls.crt", "/certs/tls.key", "/certs/ca.crt")
    assert dict(cfg.users) == {"alice": HASH}
    assert cfg.headers == (
        ("X-Frame-Options", "deny"),
        ("Strict-Transport-Security", "max-age=31536000"),
    )


def test_an_empty_file_is_plain_http_without_auth() -> None:
    assert parse_text("") == parse_text("{}") == parse_text("basic_auth_users:\n")
    assert parse_text("").tls is None and not parse_text("").users


def test_every_go_cipher_suite_is_known_to_this_openssl() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers(":".join(CIPHER_SUITES.values()))
    have = {c["name"] for c in ctx.get_ciphers()}
    assert set(CIPHER_SUITES.values()) <= have


TLS = "tls_server_config:\n  cert_file: c\n  key_file: k\n"
PREFER = "tls_server_config.prefer_server_cipher_suites"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[]", "(file)"),
        ("a: [", "(file)"),
        ("web: {}", "web"),
        ("rate_limit: {interval: 1s, burst: 20}", "rate_limit"),
        ("auth_excluded_paths: [/metrics]", "auth_excluded_paths"),
        ("tls_server_config: {key_file: k}", "tls_server_config.cert_file"),
        ("tls_server_config: {cert_file: c}", "tls_server_config.key_file"),
        ("tls_server_config: {cert_file: c, cert: x, key_file: k}", "tls_server_config.cert_file"),
        (TLS + "  client_auth_type: RequireAnyClientCert", "tls_server_config.client_auth_type"),
        (TLS + "  client_auth_type: RequestClientCert", "tls_server_config.client_auth_type"),
        (TLS + "  client_auth_type: Always", "tls_server_config.client_auth_type"),
        (TLS + "  client_auth_type: VerifyClientCertIfGiven", "tls_server_config.client_ca_file"),
        (TLS + "  client_allowed_sans: [a]", "tls_server_config.client_allowed_sans"),
        (TLS + "  min_version: SSL3", "tls_server_config.min_version"),
        (TLS + "  min_version: TLS10", "tls_server_config.min_version"),
        (TLS + "  max_version: TLS11", "tls_server_config.max_version"),
        (TLS + "  min_version: TLS13\n  max_version: TLS12", "tls_server_config.min_version"),
        (TLS + "  cipher_suites: [TLS_AES_128_GCM_SHA256]", "tls_server_config.cipher_suites"),
        (TLS + "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]", "tls_server_config.cipher_suites"),
        (TLS + "  curve_preferences: [X25519, CurveP256]", "tls_server_config.curve_preferences"),
        (TLS + "  curve_preferences: [X448]", "tls_server_config.curve_preferences"),
        (TLS + "  prefer_server_cipher_suites: 2", PREFER),
        (TLS + "  session_tickets: false", "tls_server_config.session_tickets"),
        ("basic_auth_users: {alice: secret}", "basic_auth_users.alice"),
        ("basic_auth_users: {alice: 12}", "basic_auth_users.alice"),
        ("basic_auth_users: {alice: '$2y$03$" + "a" * 53 + "'}", "basic_auth_users.alice"),
        ("basic_auth_users: {'a:b': '" + HASH + "'}", "basic_auth_users.a:b"),
        ("http_server_config: {headers: {Server: x}}", "http_server_config.headers.Server"),
        (
            "http_server_config: {headers: {X-Frame-Options: allow}}",
            "http_server_config.headers.X-Frame-Options",
        ),
        ("http_server_config: {http2: yes please}", "http_server_config.http2"),
        ("http_server_config: {max_conns: 3}", "http_server_config.max_conns"),
    ],
)  # fmt: skip
def test_what_cannot_be_served_is_refused_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(WebConfigError) as err:
        parse_text(text)
    assert err.value.key == key
    assert str(err.value).startswith(f"{key}: ")


# ----- basic auth and its cache (pure but for bcrypt) ----------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Basic " + base64.b64encode(b"alice:pa:ss").decode(), ("alice", "pa:ss")),
        ("basic " + base64.b64encode(b"alice:").decode(), ("alice", "")),
        ("Basic " + base64.b64encode(b"alice").decode(), None),
        ("Bearer abc", None),
        ("Basic !!!", None),
        ("Basic " + base64.b64encode(b"\xff:x").decode(), None),
        ("", None),
        (None, None),
    ],
)
def test_basic_credentials_are_parsed(header: str | None, expected: object) -> None:
    assert parse_basic(header) == expected


@pytest.fixture(scope="module")
def alice() -> dict[str, str]:
    return {"alice": bcrypt.hashpw(b"right", bcrypt.gensalt(4)).decode()}


def test_a_verified_password_is_not_hashed_again(alice: dict[str, str]) -> None:
    auth = BasicAuth()
    assert auth.verify(alice, "alice", "right") and auth.checks == 1
    for _ in range(10):
        assert auth.verify(alice, "alice", "right")
    assert auth.checks == 1
    # Another password, a wrong one cached as wrong, another user: each a check of its own.
    assert not auth.verify(alice, "alice", "wrong")
    assert not auth.verify(alice, "alice", "wrong")
    assert not auth.verify(alice, "mallory", "right")
    assert auth.checks == 3


def test_a_changed_hash_is_a_new_check(alice: dict[str, str]) -> None:
    auth = BasicAuth()
    assert auth.verify(alice, "alice", "right")
    changed = {"alice": bcrypt.hashpw(b"new", bcrypt.gensalt(4)).decode()}
    assert not auth.verify(changed, "alice", "right")
    assert auth.verify(changed, "alice", "new")
    assert auth.checks == 3


def test_the_cache_is_bounded_and_holds_no_password(alice: dict[str, str]) -> None:
    calls: list[str] = []

    def check(hashed: bytes, password: str) -> bool:
        calls.append(password)
        return password == "right"

    auth = BasicAuth(size=4, check=check)
    for i in range(10):
        auth.verify(alice, "alice", f"guess{i}")
    assert len(auth) == 4
    auth.verify(alice, "alice", "right")
    keys: list[bytes] = list(auth._cache)
    assert all(len(k) == 32 and b"right" not in k and b"guess" not in k for k in keys)
    # The oldest went first: guess0 is checked again, guess9 is not.
    auth.verify(alice, "alice", "guess9")
    auth.verify(alice, "alice", "guess0")
    assert calls[-1] == "guess0" and calls.count("guess9") == 1


def test_an_unknown_user_is_checked_against_a_decoy_hash(alice: dict[str, str]) -> None:
    seen: list[bytes] = []

    def check(hashed: bytes, password: str) -> bool:
        seen.append(hashed)
        return True  # even a "match" on the decoy lets nobody in

    auth = BasicAuth(check=check)
    assert not auth.verify(alice, "mallory", "anything")
    assert seen and seen[0].startswith(b"$2b$10$")


# ----- the server, in-process over loopback ---------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def web_yaml(certs: Certs, client_auth: str = "RequireAndVerifyClientCert", **extra: str) -> str:
    d = certs.dir
    lines = [
        "tls_server_config:",
        f"  cert_file: {extra.pop('cert', d / 'server.crt')}",
        f"  key_file: {extra.pop('key', d / 'server.key')}",
        f"  client_auth_type: {client_auth}",
        f"  client_ca_file: {d / 'ca.crt'}",
        "basic_auth_users:",
        f"  {certs.user}: '{extra.pop('hash', certs.password_hash)}'",
        "http_server_config:",
        "  headers:",
        "    X-Content-Type-Options: nosniff",
    ]
    return "\n".join(lines) + "\n" + "".join(extra.values())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def web_file(tmp_path: Path, certs: Certs) -> Path:
    path = tmp_path / "web-config.yml"
    path.write_text(web_yaml(certs))
    return path


def serve(guard: WebGuard) -> HttpServer:
    health = Health()
    health.ready = lambda: (True, "ready")

    def render(accept: str) -> tuple[str, list[bytes]]:
        return "text/plain; version=0.0.4", [b"up_here 1\n"]

    server = HttpServer("127.0.0.1", 0, "/metrics", render, health, guard)
    server.start()
    return server


def guarded(
    web_file: Path, clock: Clock, exempt_probes: bool
) -> Iterator[tuple[WebGuard, HttpServer]]:
    guard = WebGuard(str(web_file), exempt_probes, clock=clock, handshake_timeout=0.5)
    srv = serve(guard)
    try:
        yield guard, srv
    finally:
        srv.stop()


@pytest.fixture
def server(web_file: Path, clock: Clock) -> Iterator[tuple[WebGuard, HttpServer]]:
    yield from guarded(web_file, clock, exempt_probes=False)


@pytest.fixture
def probe_server(web_file: Path, clock: Clock) -> Iterator[tuple[WebGuard, HttpServer]]:
    """The probes exempt: --web.auth-exempt-probes."""
    yield from guarded(web_file, clock, exempt_probes=True)


def client_context(certs: Certs, cert: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.path("ca.crt")))
    if cert is not None:
        ctx.load_cert_chain(str(certs.path(f"{cert}.crt")), str(certs.path(f"{cert}.key")))
    return ctx


def fetch(
    port: int,
    certs: Certs,
    path: str = "/metrics",
    cert: str | None = "client",
    password: str | None = "right",
) -> tuple[int, dict[str, str], bytes]:
    """One HTTPS request; the password "right" stands for the certs' own."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1", port, context=client_context(certs, cert), timeout=5
    )
    headers = {}
    if password is not None:
        pw = certs.password if password == "right" else password
        token = base64.b64encode(f"{certs.user}:{pw}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def collected(guard: WebGuard) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in WebCollector(guard).collect():
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_the_right_client_and_password_get_the_metrics(
    server: tuple[WebGuard, HttpServer], certs: Certs
) -> None:
    guard, srv = server
    code, headers, body = fetch(srv.port, certs)
    assert (code, body) == (200, b"up_here 1\n")
    assert headers["x-content-type-options"] == "nosniff"
    # Keep-alive and fresh connections alike: bcrypt ran once for all of them.
    for _ in range(5):
        assert fetch(srv.port, certs)[0] == 200
    assert guard.auth.checks == 1


@pytest.mark.parametrize(
    ("password", "reason"),
    [(None, "missing_credentials"), ("wrong", "wrong_credentials")],
)
def test_a_wrong_or_missing_password_is_401_and_counted(
    server: tuple[WebGuard, HttpServer], certs: Certs, password: str | None, reason: str
) -> None:
    guard, srv = server
    code, headers, body = fetch(srv.port, certs, password=password)
    assert code == 401 and body == b"unauthorized\n"
    assert headers["www-authenticate"].startswith("Basic")
    for path in ("/", "/nothing"):  # every path, not only the metrics
        assert fetch(srv.port, certs, path, password=password)[0] == 401
    got = collected(guard)
    assert got[("pingmesh_web_requests_unauthorized_total", (("reason", reason),))] == 3


@pytest.mark.parametrize(
    ("cert", "reason"),
    [
        ("expired", "certificate_expired"),
        ("untrusted", "certificate_untrusted"),
        (None, "certificate_missing"),
    ],
)
def test_a_bad_client_certificate_fails_the_handshake_and_is_counted(
    server: tuple[WebGuard, HttpServer],
    certs: Certs,
    cert: str | None,
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard, srv = server
    with pytest.raises((ssl.SSLError, ConnectionError)):
        fetch(srv.port, certs, cert=cert)

    def logged() -> bool:
        return any(reason in r.getMessage() for r in caplog.records if r.name == "exporter.web")

    # The client may read the server's alert before the server's thread has counted it.
    deadline = time.monotonic() + 5
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert logged()
    assert {r: n for r, n in guard.counters.handshake_failures.items() if n} == {reason: 1}
    got = collected(guard)
    assert {labels[0][1] for name, labels in got if "handshake" in name} == set(REASONS)


def test_the_probes_may_skip_auth_but_not_tls(
    probe_server: tuple[WebGuard, HttpServer], certs: Certs
) -> None:
    """As the kubelet probes: HTTPS, no password, no client certificate."""
    guard, srv = probe_server
    for cert in ("client", None):
        assert fetch(srv.port, certs, "/readyz", cert=cert, password=None)[0] == 200
        assert fetch(srv.port, certs, "/healthz", cert=cert, password=None)[0] == 200
    assert fetch(srv.port, certs, "/metrics", password=None)[0] == 401
    # Without a certificate nothing else is served, not even with the password.
    assert fetch(srv.port, certs, "/metrics", cert=None)[0] == 401
    assert fetch(srv.port, certs, "/", cert=None)[0] == 401
    assert guard.counters.denied == {
        "missing_credentials": 1,
        "wrong_credentials": 0,
        "missing_certificate": 2,
    }
    # A certificate that is given is still verified, for the probes too.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        fetch(srv.port, certs, "/readyz", cert="untrusted", password=None)


def test_without_the_exemption_the_probes_need_the_password(web_file: Path, certs: Certs) -> None:
    srv = serve(WebGuard(str(web_file)))
    try:
        assert fetch(srv.port, certs, "/readyz", password=None)[0] == 401
    finally:
        srv.stop()


def test_a_silent_client_holds_up_nobody_and_times_out(
    server: tuple[WebGuard, HttpServer], certs: Certs
) -> None:
    guard, srv = server
    with socket.create_connection(("127.0.0.1", srv.port)) as silent:
        started = time.monotonic()
        assert fetch(srv.port, certs)[0] == 200
        assert time.monotonic() - started < 0.4  # well inside the silent one's 0.5 s
        silent.settimeout(3)
        assert silent.recv(1) == b""  # the server gave up on it and closed
    assert guard.counters.handshake_failures["timeout"] == 1


def test_a_peer_tcp_probe_that_resets_at_once_is_not_a_failure(
    server: tuple[WebGuard, HttpServer], certs: Certs
) -> None:
    guard, srv = server
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    assert fetch(srv.port, certs)[0] == 200
    assert sum(guard.counters.handshake_failures.values()) == 0


def test_plain_http_to_the_tls_port_is_a_protocol_failure(
    server: tuple[WebGuard, HttpServer],
) -> None:
    guard, srv = server
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        conn.request("GET", "/metrics")
        conn.getresponse().read()
    conn.close()
    deadline = time.monotonic() + 5
    while guard.counters.handshake_failures["protocol"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert guard.counters.handshake_failures["protocol"] == 1


def test_a_changed_file_is_reloaded_and_a_bad_one_keeps_the_old(
    server: tuple[WebGuard, HttpServer],
    certs: Certs,
    web_file: Path,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard, srv = server
    assert fetch(srv.port, certs)[0] == 200
    new_hash = bcrypt.hashpw(b"rotated", bcrypt.gensalt(4)).decode()
    replace_file(web_file, web_yaml(certs, hash=new_hash))
    # Within a second of the change it is read: the check is rate-limited, not timed.
    assert fetch(srv.port, certs)[0] == 200
    clock.now += 1.0
    assert fetch(srv.port, certs)[0] == 401
    assert fetch(srv.port, certs, password="rotated")[0] == 200
    got = collected(guard)
    assert got[("pingmesh_web_config_reloads_total", (("result", "success"),))] == 2

    # A bad file: logged naming the flag and the key, counted, the previous one serves.
    replace_file(web_file, web_yaml(certs, "RequireAnyClientCert", hash=new_hash))
    clock.now += 1.0
    assert fetch(srv.port, certs, password="rotated")[0] == 200
    got = collected(guard)
    assert got[("pingmesh_web_config_reloads_total", (("result", "failure"),))] == 1
    assert got[("pingmesh_web_config_last_reload_successful", ())] == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(
        "--web.config.file" in m and "tls_server_config.client_auth_type" in m for m in errors
    )
    # Not tried again until the files change again; then a good one is taken.
    clock.now += 5.0
    fetch(srv.port, certs, password="rotated")
    assert guard.counters.reloads["failure"] == 1
    replace_file(web_file, web_yaml(certs))
    clock.now += 1.0
    assert fetch(srv.port, certs)[0] == 200
    assert collected(guard)[("pingmesh_web_config_last_reload_successful", ())] == 1


def test_turning_tls_off_in_a_reload_is_refused(
    server: tuple[WebGuard, HttpServer], certs: Certs, web_file: Path, clock: Clock
) -> None:
    guard, srv = server
    replace_file(web_file, f"basic_auth_users:\n  {certs.user}: '{certs.password_hash}'\n")
    clock.now += 1.0
    assert fetch(srv.port, certs)[0] == 200  # still TLS
    assert guard.counters.reloads["failure"] == 1


def test_a_rotated_certificate_is_served_to_new_connections(
    tmp_path: Path, certs: Certs, clock: Clock
) -> None:
    """The key and certificate files rewritten in place (as a Secret's update does through
    its symlinks): a new connection gets the new certificate without a restart."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(certs.path("server.crt").read_bytes())
    key.write_bytes(certs.path("server.key").read_bytes())
    web = tmp_path / "web.yml"
    web.write_text(web_yaml(certs, "NoClientCert", cert=str(cert), key=str(key)))
    guard = WebGuard(str(web), clock=clock)
    srv = serve(guard)
    try:
        first = served_certificate(srv.port)
        rotated = make_certs(tmp_path / "rotated")
        replace_file(cert, rotated.path("server.crt").read_text())
        replace_file(key, rotated.path("server.key").read_text())
        clock.now += 1.0
        assert served_certificate(srv.port) != first
        assert served_certificate(srv.port) == rotated.path("server.crt").read_text()
        assert guard.counters.reloads == {"success": 2, "failure": 0}
    finally:
        srv.stop()


def served_certificate(port: int) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return ssl.DER_cert_to_PEM_cert(der)


def replace_file(path: Path, text: str) -> None:
    """In one rename, as a ConfigMap or Secret volume does: the mtime and inode move."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    tmp.replace(path)


def test_client_allowed_sans_refuses_other_names(tmp_path: Path, certs: Certs) -> None:
    web = tmp_path / "web.yml"
    text = web_yaml(certs).replace(
        "basic_auth_users:", "  client_allowed_sans: [other.pingmesh.test]\nbasic_auth_users:"
    )
    web.write_text(text)
    guard = WebGuard(str(web))
    srv = serve(guard)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            fetch(srv.port, certs)
        web.write_text(text.replace("other.pingmesh.test", "prometheus.pingmesh.test"))
        guard.reload_now()
        assert fetch(srv.port, certs)[0] == 200
        assert guard.counters.handshake_failures["certificate_not_allowed"] == 1
    finally:
        srv.stop()


def test_inline_pem_is_served_without_a_file(tmp_path: Path, certs: Certs) -> None:
    def indent(name: str) -> str:
        return "".join(f"    {line}\n" for line in certs.path(name).read_text().splitlines())

    web = tmp_path / "web.yml"
    web.write_text(
        "tls_server_config:\n  cert: |\n"
        + indent("server.crt")
        + "  key: |\n"
        + indent("server.key")
    )
    srv = serve(WebGuard(str(web)))
    try:
        assert fetch(srv.port, certs, "/readyz", cert=None, password=None)[0] == 200
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        ({"cert": "/nonexistent/tls.crt"}, "tls_server_config.cert_file"),
        ({"key": "/nonexistent/tls.key"}, "tls_server_config.key_file"),
        ({"client_auth": "RequireAnyClientCert"}, "tls_server_config.client_auth_type"),
    ],
)
def test_a_bad_file_at_start_exits_2_naming_the_flag_and_the_key(
    tmp_path: Path,
    certs: Certs,
    caplog: pytest.LogCaptureFixture,
    edit: dict[str, Any],
    key: str,
) -> None:
    web = tmp_path / "web.yml"
    client_auth = edit.pop("client_auth", "RequireAndVerifyClientCert")
    web.write_text(web_yaml(certs, client_auth, **edit))
    settings = parse_settings(
        ["--web.listen-address=127.0.0.1:0", f"--web.config.file={web}"], environ={}
    )
    assert asyncio.run(App(settings).run()) == EXIT_CONFIG
    [message] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert message.startswith(f"flag --web.config.file {web}: {key}: "), message


def test_a_missing_file_at_start_exits_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = parse_settings(
        ["--web.listen-address=127.0.0.1:0", f"--web.config.file={tmp_path / 'none.yml'}"],
        environ={},
    )
    assert asyncio.run(App(settings).run()) == EXIT_CONFIG
    assert "flag --web.config.file" in caplog.text and "(file): cannot read" in caplog.text


def test_every_web_family_is_in_the_readme_metric_table(web_file: Path) -> None:
    from tests.test_dashboard import documented_metrics

    documented = documented_metrics()
    guard = WebGuard(str(web_file))
    for fam in WebCollector(guard).collect():
        name = fam.name + ("_total" if fam.type == "counter" else "")
        assert documented.get(name) == fam.type, name


def test_basic_auth_without_tls(tmp_path: Path, certs: Certs) -> None:
    """A file with users and no tls_server_config: plain HTTP, passwords still checked."""
    web = tmp_path / "web.yml"
    web.write_text(
        f"basic_auth_users:\n  {certs.user}: '{certs.password_hash}'\n"
        "http_server_config:\n  headers:\n    X-Frame-Options: sameorigin\n"
    )
    guard = WebGuard(str(web))
    srv = serve(guard)
    try:
        assert not guard.tls
        for password, code in ((certs.password, 200), ("wrong", 401), (None, 401)):
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
            headers = {}
            if password is not None:
                token = base64.b64encode(f"{certs.user}:{password}".encode()).decode()
                headers["Authorization"] = f"Basic {token}"
            conn.request("GET", "/metrics", headers=headers)
            resp = conn.getresponse()
            resp.read()
            conn.close()
            assert resp.status == code, password
            assert resp.getheader("X-Frame-Options") == "sameorigin"
    finally:
        srv.stop()


def test_the_mesh_page_asks_its_peers_over_tls_with_the_viewers_credentials(
    tmp_path: Path, certs: Certs
) -> None:
    """Two exporters with one web configuration (TLS, client certificates verified, a
    user): /mesh on one reads the other's /api/v1/view over HTTPS, presenting its own
    certificate and forwarding the viewer's password (the peer answers nothing without
    both)."""
    path = tmp_path / "peer-web-config.yml"
    path.write_text(
        web_yaml(certs, cert=str(certs.path("peer.crt")), key=str(certs.path("peer.key")))
    )
    views = mesh_views(2)
    port = free_port(peer_address(1))
    servers = []
    for n in (1, 2):
        guard = WebGuard(str(path))
        srv = HttpServer(peer_address(n), port, "/metrics", lambda a: ("", []), Health(), guard)
        srv.set_routes(
            Site(
                FixedView(views[n - 1]),
                MeshPageSettings(),
                "/metrics",
                port,
                ("pod",),
                client_tls=guard.client_tls,
            ).routes()
        )
        srv.start()
        servers.append(srv)
    try:
        ctx = client_context(certs, "client")
        ctx.check_hostname = False
        good = "Basic " + base64.b64encode(f"{certs.user}:{certs.password}".encode()).decode()

        def mesh(authorization: str) -> tuple[int, bytes]:
            conn = http.client.HTTPSConnection(peer_address(1), port, timeout=10, context=ctx)
            try:
                conn.request("GET", "/mesh", headers={"Authorization": authorization})
                resp = conn.getresponse()
                return resp.status, resp.read()
            finally:
                conn.close()

        status, page = mesh(good)
        assert status == 200
        assert b"no view from" not in page and page.count(b'data-s="') == 2
        # A page asked without the password is refused before any peer is asked.
        assert mesh("Basic " + base64.b64encode(b"nobody:wrong").decode())[0] == 401
    finally:
        for srv in servers:
            srv.stop()
