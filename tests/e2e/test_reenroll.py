"""sielum-agent enroll --force ends the enrollment it replaces, or names the device to revoke."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from sielum.store import Store

from .conftest import (
    ServerProcess,
    admin,
    admin_json,
    agent,
    agent_enroll,
    create_token,
    free_port,
    init_data_dir,
    log_events,
    start_server,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(init_data_dir(tmp_path_factory.mktemp("reenroll")))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def secret(server: ServerProcess) -> str:
    return create_token(server, "--label", "reenroll")[1]


def _device_id(cert_dir: Path) -> str:
    return str(json.loads((cert_dir / "agent.json").read_text())["device_id"])


def _state(server: ServerProcess, device_id: str) -> str:
    device = admin_json(server, "devices", "get", device_id)["device"]
    return str(device["state"])  # type: ignore[index]


def _enrolled(server: ServerProcess, secret: str, cert_dir: Path) -> str:
    first = agent_enroll(server, secret, cert_dir, "--hostname", "reenrolled-host")
    assert first.returncode == 0, first.stderr
    return _device_id(cert_dir)


def test_force_ends_the_previous_enrollment_with_its_own_certificate(
    server: ServerProcess, secret: str, tmp_path: Path
) -> None:
    cert_dir = tmp_path / "agent"
    old = _enrolled(server, secret, cert_dir)

    forced = agent_enroll(server, secret, cert_dir, "--force", "--hostname", "reenrolled-host")
    assert forced.returncode == 0, forced.stderr
    new = _device_id(cert_dir)
    assert new != old
    assert forced.stdout.splitlines()[0] == f"enrolled as device {new}"
    assert forced.stdout.splitlines()[-1] == f"ended the previous enrollment, device {old}"
    assert forced.stderr == ""
    assert _state(server, old) == "DEVICE_STATE_REVOKED"
    assert _state(server, new) == "DEVICE_STATE_ACTIVE"
    [line] = [line for line in log_events(server, "unenroll") if old in line]
    assert "outcome=ok" in line
    store = Store.open(f"sqlite:///{server.data_dir / 'sielum.db'}")
    try:
        events = store.list_audit(resource=f"device/{old}")
    finally:
        store.close()
    assert (events[0].action, events[0].actor) == ("device.unenroll", f"device/{old}")


def test_force_without_the_old_certificate_names_the_device_to_revoke(
    server: ServerProcess, secret: str, tmp_path: Path
) -> None:
    cert_dir = tmp_path / "agent"
    old = _enrolled(server, secret, cert_dir)
    (cert_dir / "device.pem").unlink()

    forced = agent_enroll(server, secret, cert_dir, "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.startswith(f"enrolled as device {_device_id(cert_dir)}\n")
    assert forced.stderr == (
        f"sielum-agent: could not end the previous enrollment, device {old}: "
        f"{cert_dir / 'device.pem'} is missing: re-enroll with --force; "
        f"revoke it with `sielum-admin devices revoke {old}`\n"
    )
    assert _state(server, old) == "DEVICE_STATE_ACTIVE"
    # The command it names does the job, as printed (with this server's address).
    command = shlex.split(forced.stderr.split("`")[1])
    assert command[:3] == ["sielum-admin", "devices", "revoke"]
    revoked = admin(server, *command[1:])
    assert revoked.returncode == 0, revoked.stderr
    assert _state(server, old) == "DEVICE_STATE_REVOKED"


def test_force_with_the_old_server_unreachable_says_which_device_to_revoke(
    server: ServerProcess, secret: str, tmp_path: Path
) -> None:
    cert_dir = tmp_path / "agent"
    old = _enrolled(server, secret, cert_dir)
    state = json.loads((cert_dir / "agent.json").read_text())
    state["api_endpoint"] = f"127.0.0.1:{free_port()}"  # nothing listens there
    (cert_dir / "agent.json").write_text(json.dumps(state))

    forced = agent_enroll(server, secret, cert_dir, "--force")
    assert forced.returncode == 0, forced.stderr
    [line] = forced.stderr.splitlines()
    assert line.startswith(
        f"sielum-agent: could not end the previous enrollment, device {old}: "
        f"cannot reach {state['api_endpoint']}: "
    )
    assert line.endswith(f"; revoke it with `sielum-admin devices revoke {old}`")
    assert _state(server, old) == "DEVICE_STATE_ACTIVE"


def test_force_after_an_admin_revoked_the_old_device(
    server: ServerProcess, secret: str, tmp_path: Path
) -> None:
    cert_dir = tmp_path / "agent"
    old = _enrolled(server, secret, cert_dir)
    assert admin(server, "devices", "revoke", old).returncode == 0

    forced = agent_enroll(server, secret, cert_dir, "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.splitlines()[-1] == (
        f"ended the previous enrollment, device {old} (already revoked)"
    )
    assert forced.stderr == ""


def test_force_over_a_damaged_agent_json_says_how_to_find_the_device(
    server: ServerProcess, secret: str, tmp_path: Path
) -> None:
    cert_dir = tmp_path / "agent"
    old = _enrolled(server, secret, cert_dir)
    (cert_dir / "agent.json").write_text("{not json")

    forced = agent_enroll(server, secret, cert_dir, "--force", "--hostname", "reenrolled-host")
    assert forced.returncode == 0, forced.stderr
    assert forced.stderr == (
        "sielum-agent: could not end the previous enrollment: "
        f"{cert_dir / 'agent.json'} is damaged: re-enroll with `sielum-agent enroll --force`; "
        "find it with `sielum-admin devices list --hostname reenrolled-host` and revoke it "
        "with `sielum-admin devices revoke ID`\n"
    )
    listed = admin_json(server, "devices", "list", "--hostname", "reenrolled-host")
    assert old in {d["id"] for d in listed["devices"]}  # type: ignore[attr-defined]


def test_unenroll_ends_the_device_and_leaves_the_cert_dir(
    server: ServerProcess, secret: str, tmp_path: Path
) -> None:
    """Decommissioning: the device ends its own enrollment; a second call is harmless."""
    cert_dir = tmp_path / "agent"
    device_id = _enrolled(server, secret, cert_dir)
    before = sorted(p.name for p in cert_dir.iterdir())

    ended = agent("unenroll", "--cert-dir", str(cert_dir))
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout.splitlines() == [
        f"unenrolled: the server revoked device {device_id}",
        f"  the cert dir is left in place; remove it: rm -r {cert_dir}",
    ]
    assert _state(server, device_id) == "DEVICE_STATE_REVOKED"
    assert sorted(p.name for p in cert_dir.iterdir()) == before
    store = Store.open(f"sqlite:///{server.data_dir / 'sielum.db'}")
    try:
        events = store.list_audit(resource=f"device/{device_id}")
    finally:
        store.close()
    assert (events[0].action, events[0].actor) == ("device.unenroll", f"device/{device_id}")

    again = agent("--json", "unenroll", "--cert-dir", str(cert_dir))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"deviceId": device_id, "alreadyRevoked": True}
    # And the service's own check now says refused (9), as systemd's unit expects.
    assert agent("status", "--cert-dir", str(cert_dir)).returncode == 9


def test_unenroll_fails_while_the_server_is_away(
    server: ServerProcess, secret: str, tmp_path: Path
) -> None:
    """Unreachable: exit 5 and the device stays active, so a play keeps its key for a retry."""
    cert_dir = tmp_path / "agent"
    device_id = _enrolled(server, secret, cert_dir)
    state = json.loads((cert_dir / "agent.json").read_text())
    state["api_endpoint"] = f"127.0.0.1:{free_port()}"  # nothing listens there
    (cert_dir / "agent.json").write_text(json.dumps(state))

    away = agent("unenroll", "--cert-dir", str(cert_dir), "--timeout", "5")
    assert away.returncode == 5, away.stderr
    assert away.stderr.startswith("sielum-agent: ") and away.stdout == ""
    assert _state(server, device_id) == "DEVICE_STATE_ACTIVE"
    # No enrollment at all: 8, as status and renew say.
    missing = agent("unenroll", "--cert-dir", str(tmp_path / "empty"))
    assert missing.returncode == 8, missing.stderr
