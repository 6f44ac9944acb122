"""sielum-server renew-server-cert; a running server takes the new certificate without a drop."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sielum.admin.v1 import admin_pb2, admin_pb2_grpc
from sielum.ca.authority import CertificateAuthority
from sielum.ca.datadir import private_pem, write_private_file
from sielum.ca.profile import ec, server_sans

from .conftest import ServerProcess, ca_fingerprint, init_data_dir, run, start_server


def _names(certificate: x509.Certificate) -> list[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in san]


def _served_certificate(port: int, ca_pem: bytes, name: str = "localhost") -> x509.Certificate:
    """The leaf a new TLS handshake on port gets, checked against the CA and name like a client."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _admin_channel(server: ServerProcess) -> grpc.Channel:
    bundle = server.data_dir / "admin"
    return grpc.secure_channel(
        f"localhost:{server.api_port}",
        grpc.ssl_channel_credentials(
            root_certificates=(server.data_dir / "ca.pem").read_bytes(),
            private_key=(bundle / "admin.key").read_bytes(),
            certificate_chain=(bundle / "admin.pem").read_bytes(),
        ),
    )


def _wait_for_log(server: ServerProcess, text: str, count: int = 1, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while server.log.count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} x{count} in the log:\n{server.log}"
        time.sleep(0.05)


