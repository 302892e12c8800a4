"""The TLS edge: an ssl.SSLContext from a TlsServerConfig, the server side of one handshake,
and why a handshake failed, in a few words fit for a label."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from exporter.web.config import Pem, TlsServerConfig, WebConfigError

VERSIONS = {
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
VERIFY = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}

# Why a handshake failed: the label values of pingmesh_web_tls_handshake_failures_total.
REASONS = (
    "certificate_expired",
    "certificate_untrusted",
    "certificate_invalid",
    "certificate_missing",
    "certificate_not_allowed",
    "protocol",
    "timeout",
)
# OpenSSL's X509_V_ERR codes.
_EXPIRED = {9, 10}  # not yet valid, expired
_UNTRUSTED = {2, 18, 19, 20, 21}  # no issuer, self-signed, no local issuer, no chain


@contextmanager
def _pem_path(pem: Pem) -> Iterator[str]:
    """A path OpenSSL can read: the file itself, or inline PEM in an anonymous memory file
    (the pod's root file system is read-only, and a key never touches a disk)."""
    if pem.path is not None:
        yield pem.path
        return
    assert pem.inline is not None
    fd = os.memfd_create("pingmesh-web-pem", os.MFD_CLOEXEC)
    try:
        os.write(fd, pem.inline.encode())
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def server_context(cfg: TlsServerConfig, certificate_optional: bool = False) -> ssl.SSLContext:
    """The context, with every file read now: WebConfigError naming the key when one is
    missing or unusable. certificate_optional turns RequireAndVerifyClientCert into verify
    if given, for a caller that requires the certificate per request instead (the kubelet's
    probes present none)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = VERSIONS[cfg.min_version]
    ctx.maximum_version = VERSIONS[cfg.max_version]
    key_name = "key_file" if cfg.key.path is not None else "key"
    cert_name = "cert_file" if cfg.cert.path is not None else "cert"
    # OpenSSL's error does not say which file it could not open: each is tried first.
    for name, pem in (
        ("cert_file", cfg.cert),
        ("key_file", cfg.key),
        ("client_ca_file", cfg.client_ca),
    ):
        if pem is not None and pem.path is not None:
            try:
                with open(pem.path, "rb"):
                    pass
            except OSError as exc:
                raise WebConfigError(f"tls_server_config.{name}", f"cannot read: {exc}") from None
    try:
        with _pem_path(cfg.cert) as cert, _pem_path(cfg.key) as key:
            ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise WebConfigError(
            f"tls_server_config.{cert_name}",
            f"certificate and {key_name} unusable together: {exc}",
        ) from None
    ctx.verify_mode = VERIFY[cfg.client_auth]
    if certificate_optional and ctx.verify_mode == ssl.CERT_REQUIRED:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    if cfg.client_ca is not None:
        name = "client_ca_file" if cfg.client_ca.path is not None else "client_ca"
        try:
            if cfg.client_ca.path is not None:
                ctx.load_verify_locations(cafile=cfg.client_ca.path)
            else:
                ctx.load_verify_locations(cadata=cfg.client_ca.inline)
        except (ssl.SSLError, OSError) as exc:
            raise WebConfigError(f"tls_server_config.{name}", f"unusable: {exc}") from None
        if not ctx.get_ca_certs():
            raise WebConfigError(f"tls_server_config.{name}", "holds no CA certificate")
    if cfg.ciphers:
        try:
            ctx.set_ciphers(":".join(cfg.ciphers))
        except ssl.SSLError as exc:
            raise WebConfigError("tls_server_config.cipher_suites", str(exc)) from None
    if cfg.prefer_server_ciphers:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if cfg.curve is not None:
        try:
            ctx.set_ecdh_curve(cfg.curve)
        except (ssl.SSLError, ValueError) as exc:
            raise WebConfigError("tls_server_config.curve_preferences", str(exc)) from None
    # HTTP/1.1 only: http.server speaks nothing else.
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def client_context(cfg: TlsServerConfig) -> ssl.SSLContext:
    """The context an exporter asks its peers' /api/v1/view with (the mesh page): the peers
    serve the same configuration, so it presents its own certificate as the client
    certificate and trusts the client CA, when there is one, for the peers' certificates
    (one CA signs both, as a cert-manager issuer does); without a client CA the peer's
    certificate is not verified. Peers are asked by pod IP, which certificates seldom
    name: the name is never checked. Called after server_context() has read every file."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = VERSIONS[cfg.min_version]
    ctx.maximum_version = VERSIONS[cfg.max_version]
    ctx.check_hostname = False
    with _pem_path(cfg.cert) as cert, _pem_path(cfg.key) as key:
        ctx.load_cert_chain(cert, key)
    if cfg.client_ca is None:
        ctx.verify_mode = ssl.CERT_NONE
    elif cfg.client_ca.path is not None:
        ctx.load_verify_locations(cafile=cfg.client_ca.path)
    else:
        ctx.load_verify_locations(cadata=cfg.client_ca.inline)
    return ctx


class HandshakeFailed(Exception):
    """A client whose handshake failed, with the reason (one of REASONS)."""

    def __init__(self, reason: str, detail: str, conn: socket.socket) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.conn = conn  # still open: closed by whoever counts the failure


class ClientGone(Exception):
    """The client closed or reset before the handshake ended: the peers' TCP probes connect
    and reset at once, which is their normal end, neither counted nor logged above debug."""

    def __init__(self, detail: str, conn: socket.socket) -> None:
        super().__init__(detail)
        self.conn = conn


def classify(exc: BaseException) -> str:
    """The reason a failed server-side handshake is counted under."""
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _EXPIRED:
            return "certificate_expired"
        if exc.verify_code in _UNTRUSTED:
            return "certificate_untrusted"
        return "certificate_invalid"
    if isinstance(exc, ssl.SSLError) and exc.reason in (
        "PEER_DID_NOT_RETURN_A_CERTIFICATE",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    ):
        return "certificate_missing"
    return "protocol"


def san_allowed(peer: dict[str, Any] | None, allowed: tuple[str, ...]) -> bool:
    """Whether the verified client certificate has a subject alternative name (DNS, IP,
    e-mail or URI) exactly in the allowed list."""
    if peer is None:
        return False
    return any(value in allowed for _, value in peer.get("subjectAltName", ()))


def handshake(
    ctx: ssl.SSLContext, sock: socket.socket, timeout: float, allowed_sans: tuple[str, ...]
) -> ssl.SSLSocket:
    """The server side of one handshake, in the connection's own thread, bounded by timeout.
    HandshakeFailed or ClientGone; the caller closes the socket then (after counting, so
    that a client who sees the close finds the failure counted)."""
    sock.settimeout(timeout)
    # TLS writes each flight and record on its own: with Nagle's algorithm the second small
    # write of a flight waits for the peer's delayed ACK (tens of milliseconds a scrape).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    try:
        tls.do_handshake()
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError) as exc:
        raise ClientGone(str(exc), tls) from None
    except (ssl.SSLError, OSError) as exc:
        raise HandshakeFailed(classify(exc), str(exc), tls) from None
    # Without a certificate (an optional one, for the probes) the request decides.
    peer = tls.getpeercert()
    if allowed_sans and peer and not san_allowed(peer, allowed_sans):
        raise HandshakeFailed(
            "certificate_not_allowed", "no subject alternative name in client_allowed_sans", tls
        )
    tls.settimeout(None)
    return tls
