"""Service identities over the API: create, list, revoke, names, the SERVICE gate, the audit."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sielum.admin.v1 import admin_pb2
from sielum.ca.authority import CertificateAuthority
from sielum.ca.profile import BACKDATE, SERVICE_TTL, random_serial, service_certificate
from sielum.core.authorization import identity_from_certificate
from sielum.errors import PermissionDeniedError
from sielum.identities.services import ServiceRegistry
from sielum.server.app import ADMIN_SERVICE, AGENT_SERVICE
from sielum.store.store import Store
from tests.conftest import openssl_verify

from .conftest import Harness, key_pem, make_csr, make_key, start_harness, status_of

LIST_SERVICES = admin_pb2.ListServicesRequest()


@pytest.fixture
def on_both(tmp_path: Path, database_url: str) -> Iterator[Harness]:
    harness = start_harness(tmp_path, database_url)
    try:
        yield harness
    finally:
        harness.server.stop(grace=1)


def create_service(
    harness: Harness, name: str
) -> tuple[admin_pb2.CreateServiceResponse, ec.EllipticCurvePrivateKey]:
    key = make_key()
    reply = harness.admin().CreateService(
        admin_pb2.CreateServiceRequest(name=name, csr_pem=make_csr(key, "ignored")), timeout=10
    )
    return reply, key


def revoke_service(harness: Harness, name: str) -> admin_pb2.RevokeServiceResponse:
    return harness.admin().RevokeService(admin_pb2.RevokeServiceRequest(name=name), timeout=10)


def services(harness: Harness) -> dict[str, admin_pb2.Service]:
    return {s.name: s for s in harness.admin().ListServices(LIST_SERVICES, timeout=10).services}


def admit(harness: Harness, certificate_pem: str | bytes) -> None:
    """The server's own gate for the certificate's role, as a method open to services asks it."""
    pem = certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
    identity = identity_from_certificate(pem)
    assert identity is not None
    harness.server.authorizer.admit(identity, "test")


def refusal(call: object) -> str:
    with pytest.raises(PermissionDeniedError) as caught:
        call()  # type: ignore[operator]
    return caught.value.message


def test_ok_create_certifies_the_csr_key_with_the_service_profile(
    on_both: Harness, tmp_path: Path
) -> None:
    harness = on_both
    reply, key = create_service(harness, "billing")
    assert reply.service.name == "billing"
    assert reply.service.created_by == "admin"
    assert reply.service.state == admin_pb2.SERVICE_STATE_ACTIVE
    assert not reply.service.HasField("revoked_at")
    assert reply.ca_certificate_pem.encode() == harness.ca_pem
    certificate = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
    assert certificate.public_key() == key.public_key()
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["sielum://service/billing"]
    assert list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert certificate.subject.rfc4514_string() == "CN=billing"  # the server's, not the CSR's
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime == SERVICE_TTL + BACKDATE == timedelta(days=365, minutes=5)
    (tmp_path / "billing.pem").write_text(reply.certificate_pem)
    verified = openssl_verify(harness.data_dir / "ca.pem", tmp_path / "billing.pem")
    assert verified.returncode == 0, verified.stderr

    # Its certificate is honoured: it completes a handshake on the API port and the gate
    # admits it.
    with harness.api_channel(key_pem(key), reply.certificate_pem.encode()) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    admit(harness, reply.certificate_pem)
    listed = services(harness)
    assert set(listed) == {"billing"}
    assert listed["billing"].created_at == reply.service.created_at
    trail = harness.admin().ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(resource="service/billing"), timeout=10
    )
    assert [(e.actor, e.action) for e in trail.events] == [("admin/admin", "service.create")]
    serial = format(certificate.serial_number, "x")
    assert trail.events[0].detail == f"serial={serial}"


def test_ok_list_services_pages_newest_first(on_both: Harness) -> None:
    names = [f"s{i}" for i in range(5)]
    for name in names:
        create_service(on_both, name)
    seen: list[str] = []
    page_token = ""
    while True:
        page = on_both.admin().ListServices(
            admin_pb2.ListServicesRequest(page_size=2, page_token=page_token), timeout=10
        )
        assert len(page.services) <= 2
        seen += [s.name for s in page.services]
        page_token = page.next_page_token
        if not page_token:
            break
    assert seen == list(reversed(names))


def test_fail_a_revoked_service_is_refused_at_its_next_call(on_both: Harness) -> None:
    """Revoked through one server, refused by the gate of that server and of another
    replica on the same database at once: the gate keeps nothing between calls."""
    harness = on_both
    reply, _ = create_service(harness, "ledger")
    replica_store = Store.open(harness.server.config.resolved_database_url())
    try:
        replica = ServiceRegistry(
            replica_store,
            CertificateAuthority.load(harness.data_dir, passphrase=None),
            harness.clock,
        )
        identity = identity_from_certificate(reply.certificate_pem.encode())
        assert identity is not None
        admit(harness, reply.certificate_pem)
        replica.check_may_call(identity)

        revoked = revoke_service(harness, "ledger")
        assert revoked.service.state == admin_pb2.SERVICE_STATE_REVOKED
        assert revoked.service.HasField("revoked_at")
        assert refusal(lambda: admit(harness, reply.certificate_pem)) == (
            "service ledger has been revoked"
        )
        assert refusal(lambda: replica.check_may_call(identity)) == (
            "service ledger has been revoked"
        )
    finally:
        replica_store.close()
    # Revoking again keeps the first time, and says so in the trail.
    again = revoke_service(harness, "ledger")
    assert again.service.revoked_at == revoked.service.revoked_at
    assert services(harness)["ledger"].state == admin_pb2.SERVICE_STATE_REVOKED
    trail = harness.admin().ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(resource="service/ledger", action="service.revoke"),
        timeout=10,
    )
    assert [(e.actor, e.detail) for e in trail.events] == [
        ("admin/admin", "already revoked"),
        ("admin/admin", ""),
    ]


def test_fail_a_name_is_never_reused(on_both: Harness) -> None:
    create_service(on_both, "crm")
    code, details = status_of(lambda: create_service(on_both, "crm"))
    assert (code, details) == (grpc.StatusCode.ALREADY_EXISTS, "service crm already exists")
    revoke_service(on_both, "crm")
    code, details = status_of(lambda: create_service(on_both, "crm"))
    assert (code, details) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "service crm was revoked; a revoked service's name is never reused",
    )
    assert services(on_both)["crm"].state == admin_pb2.SERVICE_STATE_REVOKED
    # A service's name and an admin's are apart: the same name may be both.
    on_both.admin().CreateAdmin(
        admin_pb2.CreateAdminRequest(name="crm", csr_pem=make_csr(make_key())), timeout=10
    )


@pytest.mark.parametrize("name", ["", "billing svc", "-billing", "b" * 65, "a/../admin"])
def test_fail_create_with_a_bad_name(harness: Harness, name: str) -> None:
    code, details = status_of(lambda: create_service(harness, name))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details == (
        "service name must be 1 to 64 characters of A-Z a-z 0-9 . _ - starting with a letter "
        "or digit"
    )
    assert services(harness) == {}


def test_fail_create_with_a_bad_csr(harness: Harness) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p384 = ec.generate_private_key(ec.SECP384R1())
    for csr_pem, message in (
        (make_csr(rsa_key), "CSR key must be ECDSA P-256; got RSA 2048"),
        (make_csr(p384), "CSR key must be ECDSA P-256; got ECDSA P-384 (secp384r1)"),
        ("", "CSR is empty"),
        ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA", "CSR PEM is truncated"),
    ):
        code, details = status_of(
            lambda csr_pem=csr_pem: harness.admin().CreateService(
                admin_pb2.CreateServiceRequest(name="eve", csr_pem=csr_pem), timeout=10
            )
        )
        assert code is grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith(message), details
    assert services(harness) == {}


def test_fail_revoke_names_that_are_no_service(harness: Harness) -> None:
    code, details = status_of(lambda: revoke_service(harness, ""))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "service name is required")
    # An admin's name is no service's.
    for name in ("admin", "no such service", "x\x00y", "a" * 65):
        code, details = status_of(lambda name=name: revoke_service(harness, name))
        assert (code, details) == (grpc.StatusCode.NOT_FOUND, "service not found")
    assert services(harness) == {}


def _certificate_from_the_ca(harness: Harness, name: str) -> bytes:
    """A service certificate signed with the CA key directly, never registered by CreateService."""
    ca = CertificateAuthority.load(harness.data_dir, passphrase=None)
    ca_key = serialization.load_pem_private_key((harness.data_dir / "ca.key").read_bytes(), None)
    certificate = service_certificate(
        public_key=make_key().public_key(),
        name=name,
        ca_certificate=ca.certificate,
        ca_key=ca_key,  # type: ignore[arg-type]
        serial=random_serial(),
        now=harness.clock.now(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def test_fail_a_certificate_not_made_by_create_service(harness: Harness) -> None:
    """Only the one certificate CreateService made for a service is honoured."""
    assert refusal(lambda: admit(harness, _certificate_from_the_ca(harness, "ghost"))) == (
        "service ghost is not registered"
    )
    create_service(harness, "ledger")
    assert refusal(lambda: admit(harness, _certificate_from_the_ca(harness, "ledger"))) == (
        "this certificate is not the one made for service ledger: use that one"
    )


def test_fail_a_service_may_call_no_admin_or_agent_method(harness: Harness) -> None:
    """Least privilege: a service certificate is refused on every AdminService and
    AgentService method, active or revoked; health stays open to it."""
    reply, key = create_service(harness, "nosy")
    methods = [
        (f"/{service.full_name}/{method.name}", service.full_name.rsplit(".", 1)[1])
        for service in (ADMIN_SERVICE, AGENT_SERVICE)
        for method in service.methods
    ]
    assert len(methods) > 15
    with harness.api_channel(key_pem(key), reply.certificate_pem.encode()) as channel:
        for revoked in (False, True):
            if revoked:
                revoke_service(harness, "nosy")
            for method, service in methods:
                needed = "an admin" if service == "AdminService" else "a device"
                # An empty request is a valid one of every method: authorization comes first.
                code, details = status_of(
                    lambda method=method: channel.unary_unary(method)(b"", timeout=10)
                )
                assert (code, details) == (
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{method} needs {needed} certificate; this one is service",
                ), method
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert set(services(harness)) == {"nosy"}


def test_ok_a_service_certificate_is_counted(tmp_path: Path) -> None:
    """sielum_certificates_issued_total{kind="service"} counts CreateService; a refusal does not."""
    from .test_metrics import Exposition

    h = start_harness(tmp_path, metrics_addr="127.0.0.1:0")
    try:
        create_service(h, "counted")
        status_of(lambda: create_service(h, "counted"))  # ALREADY_EXISTS: nothing signed
        issued = Exposition(h.server.metrics_port).value
        assert issued("sielum_certificates_issued_total", kind="service") == 1
        assert issued("sielum_certificates_issued_total", kind="admin") == 0
    finally:
        h.server.stop(grace=1)
