"""Admins over the API: create, list, revoke, the last admin, names, the gate; the audit trail."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from sielum.admin.v1 import admin_pb2, admin_pb2_grpc
from sielum.agent.v1 import agent_pb2
from sielum.ca.authority import CertificateAuthority
from sielum.ca.datadir import write_admin_bundle
from sielum.ca.profile import admin_certificate, random_serial
from sielum.pb import to_timestamp
from tests.conftest import openssl_verify

from .conftest import Harness, key_pem, make_csr, make_key, start_harness, status_of

LIST_ADMINS = admin_pb2.ListAdminsRequest()


def create_admin(
    harness: Harness, name: str, stub: admin_pb2_grpc.AdminServiceStub | None = None
) -> tuple[admin_pb2.CreateAdminResponse, ec.EllipticCurvePrivateKey]:
    key = make_key()
    reply = (stub or harness.admin()).CreateAdmin(
        admin_pb2.CreateAdminRequest(name=name, csr_pem=make_csr(key, "ignored")), timeout=10
    )
    return reply, key


def stub_of(
    harness: Harness, key: ec.EllipticCurvePrivateKey, certificate_pem: str
) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(
        harness.api_channel(key_pem(key), certificate_pem.encode())
    )


def admins(harness: Harness) -> dict[str, admin_pb2.Admin]:
    return {a.name: a for a in harness.admin().ListAdmins(LIST_ADMINS, timeout=10).admins}


def test_ok_create_certifies_the_csr_key_with_the_admin_profile(
    harness: Harness, tmp_path: Path
) -> None:
    reply, key = create_admin(harness, "bob")
    assert reply.admin.name == "bob"
    assert reply.admin.created_by == "admin"
    assert reply.admin.state == admin_pb2.ADMIN_STATE_ACTIVE
    assert not reply.admin.HasField("revoked_at")
    assert reply.ca_certificate_pem.encode() == harness.ca_pem
    certificate = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
    assert certificate.public_key() == key.public_key()
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["sielum://admin/bob"]
    assert list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert certificate.subject.rfc4514_string() == "CN=bob"  # the server's, not the CSR's
    (tmp_path / "bob.pem").write_text(reply.certificate_pem)
    verified = openssl_verify(harness.data_dir / "ca.pem", tmp_path / "bob.pem")
    assert verified.returncode == 0, verified.stderr

    # Bob can act at once, and what he does is his.
    bob = stub_of(harness, key, reply.certificate_pem)
    token = bob.CreateEnrollmentToken(admin_pb2.CreateEnrollmentTokenRequest(label="b"), timeout=10)
    assert token.token.created_by == "bob"
    listed = admins(harness)
    assert set(listed) == {"admin", "bob"}
    assert listed["admin"].created_by == "certificate"  # init_data_dir's, registered on first use


def test_ok_list_admins_pages_newest_first(harness: Harness) -> None:
    names = [f"a{i}" for i in range(5)]
    for name in names:
        create_admin(harness, name)
    seen: list[str] = []
    page_token = ""
    while True:
        page = harness.admin().ListAdmins(
            admin_pb2.ListAdminsRequest(page_size=2, page_token=page_token), timeout=10
        )
        assert len(page.admins) <= 2
        seen += [a.name for a in page.admins]
        page_token = page.next_page_token
        if not page_token:
            break
    assert seen == [*reversed(names), "admin"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "admin name must be 1 to 64 characters"),
        ("bob smith", "admin name must be 1 to 64 characters"),
        ("-bob", "admin name must be 1 to 64 characters"),
        ("b" * 65, "admin name must be 1 to 64 characters"),
        ("bob/../root", "admin name must be 1 to 64 characters"),
    ],
)
def test_fail_create_with_a_bad_name(harness: Harness, name: str, message: str) -> None:
    code, details = status_of(lambda: create_admin(harness, name))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(message)
    assert set(admins(harness)) == {"admin"}


def test_fail_create_with_a_bad_csr(harness: Harness) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p384 = ec.generate_private_key(ec.SECP384R1())
    cases = [
        (make_csr(rsa_key), "CSR key must be ECDSA P-256; got RSA 2048"),
        (make_csr(p384), "CSR key must be ECDSA P-256; got ECDSA P-384 (secp384r1)"),
        ("", "CSR is empty"),
        ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA", "CSR PEM is truncated"),
    ]
    # The last byte of the signature's s flipped: the signature does not verify.
    der = bytearray(
        x509.load_pem_x509_csr(make_csr(make_key()).encode()).public_bytes(
            serialization.Encoding.DER
        )
    )
    der[-1] ^= 0x01
    pem = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    cases.append((pem, "CSR signature does not verify"))
    for csr_pem, message in cases:
        code, details = status_of(
            lambda csr_pem=csr_pem: harness.admin().CreateAdmin(
                admin_pb2.CreateAdminRequest(name="eve", csr_pem=csr_pem), timeout=10
            )
        )
        assert code is grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith(message), details
    assert set(admins(harness)) == {"admin"}


def test_fail_a_name_is_never_reused(harness: Harness) -> None:
    create_admin(harness, "carol")
    code, details = status_of(lambda: create_admin(harness, "carol"))
    assert (code, details) == (grpc.StatusCode.ALREADY_EXISTS, "admin carol already exists")
    harness.admin().RevokeAdmin(admin_pb2.RevokeAdminRequest(name="carol"), timeout=10)
    code, details = status_of(lambda: create_admin(harness, "carol"))
    assert (code, details) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "admin carol was revoked; a revoked admin's name is never reused",
    )
    assert admins(harness)["carol"].state == admin_pb2.ADMIN_STATE_REVOKED


def test_fail_a_revoked_admin_is_refused_at_its_next_call(harness: Harness) -> None:
    reply, key = create_admin(harness, "dave")
    dave = stub_of(harness, key, reply.certificate_pem)
    dave.ListAdmins(LIST_ADMINS, timeout=10)  # the channel is up and dave is in
    revoked = harness.admin().RevokeAdmin(admin_pb2.RevokeAdminRequest(name="dave"), timeout=10)
    assert revoked.admin.state == admin_pb2.ADMIN_STATE_REVOKED
    assert revoked.admin.HasField("revoked_at")
    for call in (
        lambda: dave.ListAdmins(LIST_ADMINS, timeout=10),
        lambda: dave.CreateEnrollmentToken(
            admin_pb2.CreateEnrollmentTokenRequest(label="x"), timeout=10
        ),
        lambda: create_admin(harness, "dave2", stub=dave),
    ):
        assert status_of(call) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "admin dave has been revoked",
        )
    # Revoking again keeps the first time.
    again = harness.admin().RevokeAdmin(admin_pb2.RevokeAdminRequest(name="dave"), timeout=10)
    assert again.admin.revoked_at == revoked.admin.revoked_at
    trail = harness.admin().ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(resource="admin/dave", action="admin.revoke"), timeout=10
    )
    assert [e.detail for e in trail.events] == ["already revoked", ""]


def test_fail_revoking_the_last_active_admin(harness: Harness) -> None:
    reply, key = create_admin(harness, "erin")
    erin = stub_of(harness, key, reply.certificate_pem)
    # Erin revokes the first admin, then cannot revoke herself: she is the last.
    erin.RevokeAdmin(admin_pb2.RevokeAdminRequest(name="admin"), timeout=10)
    code, details = status_of(
        lambda: erin.RevokeAdmin(admin_pb2.RevokeAdminRequest(name="erin"), timeout=10)
    )
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert details == "admin erin is the last active admin: create another before revoking it"
    assert [a.name for a in erin.ListAdmins(LIST_ADMINS, timeout=10).admins if a.state == 1] == [
        "erin"
    ]


def test_fail_revoke_names_that_cannot_be_admins(harness: Harness) -> None:
    code, details = status_of(
        lambda: harness.admin().RevokeAdmin(admin_pb2.RevokeAdminRequest(name=""), timeout=10)
    )
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "admin name is required")
    for name in ("no such admin", "x\x00y", "a" * 65):
        code, details = status_of(
            lambda name=name: harness.admin().RevokeAdmin(
                admin_pb2.RevokeAdminRequest(name=name), timeout=10
            )
        )
        assert (code, details) == (grpc.StatusCode.NOT_FOUND, "admin not found")


def _certificate_from_the_ca(harness: Harness, name: str, now: datetime) -> tuple[bytes, bytes]:
    """An admin certificate signed with the CA key directly, as an old `issue-admin-cert` did."""
    ca = CertificateAuthority.load(harness.data_dir, passphrase=None)
    ca_key = serialization.load_pem_private_key((harness.data_dir / "ca.key").read_bytes(), None)
    key = make_key()
    certificate = admin_certificate(
        public_key=key.public_key(),
        name=name,
        ca_certificate=ca.certificate,
        ca_key=ca_key,  # type: ignore[arg-type]
        serial=random_serial(),
        now=now,
    )
    return key_pem(key), certificate.public_bytes(serialization.Encoding.PEM)


def test_fail_an_unregistered_certificate_made_after_the_upgrade(harness: Harness) -> None:
    # Signed after the server migrated its database (and a little later still,
    # so not within the second the migration recorded).
    key, chain = _certificate_from_the_ca(harness, "mallory", datetime.now(UTC) + timedelta(0, 2))
    mallory = admin_pb2_grpc.AdminServiceStub(harness.api_channel(key, chain))
    assert status_of(lambda: mallory.ListAdmins(LIST_ADMINS, timeout=10)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "admin mallory is not registered",
    )
    assert "mallory" not in admins(harness)


def test_ok_a_certificate_made_before_the_upgrade_registers_once(harness: Harness) -> None:
    key, chain = _certificate_from_the_ca(harness, "olga", datetime.now(UTC) - timedelta(days=2))
    olga = admin_pb2_grpc.AdminServiceStub(harness.api_channel(key, chain))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            olga.ListAdmins(LIST_ADMINS, timeout=10)
        except grpc.RpcError as error:
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert admins(harness)["olga"].created_by == "certificate"
    registered = harness.admin().ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(resource="admin/olga"), timeout=10
    )
    assert [(e.actor, e.action) for e in registered.events] == [("admin/olga", "admin.register")]


def test_revoking_a_name_never_registered(harness: Harness) -> None:
    """Within a year of the upgrade, a certificate made before it may still exist: the
    revocation is recorded, and that certificate never registers."""
    key, chain = _certificate_from_the_ca(harness, "frank", datetime.now(UTC) - timedelta(days=2))
    revoked = harness.admin().RevokeAdmin(admin_pb2.RevokeAdminRequest(name="frank"), timeout=10)
    assert revoked.admin.state == admin_pb2.ADMIN_STATE_REVOKED
    assert revoked.admin.created_by == "certificate"
    frank = admin_pb2_grpc.AdminServiceStub(harness.api_channel(key, chain))
    assert status_of(lambda: frank.ListAdmins(LIST_ADMINS, timeout=10)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "admin frank has been revoked",
    )
    # A year after the upgrade no such certificate is valid: an unknown name is not found.
    harness.clock.advance(timedelta(days=366))
    code, details = status_of(
        lambda: harness.admin().RevokeAdmin(admin_pb2.RevokeAdminRequest(name="gina"), timeout=10)
    )
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "admin not found")


# The audit trail over the API


def events(harness: Harness, **fields: object) -> list[admin_pb2.AuditEvent]:
    return list(
        harness.admin()
        .ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(page_size=1000, **fields),  # type: ignore[arg-type]
            timeout=10,
        )
        .events
    )


def test_ok_every_change_is_one_event_with_its_actor(harness: Harness) -> None:
    created = harness.create_token(label="audit")
    token_id = created.token.id
    enrolled, device_key = harness.enroll(created.secret)
    harness.enroll(created.secret, key=device_key)  # a retry changes nothing
    agent = harness.agent(device_key, enrolled.certificate_pem)
    agent.Heartbeat(agent_pb2.HeartbeatRequest(), timeout=10)  # nor does a heartbeat
    agent.RenewCertificate(agent_pb2.RenewCertificateRequest(csr_pem=make_csr(make_key())))
    device_id = enrolled.device_id
    harness.admin().RevokeDevice(admin_pb2.RevokeDeviceRequest(id=device_id), timeout=10)
    harness.admin().RevokeEnrollmentToken(
        admin_pb2.RevokeEnrollmentTokenRequest(id=token_id), timeout=10
    )
    create_admin(harness, "hank")
    harness.admin().RevokeAdmin(admin_pb2.RevokeAdminRequest(name="hank"), timeout=10)
    harness.admin().ListAuditEvents(admin_pb2.ListAuditEventsRequest(), timeout=10)  # a read

    trail = [(e.actor, e.action, e.resource) for e in reversed(events(harness))]
    assert trail == [
        ("admin/admin", "admin.register", "admin/admin"),
        ("admin/admin", "token.create", f"token/{token_id}"),
        (f"token/{token_id}", "device.enroll", f"device/{device_id}"),
        (f"device/{device_id}", "device.renew", f"device/{device_id}"),
        ("admin/admin", "device.revoke", f"device/{device_id}"),
        ("admin/admin", "token.revoke", f"token/{token_id}"),
        ("admin/admin", "admin.create", "admin/hank"),
        ("admin/admin", "admin.revoke", "admin/hank"),
    ]
    assert all(e.peer == "127.0.0.1" for e in events(harness) if e.action != "admin.register")
    assert all(e.HasField("at") for e in events(harness))


def test_ok_audit_filters_and_paging(harness: Harness) -> None:
    reply, key = create_admin(harness, "ivy")
    ivy = stub_of(harness, key, reply.certificate_pem)
    ids = []
    for i in range(5):
        by = ivy if i % 2 else harness.admin()
        ids.append(
            by.CreateEnrollmentToken(
                admin_pb2.CreateEnrollmentTokenRequest(label=f"t{i}"), timeout=10
            ).token.id
        )
    harness.admin().RevokeEnrollmentToken(
        admin_pb2.RevokeEnrollmentTokenRequest(id=ids[1]), timeout=10
    )

    assert [e.resource for e in events(harness, actor="admin/ivy")] == [
        f"token/{ids[3]}",
        f"token/{ids[1]}",
    ]
    assert [e.action for e in events(harness, resource=f"token/{ids[1]}")] == [
        "token.revoke",
        "token.create",
    ]
    assert len(events(harness, action="token.create")) == 5
    assert [e.resource for e in events(harness, action="token.create", actor="admin/ivy")] == [
        f"token/{ids[3]}",
        f"token/{ids[1]}",
    ]
    everything = events(harness)
    since = everything[2].at  # the third newest
    assert events(harness, since=since) == everything[:3]
    future = to_timestamp(datetime.now(UTC) + timedelta(days=1))
    assert events(harness, since=future) == []

    paged: list[admin_pb2.AuditEvent] = []
    page_token = ""
    while True:
        page = harness.admin().ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(page_size=2, page_token=page_token), timeout=10
        )
        assert len(page.events) <= 2
        paged += page.events
        page_token = page.next_page_token
        if not page_token:
            break
    assert paged == everything


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"actor": "alice"}, "actor must be kind/name, like admin/alice or token/<id>"),
        ({"actor": "admin/al ice"}, "actor must be kind/name"),
        ({"actor": "admin/x\x00"}, "actor must be kind/name"),
        ({"actor": "admin/" + "a" * 65}, "actor must be kind/name"),
        ({"resource": "token/'; DROP TABLE token; --"}, "resource must be kind/id"),
        ({"resource": "/"}, "resource must be kind/id"),
        ({"action": "create"}, "action must be like token.create or admin.revoke"),
        ({"action": "token.create\n"}, None),  # stripped: a valid filter
        ({"action": "TOKEN.CREATE"}, "action must be like token.create"),
        ({"page_size": -1}, "page_size must not be negative"),
        ({"page_token": "garbage!"}, "page_token is invalid"),
        ({"page_token": "dG9rZW5zOjE"}, "page_token is invalid"),  # a token listing's cursor
        ({"since": {"seconds": 253402300800}}, "since is out of range"),
        ({"since": {"seconds": -62135596801}}, "since is out of range"),
    ],
)
def test_fail_hostile_audit_filters(
    harness: Harness, fields: dict[str, object], message: str | None
) -> None:
    request = admin_pb2.ListAuditEventsRequest(**fields)  # type: ignore[arg-type]
    call = harness.admin().ListAuditEvents
    if message is None:
        call(request, timeout=10)
        return
    code, details = status_of(lambda: call(request, timeout=10))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(message), details


def test_a_device_certificate_is_refused_by_every_admin_method(harness: Harness) -> None:
    created = harness.create_token()
    enrolled, key = harness.enroll(created.secret)
    device = admin_pb2_grpc.AdminServiceStub(harness.device_channel(key, enrolled.certificate_pem))
    for name, request in (
        ("CreateAdmin", admin_pb2.CreateAdminRequest(name="x", csr_pem=make_csr(make_key()))),
        ("ListAdmins", LIST_ADMINS),
        ("RevokeAdmin", admin_pb2.RevokeAdminRequest(name="admin")),
        ("ListAuditEvents", admin_pb2.ListAuditEventsRequest()),
    ):
        code, details = status_of(lambda name=name, request=request: getattr(device, name)(request))
        assert code is grpc.StatusCode.PERMISSION_DENIED
        assert details == (
            f"/sielum.admin.v1.AdminService/{name} needs an admin certificate; this one is device"
        )
    assert set(admins(harness)) == {"admin"}


def test_openssl_cli_csr_is_accepted(harness: Harness, tmp_path: Path) -> None:
    """A CSR made by `openssl req` on the new admin's machine, as the README shows."""
    key, csr = tmp_path / "admin.key", tmp_path / "admin.csr"
    made = subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=jill"],
        capture_output=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    reply = harness.admin().CreateAdmin(
        admin_pb2.CreateAdminRequest(name="jill", csr_pem=csr.read_text()), timeout=10
    )
    jill = admin_pb2_grpc.AdminServiceStub(
        harness.api_channel(key.read_bytes(), reply.certificate_pem.encode())
    )
    assert "jill" in {a.name for a in jill.ListAdmins(LIST_ADMINS, timeout=10).admins}


