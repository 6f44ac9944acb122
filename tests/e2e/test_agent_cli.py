"""sielum-agent as a real process: token sources, each failure's exit code and message, pinning."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .conftest import (
    ServerProcess,
    agent,
    agent_enroll,
    ca_fingerprint,
    create_token,
    enroll_args,
    free_port,
    init_data_dir,
    log_events,
    run,
    start_server,
    token_uses,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # The failure limit is off: this module fails enrollments on purpose, often.
    process = start_server(
        init_data_dir(tmp_path_factory.mktemp("agent-cli")), "--enroll-failure-burst", "0"
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def secret(server: ServerProcess) -> str:
    """An unlimited token shared by the tests that only need one that works."""
    return create_token(server, "--label", "agent-cli")[1]


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def _mistype(secret: str) -> str:
    # Swap one character of the random part for another of the alphabet.
    i = len("slm_") + 16 + 1 + 5
    return secret[:i] + ("a" if secret[i] != "a" else "b") + secret[i + 1 :]


def test_help_documents_every_exit_code() -> None:
    for args in (("--help",), ("enroll", "--help")):
        result = agent(*args)
        assert result.returncode == 0
        text = " ".join(result.stdout.split())
        for code, words in [
            (2, "bad arguments"),
            (3, "CA fingerprint mismatch"),
            (4, "token refused: invalid, expired, exhausted or revoked"),
            (5, "server unreachable"),
            (6, "cert dir cannot be created, written or read"),
            (7, "already enrolled"),
        ]:
            assert f"{code} {words}" in text, (code, words)


@pytest.mark.parametrize("source", ["flag", "file", "env", "stdin"])
def test_token_from_each_source_with_whitespace(
    server: ServerProcess, secret: str, tmp_path: Path, source: str
) -> None:
    cert_dir = tmp_path / "agent"
    padded = f"  {secret}\n\n"
    args = enroll_args(server, cert_dir)
    env: dict[str, str] = {"SIELUM_ENROLLMENT_TOKEN": ""}
    stdin = None
    if source == "flag":
        args += ["--token", padded]
    elif source == "file":
        (tmp_path / "token").write_text(padded)
        args += ["--token-file", str(tmp_path / "token")]
    elif source == "env":
        env = {"SIELUM_ENROLLMENT_TOKEN": padded}
    else:
        args += ["--token-file", "-"]
        stdin = padded
    result = run(*args, env=env, input=stdin)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert secret not in result.stdout
    state = json.loads((cert_dir / "agent.json").read_text())
    assert result.stdout.startswith(f"enrolled as device {state['device_id']}\n")
    assert state["api_endpoint"] == f"127.0.0.1:{server.api_port}"
    assert state["server"] == f"https://127.0.0.1:{server.enroll_port}"
    assert state["ca_fingerprint"] == ca_fingerprint(server.data_dir)
    assert (cert_dir / "device.key").stat().st_mode & 0o777 == 0o600
    assert secret not in "".join(p.read_text() for p in cert_dir.iterdir() if p.is_file())


def _bad_argument_cases(secret: str, port: int) -> list[tuple[list[str], dict[str, str], str]]:
    fp = "sha256:" + "ab" * 32
    base = ["enroll", "--cert-dir", "/nonexistent/never-written", "--ca-fingerprint", fp]
    server = ["--server", f"https://127.0.0.1:{port}"]
    env = {"SIELUM_ENROLLMENT_TOKEN": secret}
    return [
        (
            [*base, "--server", f"http://127.0.0.1:{port}"],
            env,
            f"sielum-agent: --server 'http://127.0.0.1:{port}': only https:// is supported",
        ),
        ([*base, "--server", "::1:8443"], env, "put an IPv6 address in brackets"),
        ([*base, "--server", "https://host:99999"], env, "Port out of range"),
        (
            ["enroll", "--cert-dir", "/x", *server, "--ca-fingerprint", "sha256:abcd"],
            env,
            "sielum-agent: --ca-fingerprint: CA fingerprint must be sha256:<64 hex>",
        ),
        (
            ["enroll", "--cert-dir", "/x", *server, "--ca-fingerprint", "AB:" * 19 + "AB"],
            env,
            "a SHA-1 fingerprint",
        ),
        (
            [*base, *server],
            {"SIELUM_ENROLLMENT_TOKEN": _mistype(secret)},
            "sielum-agent: enrollment token checksum does not match: it was mistyped",
        ),
        (
            [*base, *server],
            {"SIELUM_ENROLLMENT_TOKEN": "slm_not-a-token"},
            "sielum-agent: enrollment token is malformed",
        ),
        (
            [*base, *server],
            {"SIELUM_ENROLLMENT_TOKEN": ""},
            "sielum-agent: no enrollment token: set SIELUM_ENROLLMENT_TOKEN",
        ),
        (
            [*base, *server, "--token", secret, "--token-file", "/t"],
            {},
            "argument --token-file: not allowed with argument --token",
        ),
        ([*base, *server, "--token-file", "/nonexistent/token"], {}, "cannot read --token-file"),
    ]


def test_bad_arguments_exit_2_before_dialling(secret: str) -> None:
    # The port is closed: had any of these dialled, the exit code would be 5.
    port = free_port()
    for args, env, message in _bad_argument_cases(secret, port):
        result = agent(*args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        line = _one_line(result.stderr)
        assert message in line, (message, line)
        assert secret not in line and _mistype(secret) not in line


def test_unreachable_server_exits_5(secret: str, tmp_path: Path) -> None:
    port = free_port()
    result = agent(
        "enroll",
        "--server",
        f"127.0.0.1:{port}",
        "--ca-fingerprint",
        "ab" * 32,
        "--cert-dir",
        str(tmp_path / "a"),
        env={"SIELUM_ENROLLMENT_TOKEN": secret},
    )
    assert result.returncode == 5
    assert (
        _one_line(result.stderr)
        == f"sielum-agent: cannot reach 127.0.0.1:{port}: connection refused"
    )


def test_cert_dir_not_writable_exits_6_and_spends_no_use(
    server: ServerProcess, tmp_path: Path
) -> None:
    token_id, token = create_token(server, "--max-uses", "1")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = agent_enroll(server, token, blocker / "certs")
    assert result.returncode == 6
    assert _one_line(result.stderr).startswith(
        f"sielum-agent: cannot create cert dir {blocker / 'certs'}: "
    )
    assert token_uses(server, token_id) == 0
    assert not any(token_id in line for line in log_events(server, "enroll"))


def test_fail_planted_cert_dir_exits_6_and_planted_key_is_never_enrolled(
    server: ServerProcess, tmp_path: Path
) -> None:
    """A cert dir that others may write is refused before anything is sent; a pending key the
    agent did not make (readable by others) is replaced, so the attacker's key is not enrolled."""
    token_id, token = create_token(server, "--max-uses", "1")
    cert_dir = tmp_path / "agent"
    cert_dir.mkdir()
    cert_dir.chmod(0o777)
    planted = ec.generate_private_key(ec.SECP256R1())
    pending = cert_dir / "enroll.key.pending"
    pending.write_bytes(
        planted.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pending.chmod(0o644)
    refused = agent_enroll(server, token, cert_dir)
    assert refused.returncode == 6
    assert _one_line(refused.stderr) == (
        f"sielum-agent: cert dir {cert_dir} is writable by group and others (mode 0777): "
        "refusing to use it"
    )
    assert token_uses(server, token_id) == 0

    cert_dir.chmod(0o700)
    enrolled = agent_enroll(server, token, cert_dir)
    assert enrolled.returncode == 0, enrolled.stderr
    certificate = x509.load_pem_x509_certificate((cert_dir / "device.pem").read_bytes())
    assert certificate.public_key() != planted.public_key()
    assert not pending.exists()
    assert (cert_dir / "device.key").stat().st_mode & 0o777 == 0o600


def test_existing_enrollment_is_kept_unless_force(
    server: ServerProcess, secret: str, tmp_path: Path
) -> None:
    cert_dir = tmp_path / "agent"
    assert agent_enroll(server, secret, cert_dir).returncode == 0
    before = {p.name: p.read_bytes() for p in cert_dir.iterdir()}

    kept = agent_enroll(server, secret, cert_dir)
    assert kept.returncode == 7
    assert _one_line(kept.stderr) == (
        f"sielum-agent: {cert_dir} already holds an enrollment; it was kept "
        "(pass --force to enroll again with a new key)"
    )
    assert {p.name: p.read_bytes() for p in cert_dir.iterdir()} == before

    forced = agent_enroll(server, secret, cert_dir, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (cert_dir / "device.key").read_bytes() != before["device.key"]
    old_id = json.loads(before["agent.json"])["device_id"]
    assert json.loads((cert_dir / "agent.json").read_text())["device_id"] != old_id


def test_rerun_after_a_lost_answer_returns_the_same_device(
    server: ServerProcess, tmp_path: Path
) -> None:
    token_id, token = create_token(server, "--max-uses", "1")
    cert_dir = tmp_path / "agent"
    assert agent_enroll(server, token, cert_dir).returncode == 0
    device_id = json.loads((cert_dir / "agent.json").read_text())["device_id"]
    # What the cert dir holds when the agent dies after Enroll was sent but before
    # its answer was stored: only the key it made for the request.
    for name in ("agent.json", "device.pem", "ca.pem"):
        (cert_dir / name).unlink()
    (cert_dir / "device.key").rename(cert_dir / "enroll.key.pending")

    again = agent_enroll(server, token, cert_dir)
    assert again.returncode == 0, again.stderr
    assert json.loads((cert_dir / "agent.json").read_text())["device_id"] == device_id
    assert token_uses(server, token_id) == 1
    assert agent("status", "--cert-dir", str(cert_dir)).returncode == 0


def test_openssl_fingerprint_line_is_accepted(
    server: ServerProcess, secret: str, tmp_path: Path
) -> None:
    line = subprocess.run(
        [
            "openssl",
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            str(server.data_dir / "ca.pem"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert ":" in line.split("=", 1)[1]
    result = agent_enroll(server, secret, tmp_path / "agent", fingerprint=line)
    assert result.returncode == 0, result.stderr


def test_wrong_fingerprint_never_dials_enroll(server: ServerProcess, tmp_path: Path) -> None:
    token_id, token = create_token(server, "--label", "pin-test")
    other_ca = hashlib.sha256(b"some other CA").hexdigest()
    result = agent_enroll(server, token, tmp_path / "agent", fingerprint=other_ca)
    assert result.returncode == 3
    assert _one_line(result.stderr) == (
        "sielum-agent: CA fingerprint mismatch: no certificate the server presented has the "
        "fingerprint given with --ca-fingerprint; the token was not sent"
    )
    assert token_uses(server, token_id) == 0
    assert not any(token_id in line for line in log_events(server, "enroll"))
    assert not (tmp_path / "agent" / "agent.json").exists()


# --- rogue servers ---------------------------------------------------------------------


class RogueServer:
    """A TLS server that records every connection and every application byte it receives."""

    def __init__(self, tmp: Path, chain_pem: bytes, key_pem: bytes) -> None:
        (tmp / "rogue-chain.pem").write_bytes(chain_pem)
        (tmp / "rogue.key").write_bytes(key_pem)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(tmp / "rogue-chain.pem", tmp / "rogue.key")
        self.context.set_alpn_protocols(["h2"])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.handshakes = 0
        self.received = b""
        self.stopping = threading.Event()
        self.listener.settimeout(0.1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.settimeout(10)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    self.handshakes += 1
                    while chunk := tls.recv(65536):
                        self.received += chunk
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=15)
        self.listener.close()
        assert not self.thread.is_alive(), "the rogue server is still reading a connection"


def _rogue_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sielum CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _rogue_leaf(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sielum-server")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _enroll_against(
    rogue: RogueServer, server: ServerProcess, token: str, cert_dir: Path
) -> subprocess.CompletedProcess[str]:
    return run(
        "sielum-agent",
        "enroll",
        "--server",
        f"https://127.0.0.1:{rogue.port}",
        "--ca-fingerprint",
        ca_fingerprint(server.data_dir),
        "--cert-dir",
        str(cert_dir),
        env={"SIELUM_ENROLLMENT_TOKEN": token},
    )


def test_rogue_server_with_the_real_ca_in_its_chain_gets_no_token(
    server: ServerProcess, secret: str, tmp_path: Path
) -> None:
    rogue_ca, rogue_key = _rogue_ca()
    leaf_pem, leaf_key = _rogue_leaf(rogue_ca, rogue_key)
    # The real CA certificate is public, so a rogue can send it along: the pin
    # matches it, but the rogue cannot show a leaf that CA signed.
    real_ca = (server.data_dir / "ca.pem").read_bytes()
    rogue = RogueServer(tmp_path, leaf_pem + real_ca, leaf_key)
    try:
        result = _enroll_against(rogue, server, secret, tmp_path / "agent")
    finally:
        rogue.stop()
    assert result.returncode == 3
    assert _one_line(result.stderr) == (
        "sielum-agent: the server's certificate is not issued by the pinned CA (another CA "
        "signed it); refusing to send the token"
    )
    assert (rogue.connections, rogue.handshakes, rogue.received) == (1, 1, b"")
    assert not (tmp_path / "agent" / "agent.json").exists()
    assert not (tmp_path / "agent" / "enroll.key.pending").exists()


def test_an_enrolled_device_cannot_pose_as_the_server(
    server: ServerProcess, secret: str, tmp_path: Path
) -> None:
    device = tmp_path / "device"
    assert agent_enroll(server, secret, device).returncode == 0
    # A device certificate is from the real CA and the rogue holds its key: only
    # the certificate's purpose and names give it away.
    rogue = RogueServer(
        tmp_path,
        (device / "device.pem").read_bytes() + (device / "ca.pem").read_bytes(),
        (device / "device.key").read_bytes(),
    )
    try:
        result = _enroll_against(rogue, server, secret, tmp_path / "agent")
    finally:
        rogue.stop()
    assert result.returncode == 3
    assert _one_line(result.stderr) == (
        "sielum-agent: the server's certificate is not a TLS server certificate (no serverAuth); "
        "refusing to send the token"
    )
    assert (rogue.connections, rogue.handshakes, rogue.received) == (1, 1, b"")


def test_status_and_renew_need_an_enrollment(tmp_path: Path) -> None:
    for command in ("status", "renew"):
        result = agent(command, "--cert-dir", str(tmp_path / "empty"))
        assert result.returncode == 8
        assert _one_line(result.stderr) == (
            f"sielum-agent: {tmp_path / 'empty'} holds no enrollment: "
            f"run `sielum-agent enroll --cert-dir {tmp_path / 'empty'}`"
        )


def test_status_json(server: ServerProcess, secret: str, tmp_path: Path) -> None:
    cert_dir = tmp_path / "agent"
    assert agent_enroll(server, secret, cert_dir).returncode == 0
    result = agent("status", "--cert-dir", str(cert_dir), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["deviceId"] == json.loads((cert_dir / "agent.json").read_text())["device_id"]
    assert report["server"] == f"127.0.0.1:{server.api_port}"
    assert report["renewalDue"] is False
    assert report["renewAfter"] < report["notAfter"]


def test_ipv6_server_and_a_server_that_goes_away(
    tmp_path: Path, server_factory: list[ServerProcess]
) -> None:
    v6 = start_server(init_data_dir(tmp_path), enroll_host="::1")
    server_factory.append(v6)
    _, token = create_token(v6)
    fp = ca_fingerprint(v6.data_dir)
    for n, url in enumerate([f"https://[::1]:{v6.enroll_port}", f"[::1]:{v6.enroll_port}"]):
        result = agent(
            "enroll",
            "--server",
            url,
            "--ca-fingerprint",
            fp,
            "--cert-dir",
            str(tmp_path / f"a{n}"),
            env={"SIELUM_ENROLLMENT_TOKEN": token},
        )
        assert result.returncode == 0, result.stderr
    state = json.loads((tmp_path / "a0" / "agent.json").read_text())
    assert state["server"] == f"https://[::1]:{v6.enroll_port}"
    assert agent("status", "--cert-dir", str(tmp_path / "a0")).returncode == 0

    cert_dir = tmp_path / "a1"
    before = {p.name: p.read_bytes() for p in cert_dir.iterdir()}
    assert v6.stop() == 0
    for command in ("status", "renew"):
        result = agent(command, "--cert-dir", str(cert_dir), "--timeout", "5")
        assert result.returncode == 5, result.stderr
        # The words enroll uses, not gRPC's "failed to connect to all addresses".
        assert _one_line(result.stderr) == (
            f"sielum-agent: cannot reach 127.0.0.1:{v6.api_port}: connection refused"
        )
    # The failed renewal left the old key and certificate, and nothing else.
    assert {p.name: p.read_bytes() for p in cert_dir.iterdir()} == before
    shutil.rmtree(tmp_path / "a0")
