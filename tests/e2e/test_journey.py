"""The product page as a test: tokens, agents, refusals, revocation, renewal, and a mass rollout."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

from cryptography import x509

from ..conftest import openssl_verify
from .conftest import (
    ServerProcess,
    admin,
    admin_json,
    agent,
    agent_enroll,
    create_token,
    enroll_args,
    init_data_dir,
    script,
    start_server,
    token_uses,
)


def _serial(cert_dir: Path) -> int:
    return x509.load_pem_x509_certificate((cert_dir / "device.pem").read_bytes()).serial_number


def _device_id(cert_dir: Path) -> str:
    import json

    return str(json.loads((cert_dir / "agent.json").read_text())["device_id"])


def test_product_page_journey(tmp_path: Path, server_factory: list[ServerProcess]) -> None:
    server = start_server(init_data_dir(tmp_path))
    server_factory.append(server)
    enroll_url = f"https://127.0.0.1:{server.enroll_port}"

    # Made first, so that it has expired by the time it is used below.
    expired_id, expired_secret = create_token(server, "--label", "short", "--expires-in", "2s")
    expired_made = time.monotonic()

    created = admin_json(
        server,
        "tokens",
        "create",
        "--label",
        "rollout-eu",
        "--max-uses",
        "2",
        "--expires-in",
        "7d",
        "--enroll-server",
        enroll_url,
    )
    token_id, secret = created["token"]["id"], created["secret"]  # type: ignore[index]
    assert created["token"]["label"] == "rollout-eu"  # type: ignore[index]
    assert created["token"]["maxUses"] == "2"  # type: ignore[index]

    # The command `tokens create` prints is run as printed, but into a temp cert dir.
    # The token goes in the environment, never in the command line.
    words = shlex.split(str(created["enrollCommand"]))
    assert secret not in str(created["enrollCommand"])
    program, *args = words
    assert program == script("sielum-agent")
    args[args.index("--cert-dir") + 1] = str(tmp_path / "agent-a")
    first = subprocess.run(
        [program, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SIELUM_ENROLLMENT_TOKEN": secret},
    )
    assert first.returncode == 0, first.stderr
    assert "enrolled as device" in first.stdout
    second = agent_enroll(server, str(secret), tmp_path / "agent-b")
    assert second.returncode == 0, second.stderr

    third = agent_enroll(server, str(secret), tmp_path / "agent-c")
    assert third.returncode == 4
    assert "token refused: enrollment token is exhausted" in third.stderr
    assert not (tmp_path / "agent-c" / "agent.json").exists()
    listing = admin(server, "tokens", "list")
    row = next(line for line in listing.stdout.splitlines() if line.startswith(token_id))
    assert "exhausted" in row and "2/2" in row

    revoked = admin(server, "tokens", "revoke", token_id)
    assert revoked.returncode == 0, revoked.stderr
    again = agent_enroll(server, str(secret), tmp_path / "agent-c")
    assert again.returncode == 4
    assert "token refused: enrollment token has been revoked" in again.stderr

    time.sleep(max(0.0, 2.5 - (time.monotonic() - expired_made)))
    late = agent_enroll(server, expired_secret, tmp_path / "agent-d")
    assert late.returncode == 4
    assert "token refused: enrollment token has expired" in late.stderr
    assert token_uses(server, expired_id) == 0
    expired_list = admin_json(server, "tokens", "list", "--state", "expired")["tokens"]
    assert [t["id"] for t in expired_list] == [expired_id]  # type: ignore[index]

    # Revoking the token touched neither device.
    for name in ("agent-a", "agent-b"):
        status = agent("status", "--cert-dir", str(tmp_path / name))
        assert status.returncode == 0, status.stderr
        assert f"device:      {_device_id(tmp_path / name)}" in status.stdout
        assert "renewal:     not due" in status.stdout

    device_a = _device_id(tmp_path / "agent-a")
    assert admin(server, "devices", "revoke", device_a).returncode == 0
    refused = agent("status", "--cert-dir", str(tmp_path / "agent-a"))
    assert refused.returncode == 9
    assert refused.stderr.strip() == (
        "sielum-agent: the server refused this device: device has been revoked"
    )

    b = tmp_path / "agent-b"
    old_serial, old_key = _serial(b), (b / "device.key").read_bytes()
    renewed = agent("renew", "--cert-dir", str(b))
    assert renewed.returncode == 0, renewed.stderr
    assert _serial(b) != old_serial
    assert (b / "device.key").read_bytes() != old_key
    assert (b / "device.key").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in b.iterdir()) == [
        ".lock",
        "agent.json",
        "ca.pem",
        "device.key",
        "device.pem",
    ]
    verify = openssl_verify(b / "ca.pem", b / "device.pem")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    after = agent("status", "--cert-dir", str(b))
    assert after.returncode == 0, after.stderr
    device_b = admin_json(server, "devices", "get", _device_id(b))["device"]
    assert device_b["serial"] == format(_serial(b), "x")  # type: ignore[index]
    assert device_b["state"] == "DEVICE_STATE_ACTIVE"  # type: ignore[index]

    for result in (first, second, third, again, late, listing):
        assert secret not in result.stdout + result.stderr
    assert secret not in server.log


def test_mass_deployment(tmp_path: Path, server_factory: list[ServerProcess]) -> None:
    server = start_server(init_data_dir(tmp_path))
    server_factory.append(server)
    token_id, secret = create_token(server, "--label", "fleet")
    env = {**os.environ, "SIELUM_ENROLLMENT_TOKEN": secret}

    started = time.monotonic()
    processes = []
    for n in range(50):
        program, *args = enroll_args(server, tmp_path / f"host-{n}", "--hostname", f"host-{n}")
        processes.append(
            subprocess.Popen(
                [script(program), *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    outcomes = [(p.wait(timeout=120), p.stderr.read()) for p in processes]  # type: ignore[union-attr]
    for process in processes:
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]
    assert [code for code, _ in outcomes] == [0] * 50, [err for code, err in outcomes if code]
    print(f"50 concurrent enrollments took {time.monotonic() - started:.1f}s")

    assert token_uses(server, token_id) == 50
    devices = admin_json(server, "devices", "list", "--token", token_id)["devices"]
    assert len(devices) == 50  # type: ignore[arg-type]
    assert {d["hostname"] for d in devices} == {f"host-{n}" for n in range(50)}  # type: ignore[index, union-attr]
    ids = {_device_id(tmp_path / f"host-{n}") for n in range(50)}
    assert ids == {d["id"] for d in devices}  # type: ignore[index, union-attr]
    listing = admin(server, "tokens", "list")
    assert "50/unlimited" in listing.stdout

    assert admin(server, "tokens", "revoke", token_id).returncode == 0
    late = agent_enroll(server, secret, tmp_path / "host-50")
    assert late.returncode == 4
    assert "enrollment token has been revoked" in late.stderr
    assert token_uses(server, token_id) == 50
