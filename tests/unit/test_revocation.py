"""The CRL and OCSP responses the CA signs, read back by cryptography and by `openssl`."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from sielum.ca import profile
from sielum.ca.revocation import (
    CRL_VALIDITY,
    CertificateStatus,
    Revocation,
    Standing,
    answer_ocsp,
    build_crl,
    reason_from_name,
)

# Real time: `openssl verify` and `openssl ocsp` check validity against their own clock.
NOW = datetime.now(UTC).replace(microsecond=0)


class CA:
    """A throwaway CA with its certificate where openssl reads it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = profile.self_signed_ca_certificate(key=self.key, now=NOW)
        self.pem_path = self.write("ca.pem", self.certificate)

    def device(self, name: str, serial: int, ttl: timedelta = timedelta(days=90)) -> Path:
        certificate = profile.device_certificate(
            public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
            device_id=name,
            ca_certificate=self.certificate,
            ca_key=self.key,
            serial=serial,
            now=NOW,
            ttl=ttl,
        )
        return self.write(f"{name}.pem", certificate)

    def write(self, name: str, certificate: x509.Certificate) -> Path:
        path = self.tmp_path / name
        path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return path


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return CA(tmp_path)


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


def revoked(serial: int, reason: x509.ReasonFlags | None = None, days: int = 30) -> Revocation:
    return Revocation(
        serial=serial,
        revoked_at=NOW - timedelta(hours=1),
        not_after=NOW + timedelta(days=days),
        reason=reason,
    )


# --- the CRL -------------------------------------------------------------------------


def test_crl_lists_revoked_and_superseded_certificates_with_their_reasons(ca: CA) -> None:
    der = build_crl(
        ca.certificate,
        ca.key,
        [revoked(0x10, x509.ReasonFlags.key_compromise), revoked(0x11), revoked(0x12, None)],
        number=7,
        now=NOW,
    )
    crl = x509.load_der_x509_crl(der)
    assert crl.is_signature_valid(ca.key.public_key())
    assert crl.issuer == ca.certificate.subject
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    assert crl.next_update_utc is not None and crl.last_update_utc is not None
    assert crl.next_update_utc - NOW <= CRL_VALIDITY
    assert crl.last_update_utc <= NOW
    entry = crl.get_revoked_certificate_by_serial_number(0x10)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise
    )
    assert crl.get_revoked_certificate_by_serial_number(0x11) is not None
    assert len(crl) == 3


def test_crl_leaves_out_certificates_that_have_expired_on_their_own(ca: CA) -> None:
    expired = Revocation(
        serial=0x20, revoked_at=NOW - timedelta(days=9), not_after=NOW - timedelta(seconds=1)
    )
    crl = x509.load_der_x509_crl(
        build_crl(ca.certificate, ca.key, [expired, revoked(0x21)], number=1, now=NOW)
    )
    assert crl.get_revoked_certificate_by_serial_number(0x20) is None
    assert crl.get_revoked_certificate_by_serial_number(0x21) is not None


