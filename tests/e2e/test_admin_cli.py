"""sielum-admin as a real process: tokens and devices, tables and JSON, paging, and its failures."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from sielum.admin import service as admin_service
from sielum.admin.v1 import admin_pb2
from sielum.enroll.ratelimit import FailureLimit
from sielum.model import AuditEvent, Device

from ..rpc.conftest import Harness, start_harness, status_of
from .conftest import (
    ServerProcess,
    admin,
    admin_json,
    agent_enroll,
    ca_fingerprint,
    create_token,
    free_port,
    init_data_dir,
    run,
    script,
    start_server,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(init_data_dir(tmp_path_factory.mktemp("admin-cli")))
    yield process
    process.stop()


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_create_prints_the_secret_once_and_the_agent_command(server: ServerProcess) -> None:
    # A PATH without this virtualenv, as in a shell where it is not active.
    result = admin(
        server,
        *("tokens", "create", "--label", "rollout", "--max-uses", "50", "--expires-in", "7d"),
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    secrets = re.findall(r"slm_[a-z2-7]{16}_[a-z2-7]{39}", result.stdout)
    assert len(secrets) == 1  # once, on its own line: never in a command line
    secret = secrets[0]
    lines = result.stdout.splitlines()
    assert f"  {secret}" in lines
    # The agent's command reads the secret at a prompt into the environment, and names
    # sielum-agent as this machine can run it (this virtualenv is not on PATH here).
    at = lines.index("enroll an agent with it, as root: paste the secret when asked")
    read_line, command = (line.strip() for line in lines[at + 1 : at + 3])
    assert read_line == (
        "read -rsp 'enrollment token: ' SIELUM_ENROLLMENT_TOKEN"
        " && export SIELUM_ENROLLMENT_TOKEN && echo"
    )
    assert command == (
        f"{script('sielum-agent')} enroll --server https://127.0.0.1:8443"
        f" --ca-fingerprint {ca_fingerprint(server.data_dir)} --cert-dir /etc/sielum"
    )
    # With the virtualenv on PATH (activated), the bare name works and is what it prints.
    on_path = admin(
        server,
        *("tokens", "create", "--label", "rollout", "--max-uses", "1"),
        env={"PATH": f"{Path(script('sielum-agent')).parent}:/usr/bin:/bin"},
    )
    assert on_path.returncode == 0, on_path.stderr
    assert "\n  sielum-agent enroll --server " in on_path.stdout
    token_id = secret[4:20]
    assert lines[0].startswith(f"created token {token_id} (label 'rollout', uses 0/50, expires ")

    # The secret is never shown again, in any output.
    for args in (("tokens", "get", token_id), ("tokens", "list"), ("--json", "tokens", "list")):
        later = admin(server, *args)
        assert later.returncode == 0, later.stderr
        assert secret not in later.stdout and secret[21:] not in later.stdout


def test_create_with_enroll_server_and_expires_at_as_json(server: ServerProcess) -> None:
    at = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    created = admin_json(
        server,
        "tokens",
        "create",
        "--label",
        "v6 site",
        "--expires-at",
        at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "--enroll-server",
        "https://enroll.example.test",
    )
    token = created["token"]
    assert token["label"] == "v6 site"  # type: ignore[index]
    assert token["expiresAt"] == at.strftime("%Y-%m-%dT%H:%M:%SZ")  # type: ignore[index]
    assert "maxUses" not in token  # type: ignore[operator]
    assert token["uses"] == "0" and token["state"] == "TOKEN_STATE_ACTIVE"  # type: ignore[index]
    assert created["caFingerprint"] == ca_fingerprint(server.data_dir)
    assert "--server https://enroll.example.test --ca-fingerprint" in str(created["enrollCommand"])


def test_list_is_an_aligned_table_and_follows_every_page(
    server: ServerProcess, tmp_path: Path
) -> None:
    ids = [create_token(server, "--label", f"page {n}", "--max-uses", "3")[0] for n in range(5)]
    unlimited_id, unlimited = create_token(server, "--label", "no limit")
    assert agent_enroll(server, unlimited, tmp_path / "agent").returncode == 0

    everything = admin_json(server, "tokens", "list", "--page-size", "2")["tokens"]
    listed = [t["id"] for t in everything]  # type: ignore[union-attr, index]
    assert set(ids) | {unlimited_id} <= set(listed)
    assert len(listed) == len(set(listed))
    limited = admin_json(server, "tokens", "list", "--page-size", "2", "--limit", "3")["tokens"]
    assert len(limited) == 3  # type: ignore[arg-type]

    table = admin(server, "tokens", "list", "--page-size", "2").stdout.splitlines()
    header = table[0]
    assert header.split() == ["ID", "LABEL", "STATE", "USES", "EXPIRES", "LAST", "USED"]
    for column in ("LABEL", "STATE", "USES", "EXPIRES", "LAST USED"):
        start = header.index(column)
        for row in table[1:]:
            # Every cell starts in its header's column: the table is aligned.
            assert row[start - 2 : start] == "  " and row[start] != " ", (column, row)
    rows = {row.split()[0]: row for row in table[1:]}
    assert " page 0 " in rows[ids[0]] and " active " in rows[ids[0]]
    assert " 0/3 " in rows[ids[0]] and rows[ids[0]].rstrip().endswith("never")
    assert " 1/unlimited " in rows[unlimited_id]
    assert re.search(r"never\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", rows[unlimited_id])


def test_state_filter_get_and_revoke(server: ServerProcess) -> None:
    token_id, _ = create_token(server, "--label", "to revoke")
    revoked = admin(server, "tokens", "revoke", token_id)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.startswith(f"revoked token {token_id}: it enrolls no more devices\n")
    assert re.search(r"^state\s+revoked$", revoked.stdout, re.MULTILINE)

    only_revoked = admin_json(server, "tokens", "list", "--state", "revoked")["tokens"]
    assert token_id in [t["id"] for t in only_revoked]  # type: ignore[union-attr, index]
    assert {t["state"] for t in only_revoked} == {"TOKEN_STATE_REVOKED"}  # type: ignore[union-attr, index]
    active = admin_json(server, "tokens", "list", "--state", "active")["tokens"]
    assert token_id not in [t["id"] for t in active]  # type: ignore[union-attr, index]

    got = admin_json(server, "tokens", "get", token_id)["token"]
    assert got["state"] == "TOKEN_STATE_REVOKED" and "revokedAt" in got  # type: ignore[index, operator]
    human = admin(server, "tokens", "get", token_id).stdout
    assert re.search(r"^created\s+\S+ by admin$", human, re.MULTILINE)


def test_devices_list_get_and_revoke(server: ServerProcess, tmp_path: Path) -> None:
    token_id, secret = create_token(server, "--label", "devices")
    for name, dc in (("web-1", "fra"), ("web-2", "ber")):
        result = agent_enroll(
            server, secret, tmp_path / name, "--hostname", name, "--fact", f"dc={dc}"
        )
        assert result.returncode == 0, result.stderr
    devices = admin_json(server, "devices", "list", "--token", token_id, "--page-size", "1")[
        "devices"
    ]
    assert sorted(d["hostname"] for d in devices) == ["web-1", "web-2"]  # type: ignore[union-attr, index]
    web1 = next(d for d in devices if d["hostname"] == "web-1")  # type: ignore[union-attr, index]
    assert web1["facts"]["os"]  # type: ignore[index]

    table = admin(server, "devices", "list", "--token", token_id).stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "HOSTNAME", "STATE", "TOKEN"]
    assert len(table) == 3 and all(" active " in row for row in table[1:])

    def hostnames(*filters: str) -> list[str]:
        found = admin_json(server, "devices", "list", "--token", token_id, *filters)["devices"]
        return sorted(d["hostname"] for d in found)  # type: ignore[union-attr, index]

    assert hostnames("--hostname-prefix", "web-") == ["web-1", "web-2"]
    assert hostnames("--hostname-prefix", "web-2") == ["web-2"]
    assert hostnames("--hostname-prefix", "web-*") == []  # a prefix, not a pattern
    assert hostnames("--fact", "dc=fra") == ["web-1"]
    assert hostnames("--fact", "dc=fra", "--fact", f"os={web1['facts']['os']}") == ["web-1"]  # type: ignore[index]
    assert hostnames("--fact", "dc=ber", "--hostname-prefix", "web-1") == []
    malformed = admin(server, "devices", "list", "--fact", "dc")
    assert malformed.returncode == 2
    assert "expected NAME=VALUE, like os=linux, got 'dc'" in malformed.stderr
    refused = admin(server, "devices", "list", "--fact", "d c=x")
    assert refused.returncode == 2
    assert "INVALID_ARGUMENT" in refused.stderr
    assert "fact names are 1-64 characters of letters, digits, '._/-'" in refused.stderr

    human = admin(server, "devices", "get", web1["id"]).stdout  # type: ignore[index]
    assert re.search(r"^hostname\s+web-1$", human, re.MULTILINE)
    assert re.search(r"^fact os\s+\S+", human, re.MULTILINE)
    revoked = admin(server, "--json", "devices", "revoke", web1["id"])  # type: ignore[index]
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["device"]["state"] == "DEVICE_STATE_REVOKED"


def test_json_may_come_before_or_after_the_command(server: ServerProcess) -> None:
    before = admin(server, "--json", "tokens", "list", "--limit", "1")
    after = admin(server, "tokens", "list", "--limit", "1", "--json")
    assert before.returncode == after.returncode == 0
    assert json.loads(before.stdout) == json.loads(after.stdout)


def test_failures_are_one_line_with_their_exit_code(server: ServerProcess, tmp_path: Path) -> None:
    missing = admin(server, "tokens", "get", "aaaaaaaaaaaaaaaa")
    assert missing.returncode == 4
    assert _one_line(missing.stderr).startswith("sielum-admin: ")
    assert "NOT_FOUND" in missing.stderr

    revoke_missing = admin(server, "devices", "revoke", "no-such-device")
    assert revoke_missing.returncode == 4
    assert "NOT_FOUND" in _one_line(revoke_missing.stderr)

    past = admin(server, "tokens", "create", "--label", "x", "--expires-at", "2001-01-01T00:00:00Z")
    assert past.returncode == 2
    assert (
        _one_line(past.stderr)
        == "sielum-admin: expires_at must be in the future (INVALID_ARGUMENT)"
    )

    naive = admin(server, "tokens", "create", "--label", "x", "--expires-at", "2030-01-01T00:00:00")
    assert naive.returncode == 2
    assert "is not an RFC 3339 time with a zone" in _one_line(naive.stderr)

    both = admin(
        server,
        "tokens",
        "create",
        "--label",
        "x",
        "--expires-in",
        "1d",
        "--expires-at",
        "2030-01-01T00:00:00Z",
    )
    assert both.returncode == 2
    assert "not allowed with argument" in _one_line(both.stderr)

    bad_duration = admin(server, "tokens", "create", "--label", "x", "--expires-in", "7 days")
    assert bad_duration.returncode == 2
    assert "is not a duration" in _one_line(bad_duration.stderr)

    no_bundle = run(
        "sielum-admin",
        "--server",
        f"127.0.0.1:{server.api_port}",
        "--cert-dir",
        str(tmp_path),
        "tokens",
        "list",
    )
    assert no_bundle.returncode == 3
    assert _one_line(no_bundle.stderr) == (
        f"sielum-admin: no admin certificate bundle in {tmp_path} (ca.pem is missing): "
        "pass --cert-dir or set SIELUM_ADMIN_CERT_DIR"
    )

    port = free_port()
    down = run(
        "sielum-admin",
        "--server",
        f"127.0.0.1:{port}",
        "--cert-dir",
        str(server.data_dir / "admin"),
        "tokens",
        "list",
    )
    assert down.returncode == 5
    assert (
        _one_line(down.stderr) == f"sielum-admin: cannot reach 127.0.0.1:{port}: connection refused"
    )


def test_a_device_certificate_is_not_an_admin(server: ServerProcess, tmp_path: Path) -> None:
    _, secret = create_token(server, "--label", "impostor")
    device = tmp_path / "device"
    assert agent_enroll(server, secret, device).returncode == 0
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "admin.pem").write_bytes((device / "device.pem").read_bytes())
    (bundle / "admin.key").write_bytes((device / "device.key").read_bytes())
    (bundle / "ca.pem").write_bytes((device / "ca.pem").read_bytes())
    result = run(
        "sielum-admin",
        "--server",
        f"127.0.0.1:{server.api_port}",
        "tokens",
        "list",
        env={"SIELUM_ADMIN_CERT_DIR": str(bundle)},
    )
    assert result.returncode == 6
    assert _one_line(result.stderr) == (
        "sielum-admin: /sielum.admin.v1.AdminService/ListEnrollmentTokens needs an admin "
        "certificate; this one is device (PERMISSION_DENIED)"
    )


def test_default_cert_dir_is_the_one_serve_dev_makes(
    tmp_path: Path, server_factory: list[ServerProcess]
) -> None:
    # scripts/serve-dev.sh runs init into ./sielum-data; the admin tool finds its bundle there.
    data_dir = init_data_dir(tmp_path, "sielum-data")
    server = start_server(data_dir)
    server_factory.append(server)
    result = run(
        "sielum-admin",
        "--server",
        f"127.0.0.1:{server.api_port}",
        "tokens",
        "list",
        cwd=str(tmp_path),
        env={"SIELUM_ADMIN_CERT_DIR": ""},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "no tokens\n"
    # And the server's default port is the one the tool dials by default.
    help_text = run("sielum-admin", "--help").stdout
    assert "default 127.0.0.1:8444" in help_text


# Facts at their bound, and devices enrolled before there was one.

LOCK = "\U0001f512"  # four bytes of UTF-8
MAXIMAL_FACTS = {f"k{i:02}": LOCK * 63 for i in range(64)}  # 64 x (3 + 252) = 16,320 bytes


def _stored_device(h: Harness, token_id: str, i: int, facts: dict[str, str]) -> None:
    """A device as the store records it, written directly (as fast as a fleet needs)."""
    now = datetime.now(UTC)
    device = Device(
        id=f"00000000-0000-4000-8000-{i:012d}",
        hostname=f"host-{i}",
        token_id=token_id,
        public_key_sha256=f"{i:064x}",
        serial=f"{i:x}",
        certificate_pem="-----BEGIN CERTIFICATE-----\n",
        not_after=now + timedelta(days=90),
        enrolled_at=now,
        peer="192.0.2.1",
        facts=facts,
    )
    audit = AuditEvent(at=now, actor=f"token/{token_id}", action="device.enroll", resource="x")
    h.server.store.enroll_device(device, now, audit)


def test_fail_devices_with_maximal_facts_break_devices_list(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One token holder enrolls devices with the largest facts allowed, and some devices
    carry the ~240 KiB of facts an earlier version took: every page of ListDevices stays
    under the 4 MB reply limit, and `sielum-admin devices list` lists them all."""
    h = start_harness(tmp_path, database_url, failure_limit=FailureLimit(burst=0))
    try:
        created = h.create_token()
        enrolled, _ = h.enroll(created.secret, facts=MAXIMAL_FACTS)
        over = {**MAXIMAL_FACTS, "k00": MAXIMAL_FACTS["k00"] + "x" * 65}
        code, details = status_of(lambda: h.enroll(created.secret, facts=over))
        assert (code, details) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "facts are too large: 16385 bytes of names and values (at most 16384)",
        )
        for i in range(240):
            _stored_device(h, created.token.id, i, MAXIMAL_FACTS)
        legacy = {f"k{i:02}": LOCK * 1000 for i in range(60)}  # 240,180 bytes
        for i in range(240, 260):
            _stored_device(h, created.token.id, i, legacy)
        ids = {enrolled.device_id} | {f"00000000-0000-4000-8000-{i:012d}" for i in range(260)}

        pages = []
        page_token = ""
        while True:
            reply = h.admin().ListDevices(
                admin_pb2.ListDevicesRequest(page_size=1000, page_token=page_token), timeout=30
            )
            assert reply.ByteSize() < 4 * 1024 * 1024
            pages.append(len(reply.devices))
            page_token = reply.next_page_token
            if not page_token:
                break
        assert sum(pages) == 261 and len(pages) >= 3

        listing = run(
            "sielum-admin",
            "--server",
            h.api_target,
            "--cert-dir",
            str(h.data_dir / "admin"),
            "devices",
            "list",
            timeout=120,
        )
        assert listing.returncode == 0, listing.stderr
        rows = listing.stdout.splitlines()[1:]
        assert {row.split()[0] for row in rows} == ids

        # A server that does not end its pages by size (an older Sielum): ListDevices fails
        # with RESOURCE_EXHAUSTED, and the CLI asks for fewer devices until a page fits.
        monkeypatch.setattr(admin_service, "_DEVICE_PAGE_BUDGET", None)
        code, _ = status_of(
            lambda: h.admin().ListDevices(admin_pb2.ListDevicesRequest(page_size=1000), timeout=30)
        )
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        listing = run(
            "sielum-admin",
            "--server",
            h.api_target,
            "--cert-dir",
            str(h.data_dir / "admin"),
            "devices",
            "list",
            timeout=120,
        )
        assert listing.returncode == 0, listing.stderr
        assert {row.split()[0] for row in listing.stdout.splitlines()[1:]} == ids
    finally:
        h.server.stop(grace=1)