def test_ok_an_admin_certificate_is_counted_once(tmp_path: Path) -> None:
    """sielum_certificates_issued_total{kind="admin"} counts CreateAdmin; a refusal does not."""
    from .test_metrics import Exposition

    h = start_harness(tmp_path, metrics_addr="127.0.0.1:0")
    try:
        create_admin(h, "kate")
        status_of(lambda: create_admin(h, "kate"))  # ALREADY_EXISTS: nothing signed
        issued = Exposition(h.server.metrics_port).value
        assert issued("sielum_certificates_issued_total", kind="admin") == 1
        assert issued("sielum_certificates_issued_total", kind="device") == 0
    finally:
        h.server.stop(grace=1)


# A new certificate for an admin retires the previous one once used, on SQLite and PostgreSQL.

ADMIN_SUPERSEDED = (
    "this admin certificate has been superseded by a newer one for the same admin; use that one"
)


@pytest.fixture
def on_both(tmp_path: Path, database_url: str) -> Iterator[Harness]:
    harness = start_harness(tmp_path, database_url)
    try:
        yield harness
    finally:
        harness.server.stop(grace=1)


def issue_on_host(harness: Harness, name: str, out: Path) -> admin_pb2_grpc.AdminServiceStub:
    """What `sielum-server issue-admin-cert` does: a bundle made with the CA key, registered."""
    ca = CertificateAuthority.load(harness.data_dir, passphrase=None)
    write_admin_bundle(ca, name, out, now=harness.clock.now())
    serial = format(
        x509.load_pem_x509_certificate((out / "admin.pem").read_bytes()).serial_number, "x"
    )
    harness.server.admins.register_made_on_host(name, "issue-admin-cert", serial)
    return admin_pb2_grpc.AdminServiceStub(
        harness.api_channel((out / "admin.key").read_bytes(), (out / "admin.pem").read_bytes())
    )


