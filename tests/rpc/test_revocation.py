"""The revocation port of an in-process server: /crl and /ocsp as revocations, renewals and
unenrollments happen, the reason an admin gives, and bad input refused."""

from __future__ import annotations

import base64
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

from sielum.admin.v1 import admin_pb2
from sielum.agent.v1 import agent_pb2
from sielum.enroll.ratelimit import FailureLimit

from .conftest import Harness, make_csr, make_key, start_harness, status_of

# DESIGN: a change appears in /crl within 5 seconds; polled up to twice that.
CRL_BOUND = 10.0


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = start_harness(
        tmp_path,
        failure_limit=FailureLimit(burst=1000, rate_per_second=1000.0),
        revocation_addr="127.0.0.1:0",
        crl_url="http://crl.example/crl",
        ocsp_url="http://ocsp.example/ocsp",
    )
    try:
        yield h
    finally:
        h.server.stop(grace=1)


def url(harness: Harness, path: str) -> str:
    return f"http://127.0.0.1:{harness.server.revocation_port}{path}"


def http(
    harness: Harness,
    path: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    content_type: str = "application/ocsp-request",
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url(harness, path), data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def crl(harness: Harness) -> x509.CertificateRevocationList:
    deadline = time.monotonic() + CRL_BOUND
    while True:
        status, headers, body = http(harness, "/crl")
        if status == 200:
            assert headers["Content-Type"] == "application/pkix-crl"
            return x509.load_der_x509_crl(body)
        assert status == 503 and time.monotonic() < deadline, status
        time.sleep(0.2)


def listed_within_bound(harness: Harness, serial: int) -> x509.RevokedCertificate:
    """The CRL entry of serial, polled until the contract's 5 s bound (with margin)."""
    deadline = time.monotonic() + CRL_BOUND
    while True:
        entry = crl(harness).get_revoked_certificate_by_serial_number(serial)
        if entry is not None:
            return entry
        assert time.monotonic() < deadline, f"serial {serial:x} not in /crl after {CRL_BOUND} s"
        time.sleep(0.2)


def ocsp_request(certificate: x509.Certificate, issuer: x509.Certificate) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


def ask_ocsp(
    harness: Harness, certificate: x509.Certificate, *, get: bool = False
) -> ocsp.OCSPResponse:
    ca = x509.load_pem_x509_certificate(harness.ca_pem)
    der = ocsp_request(certificate, ca)
    if get:
        path = "/ocsp/" + urllib.parse.quote(base64.b64encode(der).decode(), safe="")
        status, headers, body = http(harness, path)
        assert "max-age=" in headers["Cache-Control"]
    else:
        status, headers, body = http(harness, "/ocsp", method="POST", body=der)
        assert headers["Cache-Control"] == "no-store"
    assert status == 200
    assert headers["Content-Type"] == "application/ocsp-response"
    response = ocsp.load_der_ocsp_response(body)
    assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert response.signature_hash_algorithm is not None
    # Signed by the CA (raises InvalidSignature otherwise).
    public_key.verify(
        response.signature,
        response.tbs_response_bytes,
        ec.ECDSA(response.signature_hash_algorithm),
    )
    assert response.next_update_utc is not None
    assert response.this_update_utc < response.next_update_utc
    return response


def enrolled(harness: Harness) -> tuple[str, x509.Certificate, object, str]:
    token = harness.create_token()
    reply, key = harness.enroll(token.secret)
    return (
        reply.device_id,
        x509.load_pem_x509_certificate(reply.certificate_pem.encode()),
        key,
        (reply.certificate_pem),
    )


def test_ok_a_device_is_good_then_revoked_with_the_reason_the_admin_gave(harness: Harness) -> None:
    device_id, certificate, _, _ = enrolled(harness)
    assert ask_ocsp(harness, certificate).certificate_status == ocsp.OCSPCertStatus.GOOD
    assert crl(harness).get_revoked_certificate_by_serial_number(certificate.serial_number) is None

    harness.admin().RevokeDevice(
        admin_pb2.RevokeDeviceRequest(
            id=device_id, reason=admin_pb2.REVOCATION_REASON_KEY_COMPROMISE
        )
    )
    for get in (False, True):
        answer = ask_ocsp(harness, certificate, get=get)
        assert answer.certificate_status == ocsp.OCSPCertStatus.REVOKED
        assert answer.revocation_reason == x509.ReasonFlags.key_compromise
        assert answer.revocation_time_utc is not None
    entry = listed_within_bound(harness, certificate.serial_number)
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise
    events = harness.admin().ListAuditEvents(admin_pb2.ListAuditEventsRequest()).events
    assert any(e.action == "device.revoke" and e.detail == "reason=keyCompromise" for e in events)


def test_fail_superseded_is_not_a_reason_an_admin_may_give(harness: Harness) -> None:
    device_id, certificate, _, _ = enrolled(harness)
    code, details = status_of(
        lambda: harness.admin().RevokeDevice(
            admin_pb2.RevokeDeviceRequest(id=device_id, reason=4)  # type: ignore[arg-type]
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("reason 4 cannot be given; one of: REVOCATION_REASON_UNSPECIFIED")
    # Nothing changed.
    device = harness.admin().GetDevice(admin_pb2.GetDeviceRequest(id=device_id)).device
    assert device.state == admin_pb2.DEVICE_STATE_ACTIVE
    assert ask_ocsp(harness, certificate).certificate_status == ocsp.OCSPCertStatus.GOOD


def test_ok_unenroll_is_cessation_of_operation(harness: Harness) -> None:
    _, certificate, key, pem = enrolled(harness)
    harness.agent(key, pem).Unenroll(agent_pb2.UnenrollRequest())  # type: ignore[arg-type]
    answer = ask_ocsp(harness, certificate)
    assert answer.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert answer.revocation_reason == x509.ReasonFlags.cessation_of_operation


def test_ok_a_renewed_certificate_is_superseded_once_the_new_one_is_used(
    harness: Harness,
) -> None:
    _, old, key, pem = enrolled(harness)
    new_key = make_key()
    renewed = harness.agent(key, pem).RenewCertificate(  # type: ignore[arg-type]
        agent_pb2.RenewCertificateRequest(csr_pem=make_csr(new_key))
    )
    new = x509.load_pem_x509_certificate(renewed.certificate_pem.encode())
    # The old one is honoured until the new one is used.
    assert ask_ocsp(harness, old).certificate_status == ocsp.OCSPCertStatus.GOOD
    harness.agent(new_key, renewed.certificate_pem).Heartbeat(  # type: ignore[arg-type]
        agent_pb2.HeartbeatRequest()
    )
    answer = ask_ocsp(harness, old)
    assert answer.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert answer.revocation_reason == x509.ReasonFlags.superseded
    assert ask_ocsp(harness, new).certificate_status == ocsp.OCSPCertStatus.GOOD
    entry = listed_within_bound(harness, old.serial_number)
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.superseded


def test_ok_certificates_name_the_crl_and_ocsp_urls(harness: Harness) -> None:
    _, certificate, _, _ = enrolled(harness)
    points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for n in points[0].full_name or []] == ["http://crl.example/crl"]
    access = certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(a.access_method, a.access_location.value) for a in access] == [
        (AuthorityInformationAccessOID.OCSP, "http://ocsp.example/ocsp")
    ]


def test_ok_without_urls_no_such_extension(tmp_path: Path) -> None:
    h = start_harness(tmp_path)
    try:
        _, certificate, _, _ = enrolled(h)
        for kind in (x509.CRLDistributionPoints, x509.AuthorityInformationAccess):
            with pytest.raises(x509.ExtensionNotFound):
                certificate.extensions.get_extension_for_class(kind)
        assert h.server.revocation_port == 0  # off unless asked for
    finally:
        h.server.stop(grace=1)


def test_ok_a_certificate_of_no_device_is_unknown_and_of_another_ca_unauthorized(
    harness: Harness,
) -> None:
    ca = x509.load_pem_x509_certificate(harness.ca_pem)
    admin_certificate = x509.load_pem_x509_certificate(
        (harness.data_dir / "admin" / "admin.pem").read_bytes()
    )
    assert ask_ocsp(harness, admin_certificate).certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    # A device of another Sielum, whose CA has the same name but another key.
    other = start_harness(harness.data_dir.parent / "other")
    try:
        _, foreign, _, _ = enrolled(other)
        foreign_ca = x509.load_pem_x509_certificate(other.ca_pem)
    finally:
        other.server.stop(grace=1)
    status, _, body = http(harness, "/ocsp", method="POST", body=ocsp_request(foreign, foreign_ca))
    assert status == 200
    assert ocsp.load_der_ocsp_response(body).response_status == (
        ocsp.OCSPResponseStatus.UNAUTHORIZED
    )
    assert ca.subject == foreign_ca.subject  # told apart by the key hash alone


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type", "expected"),
    [
        ("PUT", "/ocsp", b"x", "application/ocsp-request", 405),
        ("DELETE", "/crl", None, "", 405),
        ("POST", "/crl", b"x", "application/ocsp-request", 405),
        ("POST", "/ocsp", b"garbage", "application/ocsp-request", 400),
        ("POST", "/ocsp", b"\x30\x03\x02\x01\x01", "application/ocsp-request", 400),
        ("POST", "/ocsp", b"x", "text/plain", 400),
        ("GET", "/ocsp/!!!not-base64!!!", None, "", 400),
        ("GET", "/ocsp/" + "A" * 12000, None, "", 413),
        ("POST", "/ocsp", b"\x30" * 100_000, "application/ocsp-request", 413),
    ],
)
def test_fail_bad_input_to_the_revocation_port(
    harness: Harness,
    method: str,
    path: str,
    body: bytes | None,
    content_type: str,
    expected: int,
) -> None:
    stamp = harness.server.store.revocation_stamp()
    status, headers, reply = http(
        harness, path, method=method, body=body, content_type=content_type
    )
    assert status == expected
    if expected == 400:
        assert headers["Content-Type"] == "application/ocsp-response"
        assert ocsp.load_der_ocsp_response(reply).response_status == (
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        )
        assert headers["X-Sielum-Error"]
    assert harness.server.store.revocation_stamp() == stamp
    # The port still answers (once the first CRL is built, a moment after start).
    assert len(crl(harness).extensions) >= 1


