"""AgentService over mTLS: heartbeat, renewal, unenroll, and a revoked device refused at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from sielum.admin.v1 import admin_pb2
from sielum.agent.v1 import agent_pb2, agent_pb2_grpc
from sielum.enroll.ratelimit import FailureLimit

from .conftest import Harness, make_csr, make_key, start_harness, status_of


def test_ok_heartbeat_updates_last_seen(harness: Harness) -> None:
    created = harness.create_token()
    response, key = harness.enroll(created.secret)
    before = harness.admin().GetDevice(admin_pb2.GetDeviceRequest(id=response.device_id)).device
    assert not before.HasField("last_seen_at")

    beat = harness.agent(key, response.certificate_pem).Heartbeat(
        agent_pb2.HeartbeatRequest(), timeout=10
    )
    assert beat.device_id == response.device_id
    assert beat.not_after == response.not_after
    server_time = beat.server_time.ToDatetime(tzinfo=UTC)
    assert abs(server_time - datetime.now(UTC)) < timedelta(seconds=5)
    renew_after = beat.renew_after.ToDatetime(tzinfo=UTC)
    assert server_time + timedelta(days=55) < renew_after < server_time + timedelta(days=61)
    harness.server.flush_last_seen()  # written in batches, every few seconds
    after = harness.admin().GetDevice(admin_pb2.GetDeviceRequest(id=response.device_id)).device
    assert after.HasField("last_seen_at")


def test_ok_renew_gives_a_new_certificate_that_works(harness: Harness) -> None:
    created = harness.create_token()
    response, key = harness.enroll(created.secret)
    new_key = make_key()
    renewed = harness.agent(key, response.certificate_pem).RenewCertificate(
        agent_pb2.RenewCertificateRequest(csr_pem=make_csr(new_key)), timeout=10
    )
    certificate = x509.load_pem_x509_certificate(renewed.certificate_pem.encode())
    assert certificate.public_key().public_numbers() == new_key.public_key().public_numbers()
    assert certificate.subject.rfc4514_string() == f"CN={response.device_id}"
    beat = harness.agent(new_key, renewed.certificate_pem).Heartbeat(
        agent_pb2.HeartbeatRequest(), timeout=10
    )
    assert beat.device_id == response.device_id
    device = harness.admin().GetDevice(admin_pb2.GetDeviceRequest(id=response.device_id)).device
    assert device.serial == format(certificate.serial_number, "x")


def test_fail_renew_with_a_bad_csr_changes_nothing(harness: Harness) -> None:
    created = harness.create_token()
    response, key = harness.enroll(created.secret)
    agent = harness.agent(key, response.certificate_pem)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    code, details = status_of(
        lambda: agent.RenewCertificate(
            agent_pb2.RenewCertificateRequest(csr_pem=make_csr(rsa_key)), timeout=10
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "P-256" in details
    device = harness.admin().GetDevice(admin_pb2.GetDeviceRequest(id=response.device_id)).device
    serial = format(
        x509.load_pem_x509_certificate(response.certificate_pem.encode()).serial_number, "x"
    )
    assert device.serial == serial


def test_fail_revoked_device_is_refused_on_its_next_call(harness: Harness) -> None:
    created = harness.create_token()
    response, key = harness.enroll(created.secret)
    agent = harness.agent(key, response.certificate_pem)
    agent.Heartbeat(agent_pb2.HeartbeatRequest(), timeout=10)
    harness.admin().RevokeDevice(admin_pb2.RevokeDeviceRequest(id=response.device_id))
    code, details = status_of(lambda: agent.Heartbeat(agent_pb2.HeartbeatRequest(), timeout=10))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details == "device has been revoked"
    code, _ = status_of(
        lambda: agent.RenewCertificate(
            agent_pb2.RenewCertificateRequest(csr_pem=make_csr(make_key())), timeout=10
        )
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED


def test_ok_unenroll_revokes_the_calling_device_and_audits_it(harness: Harness) -> None:
    created = harness.create_token()
    response, key = harness.enroll(created.secret)
    other, _ = harness.enroll(created.secret)
    agent = harness.agent(key, response.certificate_pem)
    ended = agent.Unenroll(agent_pb2.UnenrollRequest(), timeout=10)
    assert ended.device_id == response.device_id
    revoked_at = ended.revoked_at.ToDatetime(tzinfo=UTC)
    assert abs(revoked_at - datetime.now(UTC)) < timedelta(seconds=5)

    admin = harness.admin()
    device = admin.GetDevice(admin_pb2.GetDeviceRequest(id=response.device_id)).device
    assert device.state == admin_pb2.DEVICE_STATE_REVOKED
    assert device.revoked_at == ended.revoked_at
    # Only the caller: the other device of the same token goes on.
    assert (
        admin.GetDevice(admin_pb2.GetDeviceRequest(id=other.device_id)).device.state
        == admin_pb2.DEVICE_STATE_ACTIVE
    )
    [event] = [
        e
        for e in harness.server.store.list_audit(resource=f"device/{response.device_id}")
        if e.action == "device.unenroll"
    ]
    assert event.actor == f"device/{response.device_id}"
    assert event.detail == ""
    assert event.peer == "127.0.0.1"
    # From its next call on, the certificate is refused, Unenroll included.
    for call in (
        lambda: agent.Heartbeat(agent_pb2.HeartbeatRequest(), timeout=10),
        lambda: agent.Unenroll(agent_pb2.UnenrollRequest(), timeout=10),
    ):
        assert status_of(call) == (grpc.StatusCode.PERMISSION_DENIED, "device has been revoked")


def test_fail_unenroll_needs_a_device_certificate(harness: Harness) -> None:
    stub = agent_pb2_grpc.AgentServiceStub(harness.admin_channel())
    assert status_of(lambda: stub.Unenroll(agent_pb2.UnenrollRequest(), timeout=10)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "/sielum.agent.v1.AgentService/Unenroll needs a device certificate; this one is admin",
    )


def test_ok_heartbeat_advises_the_interval_the_operator_set(
    harness: Harness, tmp_path: Path
) -> None:
    created = harness.create_token()
    response, key = harness.enroll(created.secret)
    beat = harness.agent(key, response.certificate_pem).Heartbeat(
        agent_pb2.HeartbeatRequest(), timeout=10
    )
    assert beat.HasField("heartbeat_interval")
    assert beat.heartbeat_interval.ToTimedelta() == timedelta(minutes=5)  # the default

    other = start_harness(
        tmp_path / "other",
        heartbeat_interval=timedelta(minutes=15),
        failure_limit=FailureLimit(burst=1000, rate_per_second=1000.0),
    )
    try:
        created = other.create_token()
        response, key = other.enroll(created.secret)
        beat = other.agent(key, response.certificate_pem).Heartbeat(
            agent_pb2.HeartbeatRequest(), timeout=10
        )
        assert beat.heartbeat_interval.ToTimedelta() == timedelta(minutes=15)
    finally:
        other.server.stop(grace=1)