def test_fail_reissued_admin_cert_old_one_refused_once_the_new_one_is_used(
    on_both: Harness, tmp_path: Path
) -> None:
    """`issue-admin-cert` for an existing admin: the old certificate keeps working, days
    later too, until the new one is first used; from then on it is refused, and the new one
    is not."""
    h = on_both
    reply, key = create_admin(h, "gus")
    old = stub_of(h, key, reply.certificate_pem)
    old.ListAdmins(LIST_ADMINS, timeout=10)
    new = issue_on_host(h, "gus", tmp_path / "gus2")
    h.clock.advance(timedelta(days=3))
    old.ListAdmins(LIST_ADMINS, timeout=10)  # the new certificate is still unused
    new.ListAdmins(LIST_ADMINS, timeout=10)  # its first use retires the old one
    for call in (
        lambda: old.ListAdmins(LIST_ADMINS, timeout=10),
        lambda: old.CreateEnrollmentToken(
            admin_pb2.CreateEnrollmentTokenRequest(label="x"), timeout=10
        ),
    ):
        assert status_of(call) == (grpc.StatusCode.PERMISSION_DENIED, ADMIN_SUPERSEDED)
    token = new.CreateEnrollmentToken(admin_pb2.CreateEnrollmentTokenRequest(label="g"), timeout=10)
    assert token.token.created_by == "gus"
    trail = h.admin().ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(resource="admin/gus"), timeout=10
    )
    assert [(e.actor, e.action) for e in trail.events] == [
        ("server/issue-admin-cert", "admin.certify"),
        ("admin/admin", "admin.create"),
    ]


