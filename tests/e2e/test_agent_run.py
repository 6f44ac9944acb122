"""`sielum-agent run` as a real process against a real server: renewal, outage, revoke, stop.

Certificates live 60 s here, so the agent renews on its own within seconds. Nothing
asserts a duration: each step waits for its condition with a generous deadline.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sielum.agent.v1 import agent_pb2, agent_pb2_grpc
from tests.conftest import openssl_verify
from tests.robust.conftest import Serve, make_data_dir

from .conftest import admin, agent, agent_enroll, create_token, script

pytestmark = pytest.mark.e2e

DEADLINE = 120.0  # seconds; far beyond what any step needs, so a loaded machine passes
ENROLLED_FILES = {".lock", "agent.json", "ca.pem", "device.key", "device.pem"}


@dataclass
class AgentRun:
    """One `sielum-agent run` process, its stderr in a file."""

    process: subprocess.Popen[bytes]
    log_path: Path
    json_log: bool

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log's events (other lines, if any, are skipped)."""
        found = []
        for line in self.log.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and "event" in entry:
                found.append(entry)
        return found

    def named(self, event: str) -> list[dict[str, Any]]:
        return [entry for entry in self.events() if entry["event"] == event]

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"agent exited {self.process.returncode} before {what}\n{self.log}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {DEADLINE:g} s\n{self.log}")
            time.sleep(0.1)

    def stop(self, sig: int) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=DEADLINE)


@pytest.fixture
def runs() -> Iterator[list[AgentRun]]:
    started: list[AgentRun] = []
    yield started
    for run in started:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait(timeout=30)


@pytest.fixture
def serves() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        serve.kill()


def start_run(runs: list[AgentRun], cert_dir: Path, *extra: str, json_log: bool = True) -> AgentRun:
    log_path = cert_dir.parent / f"run-{len(runs)}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                script("sielum-agent"),
                "run",
                "--cert-dir",
                str(cert_dir),
                "--interval",
                "2s",
                "--timeout",
                "10",
                *(("--log-format", "json") if json_log else ()),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    run = AgentRun(process, log_path, json_log)
    runs.append(run)
    return run


def certificate(cert_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((cert_dir / "device.pem").read_bytes())


def public_key(cert_dir: Path) -> bytes:
    key = serialization.load_pem_private_key((cert_dir / "device.key").read_bytes(), None)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def heartbeat_code(cert_dir: Path, api_port: int) -> grpc.StatusCode:
    """Heartbeat with the pair in cert_dir, whatever its age: what does the server say?"""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(cert_dir / "ca.pem").read_bytes(),
        private_key=(cert_dir / "device.key").read_bytes(),
        certificate_chain=(cert_dir / "device.pem").read_bytes(),
    )
    with grpc.secure_channel(f"127.0.0.1:{api_port}", credentials) as channel:
        try:
            agent_pb2_grpc.AgentServiceStub(channel).Heartbeat(
                agent_pb2.HeartbeatRequest(), timeout=10
            )
        except grpc.RpcError as error:
            return error.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


