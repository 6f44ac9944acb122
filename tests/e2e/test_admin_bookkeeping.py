"""sielum-admin bookkeeping: unlimited tokens warned of, secrets as ids, repeat revokes, filters."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from sielum.store import Store

from .conftest import (
    ServerProcess,
    admin,
    admin_json,
    agent_enroll,
    create_token,
    init_data_dir,
    start_server,
)

WARNING = (
    "sielum-admin: warning: token {id} never expires and has no use limit: anyone who gets "
    "hold of it can enroll any number of devices until it is revoked; pass --expires-in "
    "DURATION (like 7d) or --expires-at RFC3339, and --max-uses N\n"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(init_data_dir(tmp_path_factory.mktemp("bookkeeping")))
    yield process
    process.stop()


def _audit(server: ServerProcess, resource: str) -> list[tuple[str, str, str]]:
    """(action, actor, detail) of resource's audit events, oldest first, read from the database."""
    store = Store.open(f"sqlite:///{server.data_dir / 'sielum.db'}")
    try:
        events = store.list_audit(resource=resource)
    finally:
        store.close()
    return [(e.action, e.actor, e.detail) for e in reversed(events)]


def test_a_token_without_expiry_or_use_limit_is_made_with_a_warning(server: ServerProcess) -> None:
    unlimited = admin(server, "tokens", "create", "--label", "forever")
    assert unlimited.returncode == 0, unlimited.stderr
    token_id = re.match(r"created token (\S+) ", unlimited.stdout).group(1)  # type: ignore[union-attr]
    assert unlimited.stderr == WARNING.format(id=token_id)

    as_json = admin(server, "--json", "tokens", "create", "--label", "forever too")
    assert as_json.returncode == 0, as_json.stderr
    created = json.loads(as_json.stdout)  # stdout stays pure JSON
    assert as_json.stderr == WARNING.format(id=created["token"]["id"])

    for limited in (
        ["--max-uses", "5"],
        ["--expires-in", "1d"],
        ["--expires-at", "2999-01-01T00:00:00Z"],
    ):
        quiet = admin(server, "tokens", "create", "--label", "bounded", *limited)
        assert quiet.returncode == 0, quiet.stderr
        assert quiet.stderr == "", limited


def test_get_and_revoke_take_the_whole_secret_and_never_show_it(server: ServerProcess) -> None:
    token_id, secret = create_token(server, "--max-uses", "3")
    random_part = secret.split("_", 2)[2]

    got = admin(server, "tokens", "get", secret)
    assert got.returncode == 0, got.stderr
    assert re.search(rf"^id\s+{token_id}$", got.stdout, re.MULTILINE)
    as_json = admin_json(server, "tokens", "get", f"  {secret}\n")
    assert as_json["token"]["id"] == token_id  # type: ignore[index]

    revoked = admin(server, "tokens", "revoke", secret)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.startswith(f"revoked token {token_id}: it enrolls no more devices\n")

    mistyped = secret[:-1] + ("a" if secret[-1] != "a" else "b")
    refused = admin(server, "tokens", "revoke", mistyped)
    assert refused.returncode == 2
    assert refused.stderr == (
        "sielum-admin: that looks like a token secret, but checksum does not match: it was "
        "mistyped; pass the token id or the whole secret\n"
    )
    for result in (got, revoked, refused):
        assert random_part not in result.stdout + result.stderr
    # Only the id travelled: the secret is in no server log line.
    assert random_part not in server.log


def test_revoking_a_revoked_token_says_so_and_changes_nothing(server: ServerProcess) -> None:
    token_id, _ = create_token(server, "--max-uses", "1")
    first = admin_json(server, "tokens", "revoke", token_id)
    assert first["alreadyRevoked"] is False

    again = admin(server, "tokens", "revoke", token_id)
    assert again.returncode == 0, again.stderr
    revoked_at = first["token"]["revokedAt"]  # type: ignore[index]
    when = revoked_at[:19] + "Z"  # type: ignore[index]
    assert again.stdout.startswith(
        f"token {token_id} was already revoked at {when}: nothing changed\n"
    )
    third = admin_json(server, "tokens", "revoke", token_id)
    assert third["alreadyRevoked"] is True
    assert third["token"]["revokedAt"] == revoked_at  # type: ignore[index]
    assert _audit(server, f"token/{token_id}") == [
        ("token.create", "admin/admin", "max_uses=1 expires_at=never"),
        ("token.revoke", "admin/admin", ""),
        ("token.revoke", "admin/admin", "already revoked"),
        ("token.revoke", "admin/admin", "already revoked"),
    ]
    assert 'outcome="already revoked"' in server.log


def test_revoking_a_revoked_device_says_so_and_changes_nothing(
    server: ServerProcess, tmp_path: Path
) -> None:
    _, secret = create_token(server, "--max-uses", "1")
    assert agent_enroll(server, secret, tmp_path / "agent").returncode == 0
    device_id = json.loads((tmp_path / "agent" / "agent.json").read_text())["device_id"]
    first = admin(server, "devices", "revoke", device_id)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"revoked device {device_id}: the server refuses")

    again = admin(server, "devices", "revoke", device_id)
    assert again.returncode == 0, again.stderr
    assert re.match(
        rf"device {device_id} was already revoked at \S+Z: nothing changed\n", again.stdout
    )
    assert [(a, d) for a, _, d in _audit(server, f"device/{device_id}")][1:] == [
        ("device.revoke", ""),
        ("device.revoke", "already revoked"),
    ]


def test_devices_list_filters_by_state_and_hostname(server: ServerProcess, tmp_path: Path) -> None:
    token_id, secret = create_token(server, "--label", "filters")
    ids = {}
    for name in ("filter-web", "filter-db", "filter-web-old"):
        host = "filter-web" if name.startswith("filter-web") else name
        result = agent_enroll(server, secret, tmp_path / name, "--hostname", host)
        assert result.returncode == 0, result.stderr
        ids[name] = json.loads((tmp_path / name / "agent.json").read_text())["device_id"]
    assert admin(server, "devices", "revoke", ids["filter-web-old"]).returncode == 0

    def listed(*args: str) -> list[str]:
        devices = admin_json(server, "devices", "list", "--token", token_id, *args)["devices"]
        return [d["id"] for d in devices]  # type: ignore[union-attr, index]

    assert listed("--hostname", "filter-web") == [ids["filter-web-old"], ids["filter-web"]]
    assert listed("--state", "revoked") == [ids["filter-web-old"]]
    assert listed("--state", "active") == [ids["filter-db"], ids["filter-web"]]
    assert listed("--state", "expired") == []
    assert listed("--state", "active", "--hostname", "filter-web") == [ids["filter-web"]]

    table = admin(server, "devices", "list", "--hostname", "filter-web", "--state", "revoked")
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()
    assert rows[0].split()[:3] == ["ID", "HOSTNAME", "STATE"]
    assert [row.split()[:3] for row in rows[1:]] == [
        [ids["filter-web-old"], "filter-web", "revoked"]
    ]
    nothing = admin(server, "devices", "list", "--hostname", "no-such-host")
    assert nothing.stdout == "no devices\n"
    bad = admin(server, "devices", "list", "--state", "gone")
    assert bad.returncode == 2
    assert "invalid choice: 'gone'" in bad.stderr
