"""Errors that point the right way: the dashboard port and a name missing from the certificate.

Real processes: sielum-server, sielum-agent and sielum-admin, as an operator runs them.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    ServerProcess,
    admin,
    ca_fingerprint,
    create_token,
    init_data_dir,
    run,
    start_server,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(init_data_dir(tmp_path_factory.mktemp("wrong-way")))
    yield process
    process.stop()


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_agent_pointed_at_the_dashboard_port_is_told_so(
    server: ServerProcess, tmp_path: Path
) -> None:
    _, secret = create_token(server)
    result = run(
        "sielum-agent",
        "--json",
        "enroll",
        "--server",
        server.dashboard_url,
        "--ca-fingerprint",
        ca_fingerprint(server.data_dir),
        "--cert-dir",
        str(tmp_path / "agent"),
        env={"SIELUM_ENROLLMENT_TOKEN": secret},
    )
    assert result.returncode == 5, result.stderr
    line = _one_line(result.stderr)
    target = f"127.0.0.1:{server.dashboard_port}"
    assert line.startswith(f"sielum-agent: {target} is Sielum's dashboard port"), line
    assert f"open https://{target}/ in a browser" in line
    assert "enroll on the enroll port, 8443" in line
    assert "ALPN" not in line
    assert json.loads(result.stdout)["error"]["code"] == "wrong_port"


def test_admin_pointed_at_the_dashboard_port_is_told_so(server: ServerProcess) -> None:
    result = run(
        "sielum-admin",
        "--server",
        f"127.0.0.1:{server.dashboard_port}",
        "--cert-dir",
        str(server.data_dir / "admin"),
        "tokens",
        "list",
    )
    assert result.returncode == 5, result.stderr
    line = _one_line(result.stderr)
    target = f"127.0.0.1:{server.dashboard_port}"
    assert f"{target} is Sielum's dashboard port" in line, line
    assert f"open https://{target}/ in a browser" in line
    assert "admin calls go to the API port, 8444" in line
    assert "enroll port" not in line


def test_a_name_missing_from_the_certificate_exits_10_and_the_printed_fix_works(
    server_factory: list[ServerProcess], tmp_path: Path
) -> None:
    # The enroll port on 127.0.0.2, a loopback address the certificate does not name.
    data_dir = init_data_dir(tmp_path)
    server = start_server(data_dir, enroll_host="127.0.0.2")
    server_factory.append(server)
    _, secret = create_token(server)
    args = [
        "sielum-agent",
        "--json",
        "enroll",
        "--server",
        f"https://127.0.0.2:{server.enroll_port}",
        "--ca-fingerprint",
        ca_fingerprint(data_dir),
        "--cert-dir",
        str(tmp_path / "agent"),
    ]
    result = run(*args, env={"SIELUM_ENROLLMENT_TOKEN": secret})
    assert result.returncode == 10, result.stderr
    line = _one_line(result.stderr)
    assert "does not name 127.0.0.2" in line, line
    fix = "sielum-server renew-server-cert --data-dir DIR --san 127.0.0.2"
    assert fix in line
    assert "init --san" not in line
    assert json.loads(result.stdout)["error"] == {
        "code": "name_mismatch",
        "message": line.removeprefix("sielum-agent: "),
        "exit_code": 10,
    }

    # The fix as printed, with the data dir filled in; SIGHUP takes it at once.
    command = fix.replace("DIR", str(data_dir)).split()
    renewed = run(*command)
    assert renewed.returncode == 0, renewed.stderr
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while True:
        result = run(*args, env={"SIELUM_ENROLLMENT_TOKEN": secret})
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert result.returncode == 0, result.stderr


def test_admin_with_a_name_the_certificate_lacks_exits_7(
    server_factory: list[ServerProcess], tmp_path: Path
) -> None:
    from .conftest import free_port

    data_dir = init_data_dir(tmp_path)
    api_port = free_port()
    # The API port on 127.0.0.2 (the last --api-addr wins).
    server = start_server(data_dir, "--api-addr", f"127.0.0.2:{api_port}")
    server_factory.append(server)
    result = admin(server, "--server", f"127.0.0.2:{api_port}", "tokens", "list")
    assert result.returncode == 7, result.stderr
    line = _one_line(result.stderr)
    assert "does not name 127.0.0.2" in line, line
    assert "renew-server-cert --data-dir DIR --san 127.0.0.2" in line
    assert "ERROR" not in result.stderr


def test_diagnosed_calls_leave_one_plain_info_line_in_the_server_log(
    server_factory: list[ServerProcess], tmp_path: Path
) -> None:
    server = start_server(init_data_dir(tmp_path), "--workers", "1")
    server_factory.append(server)
    _, secret = create_token(server)
    # Three agents at the API port: each call is refused, and each agent looks again
    # with a handshake that sends no client certificate.
    for n in range(3):
        result = run(
            "sielum-agent",
            "enroll",
            "--server",
            f"https://127.0.0.1:{server.api_port}",
            "--ca-fingerprint",
            ca_fingerprint(server.data_dir),
            "--cert-dir",
            str(tmp_path / f"agent{n}"),
            env={"SIELUM_ENROLLMENT_TOKEN": secret},
        )
        assert result.returncode == 5, result.stderr
        assert "is Sielum's API port" in _one_line(result.stderr)
    # A client at a port that speaks no TLS: its own line only, none of gRPC's.
    result = admin(server, "--server", f"127.0.0.1:{server.revocation_port}", "tokens", "list")
    assert result.returncode == 5, result.stderr
    assert _one_line(result.stderr).startswith("sielum-admin: TLS handshake with ")
    deadline = time.monotonic() + 10
    while "tls_handshake_failed" not in server.log and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.stop() == 0
    lines = [line for line in server.log.splitlines() if "tls_handshake_failed" in line]
    # Once a minute per reason, at info, in words, however many clients did it.
    assert len(lines) == 1, server.log
    assert " INFO tls_handshake_failed " in lines[0]
    assert 'reason="a client sent no client certificate' in lines[0]
    assert "tls_error=PEER_DID_NOT_RETURN_A_CERTIFICATE" in lines[0]
    assert "Handshake failed" not in server.log
    assert "WARNING" not in server.log, server.log


def _certificate_for_127_0_0_1_only(data_dir: Path) -> None:
    """Replace the server certificate `init` made with one naming only 127.0.0.1 (same key)."""
    from datetime import UTC, datetime
    from ipaddress import ip_address

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from sielum.ca.authority import CertificateAuthority

    key = serialization.load_pem_private_key((data_dir / "server.key").read_bytes(), None)
    ca = CertificateAuthority.load(data_dir, passphrase=None)
    certificate = ca.sign_server(
        key.public_key(),  # type: ignore[arg-type]
        (x509.IPAddress(ip_address("127.0.0.1")),),
        datetime.now(UTC),
    )
    chain = (
        certificate.public_bytes(serialization.Encoding.PEM) + (data_dir / "ca.pem").read_bytes()
    )
    (data_dir / "server.pem").write_bytes(chain)


def test_a_name_the_certificate_lacks_is_one_warning_in_the_server_log_with_the_fix(
    server_factory: list[ServerProcess], tmp_path: Path
) -> None:
    """Clients that dial localhost when the certificate names only 127.0.0.1: each exits
    with the name-mismatch code; the server logs one warning naming the fix for all of
    them, and the fix as the log prints it (DIR filled in) lets the next call through."""
    data_dir = init_data_dir(tmp_path)
    _certificate_for_127_0_0_1_only(data_dir)
    server = start_server(data_dir, "--workers", "1", certificate_name="127.0.0.1")
    server_factory.append(server)
    _, secret = create_token(server)  # over 127.0.0.1, a name the certificate has

    agent = run(
        "sielum-agent",
        "enroll",
        "--server",
        f"https://localhost:{server.enroll_port}",
        "--ca-fingerprint",
        ca_fingerprint(data_dir),
        "--cert-dir",
        str(tmp_path / "agent"),
        env={"SIELUM_ENROLLMENT_TOKEN": secret},
    )
    assert agent.returncode == 10, agent.stderr
    assert "does not name localhost" in _one_line(agent.stderr)
    assert not (tmp_path / "agent" / "device.pem").exists()
    listed = admin(server, "--server", f"localhost:{server.api_port}", "tokens", "list")
    assert listed.returncode == 7, listed.stderr
    line = _one_line(listed.stderr)
    assert line.startswith("sielum-admin: the server's certificate does not name localhost"), line

    deadline = time.monotonic() + 10
    while "unknown_server_name" not in server.log and time.monotonic() < deadline:
        time.sleep(0.1)
    warnings = [line for line in server.log.splitlines() if "unknown_server_name" in line]
    # One line for the name, however many handshakes asked for it within the minute.
    assert len(warnings) == 1, server.log
    [warning] = warnings
    assert " WARNING unknown_server_name " in warning, warning
    assert "name=localhost " in warning, warning
    fix = "sielum-server renew-server-cert --data-dir DIR --san localhost"
    assert (
        'reason="a client dialled a name the server certificate lacks;'
        f' if clients should use it: {fix}"' in warning
    )
    assert "held_back=0" in warning
    assert "No match found" not in server.log  # the core's own line is not repeated

    # The fix as the server printed it, with its data dir: the admin gets through.
    renewed = run(*fix.replace("DIR", str(data_dir)).split())
    assert renewed.returncode == 0, renewed.stderr
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while True:
        listed = admin(server, "--server", f"localhost:{server.api_port}", "tokens", "list")
        if listed.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert listed.returncode == 0, listed.stderr
