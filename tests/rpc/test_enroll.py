"""Enroll over real TLS: every outcome, its status code and its message."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from sielum.admin.v1 import admin_pb2
from sielum.agent.v1 import agent_pb2
from sielum.enroll.ratelimit import FailureLimit
from sielum.enroll.v1 import enroll_pb2
from sielum.pb import to_timestamp
from sielum.tokens import make_secret, new_token_id

from .conftest import Harness, make_csr, start_harness, status_of


def test_ok_enroll_issues_a_device_certificate(harness: Harness, tmp_path: Path) -> None:
    created = harness.create_token(label="fleet", max_uses=5)
    response, key = harness.enroll(created.secret, facts={"os": "linux"})

    certificate = x509.load_pem_x509_certificate(response.certificate_pem.encode())
    assert certificate.public_key().public_numbers() == key.public_key().public_numbers()
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)
    assert certificate.subject.rfc4514_string() == f"CN={response.device_id}"
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"sielum://device/{response.device_id}"
    ]
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert response.ca_certificate_pem.encode() == harness.ca_pem
    assert response.api_endpoint == harness.api_target.replace("localhost", "127.0.0.1")
    lifetime = certificate.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=89) < lifetime <= timedelta(days=90)

    (tmp_path / "device.pem").write_text(response.certificate_pem)
    verified = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(harness.data_dir / "ca.pem"),
            str(tmp_path / "device.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.strip().endswith(": OK")

    token = harness.admin().GetEnrollmentToken(
        admin_pb2.GetEnrollmentTokenRequest(id=created.token.id)
    )
    assert token.token.uses == 1
    assert token.token.HasField("last_used_at")
    device = harness.admin().GetDevice(admin_pb2.GetDeviceRequest(id=response.device_id)).device
    assert device.token_id == created.token.id
    assert device.hostname == "host-1"
    assert dict(device.facts) == {"os": "linux"}
    assert device.peer == "127.0.0.1"
    assert device.state == admin_pb2.DEVICE_STATE_ACTIVE


def test_ok_token_with_trailing_whitespace(harness: Harness) -> None:
    created = harness.create_token()
    response, _ = harness.enroll(f"  {created.secret}\n")
    assert response.device_id


def test_ok_retry_with_same_key_returns_same_device_without_a_second_use(harness: Harness) -> None:
    created = harness.create_token(max_uses=1)
    first, key = harness.enroll(created.secret)
    # max_uses 1 is now spent: the retry must still answer, with the same device.
    again, _ = harness.enroll(created.secret, key=key)
    assert again.device_id == first.device_id
    assert again.certificate_pem == first.certificate_pem
    token = harness.admin().GetEnrollmentToken(
        admin_pb2.GetEnrollmentTokenRequest(id=created.token.id)
    )
    assert token.token.uses == 1
    assert token.token.state == admin_pb2.TOKEN_STATE_EXHAUSTED


def test_ok_retry_after_the_token_was_revoked_returns_same_device(harness: Harness) -> None:
    created = harness.create_token()
    first, key = harness.enroll(created.secret)
    harness.admin().RevokeEnrollmentToken(
        admin_pb2.RevokeEnrollmentTokenRequest(id=created.token.id)
    )
    # The agent lost the answer and asks again after the rollout's token was revoked.
    again, _ = harness.enroll(created.secret, key=key)
    assert again.device_id == first.device_id
    assert again.certificate_pem == first.certificate_pem
    # A new key under the revoked token is still refused.
    code, details = status_of(lambda: harness.enroll(created.secret))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details == "enrollment token has been revoked"


def test_fail_retry_for_a_revoked_device(harness: Harness) -> None:
    created = harness.create_token()
    first, key = harness.enroll(created.secret)
    harness.admin().RevokeDevice(admin_pb2.RevokeDeviceRequest(id=first.device_id))
    code, details = status_of(lambda: harness.enroll(created.secret, key=key))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details == "the device for this key has been revoked"
    token = harness.admin().GetEnrollmentToken(
        admin_pb2.GetEnrollmentTokenRequest(id=created.token.id)
    )
    assert token.token.uses == 1


def test_fail_cloned_key_under_another_token(harness: Harness) -> None:
    one = harness.create_token()
    two = harness.create_token()
    _, key = harness.enroll(one.secret)
    code, details = status_of(lambda: harness.enroll(two.secret, key=key))
    assert code is grpc.StatusCode.ALREADY_EXISTS
    assert details == "this public key is already enrolled as another device"
    token = harness.admin().GetEnrollmentToken(admin_pb2.GetEnrollmentTokenRequest(id=two.token.id))
    assert token.token.uses == 0


def test_fail_malformed_token(harness: Harness) -> None:
    code, details = status_of(lambda: harness.enroll("slm_not-a-token"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "enrollment token is malformed" in details


def test_fail_unknown_token_and_wrong_secret_look_the_same(harness: Harness) -> None:
    created = harness.create_token()
    unknown = make_secret(new_token_id()).reveal()
    wrong = make_secret(created.token.id).reveal()
    for secret in (unknown, wrong):
        code, details = status_of(lambda secret=secret: harness.enroll(secret))
        assert code is grpc.StatusCode.UNAUTHENTICATED
        assert details == "enrollment token is invalid"
    token = harness.admin().GetEnrollmentToken(
        admin_pb2.GetEnrollmentTokenRequest(id=created.token.id)
    )
    assert token.token.uses == 0


def test_fail_revoked_token(harness: Harness) -> None:
    created = harness.create_token()
    harness.admin().RevokeEnrollmentToken(
        admin_pb2.RevokeEnrollmentTokenRequest(id=created.token.id)
    )
    code, details = status_of(lambda: harness.enroll(created.secret))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details == "enrollment token has been revoked"


def test_fail_expired_token(harness: Harness) -> None:
    expires = datetime.now(UTC) + timedelta(hours=1)
    created = harness.create_token(expires_at=to_timestamp(expires))
    harness.clock.advance(timedelta(hours=1))
    code, details = status_of(lambda: harness.enroll(created.secret))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details == "enrollment token has expired"


def test_fail_exhausted_token(harness: Harness) -> None:
    created = harness.create_token(max_uses=2)
    harness.enroll(created.secret)
    harness.enroll(created.secret)
    code, details = status_of(lambda: harness.enroll(created.secret))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details == "enrollment token is exhausted: it has no uses left"
    devices = harness.admin().ListDevices(admin_pb2.ListDevicesRequest(token_id=created.token.id))
    assert len(devices.devices) == 2


def _enroll_raw(harness: Harness, secret: str, csr_pem: str) -> None:
    harness.enroll_stub().Enroll(
        enroll_pb2.EnrollRequest(token=secret, csr_pem=csr_pem, hostname="h"), timeout=10
    )


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        ("", "CSR"),
        ("\x00\xff garbage", "CSR"),
        ("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n", "CSR"),
    ],
)
def test_fail_bad_csr(harness: Harness, csr: str, message: str) -> None:
    created = harness.create_token()
    code, details = status_of(lambda: _enroll_raw(harness, created.secret, csr))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert message in details
    token = harness.admin().GetEnrollmentToken(
        admin_pb2.GetEnrollmentTokenRequest(id=created.token.id)
    )
    assert token.token.uses == 0


@pytest.mark.parametrize(
    ("key", "named"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RSA"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "P-384"),
    ],
)
def test_fail_wrong_key_type(harness: Harness, key: object, named: str) -> None:
    created = harness.create_token()
    csr = make_csr(key())  # type: ignore[operator]
    code, details = status_of(lambda: _enroll_raw(harness, created.secret, csr))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "P-256" in details
    assert named in details


def test_fail_oversized_hostname_and_facts(harness: Harness) -> None:
    created = harness.create_token()
    code, details = status_of(lambda: harness.enroll(created.secret, hostname="h" * 300))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "hostname" in details
    facts = {f"k{i}": "v" for i in range(100)}
    code, details = status_of(lambda: harness.enroll(created.secret, facts=facts))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "too many facts" in details


def test_fail_message_above_size_limit(harness: Harness) -> None:
    code, _ = status_of(
        lambda: harness.enroll_stub().Enroll(
            enroll_pb2.EnrollRequest(token="x", csr_pem="A" * 400_000), timeout=10
        )
    )
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_fail_internal_error_is_generic_and_logged(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    created = harness.create_token()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire at /secret/path")

    monkeypatch.setattr(harness.server.store, "find_device_by_key", broken)
    code, details = status_of(lambda: harness.enroll(created.secret))
    assert code is grpc.StatusCode.INTERNAL
    assert details == "internal error"
    assert "disk on fire" in caplog.text


def test_fail_rate_limited_after_a_burst_of_failures(tmp_path: Path) -> None:
    h = start_harness(tmp_path, failure_limit=FailureLimit(burst=3, rate_per_second=0.001))
    try:
        created = h.create_token()
        wrong = make_secret(created.token.id).reveal()
        for _ in range(3):
            code, _ = status_of(lambda: h.enroll(wrong))
            assert code is grpc.StatusCode.UNAUTHENTICATED
        code, details = status_of(lambda: h.enroll(wrong))
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many failed enrollments" in details
        # The right secret is never refused by the limit: it is not a guess.
        assert h.enroll(created.secret)[0].device_id
    finally:
        h.server.stop(grace=1)


def test_ok_successes_from_one_address_are_never_throttled(tmp_path: Path) -> None:
    h = start_harness(tmp_path, failure_limit=FailureLimit(burst=2, rate_per_second=0.001))
    try:
        created = h.create_token()
        ids = {h.enroll(created.secret)[0].device_id for _ in range(12)}
        assert len(ids) == 12
    finally:
        h.server.stop(grace=1)


def test_ok_revoking_the_token_leaves_enrolled_devices_working(harness: Harness) -> None:
    created = harness.create_token()
    response, key = harness.enroll(created.secret)
    harness.admin().RevokeEnrollmentToken(
        admin_pb2.RevokeEnrollmentTokenRequest(id=created.token.id)
    )
    beat = harness.agent(key, response.certificate_pem).Heartbeat(
        agent_pb2.HeartbeatRequest(), timeout=10
    )
    assert beat.device_id == response.device_id
