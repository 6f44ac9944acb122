"""Planning for the CA's expiry: a second CA beside the first, and agents moved with enroll --force.

The steps of docs/tokens-and-certificates.md, "Planning for the CA's expiry", 2 to 5.
"""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import (
    ServerProcess,
    admin_json,
    agent,
    agent_enroll,
    ca_fingerprint,
    create_token,
    init_data_dir,
    start_server,
)


def test_agents_move_to_a_new_ca_with_enroll_force(
    tmp_path: Path, server_factory: list[ServerProcess]
) -> None:
    old = start_server(init_data_dir(tmp_path, "sielum"))
    server_factory.append(old)
    cert_dir = tmp_path / "agent"
    old_token, old_secret = create_token(old)
    assert agent_enroll(old, old_secret, cert_dir).returncode == 0
    old_device = json.loads((cert_dir / "agent.json").read_text())["device_id"]

    # A new CA in a new data directory, served beside the old one on the same database.
    new_dir = init_data_dir(tmp_path, "sielum-2")
    assert ca_fingerprint(new_dir) != ca_fingerprint(old.data_dir)
    new = start_server(new_dir, "--database", f"sqlite:///{old.data_dir / 'sielum.db'}")
    server_factory.append(new)
    _, new_secret = create_token(new, "--label", "ca-2", "--max-uses", "5", "--expires-in", "60d")

    moved = agent_enroll(new, new_secret, cert_dir, "--force")
    assert moved.returncode == 0, moved.stderr
    new_device = json.loads((cert_dir / "agent.json").read_text())["device_id"]
    assert moved.stdout.splitlines()[-1] == f"ended the previous enrollment, device {old_device}"
    assert (cert_dir / "ca.pem").read_bytes() == (new_dir / "ca.pem").read_bytes()
    status = agent("status", "--cert-dir", str(cert_dir), "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["deviceId"] == new_device

    # One database: both servers list both devices, the old one revoked.
    for server in (old, new):
        states = {
            d["id"]: d["state"]  # type: ignore[index]
            for d in admin_json(server, "devices", "list")["devices"]  # type: ignore[union-attr]
        }
        assert states == {old_device: "DEVICE_STATE_REVOKED", new_device: "DEVICE_STATE_ACTIVE"}
    # What is left to move: the old tokens' active devices.
    left = admin_json(old, "devices", "list", "--state", "active", "--token", old_token)
    assert left["devices"] == []
