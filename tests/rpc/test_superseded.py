"""A renewal supersedes the previous certificate once the new one is used: one chain, a new
key, a pace, and no lock-out when a renewal answer is lost.

Each test runs on SQLite and on PostgreSQL. The server's clock is shifted (TLS still checks
real time: a test that spends days offline starts its device days in the past), and the real
`sielum-agent` runs as a process against it.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sielum.admin.v1 import admin_pb2
from sielum.agent.v1 import agent_pb2, agent_pb2_grpc
from sielum.enroll.ratelimit import FailureLimit
from tests.e2e.conftest import run
from tests.e2e.test_agent_run import AgentRun, start_run

from .conftest import Harness, make_csr, make_key, start_harness, status_of

SUPERSEDED = "this certificate has been superseded by a renewal; use the device's current one"
SAME_KEY = "the CSR's key is already certified: a renewal must certify a new key"
REVOKED = "device has been revoked"
OFFLINE = timedelta(days=3)


@pytest.fixture
def h(tmp_path: Path, database_url: str) -> Iterator[Harness]:
    harness = start_harness(
        tmp_path, database_url, failure_limit=FailureLimit(burst=1000, rate_per_second=1000.0)
    )
    try:
        yield harness
    finally:
        harness.server.stop(grace=1)


def _serial(certificate_pem: str) -> str:
    return format(x509.load_pem_x509_certificate(certificate_pem.encode()).serial_number, "x")


def _device(h: Harness, device_id: str) -> admin_pb2.Device:
    return h.admin().GetDevice(admin_pb2.GetDeviceRequest(id=device_id), timeout=10).device


def _beat(agent: agent_pb2_grpc.AgentServiceStub) -> agent_pb2.HeartbeatResponse:
    return agent.Heartbeat(agent_pb2.HeartbeatRequest(), timeout=10)


def _renew(
    agent: agent_pb2_grpc.AgentServiceStub, key: object
) -> agent_pb2.RenewCertificateResponse:
    return agent.RenewCertificate(
        agent_pb2.RenewCertificateRequest(csr_pem=make_csr(key)), timeout=10
    )


def test_ok_lost_renewal_answer_and_days_offline_keep_the_device(h: Harness) -> None:
    """The attack review's lock-out: a renewal's answer is lost and the device stays offline
    for days. Its pair still works, its renewal asked again replaces the unused certificate,
    and the first use of the new one retires the old pair."""
    h.clock.advance(-OFFLINE)  # enrolled and renewed days ago (TLS checks real time)
    enrolled, key_a = h.enroll(h.create_token().secret)
    old = h.agent(key_a, enrolled.certificate_pem)
    key_b = make_key()
    lost = _renew(old, key_b)  # the answer that never reached the device
    h.clock.advance(OFFLINE)  # three days offline

    assert _beat(old).device_id == enrolled.device_id
    key_c = make_key()
    retried = _renew(old, key_c)
    device = _device(h, enrolled.device_id)
    assert device.serial == _serial(retried.certificate_pem)
    # The lost certificate was never used, and the retry replaced it.
    assert (grpc.StatusCode.PERMISSION_DENIED, SUPERSEDED) == status_of(
        lambda: _beat(h.agent(key_b, lost.certificate_pem))
    )
    # Still unused: the old pair keeps working for as long as that lasts.
    h.clock.advance(OFFLINE)
    assert _beat(old).device_id == enrolled.device_id

    new = h.agent(key_c, retried.certificate_pem)
    assert _beat(new).device_id == enrolled.device_id  # the first use retires the old pair
    assert (grpc.StatusCode.PERMISSION_DENIED, SUPERSEDED) == status_of(lambda: _beat(old))
    assert (grpc.StatusCode.PERMISSION_DENIED, SUPERSEDED) == status_of(
        lambda: _renew(old, make_key())
    )
    assert _beat(new).device_id == enrolled.device_id
    assert _device(h, enrolled.device_id).serial == _serial(retried.certificate_pem)


def test_fail_superseded_cert_stolen_old_key_stops_once_the_device_uses_its_new_one(
    h: Harness,
) -> None:
    """The stolen-key case: a thief copied the device's pair; the device renews and uses its
    new certificate. From then on the stolen pair is refused, heartbeats and renewals alike,
    however much later, and the device is not."""
    enrolled, key_a = h.enroll(h.create_token().secret)
    stolen = h.agent(key_a, enrolled.certificate_pem)
    key_b = make_key()
    renewed = _renew(stolen, key_b)
    device = h.agent(key_b, renewed.certificate_pem)
    assert _beat(device).device_id == enrolled.device_id
    for later in (timedelta(), timedelta(seconds=1), OFFLINE):
        h.clock.advance(later)
        assert (grpc.StatusCode.PERMISSION_DENIED, SUPERSEDED) == status_of(lambda: _beat(stolen))
        assert (grpc.StatusCode.PERMISSION_DENIED, SUPERSEDED) == status_of(
            lambda: _renew(stolen, make_key())
        )
    assert _beat(device).device_id == enrolled.device_id
    assert _device(h, enrolled.device_id).serial == _serial(renewed.certificate_pem)


def test_fail_revoked_device_refuses_the_previous_and_the_unused_certificate(h: Harness) -> None:
    """Revocation wins over everything: the previous pair, honoured while the new one is
    unused, and the new one are both refused once the device is revoked."""
    enrolled, key_a = h.enroll(h.create_token().secret)
    old = h.agent(key_a, enrolled.certificate_pem)
    key_b = make_key()
    renewed = _renew(old, key_b)
    h.admin().RevokeDevice(admin_pb2.RevokeDeviceRequest(id=enrolled.device_id), timeout=10)
    for agent in (old, h.agent(key_b, renewed.certificate_pem)):
        assert (grpc.StatusCode.PERMISSION_DENIED, REVOKED) == status_of(lambda: _beat(agent))
        assert (grpc.StatusCode.PERMISSION_DENIED, REVOKED) == status_of(
            lambda: _renew(agent, make_key())
        )


def test_fail_superseded_cert_renewed_by_a_thief_cuts_off_the_device(h: Harness) -> None:
    """A thief holding the previous certificate renews before the device has used its new
    one: only one chain survives, so the real device is refused from then on and notices;
    the thief's first use then retires the stolen pair too."""
    enrolled, key_a = h.enroll(h.create_token().secret)
    key_b, key_c = make_key(), make_key()
    cert_b = _renew(h.agent(key_a, enrolled.certificate_pem), key_b).certificate_pem
    cert_c = _renew(h.agent(key_a, enrolled.certificate_pem), key_c).certificate_pem  # the thief
    device = h.agent(key_b, cert_b)
    assert (grpc.StatusCode.PERMISSION_DENIED, SUPERSEDED) == status_of(lambda: _beat(device))
    assert (grpc.StatusCode.PERMISSION_DENIED, SUPERSEDED) == status_of(
        lambda: _renew(device, make_key())
    )
    assert _beat(h.agent(key_c, cert_c)).device_id == enrolled.device_id
    assert (grpc.StatusCode.PERMISSION_DENIED, SUPERSEDED) == status_of(
        lambda: _beat(h.agent(key_a, enrolled.certificate_pem))
    )
    renewals = [
        e for e in h.server.store.list_audit(resource=f"device/{enrolled.device_id}")
        if e.action == "device.renew"
    ]  # fmt: skip
    assert [e.detail for e in renewals] == [
        f"serial={_serial(cert_c)} previous={_serial(enrolled.certificate_pem)}",
        f"serial={_serial(cert_b)} previous={_serial(enrolled.certificate_pem)}",
    ]