def test_fail_reissued_admin_cert_unused_one_replaced_by_the_next(
    on_both: Harness, tmp_path: Path
) -> None:
    """Two certificates issued in turn while neither is used: the admin keeps the one in use
    until the newest is used; the unused one in between is dropped."""
    h = on_both
    reply, key = create_admin(h, "hal")
    in_use = stub_of(h, key, reply.certificate_pem)
    lost = issue_on_host(h, "hal", tmp_path / "hal2")
    newest = issue_on_host(h, "hal", tmp_path / "hal3")
    in_use.ListAdmins(LIST_ADMINS, timeout=10)
    assert status_of(lambda: lost.ListAdmins(LIST_ADMINS, timeout=10)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        ADMIN_SUPERSEDED,
    )
    newest.ListAdmins(LIST_ADMINS, timeout=10)
    assert status_of(lambda: in_use.ListAdmins(LIST_ADMINS, timeout=10)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        ADMIN_SUPERSEDED,
    )


def test_fail_reissued_admin_cert_of_an_admin_whose_certificates_were_never_recorded(
    on_both: Harness, tmp_path: Path
) -> None:
    """The first admin here registered on first use of a certificate made before admins
    were recorded, so its serial is not known: a new certificate retires it all the same,
    once used; a revoked admin's certificates are refused whichever is used."""
    h = on_both
    reply, key = create_admin(h, "ivy")  # another admin, to revoke "admin" with afterwards
    ivy = stub_of(h, key, reply.certificate_pem)
    new = issue_on_host(h, "admin", tmp_path / "admin2")
    h.admin().ListAdmins(LIST_ADMINS, timeout=10)
    new.ListAdmins(LIST_ADMINS, timeout=10)
    assert status_of(lambda: h.admin().ListAdmins(LIST_ADMINS, timeout=10)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        ADMIN_SUPERSEDED,
    )
    ivy.RevokeAdmin(admin_pb2.RevokeAdminRequest(name="admin"), timeout=10)
    for stub in (new, h.admin()):
        assert status_of(lambda stub=stub: stub.ListAdmins(LIST_ADMINS, timeout=10)) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "admin admin has been revoked",
        )


