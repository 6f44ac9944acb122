"""sielum-admin services as real processes: bundles, modes, the certificate, list and revoke."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sielum.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.conftest import openssl_verify

from .conftest import ServerProcess, admin, admin_json, init_data_dir, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(init_data_dir(tmp_path_factory.mktemp("services-cli")))
    yield process
    process.stop()


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _as_service(server: ServerProcess, bundle: Path) -> grpc.Channel:
    """A channel to the API port with the service's own bundle, as the service would open."""
    return grpc.secure_channel(
        f"localhost:{server.api_port}",
        grpc.ssl_channel_credentials(
            root_certificates=(bundle / "ca.pem").read_bytes(),
            private_key=(bundle / "service.key").read_bytes(),
            certificate_chain=(bundle / "service.pem").read_bytes(),
        ),
    )


def test_services_create_writes_a_bundle_for_the_service(
    server: ServerProcess, tmp_path: Path
) -> None:
    out = tmp_path / "billing"
    created = admin(server, "services", "create", "billing", "--out", str(out))
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith(f"created service billing; bundle written to {out}\n")
    assert "service.pem, service.key (mode 0600, made here; never sent), ca.pem" in created.stdout
    assert sorted(p.name for p in out.iterdir()) == ["ca.pem", "service.key", "service.pem"]
    assert _mode(out / "service.key") == 0o600
    assert _mode(out / "service.pem") == _mode(out / "ca.pem") == 0o644
    assert (out / "ca.pem").read_bytes() == (server.data_dir / "ca.pem").read_bytes()
    key = serialization.load_pem_private_key((out / "service.key").read_bytes(), None)
    certificate = x509.load_pem_x509_certificate((out / "service.pem").read_bytes())
    assert certificate.public_key() == key.public_key()
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["sielum://service/billing"]
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    verified = openssl_verify(out / "ca.pem", out / "service.pem")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.strip() == f"{out / 'service.pem'}: OK"
    # openssl reads the same URI SAN.
    text = subprocess.run(
        ["openssl", "x509", "-in", str(out / "service.pem"), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "URI:sielum://service/billing" in text

    # The bundle is a service's: the API port takes it, health answers, and the
    # AdminService does not (least privilege).
    with _as_service(server, out) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            admin_pb2_grpc.AdminServiceStub(channel).ListServices(
                admin_pb2.ListServicesRequest(), timeout=10
            )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert caught.value.details() == (  # type: ignore[attr-defined]
        "/sielum.admin.v1.AdminService/ListServices needs an admin certificate; this one is service"
    )

    # A directory holding a bundle is never overwritten, and nothing is created.
    again = admin(server, "services", "create", "other", "--out", str(out))
    assert again.returncode == 2
    assert _one_line(again.stderr) == (
        f"sielum-admin: {out / 'service.pem'} already exists; refusing to overwrite"
    )
    listed = {s["name"]: s for s in admin_json(server, "services", "list")["services"]}  # type: ignore[union-attr, index]
    assert "other" not in listed
    assert listed["billing"]["createdBy"] == "admin" and "revokedAt" not in listed["billing"]
    assert listed["billing"]["state"] == "SERVICE_STATE_ACTIVE"
    table = admin(server, "services", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "STATE", "CREATED", "CREATED", "BY", "REVOKED"]
    row = next(line for line in table if line.startswith("billing "))
    assert re.fullmatch(r"billing\s+active\s+\S+Z\s+admin\s+-", row), row


def test_services_create_certifies_a_csr_made_elsewhere(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The service makes key and CSR on its own host; only the CSR travels, no key is written."""
    key, csr = tmp_path / "own.key", tmp_path / "crm.csr"
    made = subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=crm"],
        capture_output=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    out = tmp_path / "crm"
    created = admin(
        server, "--json", "services", "create", "crm", "--csr", str(csr), "--out", str(out)
    )
    assert created.returncode == 0, created.stderr
    document = json.loads(created.stdout)
    assert document["service"]["name"] == "crm"
    assert document["bundleDir"] == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["ca.pem", "service.pem"]
    certificate = x509.load_pem_x509_certificate((out / "service.pem").read_bytes())
    own = serialization.load_pem_private_key(key.read_bytes(), None)
    assert certificate.public_key() == own.public_key()
    assert openssl_verify(out / "ca.pem", out / "service.pem").returncode == 0


def test_fail_services_create_with_a_bad_name_or_csr(server: ServerProcess, tmp_path: Path) -> None:
    bad = admin(server, "services", "create", "no spaces", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2
    assert _one_line(bad.stderr) == (
        "sielum-admin: service name must be 1 to 64 characters of A-Z a-z 0-9 . _ - starting "
        "with a letter or digit (INVALID_ARGUMENT)"
    )
    (tmp_path / "junk.csr").write_text("not a csr")
    junk = admin(
        server, "services", "create", "junk", "--csr", str(tmp_path / "junk.csr"), "--out",
        str(tmp_path / "y"),
    )  # fmt: skip
    assert junk.returncode == 2
    assert _one_line(junk.stderr) == (
        f"sielum-admin: {tmp_path / 'junk.csr'} is not a PEM certificate request"
    )
    assert not (tmp_path / "y").exists()


def test_services_revoke_and_the_name_is_never_reused(
    server: ServerProcess, tmp_path: Path
) -> None:
    out = tmp_path / "leaver"
    assert admin(server, "services", "create", "leaver", "--out", str(out)).returncode == 0
    revoked = admin(server, "services", "revoke", "leaver")
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.startswith(
        "revoked service leaver: the server refuses its certificate from its next call\n"
    )
    assert re.search(r"^state\s+revoked$", revoked.stdout, re.MULTILINE)
    again = admin(server, "--json", "services", "revoke", "leaver")
    assert again.returncode == 0, again.stderr
    document = json.loads(again.stdout)
    assert document["alreadyRevoked"] is True
    assert document["service"]["state"] == "SERVICE_STATE_REVOKED"

    reuse = admin(server, "services", "create", "leaver", "--out", str(tmp_path / "again"))
    assert reuse.returncode == 1
    assert _one_line(reuse.stderr) == (
        "sielum-admin: service leaver was revoked; a revoked service's name is never reused "
        "(ALREADY_EXISTS)"
    )
    unknown = admin(server, "services", "revoke", "ghost")
    assert unknown.returncode == 4
    assert _one_line(unknown.stderr) == "sielum-admin: service not found (NOT_FOUND)"

    trail = admin_json(server, "audit", "list", "--resource", "service/leaver")
    assert [(e["actor"], e["action"]) for e in trail["events"]] == [  # type: ignore[index, union-attr]
        ("admin/admin", "service.revoke"),
        ("admin/admin", "service.revoke"),
        ("admin/admin", "service.create"),
    ]
    table = admin(server, "audit", "list", "--resource", "service/leaver").stdout
    assert "service.create" in table and "service/leaver" in table
