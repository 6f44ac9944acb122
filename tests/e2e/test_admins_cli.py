"""sielum-admin admins and audit, and the server's own registrations, as real processes."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .conftest import ServerProcess, admin, admin_json, init_data_dir, run, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(init_data_dir(tmp_path_factory.mktemp("admins-cli")))
    yield process
    process.stop()


def as_admin(server: ServerProcess, bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """sielum-admin with another admin's bundle."""
    return run(
        "sielum-admin", "--server", f"127.0.0.1:{server.api_port}", "--cert-dir", str(bundle), *args
    )


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_admins_create_writes_a_bundle_the_cli_uses(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "bob"
    created = admin(server, "admins", "create", "bob", "--out", str(out))
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith(f"created admin bob; bundle written to {out}\n")
    assert sorted(p.name for p in out.iterdir()) == ["admin.key", "admin.pem", "ca.pem"]
    assert _mode(out / "admin.key") == 0o600
    assert _mode(out / "admin.pem") == _mode(out / "ca.pem") == 0o644
    assert (out / "ca.pem").read_bytes() == (server.data_dir / "ca.pem").read_bytes()
    key = serialization.load_pem_private_key((out / "admin.key").read_bytes(), None)
    certificate = x509.load_pem_x509_certificate((out / "admin.pem").read_bytes())
    assert certificate.public_key() == key.public_key()

    # The bundle is an admin's: --cert-dir takes it, and what Bob does is his.
    token = json.loads(as_admin(server, out, "--json", "tokens", "create", "--label", "b").stdout)
    assert token["token"]["createdBy"] == "bob"
    mine = json.loads(
        as_admin(server, out, "--json", "audit", "list", "--actor", "admin/bob").stdout
    )
    assert [(e["action"], e["resource"]) for e in mine["events"]] == [
        ("token.create", f"token/{token['token']['id']}")
    ]

    # A directory holding a bundle is never overwritten, and nothing is created.
    again = admin(server, "admins", "create", "carl", "--out", str(out))
    assert again.returncode == 2
    assert _one_line(again.stderr) == (
        f"sielum-admin: {out / 'admin.pem'} already exists; refusing to overwrite"
    )

    listed = {a["name"]: a for a in admin_json(server, "admins", "list")["admins"]}  # type: ignore[union-attr, index]
    assert "carl" not in listed
    assert listed["admin"]["createdBy"] == "init"  # `sielum-server init` registered it
    assert listed["bob"]["createdBy"] == "admin" and "revokedAt" not in listed["bob"]
    assert listed["bob"]["state"] == "ADMIN_STATE_ACTIVE"
    table = admin(server, "admins", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "STATE", "CREATED", "CREATED", "BY", "REVOKED"]
    row = next(line for line in table if line.startswith("bob "))
    assert re.fullmatch(r"bob\s+active\s+\S+Z\s+admin\s+-", row), row


def test_admins_create_certifies_a_csr_made_elsewhere(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The new admin makes key and CSR on their own machine; only the CSR travels."""
    key, csr = tmp_path / "own.key", tmp_path / "dana.csr"
    made = subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=dana"],
        capture_output=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    out = tmp_path / "dana"
    created = admin(server, "admins", "create", "dana", "--csr", str(csr), "--out", str(out))
    assert created.returncode == 0, created.stderr
    assert sorted(p.name for p in out.iterdir()) == ["admin.pem", "ca.pem"]
    shutil.copy(key, out / "admin.key")
    listed = as_admin(server, out, "--json", "admins", "list")
    assert listed.returncode == 0, listed.stderr


def test_admins_revoke_refuses_the_admin_from_their_next_call(
    server: ServerProcess, tmp_path: Path
) -> None:
    out = tmp_path / "leaver"
    assert admin(server, "admins", "create", "leaver", "--out", str(out)).returncode == 0
    assert as_admin(server, out, "tokens", "list").returncode == 0
    revoked = admin(server, "admins", "revoke", "leaver")
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.startswith(
        "revoked admin leaver: the server refuses their certificates from their next call\n"
    )
    assert re.search(r"^state\s+revoked$", revoked.stdout, re.MULTILINE)
    refused = as_admin(server, out, "tokens", "list")
    assert refused.returncode == 6
    assert _one_line(refused.stderr) == (
        "sielum-admin: admin leaver has been revoked (PERMISSION_DENIED)"
    )
    reuse = admin(server, "admins", "create", "leaver", "--out", str(tmp_path / "again"))
    assert reuse.returncode == 1
    assert _one_line(reuse.stderr) == (
        "sielum-admin: admin leaver was revoked; a revoked admin's name is never reused "
        "(ALREADY_EXISTS)"
    )


def test_audit_list_filters_table_and_json(server: ServerProcess) -> None:
    for label in ("audit-1", "audit-2"):
        assert admin(server, "tokens", "create", "--label", label).returncode == 0
    recent = admin_json(
        server, "audit", "list", "--since", "1h", "--actor", "admin/admin",
        "--action", "token.create", "--limit", "2",
    )["events"]  # fmt: skip
    assert len(recent) == 2  # type: ignore[arg-type]
    assert {e["actor"] for e in recent} == {"admin/admin"}  # type: ignore[union-attr, index]
    assert recent[0]["at"] >= recent[1]["at"]  # type: ignore[index]
    assert recent[0]["resource"].startswith("token/")  # type: ignore[index]

    table = admin(server, "audit", "list", "--limit", "2").stdout.splitlines()
    assert table[0].split() == ["AT", "ACTOR", "ACTION", "RESOURCE", "PEER", "DETAIL"]
    assert len(table) == 3
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  admin/admin  token\.create ", table[1])

    bad_since = admin(server, "audit", "list", "--since", "yesterday")
    assert bad_since.returncode == 2
    assert "is neither a duration (like 1h or 7d) nor an RFC 3339 time" in bad_since.stderr
    bad_actor = admin(server, "audit", "list", "--actor", "alice")
    assert bad_actor.returncode == 2
    assert _one_line(bad_actor.stderr) == (
        "sielum-admin: actor must be kind/name, like admin/alice or token/<id> (INVALID_ARGUMENT)"
    )


def test_issue_admin_cert_registers_and_refuses_a_revoked_name(
    server: ServerProcess, tmp_path: Path
) -> None:
    issue = (
        "sielum-server", "issue-admin-cert", "--data-dir", str(server.data_dir), "--name", "fay",
    )  # fmt: skip
    first = run(*issue, "--out", str(tmp_path / "fay"))
    assert first.returncode == 0, first.stderr
    assert "admin fay is registered" in first.stdout
    listed = {a["name"]: a for a in admin_json(server, "admins", "list")["admins"]}  # type: ignore[union-attr, index]
    assert listed["fay"]["createdBy"] == "issue-admin-cert"
    # A second certificate for an active admin (a renewal) keeps the record.
    second = run(*issue, "--out", str(tmp_path / "fay2"))
    assert second.returncode == 0, second.stderr
    assert "was registered already" in second.stdout
    events = admin_json(server, "audit", "list", "--resource", "admin/fay")["events"]
    assert [(e["actor"], e["action"]) for e in events] == [  # type: ignore[union-attr, index]
        ("server/issue-admin-cert", "admin.certify"),
        ("server/issue-admin-cert", "admin.create"),
    ]

    assert admin(server, "admins", "revoke", "fay").returncode == 0
    third = run(*issue, "--out", str(tmp_path / "fay3"))
    assert third.returncode == 1
    assert _one_line(third.stderr) == (
        "sielum-server: admin fay was revoked; a revoked admin's name is never reused"
    )
    assert not (tmp_path / "fay3").exists()


def test_fail_issue_admin_cert_again_retires_the_old_certificate_once_the_new_one_is_used(
    server: ServerProcess, tmp_path: Path
) -> None:
    """`issue-admin-cert` for an existing admin: the old bundle works until the new one is
    first used, then it is refused (exit 6, "superseded"); the new one keeps working."""
    issue = (
        "sielum-server", "issue-admin-cert", "--data-dir", str(server.data_dir), "--name", "gil",
    )  # fmt: skip
    old, new = tmp_path / "gil", tmp_path / "gil2"
    assert run(*issue, "--out", str(old)).returncode == 0
    assert as_admin(server, old, "tokens", "list").returncode == 0
    again = run(*issue, "--out", str(new))
    assert again.returncode == 0, again.stderr
    assert "admin gil was registered already: this certificate replaces theirs, which is " in (
        again.stdout
    )
    assert as_admin(server, old, "tokens", "list").returncode == 0  # the new one is unused
    assert as_admin(server, new, "tokens", "list").returncode == 0
    refused = as_admin(server, old, "tokens", "list")
    assert refused.returncode == 6
    assert _one_line(refused.stderr) == (
        "sielum-admin: this admin certificate has been superseded by a newer one for the same "
        "admin; use that one (PERMISSION_DENIED)"
    )
    assert as_admin(server, new, "tokens", "list").returncode == 0


def test_init_makes_nothing_when_its_database_is_unreachable(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = run(
        "sielum-server", "init", "--data-dir", str(data_dir),
        "--database", "postgresql://sielum@127.0.0.1:1/sielum?connect_timeout=2",
    )  # fmt: skip
    assert result.returncode == 1
    # The store's log line says why, then the one-line error.
    cause, error = result.stderr.strip().splitlines()
    assert "WARNING database unavailable in migrate: OperationalError" in cause
    assert error == "sielum-server: database unavailable, try again"
    assert not data_dir.exists()