def test_ok_restored_backup_takes_the_admins_newer_certificate(
    on_both: Harness, tmp_path: Path
) -> None:
    """The database is restored from a backup taken before an admin got a new certificate
    and used it: that certificate, issued after the one the backup records, becomes the
    admin's newest on its first call instead of being refused; the older one stays refused."""
    h = on_both
    h.clock.advance(-timedelta(days=1))  # every certificate here valid in real time
    reply, key = create_admin(h, "kim")
    old = stub_of(h, key, reply.certificate_pem)
    db = h.server.store.db
    columns = "serial, previous_serial, previous_until, certified_at"
    with db.connection_context():
        backup = db.execute_sql(
            f"SELECT {columns} FROM admin WHERE name = {db.param}", ("kim",)
        ).fetchone()
    h.clock.advance(timedelta(days=1))
    new = issue_on_host(h, "kim", tmp_path / "kim2")
    new.ListAdmins(LIST_ADMINS, timeout=10)
    with db.connection_context():
        db.execute_sql(
            f"UPDATE admin SET {', '.join(f'{c} = {db.param}' for c in columns.split(', '))}"
            f" WHERE name = {db.param}",
            (*backup, "kim"),
        )

    new.ListAdmins(LIST_ADMINS, timeout=10)
    assert status_of(lambda: old.ListAdmins(LIST_ADMINS, timeout=10)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        ADMIN_SUPERSEDED,
    )
    new.ListAdmins(LIST_ADMINS, timeout=10)
    trail = h.admin().ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(resource="admin/kim", action="admin.adopt"), timeout=10
    )
    assert [e.actor for e in trail.events] == ["admin/kim"]
