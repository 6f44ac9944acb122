"""`sielum-admin dashboard login` and serve's dashboard options, as processes."""

from __future__ import annotations

import json
import re
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.connect_client import DashboardClient

from .conftest import admin, free_port, init_data_dir, run, start_server

pytestmark = pytest.mark.e2e


def test_ok_dashboard_login_prints_a_link_that_signs_in_once(
    tmp_path: Path, server_factory: list[object]
) -> None:
    server = start_server(init_data_dir(tmp_path))
    server_factory.append(server)
    result = admin(server, "dashboard", "login")
    assert result.returncode == 0, result.stderr
    link = result.stdout.strip()
    assert re.fullmatch(
        rf"https://127\.0\.0\.1:{server.dashboard_port}/login#[A-Za-z0-9_-]{{43}}", link
    )
    assert "one-time link, valid until" in result.stderr
    client = DashboardClient(server.dashboard_url, (server.data_dir / "ca.pem").read_bytes())
    assert client.sign_in(link).json() == {"admin": "admin"}
    assert client.call("ListEnrollmentTokens").status == 200
    again = DashboardClient(server.dashboard_url, client.ca_pem).sign_in(link)
    assert again.status == 401
    # The code never reaches a log line.
    assert link.split("#")[1] not in server.log

    as_json = admin(server, "--json", "dashboard", "login")
    document = json.loads(as_json.stdout)
    assert set(document) == {"url", "expiresAt"}
    expires = datetime.fromisoformat(document["expiresAt"].replace("Z", "+00:00"))
    assert timedelta(minutes=4) < expires - datetime.now(UTC) <= timedelta(minutes=5)


def test_fail_dashboard_login_when_the_dashboard_is_off(
    tmp_path: Path, server_factory: list[object]
) -> None:
    server = start_server(init_data_dir(tmp_path), "--dashboard-addr", "off")
    server_factory.append(server)
    result = admin(server, "dashboard", "login")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "sielum-admin: this server runs no dashboard (serve --dashboard-addr off) "
        "(FAILED_PRECONDITION)"
    )


def test_ok_dashboard_url_names_the_public_address(
    tmp_path: Path, server_factory: list[object]
) -> None:
    """Behind a reverse proxy: links use the public URL, and pages there may call the API."""
    public = "https://sielum.example.com"
    server = start_server(init_data_dir(tmp_path), "--dashboard-url", public)
    server_factory.append(server)
    link = admin(server, "dashboard", "login").stdout.strip()
    assert link.startswith(f"{public}/login#")
    client = DashboardClient(
        server.dashboard_url, (server.data_dir / "ca.pem").read_bytes(), origin=public
    )
    assert client.sign_in(link).status == 200
    assert client.call("ListDevices").status == 200


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dashboard.example.com")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("dashboard.example.com")]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "dashboard.pem", directory / "dashboard.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_ok_dashboard_serves_its_own_certificate(
    tmp_path: Path, server_factory: list[object]
) -> None:
    cert_path, key_path = _self_signed(tmp_path)
    server = start_server(
        init_data_dir(tmp_path),
        "--dashboard-cert",
        str(cert_path),
        "--dashboard-key",
        str(key_path),
    )
    server_factory.append(server)
    served = ssl.get_server_certificate(("127.0.0.1", server.dashboard_port))
    assert x509.load_pem_x509_certificate(served.encode()) == x509.load_pem_x509_certificate(
        cert_path.read_bytes()
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--dashboard-cert", "x.pem"), "--dashboard-cert and --dashboard-key go together"),
        (("--dashboard-url", "http://plain.example"), "--dashboard-url must be an https:// URL"),
        (("--dashboard-addr", "nonsense"), "address must be HOST:PORT"),
    ],
    ids=["cert-without-key", "plain-http-url", "bad-address"],
)
def test_fail_serve_refuses_bad_dashboard_options(
    tmp_path: Path, flags: tuple[str, ...], message: str
) -> None:
    data_dir = init_data_dir(tmp_path)
    result = run(
        "sielum-server",
        "serve",
        "--data-dir",
        str(data_dir),
        "--workers",
        "1",
        "--enroll-addr",
        f"127.0.0.1:{free_port()}",
        "--api-addr",
        f"127.0.0.1:{free_port()}",
        *flags,
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