def test_openssl_verify_with_the_crl_refuses_a_revoked_device_and_accepts_a_current_one(
    ca: CA, tmp_path: Path
) -> None:
    current = ca.device("current", serial=0x30)
    gone = ca.device("gone", serial=0x31)
    crl_der = build_crl(
        ca.certificate, ca.key, [revoked(0x31, x509.ReasonFlags.superseded)], number=1, now=NOW
    )
    crl_pem = tmp_path / "crl.pem"
    crl_pem.write_bytes(x509.load_der_x509_crl(crl_der).public_bytes(serialization.Encoding.PEM))
    ok = openssl(
        "verify", "-crl_check", "-CAfile", str(ca.pem_path), "-CRLfile", str(crl_pem), str(current)
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    refused = openssl(
        "verify", "-crl_check", "-CAfile", str(ca.pem_path), "-CRLfile", str(crl_pem), str(gone)
    )
    assert refused.returncode != 0
    assert "certificate revoked" in refused.stdout + refused.stderr


def test_reason_names_are_those_of_rfc_5280_and_an_unknown_one_is_refused_by_name() -> None:
    assert reason_from_name("") is None
    assert reason_from_name("unspecified") is None
    assert reason_from_name("keyCompromise") is x509.ReasonFlags.key_compromise
    assert reason_from_name("superseded") is x509.ReasonFlags.superseded
    with pytest.raises(ValueError, match="unknown revocation reason 'stolen'; one of: "):
        reason_from_name("stolen")


# --- OCSP ----------------------------------------------------------------------------


def ocsp_request(ca: CA, certificate: Path, tmp_path: Path, *extra: str) -> bytes:
    path = tmp_path / f"{certificate.stem}.req"
    made = openssl(
        "ocsp", "-issuer", str(ca.pem_path), "-cert", str(certificate), "-reqout", str(path), *extra
    )
    assert made.returncode == 0, made.stderr
    return path.read_bytes()


def openssl_reads_response(ca: CA, certificate: Path, response: bytes, tmp_path: Path) -> str:
    """What `openssl ocsp` says of the response to the request ocsp_request wrote.

    First read against that request, which makes openssl check the signature and the
    nonce; then against the certificate, which makes it print the certificate's status.
    """
    path = tmp_path / "response.der"
    path.write_bytes(response)
    request = tmp_path / f"{certificate.stem}.req"
    checked = openssl(
        "ocsp", "-reqin", str(request), "-respin", str(path), "-CAfile", str(ca.pem_path)
    )
    assert "Response verify OK" in checked.stderr, checked.stdout + checked.stderr
    status = openssl(
        "ocsp",
        "-respin",
        str(path),
        "-issuer",
        str(ca.pem_path),
        "-cert",
        str(certificate),
        "-CAfile",
        str(ca.pem_path),
        "-no_nonce",
    )
    assert "Response verify OK" in status.stderr, status.stdout + status.stderr
    return status.stdout


def test_openssl_ocsp_reads_good_for_a_current_device(ca: CA, tmp_path: Path) -> None:
    device = ca.device("current", serial=0x40)
    seen: list[int] = []

    def look_up(serial: int) -> Standing:
        seen.append(serial)
        return Standing(CertificateStatus.GOOD)

    response = answer_ocsp(
        ocsp_request(ca, device, tmp_path), ca.certificate, ca.key, look_up, now=NOW
    )
    assert seen == [0x40]
    assert f"{device}: good" in openssl_reads_response(ca, device, response, tmp_path)


def test_openssl_ocsp_reads_revoked_with_time_and_reason(ca: CA, tmp_path: Path) -> None:
    device = ca.device("gone", serial=0x41)
    revocation = revoked(0x41, x509.ReasonFlags.superseded)
    response = answer_ocsp(
        ocsp_request(ca, device, tmp_path),
        ca.certificate,
        ca.key,
        lambda serial: Standing(CertificateStatus.REVOKED, revocation),
        now=NOW,
    )
    text = openssl_reads_response(ca, device, response, tmp_path)
    assert f"{device}: revoked" in text
    assert "Reason: superseded" in text
    parsed = ocsp.load_der_ocsp_response(response)
    assert parsed.revocation_time_utc == revocation.revoked_at
    assert parsed.next_update_utc is not None and parsed.next_update_utc > NOW


def test_ocsp_answers_unknown_for_a_serial_the_store_does_not_know(ca: CA, tmp_path: Path) -> None:
    device = ca.device("stranger", serial=0x42)
    response = answer_ocsp(
        ocsp_request(ca, device, tmp_path),
        ca.certificate,
        ca.key,
        lambda serial: Standing(CertificateStatus.UNKNOWN),
        now=NOW,
    )
    assert f"{device}: unknown" in openssl_reads_response(ca, device, response, tmp_path)


def test_ocsp_echoes_the_nonce_so_a_replayed_answer_is_detected(ca: CA, tmp_path: Path) -> None:
    device = ca.device("current", serial=0x43)
    request = ocsp_request(ca, device, tmp_path)  # openssl adds a nonce by default
    nonce = (
        ocsp.load_der_ocsp_request(request)
        .extensions.get_extension_for_class(x509.OCSPNonce)
        .value.nonce
    )
    response = ocsp.load_der_ocsp_response(
        answer_ocsp(
            request, ca.certificate, ca.key, lambda s: Standing(CertificateStatus.GOOD), now=NOW
        )
    )
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce


def test_ocsp_fail_garbage_request_is_malformed_and_unsigned(ca: CA) -> None:
    for garbage in (b"", b"\x30\x03\x02\x01\x01", b"not der at all", b"\x30" * 5000):
        response = ocsp.load_der_ocsp_response(
            answer_ocsp(garbage, ca.certificate, ca.key, _never, now=NOW)
        )
        assert response.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_ocsp_fail_a_certificate_of_another_ca_is_not_ours_to_answer(
    ca: CA, tmp_path: Path
) -> None:
    (tmp_path / "other").mkdir()
    other = CA(tmp_path / "other")
    device = other.device("elsewhere", serial=0x44)
    request = ocsp_request(other, device, tmp_path)
    response = ocsp.load_der_ocsp_response(
        answer_ocsp(request, ca.certificate, ca.key, _never, now=NOW)
    )
    assert response.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_ocsp_request_hashed_with_sha256_is_answered_too(ca: CA) -> None:
    device = profile.device_certificate(
        public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
        device_id="dev",
        ca_certificate=ca.certificate,
        ca_key=ca.key,
        serial=0x45,
        now=NOW,
        ttl=timedelta(days=1),
    )
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(device, ca.certificate, hashes.SHA256())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    response = ocsp.load_der_ocsp_response(
        answer_ocsp(
            request, ca.certificate, ca.key, lambda s: Standing(CertificateStatus.GOOD), now=NOW
        )
    )
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == 0x45


def _never(serial: int) -> Standing:
    raise AssertionError("a request that is not ours must not reach the store")