def test_fail_superseded_cert_renewal_with_a_key_already_certified(h: Harness) -> None:
    """A renewal must certify a new key: the caller's own (current or previous) key, or a key
    enrolled as any device, is INVALID_ARGUMENT and changes nothing."""
    created = h.create_token()
    enrolled, key_a = h.enroll(created.secret)
    other, other_key = h.enroll(created.secret)
    agent_a = h.agent(key_a, enrolled.certificate_pem)
    for key in (key_a, other_key):
        assert (grpc.StatusCode.INVALID_ARGUMENT, SAME_KEY) == status_of(
            lambda key=key: _renew(agent_a, key)
        )
    assert _device(h, enrolled.device_id).serial == _serial(enrolled.certificate_pem)
    key_b = make_key()
    cert_b = _renew(agent_a, key_b).certificate_pem
    # The previous certificate, while the new one is unused, with its own key or the new one.
    for key in (key_a, key_b):
        assert (grpc.StatusCode.INVALID_ARGUMENT, SAME_KEY) == status_of(
            lambda key=key: _renew(agent_a, key)
        )
    assert _device(h, enrolled.device_id).serial == _serial(cert_b)
    assert _device(h, other.device_id).serial == _serial(other.certificate_pem)


def test_fail_superseded_cert_renewal_loop_is_paced(h: Harness) -> None:
    """Five renewals at once, then RESOURCE_EXHAUSTED without signing, until a tenth of the
    certificate lifetime (90 days here) has passed."""
    enrolled, key = h.enroll(h.create_token().secret)
    pem = enrolled.certificate_pem
    for _ in range(5):
        new_key = make_key()
        pem, key = _renew(h.agent(key, pem), new_key).certificate_pem, new_key
    code, details = status_of(lambda: _renew(h.agent(key, pem), make_key()))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.startswith("too many renewals for this device; the next one is allowed at ")
    assert _device(h, enrolled.device_id).serial == _serial(pem)
    h.clock.advance(timedelta(days=9))
    renewed = _renew(h.agent(key, pem), make_key())
    # (Its certificate starts 9 days from now in real time, so TLS would not take it yet.)
    assert _device(h, enrolled.device_id).serial == _serial(renewed.certificate_pem)
    audit = h.server.store.list_audit(resource=f"device/{enrolled.device_id}")
    assert [e.action for e in audit].count("device.renew") == 6