def test_renew_server_cert_keeps_names_and_the_pin(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    init = run("sielum-server", "init", "--data-dir", str(data_dir), "--san", "enroll.example.test")
    assert init.returncode == 0, init.stderr
    pin = ca_fingerprint(data_dir)
    before = x509.load_pem_x509_certificate((data_dir / "server.pem").read_bytes())

    renewed = run(
        "sielum-server", "renew-server-cert", "--data-dir", str(data_dir),
        "--san", "api.example.test", "--san", "198.51.100.4",
    )  # fmt: skip
    assert renewed.returncode == 0, renewed.stderr
    after = x509.load_pem_x509_certificate((data_dir / "server.pem").read_bytes())
    assert after.serial_number != before.serial_number
    assert _names(after) == [
        "localhost", "127.0.0.1", "::1", "enroll.example.test", "api.example.test", "198.51.100.4",
    ]  # fmt: skip
    lines = renewed.stdout.splitlines()
    assert f"  serial:          {after.serial_number:x} (was {before.serial_number:x})" in lines
    assert "  new names:       api.example.test, 198.51.100.4" in lines
    assert f"  CA fingerprint:  {pin} (unchanged: agents keep their pin)" in lines
    again = run("sielum-server", "fingerprint", "--data-dir", str(data_dir))
    assert again.stdout.strip() == pin
    verify = subprocess.run(
        ["openssl", "verify", "-purpose", "sslserver", "-CAfile", str(data_dir / "ca.pem"),
         str(data_dir / "server.pem")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr

    bad = run("sielum-server", "renew-server-cert", "--data-dir", str(data_dir), "--san", "a b")
    assert bad.returncode == 2
    assert bad.stderr == (
        "sielum-server: --san 'a b' is neither an IP address nor a DNS name (ASCII letters, "
        "digits, hyphens and dots)\n"
    )
    missing = run("sielum-server", "renew-server-cert", "--data-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert "run `sielum-server init" in missing.stderr


def test_renew_server_cert_with_an_encrypted_ca_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {"SIELUM_CA_PASSPHRASE": "correct horse battery"}
    assert run("sielum-server", "init", "--data-dir", str(data_dir), env=env).returncode == 0
    refused = run("sielum-server", "renew-server-cert", "--data-dir", str(data_dir))
    assert refused.returncode == 2
    assert refused.stderr == "sielum-server: CA key is encrypted: set SIELUM_CA_PASSPHRASE\n"
    renewed = run("sielum-server", "renew-server-cert", "--data-dir", str(data_dir), env=env)
    assert renewed.returncode == 0, renewed.stderr


def test_renewal_reaches_a_running_server(
    tmp_path: Path, server_factory: list[ServerProcess]
) -> None:
    """SIGHUP: new handshakes get the new certificate; a connection made before goes on."""
    data_dir = init_data_dir(tmp_path)
    ca_pem = (data_dir / "ca.pem").read_bytes()
    pin = ca_fingerprint(data_dir)
    # A long check interval: here the reload must come from SIGHUP, not from the file watch.
    server = start_server(data_dir, "--certificate-check-interval", "3600")
    server_factory.append(server)
    first = _served_certificate(server.api_port, ca_pem)

    channel = _admin_channel(server)
    states: list[grpc.ChannelConnectivity] = []
    channel.subscribe(states.append, try_to_connect=True)
    stub = admin_pb2_grpc.AdminServiceStub(channel)
    stub.ListEnrollmentTokens(admin_pb2.ListEnrollmentTokensRequest(), timeout=10)
    # Calls keep flowing on that connection while the certificate changes under it.
    failures: list[grpc.RpcError] = []
    calls = 0
    stop = threading.Event()

    def keep_calling() -> None:
        nonlocal calls
        while not stop.is_set():
            try:
                stub.ListEnrollmentTokens(admin_pb2.ListEnrollmentTokensRequest(), timeout=10)
                calls += 1
            except grpc.RpcError as error:
                failures.append(error)

    caller = threading.Thread(target=keep_calling)
    caller.start()
    try:
        renewed = run(
            "sielum-server", "renew-server-cert", "--data-dir", str(data_dir),
            "--san", "renewed.example.test",
        )  # fmt: skip
        assert renewed.returncode == 0, renewed.stderr
        # Not reloaded yet: the file watch waits an hour, so the old certificate is served.
        assert _served_certificate(server.api_port, ca_pem).serial_number == first.serial_number
        server.process.send_signal(signal.SIGHUP)
        _wait_for_log(server, "server certificate reloaded")
        calls_at_reload = calls
        for port in (server.enroll_port, server.api_port):
            served = _served_certificate(port, ca_pem, name="renewed.example.test")
            assert served.serial_number != first.serial_number
            assert "renewed.example.test" in _names(served)
        # The dashboard's HTTPS takes the new pair on its event loop, a moment after.
        deadline = time.monotonic() + 10
        while (
            _served_certificate(server.dashboard_port, ca_pem).serial_number == first.serial_number
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        served = _served_certificate(server.dashboard_port, ca_pem, name="renewed.example.test")
        assert served.serial_number != first.serial_number
        deadline = time.monotonic() + 10
        while calls <= calls_at_reload + 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        caller.join()
    assert failures == []
    assert calls > calls_at_reload + 5
    # One connection, never dropped: READY once (after IDLE/CONNECTING), nothing after it.
    assert states.count(grpc.ChannelConnectivity.READY) == 1, states
    assert states[-1] == grpc.ChannelConnectivity.READY, states
    channel.close()
    assert ca_fingerprint(data_dir) == pin
    assert "reloaded trigger=SIGHUP" in server.log
    assert server.process.poll() is None
    assert server.stop() == 0


def test_a_running_server_notices_renewed_files_by_itself(
    tmp_path: Path, server_factory: list[ServerProcess]
) -> None:
    data_dir = init_data_dir(tmp_path)
    ca_pem = (data_dir / "ca.pem").read_bytes()
    server = start_server(data_dir, "--workers", "2", "--certificate-check-interval", "0.2")
    server_factory.append(server)
    _wait_for_log(server, "workers ready")
    first = _served_certificate(server.enroll_port, ca_pem)
    assert run("sielum-server", "renew-server-cert", "--data-dir", str(data_dir)).returncode == 0
    # Each worker watches the files on its own; both must have taken the new pair
    # before any new connection is sure to get it.
    _wait_for_log(server, 'server certificate reloaded trigger="files changed"', count=2)
    for _ in range(4):
        assert _served_certificate(server.enroll_port, ca_pem).serial_number != first.serial_number


def test_workers_each_take_the_renewal_on_sighup(
    tmp_path: Path, server_factory: list[ServerProcess]
) -> None:
    data_dir = init_data_dir(tmp_path)
    ca_pem = (data_dir / "ca.pem").read_bytes()
    server = start_server(data_dir, "--workers", "2", "--certificate-check-interval", "3600")
    server_factory.append(server)
    _wait_for_log(server, "workers ready")
    assert run("sielum-server", "renew-server-cert", "--data-dir", str(data_dir)).returncode == 0
    server.process.send_signal(signal.SIGHUP)
    _wait_for_log(server, "server certificate reloaded", count=2)
    assert "SIGHUP received: forwarded to the workers workers=2" in server.log
    renewed = x509.load_pem_x509_certificate((data_dir / "server.pem").read_bytes())
    # Whichever worker the kernel hands each new connection to, it serves the new one.
    for _ in range(8):
        served = _served_certificate(server.api_port, ca_pem)
        assert served.serial_number == renewed.serial_number
    assert server.process.poll() is None
    assert server.stop() == 0


def test_the_server_warns_when_its_certificate_ends_within_30_days(
    tmp_path: Path, server_factory: list[ServerProcess]
) -> None:
    data_dir = init_data_dir(tmp_path)
    ca = CertificateAuthority.load(data_dir, passphrase=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    short = ca.sign_server(key.public_key(), server_sans(), now, ttl=timedelta(days=12, hours=1))
    write_private_file(data_dir / "server.key", private_pem(key))
    write_private_file(
        data_dir / "server.pem",
        short.public_bytes(serialization.Encoding.PEM) + ca.certificate_pem.encode(),
        0o644,
    )
    server = start_server(data_dir, "--log-format", "json")
    server_factory.append(server)
    warnings = [
        entry
        for entry in map(json.loads, server.log.splitlines())
        if entry["event"] == "certificate expiring"
    ]
    assert warnings == [
        {
            "time": warnings[0]["time"],
            "level": "warning",
            "logger": "sielum.server",
            "event": "certificate expiring",
            "certificate": "server certificate",
            "not_after": short.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "days_left": 12,
            "action": f"run `sielum-server renew-server-cert --data-dir {data_dir}`",
        }
    ]
