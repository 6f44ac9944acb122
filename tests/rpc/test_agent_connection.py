"""`sielum-agent run` keeps one connection: heartbeats and renewals reuse it while they can."""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sielum.devices import policy
from sielum.endpoint import enrollment, schedule
from sielum.endpoint.certdir import AgentState, CertDir
from sielum.endpoint.connection import AgentConnection
from sielum.endpoint.errors import ServerUnreachableError
from tests.e2e.conftest import script

from .conftest import Harness, start_harness


def enrolled_cert_dir(harness: Harness, root: Path) -> CertDir:
    """A cert dir as `sielum-agent enroll` leaves it, for a device enrolled on harness."""
    created = harness.create_token()
    response, key = harness.enroll(created.secret)
    cert_dir = CertDir(root)
    cert_dir.prepare()
    cert_dir.write_pending_key(key)
    state = AgentState(
        device_id=response.device_id,
        api_endpoint=f"127.0.0.1:{harness.server.api_port}",
        server=f"https://127.0.0.1:{harness.server.enroll_port}",
        enrolled_at=datetime.now(UTC),
        ca_fingerprint="",
    )
    cert_dir.save_enrollment(state, response.certificate_pem.encode(), harness.ca_pem)
    return cert_dir


def test_heartbeats_and_a_renewal_reuse_one_connection(harness: Harness, tmp_path: Path) -> None:
    cert_dir = enrolled_cert_dir(harness, tmp_path / "agent")
    connection = AgentConnection()
    try:
        first = enrollment.status(cert_dir, 10, connection=connection)
        enrollment.status(cert_dir, 10, connection=connection)
        enrollment.status(cert_dir, 10, connection=connection)
        assert connection.opened == 1
        renewed = enrollment.renew(cert_dir, 10, connection=connection)
        assert connection.opened == 1  # the renewal went over the open connection
        after = enrollment.status(cert_dir, 10, connection=connection)
        # The new certificate needs a connection of its own, which is then kept.
        enrollment.status(cert_dir, 10, connection=connection)
        assert connection.opened == 2
        assert after.device_id == first.device_id
        assert renewed.serial == format(cert_dir.read().certificate.serial_number, "x")
    finally:
        connection.close()


def test_a_connection_that_failed_is_replaced(tmp_path: Path) -> None:
    harness = start_harness(tmp_path / "one")
    cert_dir = enrolled_cert_dir(harness, tmp_path / "agent")
    connection = AgentConnection()
    try:
        enrollment.status(cert_dir, 10, connection=connection)
        harness.server.stop(grace=1)
        with pytest.raises(ServerUnreachableError):
            enrollment.status(cert_dir, 5, connection=connection)
        # Dropped: the next attempt dials anew instead of waiting on the old one.
        with pytest.raises(ServerUnreachableError):
            enrollment.status(cert_dir, 5, connection=connection)
        assert connection.opened == 2
    finally:
        connection.close()
        harness.server.stop(grace=1)


@pytest.mark.parametrize(
    "interval",
    [policy.MIN_HEARTBEAT_INTERVAL, policy.DEFAULT_HEARTBEAT_INTERVAL, timedelta(hours=1)],
)
def test_the_idle_limit_outlasts_the_agents_longest_gap(interval: timedelta) -> None:
    assert policy.AGENT_JITTER == schedule.INTERVAL_JITTER
    longest = interval * (1 + schedule.INTERVAL_JITTER)
    assert policy.connection_idle_limit(interval) > longest
    assert policy.connection_idle_limit(interval) >= policy.MIN_CONNECTION_IDLE


def test_the_idle_limit_is_capped_for_long_intervals() -> None:
    assert policy.connection_idle_limit(policy.MAX_HEARTBEAT_INTERVAL) == policy.MAX_CONNECTION_IDLE


def agent_connections(pid: int, port: int) -> set[int]:
    """The local ports of pid's established TCP connections to port on this machine."""
    listing = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"dport = :{port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        int(line.split()[2].rsplit(":", 1)[1])
        for line in listing.splitlines()
        if f"pid={pid}," in line
    }


def test_agent_run_heartbeats_over_one_tcp_connection(harness: Harness, tmp_path: Path) -> None:
    """The real `sielum-agent run`: three heartbeats apart, still the same one connection."""
    cert_dir = enrolled_cert_dir(harness, tmp_path / "agent")
    device_id = cert_dir.read().state.device_id
    log = (tmp_path / "run.log").open("wb")
    process = subprocess.Popen(
        [script("sielum-agent"), "run", "--cert-dir", str(cert_dir.root), "--interval", "2s"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        seen: list[datetime] = []
        ports: list[set[int]] = []
        for _ in range(3):
            # last_seen_at is written once a minute at most: a minute later on the
            # server's clock, the next heartbeat writes it anew.
            harness.clock.advance(timedelta(seconds=61))
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, (tmp_path / "run.log").read_text()
                harness.server.flush_last_seen()
                device = harness.server.store.get_device(device_id)
                if device.last_seen_at is not None and device.last_seen_at not in seen:
                    seen.append(device.last_seen_at)
                    break
                assert time.monotonic() < deadline, "no heartbeat reached the server"
                time.sleep(0.2)
            ports.append(agent_connections(process.pid, harness.server.api_port))
        assert len(ports[0]) == 1
        assert ports == [ports[0]] * 3
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        log.close()