# The real agent, as a process, against this in-process server (on SQLite: the store's part
# is the same as above, and each agent process takes a second or two to start).


@pytest.fixture
def on_sqlite(tmp_path: Path) -> Iterator[Harness]:
    harness = start_harness(tmp_path, failure_limit=FailureLimit(burst=0))
    try:
        yield harness
    finally:
        harness.server.stop(grace=1)


def _fingerprint(h: Harness) -> str:
    der = x509.load_pem_x509_certificate(h.ca_pem).public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return run("sielum-agent", *args)


def _enroll_agent(h: Harness, cert_dir: Path) -> None:
    enrolled = run(
        "sielum-agent",
        "enroll",
        "--server",
        f"https://localhost:{h.server.enroll_port}",
        "--ca-fingerprint",
        _fingerprint(h),
        "--cert-dir",
        str(cert_dir),
        env={"SIELUM_ENROLLMENT_TOKEN": h.create_token().secret},
    )
    assert enrolled.returncode == 0, enrolled.stderr


def _stored_agent(cert_dir: Path) -> agent_pb2_grpc.AgentServiceStub:
    """A stub with the certificate the agent holds now, as a thief copying it would have."""
    return agent_pb2_grpc.AgentServiceStub(
        grpc.secure_channel(
            json.loads((cert_dir / "agent.json").read_text())["api_endpoint"],
            grpc.ssl_channel_credentials(
                root_certificates=(cert_dir / "ca.pem").read_bytes(),
                private_key=(cert_dir / "device.key").read_bytes(),
                certificate_chain=(cert_dir / "device.pem").read_bytes(),
            ),
        )
    )