def assert_intact(cert_dir: Path) -> None:
    """Exactly the enrolled files, a pair that matches, a certificate the CA signed."""
    assert {p.name for p in cert_dir.iterdir()} == ENROLLED_FILES
    verify = openssl_verify(cert_dir / "ca.pem", cert_dir / "device.pem")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.strip().endswith(": OK")
    assert public_key(cert_dir) == certificate(cert_dir).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_run_renews_rides_out_an_outage_and_stops_cleanly(
    tmp_path: Path, serves: list[Serve], runs: list[AgentRun]
) -> None:
    serve = Serve(make_data_dir(tmp_path), extra=("--device-cert-ttl", "60s"))
    serves.append(serve)
    serve.start()
    cert_dir = tmp_path / "agent"
    _, secret = create_token(serve)  # type: ignore[arg-type]
    assert agent_enroll(serve, secret, cert_dir).returncode == 0  # type: ignore[arg-type]

    # renew --if-due once the server says renewal is due (at once for 60 s certificates).
    def due() -> bool:
        report = agent("status", "--cert-dir", str(cert_dir), "--json")
        assert report.returncode == 0, report.stderr
        return bool(json.loads(report.stdout)["renewalDue"])

    deadline = time.monotonic() + DEADLINE
    while not due():
        assert time.monotonic() < deadline, "renewal never became due"
        time.sleep(1)
    enrolled = certificate(cert_dir).serial_number
    result = agent("renew", "--cert-dir", str(cert_dir), "--if-due")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("renewed the certificate of device ")
    first = certificate(cert_dir).serial_number
    assert first != enrolled
    first_key = public_key(cert_dir)
    shutil.copytree(cert_dir, tmp_path / "first")  # kept to show it is superseded later

    # The service renews on its own: new serial, new key, logged once with both.
    run = start_run(runs, cert_dir)
    run.wait_until(lambda: bool(run.named("connected")), "first heartbeat")
    run.wait_until(lambda: certificate(cert_dir).serial_number != first, "renewal by run")
    run.wait_until(lambda: bool(run.named("renewed")), "renewal log line")
    assert public_key(cert_dir) != first_key
    renewed = run.named("renewed")[0]
    assert int(renewed["serial"], 16) != first
    assert set(renewed) >= {"device", "serial", "not_after", "next_renewal"}

    # A renewal by hand is picked up without a restart, and not renewed over at once.
    by_hand = agent("renew", "--cert-dir", str(cert_dir))
    assert by_hand.returncode == 0, by_hand.stderr
    hand_serial = by_hand.stdout.split("serial:")[1].split()[0]
    run.wait_until(
        lambda: any(e["serial"] == hand_serial for e in run.named("renewed_elsewhere")),
        "the renewal by hand picked up",
    )
    old = tmp_path / "first"
    superseded = (
        heartbeat_code(old, serve.api_port)
        if certificate(old).not_valid_after_utc.timestamp() > time.time() + 5
        else None  # expired already on a slow machine: the handshake would refuse it anyway
    )

    # The server goes away for 15 s: the agent stays up, says so once, backs off.
    assert serve.terminate() == 0
    run.wait_until(lambda: bool(run.named("unreachable")), "unreachable log line")
    before_outage = certificate(cert_dir).serial_number
    renewals_before = len(run.named("renewed"))
    time.sleep(15)
    assert run.process.poll() is None, run.log
    assert len(run.named("unreachable")) == 1
    assert len(run.named("renewed")) == renewals_before
    assert certificate(cert_dir).serial_number == before_outage  # failed attempts touch nothing

    # Back on the same ports: reconnects and renews again.
    serve.start()
    run.wait_until(
        lambda: any("after_failures" in e for e in run.named("connected")), "reconnection"
    )
    run.wait_until(lambda: len(run.named("renewed")) > renewals_before, "renewal after outage")
    assert certificate(cert_dir).serial_number != before_outage

    # SIGTERM: exit 0, the cert dir whole and working.
    assert run.stop(signal.SIGTERM) == 0, run.log
    assert run.events()[-1]["event"] == "agent_stopped"
    assert run.events()[-1]["reason"] == "SIGTERM"
    assert_intact(cert_dir)
    status = agent("status", "--cert-dir", str(cert_dir))
    assert status.returncode == 0, status.stderr
    # Every line is one JSON object: journald and log shippers see one event per line.
    assert all(json.loads(line) for line in run.log.splitlines())

    # The certificate from two renewals back is refused: only the current one (and the
    # previous one until the current one is first used) is honoured.
    assert superseded in (None, grpc.StatusCode.PERMISSION_DENIED)