def closed_by_server(connection: Any) -> bool:
    """Whether the server closed the connection (an end of stream, or a reset) within the
    socket's timeout; a timeout raises."""
    try:
        return bool(connection.recv(1) == b"")
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("bound", ["cap", "idle"])
def test_fail_idle_and_surplus_connections_hold_nothing_on_the_revocation_port(
    tmp_path: Path, bound: str
) -> None:
    """Bounded like the dashboard and metrics listeners: a connection beyond the cap is
    closed at once (the idle timeout, 60 s, is longer than the client waits), and one that
    sends no request is closed after the idle timeout; the port goes on answering."""
    import socket
    from datetime import timedelta

    h = start_harness(
        tmp_path,
        revocation_addr="127.0.0.1:0",
        idle_timeout=timedelta(seconds=60 if bound == "cap" else 1),
        max_http_connections=2 if bound == "cap" else 100,
    )
    try:
        port = h.server.revocation_port
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        if bound == "cap":
            surplus = socket.create_connection(("127.0.0.1", port), timeout=10)
            assert closed_by_server(surplus)  # well before the idle timeout
            surplus.close()
            for connection in held:
                connection.close()
        else:
            for idle in held:
                assert closed_by_server(idle)
                idle.close()
        # The slots come back as the server sees the connections go (the cap case: we
        # closed them), and the port answers again.
        deadline = time.monotonic() + CRL_BOUND
        while True:
            try:
                assert len(crl(h).extensions) >= 1
                break
            except (ConnectionResetError, urllib.error.URLError):
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        h.server.stop(grace=1)