def test_ok_agent_renew_and_status_retire_the_previous_certificate(
    on_sqlite: Harness, tmp_path: Path
) -> None:
    """`sielum-agent renew` and `status` of a real agent: each renewal is called with the
    certificate the last one gave, so that certificate's first use retires the one before."""
    cert_dir = tmp_path / "agent"
    _enroll_agent(on_sqlite, cert_dir)
    first = _stored_agent(cert_dir)
    for _ in range(2):  # the second renewal is the first use of the first one's certificate
        renewed = _agent("renew", "--cert-dir", str(cert_dir))
        assert renewed.returncode == 0, renewed.stderr
    assert (grpc.StatusCode.PERMISSION_DENIED, SUPERSEDED) == status_of(lambda: _beat(first))
    status = _agent("status", "--cert-dir", str(cert_dir))
    assert status.returncode == 0, status.stderr
    renewed = _agent("renew", "--cert-dir", str(cert_dir))
    assert renewed.returncode == 0, renewed.stderr
    assert (
        _beat(_stored_agent(cert_dir)).device_id
        == json.loads((cert_dir / "agent.json").read_text())["device_id"]
    )


def test_ok_agent_lost_renewal_answer_and_days_offline_renews_again(
    on_sqlite: Harness, tmp_path: Path
) -> None:
    """The agent's renewal reached the server but its answer was lost, and the machine stayed
    offline for days: `sielum-agent renew` with the pair it still holds works (no exit 9),
    twice over, and its new certificate then retires that pair."""
    on_sqlite.clock.advance(-OFFLINE)  # enrolled days ago (TLS checks real time)
    cert_dir = tmp_path / "agent"
    _enroll_agent(on_sqlite, cert_dir)
    held = _stored_agent(cert_dir)
    _renew(held, make_key())  # an answer that never reached the agent
    on_sqlite.clock.advance(OFFLINE / 2)
    _renew(held, make_key())  # lost again, a day and a half later
    on_sqlite.clock.advance(OFFLINE / 2)
    status = _agent("status", "--cert-dir", str(cert_dir))
    assert status.returncode == 0, status.stderr
    retried = _agent("renew", "--cert-dir", str(cert_dir))
    assert retried.returncode == 0, retried.stderr
    assert _beat(_stored_agent(cert_dir)).device_id
    assert (grpc.StatusCode.PERMISSION_DENIED, SUPERSEDED) == status_of(lambda: _beat(held))
    status = _agent("status", "--cert-dir", str(cert_dir))
    assert status.returncode == 0, status.stderr


@pytest.fixture
def runs() -> Iterator[list[AgentRun]]:
    started: list[AgentRun] = []
    yield started
    for started_run in started:
        if started_run.process.poll() is None:
            started_run.process.kill()
            started_run.process.wait(timeout=30)


def test_ok_agent_run_after_a_lost_renewal_answer_and_days_offline_keeps_running(
    on_sqlite: Harness, tmp_path: Path, runs: list[AgentRun]
) -> None:
    """The attack review's lock-out, with `sielum-agent run` itself: the renewal answer was
    lost and the machine stayed offline for 3 days. The service heartbeats with the pair it
    holds and keeps running, instead of exiting 9 and staying stopped under systemd."""
    on_sqlite.clock.advance(-OFFLINE)
    cert_dir = tmp_path / "agent"
    _enroll_agent(on_sqlite, cert_dir)
    _renew(_stored_agent(cert_dir), make_key())  # an answer that never reached the agent
    on_sqlite.clock.advance(OFFLINE)
    run = start_run(runs, cert_dir)
    run.wait_until(lambda: bool(run.named("connected")), "first heartbeat")
    time.sleep(5)  # a few more heartbeats, every 2 s
    assert run.process.poll() is None, run.log
    assert not run.named("device_refused"), run.log
    assert run.stop(signal.SIGTERM) == 0, run.log


