"""Certificates for the TLS tests, made with the openssl command line into a directory: a CA,
a server certificate for 127.0.0.1 and ::1, client certificates (good, expired, from another
CA), an exporter's certificate for both ends (`peer`) and a bcrypt-hashed basic-auth user."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import bcrypt


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def _signed(
    d: Path, ca: str, name: str, ext: str, start: str | None = None, end: str | None = None
) -> None:
    """A key and a certificate signed by ca; start and end (YYYYMMDDHHMMSSZ) place its
    validity, by default now to two days on (`openssl ca` is the only openssl 3.0 command
    that sets dates in the past)."""
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=d,
    )  # fmt: skip
    db = d / f"{ca}.db"
    db.touch()
    (d / f"{name}.ext").write_text(ext + "\n")
    (d / f"{ca}.cnf").write_text(
        "[ca]\ndefault_ca = signer\n[signer]\n"
        f"database = {db}\nnew_certs_dir = {d}\nserial = {d / (ca + '.serial')}\n"
        f"certificate = {d / (ca + '.crt')}\nprivate_key = {d / (ca + '.key')}\n"
        "default_md = sha256\npolicy = any\nunique_subject = no\ncopy_extensions = none\n"
        "[any]\ncommonName = supplied\n"
    )
    serial = d / f"{ca}.serial"
    if not serial.exists():
        serial.write_text("1000\n")
    dates = ["-startdate", start, "-enddate", end] if start and end else ["-days", "2"]
    _openssl(
        "ca", "-batch", "-config", f"{ca}.cnf", "-in", f"{name}.csr", "-out", f"{name}.crt",
        "-extfile", f"{name}.ext", "-notext", *dates,
        cwd=d,
    )  # fmt: skip


@dataclass(frozen=True)
class Certs:
    dir: Path
    user: str = "prometheus"
    password: str = "s3cret-scrape"

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def password_hash(self) -> str:
        return (self.dir / "password.hash").read_text()


# The name the cluster tests' clients expect of the pods (a Prometheus' tls_config
# server_name: pod IPs are not known when the certificate is made).
SERVER_NAME = "pingmesh-exporter.pingmesh.svc"
CLIENT_EXT = "extendedKeyUsage=clientAuth\nsubjectAltName=DNS:prometheus.pingmesh.test"


def make_certs(d: Path) -> Certs:
    d.mkdir(parents=True, exist_ok=True)
    _ca(d, "ca")
    _ca(d, "other-ca")
    _signed(
        d,
        "ca",
        "server",
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost,DNS:{SERVER_NAME}",
    )
    _signed(d, "ca", "client", CLIENT_EXT)
    # An exporter's certificate for both ends, as the mesh page's fetches present it to peers.
    _signed(
        d,
        "ca",
        "peer",
        "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.1.1,IP:127.0.1.2",
    )
    _signed(d, "ca", "expired", CLIENT_EXT, "20200101000000Z", "20200102000000Z")
    _signed(d, "other-ca", "untrusted", CLIENT_EXT)
    certs = Certs(d)
    # Cost 10, as htpasswd -B and exporter-toolkit's docs make them.
    hashed = bcrypt.hashpw(certs.password.encode(), bcrypt.gensalt(10)).decode()
    (d / "password.hash").write_text(hashed)
    return certs
