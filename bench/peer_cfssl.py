"""The peer: `cfssl serve` over HTTPS, a P-256 CA, and a SQLite certificate database in WAL mode."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# cfssl's certdb schema (certdb/sqlite/migrations/001_CreateCertificates.sql of the
# 2016 release Debian packages); the package does not ship the migration files.
_SCHEMA = """
CREATE TABLE certificates (
  serial_number            blob NOT NULL,
  authority_key_identifier blob NOT NULL,
  ca_label                 blob,
  status                   blob NOT NULL,
  reason                   int,
  expiry                   timestamp,
  revoked_at               timestamp,
  pem                      blob NOT NULL,
  PRIMARY KEY(serial_number, authority_key_identifier)
);
CREATE TABLE ocsp_responses (
  serial_number            blob NOT NULL,
  authority_key_identifier blob NOT NULL,
  body                     blob NOT NULL,
  expiry                   timestamp,
  PRIMARY KEY(serial_number, authority_key_identifier),
  FOREIGN KEY(serial_number, authority_key_identifier)
    REFERENCES certificates(serial_number, authority_key_identifier)
);
"""

# The same device profile as Sielum's: 90 days, digitalSignature, clientAuth.
_CONFIG = {
    "signing": {
        "default": {"expiry": "2160h", "usages": ["digital signature", "client auth"]},
    }
}


@dataclass
class CfsslPeer:
    process: subprocess.Popen[bytes]
    port: int
    ca_pem: bytes
    db_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def certificates(self) -> int:
        with sqlite3.connect(self.db_path) as db:
            return int(db.execute("SELECT COUNT(*) FROM certificates").fetchone()[0])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def cfssl_version() -> str:
    binary = shutil.which("cfssl")
    if binary is None:
        return ""
    out = subprocess.run([binary, "version"], capture_output=True, text=True, check=False).stdout
    return " ".join(line.split(":", 1)[1].strip() for line in out.splitlines() if ":" in line)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,  # "EC PRIVATE KEY": cfssl 1.2 reads it
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _make_pki(directory: Path) -> bytes:
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cfssl bench CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    tls_key = ec.generate_private_key(ec.SECP256R1())
    tls = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cfssl")]))
        .issuer_name(ca_name)
        .public_key(tls_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    (directory / "ca.pem").write_bytes(ca_pem)
    _write_key(directory / "ca-key.pem", ca_key)
    # The TLS chain ends with the CA, as Sielum's does, so both handshakes send the same.
    (directory / "tls.pem").write_bytes(tls.public_bytes(serialization.Encoding.PEM) + ca_pem)
    _write_key(directory / "tls-key.pem", tls_key)
    return ca_pem


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_cfssl(directory: Path) -> CfsslPeer:
    """Makes the CA, the TLS certificate and the WAL-mode database, and starts `cfssl serve`."""
    binary = shutil.which("cfssl")
    if binary is None:
        raise RuntimeError("cfssl not found: run bench/setup.sh (apt-get install golang-cfssl)")
    directory.mkdir(parents=True, exist_ok=True)
    ca_pem = _make_pki(directory)
    db_path = directory / "certs.db"
    with sqlite3.connect(db_path) as db:
        db.executescript(_SCHEMA)
        # WAL is a property of the database file, so cfssl's own connections use it too.
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise RuntimeError(f"cannot put the cfssl database in WAL mode: {mode}")
    (directory / "db.json").write_text(
        json.dumps({"driver": "sqlite3", "data_source": str(db_path)})
    )
    (directory / "config.json").write_text(json.dumps(_CONFIG))
    port = _free_port()
    log = (directory / "cfssl.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            "serve",
            "-address",
            "127.0.0.1",
            "-port",
            str(port),
            "-ca",
            str(directory / "ca.pem"),
            "-ca-key",
            str(directory / "ca-key.pem"),
            "-config",
            str(directory / "config.json"),
            "-tls-cert",
            str(directory / "tls.pem"),
            "-tls-key",
            str(directory / "tls-key.pem"),
            "-db-config",
            str(directory / "db.json"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"cfssl serve exited: {(directory / 'cfssl.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return CfsslPeer(process, port, ca_pem, db_path)
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("cfssl serve did not start listening")
