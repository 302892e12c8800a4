"""The web configuration file (`--web.config.file`), exporter-toolkit's format, parsed into
frozen values (pure: no file but the YAML text is read here, no ssl, no bcrypt).

What Python's ssl module cannot honour is refused with the key named, never ignored: a file
that asks for `RequireAnyClientCert` would otherwise be served with a weaker or a stronger
policy than the one its author wrote.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

ClientAuth = Literal["NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]
TlsVersion = Literal["TLS12", "TLS13"]

TLS_VERSIONS: tuple[TlsVersion, ...] = ("TLS12", "TLS13")
CLIENT_AUTH: tuple[ClientAuth, ...] = (
    "NoClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
# Go's crypto/tls policies that OpenSSL, through Python's ssl, cannot reproduce: it has no
# way to ask for a client certificate without verifying it against a CA.
UNSUPPORTED_CLIENT_AUTH = {
    "RequestClientCert": "asks for a certificate and never verifies it",
    "RequireAnyClientCert": "requires a certificate and never verifies it",
}

# Go's secure TLS 1.2 suites (crypto/tls CipherSuites()) by their OpenSSL names. TLS 1.3
# suites cannot be chosen in Go either.
CIPHER_SUITES: Mapping[str, str] = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
# Go's curve names by OpenSSL's.
CURVES: Mapping[str, str] = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
}

# The headers exporter-toolkit lets a file set, with the values it accepts (None: any).
HEADERS: Mapping[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}

# $2a$, $2b$ or $2y$, a two-digit cost, 22 characters of salt and 31 of hash.
BCRYPT_HASH = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")


class WebConfigError(ValueError):
    """A web configuration file that cannot be served as written; names the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class Pem:
    """A certificate, key or CA bundle: a file's path, or the PEM text given inline."""

    path: str | None = None
    inline: str | None = None


@dataclass(frozen=True)
class TlsServerConfig:
    """`tls_server_config`: what the server presents and what it asks of clients."""

    cert: Pem
    key: Pem
    client_auth: ClientAuth = "NoClientCert"
    client_ca: Pem | None = None
    client_allowed_sans: tuple[str, ...] = ()
    min_version: TlsVersion = "TLS12"
    max_version: TlsVersion = "TLS13"
    ciphers: tuple[str, ...] = ()  # OpenSSL names, in the file's order
    prefer_server_ciphers: bool = True
    curve: str | None = None  # OpenSSL name

    @property
    def files(self) -> tuple[str, ...]:
        """The files the context is made of: a change to any of them is a reload."""
        pems = (self.cert, self.key, self.client_ca)
        return tuple(p.path for p in pems if p is not None and p.path is not None)


@dataclass(frozen=True)
class WebConfig:
    """The whole file. Without `tls_server_config` the server speaks plain HTTP; without
    `basic_auth_users` it asks for no password."""

    tls: TlsServerConfig | None = None
    users: Mapping[str, str] = field(default_factory=dict)  # user -> bcrypt hash
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def files(self) -> tuple[str, ...]:
        return self.tls.files if self.tls is not None else ()


def parse_text(text: str) -> WebConfig:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WebConfigError("(file)", f"not YAML: {exc}") from None
    return parse(doc)


def parse(doc: Any) -> WebConfig:
    if doc is None:
        return WebConfig()
    top = _mapping(doc, "(file)")
    _only(
        top,
        "",
        {"tls_server_config", "http_server_config", "basic_auth_users"},
        {
            "rate_limit": "rate limiting is not implemented by this exporter",
            "auth_excluded_paths": "use --web.auth-exempt-probes for the kubelet's probes",
        },
    )
    tls = None
    if top.get("tls_server_config") is not None:
        tls = _tls(_mapping(top["tls_server_config"], "tls_server_config"))
    users = _users(top.get("basic_auth_users"))
    headers = _http(top.get("http_server_config"))
    return WebConfig(tls, users, headers)


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise WebConfigError(key or "(file)", "must be a mapping")
    return value


def _only(doc: Mapping[str, Any], prefix: str, known: set[str], refused: Mapping[str, str]) -> None:
    for key in doc:
        name = f"{prefix}{key}"
        if key in refused and doc[key] not in (None, [], {}):
            raise WebConfigError(name, f"not supported: {refused[key]}")
        if key not in known and key not in refused:
            raise WebConfigError(name, "unknown key")


def _text(doc: Mapping[str, Any], key: str, prefix: str) -> str | None:
    value = doc.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise WebConfigError(prefix + key, "must be a string")
    return value


def _strings(doc: Mapping[str, Any], key: str, prefix: str) -> tuple[str, ...]:
    value = doc.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise WebConfigError(prefix + key, "must be a list of strings")
    return tuple(value)


def _pem(doc: Mapping[str, Any], inline: str, path: str, prefix: str) -> Pem | None:
    text, file = _text(doc, inline, prefix), _text(doc, path, prefix)
    if text is not None and file is not None:
        raise WebConfigError(prefix + path, f"give {path} or {inline}, not both")
    if text is None and file is None:
        return None
    return Pem(path=file, inline=text)


def _version(doc: Mapping[str, Any], key: str, default: TlsVersion) -> TlsVersion:
    value = _text(doc, key, "tls_server_config.") or default
    if value in ("TLS10", "TLS11"):
        # Go's toolkit takes them; OpenSSL 3 at its default security level would refuse
        # every such handshake, so the file would say one floor and the server keep another.
        raise WebConfigError(
            f"tls_server_config.{key}",
            f"{value}: TLS 1.0 and 1.1 are refused by OpenSSL's security level (and "
            "deprecated by RFC 8996); use TLS12 or TLS13",
        )
    for v in TLS_VERSIONS:
        if v == value:
            return v
    raise WebConfigError(f"tls_server_config.{key}", f"{value!r}: one of {', '.join(TLS_VERSIONS)}")