_ROW = (
    "serial", "public_key_sha256", "certificate_pem", "not_after", "previous_serial",
    "previous_until", "renewal_tat",
)  # fmt: skip


def _back_up(h: Harness, device_id: str) -> tuple[object, ...]:
    """The device's row as a backup taken now holds it."""
    db = h.server.store.db
    with db.connection_context():
        cursor = db.execute_sql(
            f"SELECT {', '.join(_ROW)} FROM device WHERE id = {db.param}",
            (device_id,),
        )
        return tuple(cursor.fetchone())


def _restore(h: Harness, device_id: str, row: tuple[object, ...]) -> None:
    db = h.server.store.db
    with db.connection_context():
        db.execute_sql(
            f"UPDATE device SET {', '.join(f'{c} = {db.param}' for c in _ROW)}"
            f" WHERE id = {db.param}",
            (*row, device_id),
        )


def test_ok_restored_backup_takes_the_newer_certificate(h: Harness) -> None:
    """The database is restored from a backup taken before the device renewed twice: the
    certificate the device holds, issued after the one the backup names, becomes current on
    its first call instead of being refused for good; the ones before it stay refused."""
    h.clock.advance(-2 * OFFLINE)  # every certificate here valid in real time
    enrolled, key_a = h.enroll(h.create_token().secret)
    backup = _back_up(h, enrolled.device_id)
    h.clock.advance(OFFLINE)
    key_b, key_c = make_key(), make_key()
    cert_b = _renew(h.agent(key_a, enrolled.certificate_pem), key_b).certificate_pem
    assert _beat(h.agent(key_b, cert_b)).device_id == enrolled.device_id
    h.clock.advance(OFFLINE)
    cert_c = _renew(h.agent(key_b, cert_b), key_c).certificate_pem
    _restore(h, enrolled.device_id, backup)

    device = h.agent(key_c, cert_c)
    assert _beat(device).device_id == enrolled.device_id
    assert _device(h, enrolled.device_id).serial == _serial(cert_c)
    for key, pem in ((key_a, enrolled.certificate_pem), (key_b, cert_b)):
        stale = h.agent(key, pem)
        assert (grpc.StatusCode.PERMISSION_DENIED, SUPERSEDED) == status_of(lambda: _beat(stale))
        assert (grpc.StatusCode.PERMISSION_DENIED, SUPERSEDED) == status_of(
            lambda: _renew(stale, make_key())
        )
    renewed = _renew(device, make_key())
    assert _device(h, enrolled.device_id).serial == _serial(renewed.certificate_pem)
    adopted = [
        e for e in h.server.store.list_audit(resource=f"device/{enrolled.device_id}")
        if e.action == "device.adopt"
    ]  # fmt: skip
    assert [e.detail for e in adopted] == [
        f"serial={_serial(cert_c)} previous={_serial(enrolled.certificate_pem)}: issued after "
        "the certificate the database held (a restored backup)"
    ]


def test_fail_restored_backup_adopts_nothing_for_a_revoked_device(h: Harness) -> None:
    """Revocation wins after a restore too: the certificate rows go back to before a renewal
    while the device stays revoked, and its newer certificate is refused as revoked."""
    h.clock.advance(-OFFLINE)
    enrolled, key_a = h.enroll(h.create_token().secret)
    backup = _back_up(h, enrolled.device_id)
    h.clock.advance(OFFLINE)
    key_b = make_key()
    cert_b = _renew(h.agent(key_a, enrolled.certificate_pem), key_b).certificate_pem
    h.admin().RevokeDevice(admin_pb2.RevokeDeviceRequest(id=enrolled.device_id), timeout=10)
    _restore(h, enrolled.device_id, backup)  # revoked_at is not among the restored columns
    assert (grpc.StatusCode.PERMISSION_DENIED, REVOKED) == status_of(
        lambda: _beat(h.agent(key_b, cert_b))
    )
    assert _device(h, enrolled.device_id).serial == _serial(enrolled.certificate_pem)