def test_run_stops_on_sigint_and_exits_9_once_revoked(
    tmp_path: Path, serves: list[Serve], runs: list[AgentRun]
) -> None:
    serve = Serve(make_data_dir(tmp_path))
    serves.append(serve)
    serve.start()
    cert_dir = tmp_path / "agent"
    _, secret = create_token(serve)  # type: ignore[arg-type]
    assert agent_enroll(serve, secret, cert_dir).returncode == 0  # type: ignore[arg-type]
    files = {p.name: p.read_bytes() for p in cert_dir.iterdir()}

    # Long before renew_after (90-day certificates): --if-due does nothing, exit 0.
    result = agent("renew", "--cert-dir", str(cert_dir), "--if-due")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("renewal not due until ")
    assert {p.name: p.read_bytes() for p in cert_dir.iterdir()} == files

    run = start_run(runs, cert_dir, json_log=False)
    run.wait_until(lambda: " connected " in run.log, "first heartbeat")
    assert run.stop(signal.SIGINT) == 0, run.log
    assert "agent_stopped reason=SIGINT" in run.log
    assert {p.name: p.read_bytes() for p in cert_dir.iterdir()} == files

    # Revoked while running: the next heartbeat is refused, exit 9, no more calls.
    run = start_run(runs, cert_dir, json_log=False)
    run.wait_until(lambda: " connected " in run.log, "first heartbeat")
    device_id = json.loads((cert_dir / "agent.json").read_text())["device_id"]
    revoked = admin(serve, "devices", "revoke", device_id)  # type: ignore[arg-type]
    assert revoked.returncode == 0, revoked.stderr
    assert run.process.wait(timeout=DEADLINE) == 9, run.log
    refused = [line for line in run.log.splitlines() if " device_refused " in line]
    assert len(refused) == 1, run.log
    assert "revoked" in refused[0]
    assert run.log.splitlines()[-1] == refused[0]
    assert {p.name: p.read_bytes() for p in cert_dir.iterdir()} == files


def test_run_without_an_enrollment_exits_8(tmp_path: Path, runs: list[AgentRun]) -> None:
    run = start_run(runs, tmp_path / "empty", json_log=False)
    assert run.process.wait(timeout=DEADLINE) == 8
    (line,) = [line for line in run.log.splitlines() if " cert_dir_unusable " in line]
    assert "holds no enrollment" in line


@pytest.mark.parametrize("interval", ["0s", "2d", "5"])
def test_run_refuses_a_bad_interval(tmp_path: Path, interval: str) -> None:
    result = agent("run", "--cert-dir", str(tmp_path), "--interval", interval)
    assert result.returncode == 2
    assert "--interval" in result.stderr


def test_run_says_it_is_alive_at_start_and_with_verbose_at_every_heartbeat(
    tmp_path: Path, serves: list[Serve], runs: list[AgentRun]
) -> None:
    serve = Serve(make_data_dir(tmp_path))
    serves.append(serve)
    serve.start()
    cert_dir = tmp_path / "agent"
    _, secret = create_token(serve)  # type: ignore[arg-type]
    assert agent_enroll(serve, secret, cert_dir).returncode == 0  # type: ignore[arg-type]
    device_id = json.loads((cert_dir / "agent.json").read_text())["device_id"]

    # Two agents on one cert dir, side by side: one logs every heartbeat, one changes only.
    verbose = start_run(runs, cert_dir, "--verbose")
    quiet = start_run(runs, cert_dir)
    verbose.wait_until(lambda: len(verbose.named("heartbeat")) >= 3, "three heartbeats")
    quiet.wait_until(lambda: bool(quiet.named("connected")), "first heartbeat")
    assert verbose.stop(signal.SIGTERM) == 0, verbose.log
    assert quiet.stop(signal.SIGTERM) == 0, quiet.log

    for run in (verbose, quiet):
        (started,) = run.named("agent_started")
        assert started["device"] == device_id
        assert started["server"] == f"127.0.0.1:{serve.api_port}"
        assert started["interval"] == "2s"
    beat = verbose.named("heartbeat")[0]
    assert beat["device"] == device_id
    assert beat["server"] == f"127.0.0.1:{serve.api_port}"
    assert [e["event"] for e in quiet.events()] == ["agent_started", "connected", "agent_stopped"]