def _tls(doc: Mapping[str, Any]) -> TlsServerConfig:
    p = "tls_server_config."
    _only(
        doc,
        p,
        {
            "cert",
            "cert_file",
            "key",
            "key_file",
            "client_ca",
            "client_ca_file",
            "client_auth_type",
            "client_allowed_sans",
            "min_version",
            "max_version",
            "cipher_suites",
            "prefer_server_cipher_suites",
            "curve_preferences",
        },
        {},
    )
    cert = _pem(doc, "cert", "cert_file", p)
    key = _pem(doc, "key", "key_file", p)
    if cert is None:
        raise WebConfigError(p + "cert_file", "missing: the server's certificate")
    if key is None:
        raise WebConfigError(p + "key_file", "missing: the server's private key")
    auth_text = _text(doc, "client_auth_type", p) or "NoClientCert"
    if auth_text in UNSUPPORTED_CLIENT_AUTH:
        raise WebConfigError(
            p + "client_auth_type",
            f"{auth_text} {UNSUPPORTED_CLIENT_AUTH[auth_text]}, which Python's ssl cannot do; "
            "use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file",
        )
    client_auth = next((a for a in CLIENT_AUTH if a == auth_text), None)
    if client_auth is None:
        raise WebConfigError(
            p + "client_auth_type", f"{auth_text!r}: one of {', '.join(CLIENT_AUTH)}"
        )
    client_ca = _pem(doc, "client_ca", "client_ca_file", p)
    if client_auth != "NoClientCert" and client_ca is None:
        raise WebConfigError(
            p + "client_ca_file", f"missing: {client_auth} verifies clients against this CA"
        )
    sans = _strings(doc, "client_allowed_sans", p)
    if sans and client_auth != "RequireAndVerifyClientCert":
        raise WebConfigError(
            p + "client_allowed_sans", "needs client_auth_type RequireAndVerifyClientCert"
        )
    lo, hi = _version(doc, "min_version", "TLS12"), _version(doc, "max_version", "TLS13")
    if TLS_VERSIONS.index(lo) > TLS_VERSIONS.index(hi):
        raise WebConfigError(p + "min_version", f"{lo} is above max_version {hi}")
    ciphers = []
    for name in _strings(doc, "cipher_suites", p):
        if name in TLS13_SUITES:
            raise WebConfigError(
                p + "cipher_suites", f"{name}: TLS 1.3 suites are fixed and cannot be chosen"
            )
        if name not in CIPHER_SUITES:
            raise WebConfigError(
                p + "cipher_suites", f"{name}: not one of Go's secure TLS 1.2 suites"
            )
        ciphers.append(CIPHER_SUITES[name])
    prefer = doc.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise WebConfigError(p + "prefer_server_cipher_suites", "must be true or false")
    curves = _strings(doc, "curve_preferences", p)
    for name in curves:
        if name not in CURVES:
            raise WebConfigError(p + "curve_preferences", f"{name}: one of {', '.join(CURVES)}")
    if len(curves) > 1:
        raise WebConfigError(
            p + "curve_preferences",
            "Python's ssl (before 3.15) sets one curve only; give one or none",
        )
    return TlsServerConfig(
        cert=cert,
        key=key,
        client_auth=client_auth,
        client_ca=client_ca,
        client_allowed_sans=sans,
        min_version=lo,
        max_version=hi,
        ciphers=tuple(ciphers),
        prefer_server_ciphers=prefer,
        curve=CURVES[curves[0]] if curves else None,
    )


def _users(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    doc = _mapping(value, "basic_auth_users")
    users = {}
    for user, hashed in doc.items():
        key = f"basic_auth_users.{user}"
        if not isinstance(hashed, str):
            raise WebConfigError(key, "must be a bcrypt hash (a string)")
        m = BCRYPT_HASH.match(hashed)
        if m is None:
            raise WebConfigError(key, "not a bcrypt hash ($2a$, $2b$ or $2y$, 60 characters)")
        if not 4 <= int(m.group(1)) <= 31:
            raise WebConfigError(key, f"bcrypt cost {m.group(1)} outside 4 to 31")
        if ":" in user:
            raise WebConfigError(key, "a user name cannot hold ':' (basic auth splits on it)")
        users[user] = hashed
    return users


def _http(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    p = "http_server_config."
    doc = _mapping(value, "http_server_config")
    _only(doc, p, {"headers", "http2"}, {})
    http2 = doc.get("http2", True)
    if not isinstance(http2, bool):
        raise WebConfigError(p + "http2", "must be true or false")
    # http2 is accepted either way: the server offers HTTP/1.1 only (no ALPN h2), which every
    # client that asks for HTTP/2 falls back to, so true and false are both honoured as far
    # as the client can tell.
    headers_doc = doc.get("headers")
    if headers_doc is None:
        return ()
    headers = _mapping(headers_doc, p + "headers")
    out = []
    for name, v in headers.items():
        key = f"{p}headers.{name}"
        if name not in HEADERS:
            raise WebConfigError(key, f"cannot be set; one of {', '.join(HEADERS)}")
        if v is None or v == "":
            continue
        if not isinstance(v, str):
            raise WebConfigError(key, "must be a string")
        allowed = HEADERS[name]
        if allowed is not None and v not in allowed:
            raise WebConfigError(key, f"{v!r}: one of {', '.join(allowed)}")
        out.append((name, v))
    return tuple(out)
