"""Every method of every service x every kind of caller x every transport: the expected outcome.

gRPC: both ports, nine kinds of client certificate (and none). The dashboard's Connect
transport: every AdminService method with six kinds of browser request, each
refusal checked to have changed nothing.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from google.protobuf import json_format, message_factory

from sielum.admin.v1 import admin_pb2, admin_pb2_grpc
from sielum.agent.v1 import agent_pb2
from sielum.ca.authority import CertificateAuthority
from sielum.ca.datadir import init_data_dir
from sielum.ca.profile import admin_certificate, random_serial
from sielum.core.authorization import METHOD_ROLES, Role
from sielum.directory.v1 import directory_pb2
from sielum.enroll.ratelimit import FailureLimit
from sielum.enroll.v1 import enroll_pb2
from sielum.identity import CredentialKind
from sielum.server.app import ADMIN_SERVICE, iter_services
from tests.connect_client import DashboardClient
from tests.rpc.conftest import Harness, key_pem, make_csr, make_key, start_harness

IDENTITIES = (
    "none",
    "admin",
    "device",
    "revoked-device",
    "revoked-admin",
    "service",
    "revoked-service",
    "expired",
    "foreign-ca",
)
PORTS = ("enroll", "api")
_REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
_REFLECTION_V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
_HEALTH_LIST = "/grpc.health.v1.Health/List"
_UNENROLL = "/sielum.agent.v1.AgentService/Unenroll"
# Methods of the contract whose handlers have not landed yet: authorized like every
# other method, then UNIMPLEMENTED. Each issue that answers one removes it here.
NOT_YET_ANSWERED: set[str] = set()


def _descriptors() -> dict[str, Any]:
    """Full method name -> method descriptor, for every service the server registers."""
    found = {
        f"/{service.full_name}/{method.name}": method
        for service in iter_services()
        for method in service.methods
    }
    # v1 reflection is served by the v1alpha servicer (wire-identical messages).
    found[_REFLECTION_V1] = found[_REFLECTION_V1ALPHA]
    return found


DESCRIPTORS = _descriptors()


def test_the_matrix_covers_every_method() -> None:
    """Every method the server registers has a role, so it is in the matrix below."""
    assert set(DESCRIPTORS) <= set(METHOD_ROLES)
    assert set(METHOD_ROLES) <= set(DESCRIPTORS)


@dataclass
class World:
    harness: Harness
    credentials: dict[str, tuple[bytes, bytes] | None]  # identity -> (key PEM, chain PEM)
    channels: dict[tuple[str, str], grpc.Channel]
    token_id: str
    open_secret: str
    device_id: str
    spare_token_id: str
    spare_device_id: str
    spare_admin: str
    spare_service: str
    approval_secret: str
    browsers: dict[str, DashboardClient]  # Connect caller -> a client playing it
    device_certificate_pem: str

    def channel(self, port: str, identity: str) -> grpc.Channel:
        if (port, identity) not in self.channels:
            pair = self.credentials[identity]
            key, chain = pair if pair is not None else (None, None)
            target = self.harness.enroll_target if port == "enroll" else self.harness.api_target
            self.channels[(port, identity)] = grpc.secure_channel(
                target,
                grpc.ssl_channel_credentials(
                    root_certificates=self.harness.ca_pem, private_key=key, certificate_chain=chain
                ),
            )
        return self.channels[(port, identity)]


def _expired_admin(data_dir: Path) -> tuple[bytes, bytes]:
    """An admin certificate from the right CA whose validity ended a year ago."""
    ca = CertificateAuthority.load(data_dir, passphrase=None)
    ca_key = serialization.load_pem_private_key((data_dir / "ca.key").read_bytes(), None)
    key = make_key()
    certificate = admin_certificate(
        public_key=key.public_key(),
        name="expired-admin",
        ca_certificate=ca.certificate,
        ca_key=ca_key,  # type: ignore[arg-type]
        serial=random_serial(),
        now=datetime.now(UTC) - timedelta(days=400),
        ttl=timedelta(days=30),
    )
    return key_pem(key), certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("matrix")
    h = start_harness(tmp, failure_limit=FailureLimit(burst=0), dashboard_addr="127.0.0.1:0")
    try:
        token = h.create_token(label="matrix")
        open_token = h.create_token(label="matrix-open")
        device, device_key = h.enroll(token.secret)
        revoked, revoked_key = h.enroll(token.secret)
        spare, _ = h.enroll(token.secret)
        leaving, leaving_key = h.enroll(token.secret)
        h.admin().RevokeDevice(admin_pb2.RevokeDeviceRequest(id=revoked.device_id), timeout=10)
        # An admin created and revoked: their certificate still verifies, the gate refuses it.
        gone_key = make_key()
        gone = h.admin().CreateAdmin(
            admin_pb2.CreateAdminRequest(name="gone", csr_pem=make_csr(gone_key)), timeout=10
        )
        h.admin().RevokeAdmin(admin_pb2.RevokeAdminRequest(name="gone"), timeout=10)
        spare_admin = h.admin().CreateAdmin(
            admin_pb2.CreateAdminRequest(name="spare", csr_pem=make_csr(make_key())), timeout=10
        )
        # A service, and one created and revoked: the first may call the directory alone.
        service_key, gone_service_key = make_key(), make_key()
        service = h.admin().CreateService(
            admin_pb2.CreateServiceRequest(name="matrix-svc", csr_pem=make_csr(service_key)),
            timeout=10,
        )
        gone_service = h.admin().CreateService(
            admin_pb2.CreateServiceRequest(name="gone-svc", csr_pem=make_csr(gone_service_key)),
            timeout=10,
        )
        h.admin().RevokeService(admin_pb2.RevokeServiceRequest(name="gone-svc"), timeout=10)
        spare_service = h.admin().CreateService(
            admin_pb2.CreateServiceRequest(name="spare-svc", csr_pem=make_csr(make_key())),
            timeout=10,
        )
        foreign = tmp / "foreign"
        init_data_dir(foreign)
        admin_dir = h.data_dir / "admin"
        yield World(
            harness=h,
            credentials={
                "none": None,
                "admin": (
                    (admin_dir / "admin.key").read_bytes(),
                    (admin_dir / "admin.pem").read_bytes(),
                ),
                "device": (key_pem(device_key), device.certificate_pem.encode()),
                "revoked-device": (key_pem(revoked_key), revoked.certificate_pem.encode()),
                "revoked-admin": (key_pem(gone_key), gone.certificate_pem.encode()),
                "service": (key_pem(service_key), service.certificate_pem.encode()),
                "revoked-service": (
                    key_pem(gone_service_key),
                    gone_service.certificate_pem.encode(),
                ),
                "device-to-unenroll": (key_pem(leaving_key), leaving.certificate_pem.encode()),
                "expired": _expired_admin(h.data_dir),
                "foreign-ca": (
                    (foreign / "admin" / "admin.key").read_bytes(),
                    (foreign / "admin" / "admin.pem").read_bytes(),
                ),
            },
            channels={},
            token_id=token.token.id,
            open_secret=open_token.secret,
            device_id=device.device_id,
            spare_token_id=h.create_token(label="spare").token.id,
            spare_device_id=spare.device_id,
            spare_admin=spare_admin.admin.name,
            spare_service=spare_service.service.name,
            approval_secret=h.create_token(label="approval", requires_approval=True).secret,
            browsers=_browsers(h),
            device_certificate_pem=device.certificate_pem,
        )
    finally:
        h.server.stop(grace=1)


def _request(method: str, world: World) -> Any:
    """A request that succeeds when the caller is allowed to make it."""
    name = method.rsplit("/", 1)[1]
    requests: dict[str, Callable[[], Any]] = {
        "Enroll": lambda: enroll_pb2.EnrollRequest(
            token=world.open_secret, csr_pem=make_csr(make_key()), hostname="matrix"
        ),
        "CreateEnrollmentToken": lambda: admin_pb2.CreateEnrollmentTokenRequest(label="matrix"),
        "GetEnrollmentToken": lambda: admin_pb2.GetEnrollmentTokenRequest(id=world.token_id),
        "ListEnrollmentTokens": admin_pb2.ListEnrollmentTokensRequest,
        "RevokeEnrollmentToken": lambda: admin_pb2.RevokeEnrollmentTokenRequest(
            id=world.spare_token_id
        ),
        "ListDevices": admin_pb2.ListDevicesRequest,
        "GetDevice": lambda: admin_pb2.GetDeviceRequest(id=world.device_id),
        "RevokeDevice": lambda: admin_pb2.RevokeDeviceRequest(id=world.spare_device_id),
        "CreateAdmin": lambda: admin_pb2.CreateAdminRequest(
            name=f"matrix-{uuid.uuid4().hex[:8]}", csr_pem=make_csr(make_key())
        ),
        "RevokeAdmin": lambda: admin_pb2.RevokeAdminRequest(name=world.spare_admin),
        "CreateService": lambda: admin_pb2.CreateServiceRequest(
            name=f"matrix-{uuid.uuid4().hex[:8]}", csr_pem=make_csr(make_key())
        ),
        "RevokeService": lambda: admin_pb2.RevokeServiceRequest(name=world.spare_service),
        "ApproveEnrollmentRequest": lambda: admin_pb2.ApproveEnrollmentRequestRequest(
            id=_pending_request(world)
        ),
        "DenyEnrollmentRequest": lambda: admin_pb2.DenyEnrollmentRequestRequest(
            id=_pending_request(world)
        ),
        "Heartbeat": agent_pb2.HeartbeatRequest,
        "RenewCertificate": lambda: agent_pb2.RenewCertificateRequest(csr_pem=make_csr(make_key())),
        "CheckCertificate": lambda: directory_pb2.CheckCertificateRequest(
            certificate_pem=world.device_certificate_pem
        ),
    }
    if name in requests:
        return requests[name]()
    descriptor = DESCRIPTORS[method]
    request = message_factory.GetMessageClass(descriptor.input_type)()
    if name == "ServerReflectionInfo":
        request.list_services = ""
    return request


def _pending_request(world: World) -> str:
    """A new enrollment request waiting for approval: one per call, so each allowed
    Approve or Deny finds its own still undecided."""
    try:
        world.harness.enroll(world.approval_secret)
    except grpc.RpcError as error:
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION, error
        details = error.details()
        assert details is not None and details.startswith("pending approval: request ")
        return details.removeprefix("pending approval: request ")
    raise AssertionError("an enrollment with an approval token did not wait")


def _call(channel: grpc.Channel, method: str, request: Any) -> None:
    """One call of any shape; returns when the first reply arrives, raises RpcError else."""
    descriptor = DESCRIPTORS[method]
    reply_class = message_factory.GetMessageClass(descriptor.output_type)
    shape = dict(
        request_serializer=type(request).SerializeToString,
        response_deserializer=reply_class.FromString,
    )
    if not descriptor.client_streaming and not descriptor.server_streaming:
        channel.unary_unary(method, **shape)(request, timeout=10)
    elif not descriptor.client_streaming:
        stream = channel.unary_stream(method, **shape)(request, timeout=10)
        next(stream)
        stream.cancel()
    else:
        stream = channel.stream_stream(method, **shape)(iter([request]), timeout=10)
        next(stream)
        stream.cancel()


def _a(role: Role) -> str:
    return {Role.ADMIN: "an admin", Role.SERVICE: "a service"}.get(role, "a device")


def _role_of(identity: str) -> str:
    """The role of an identity's certificate, as a refusal names it."""
    return (
        identity.removeprefix("revoked-") if identity.endswith(("admin", "service")) else "device"
    )


def expected(method: str, port: str, identity: str) -> tuple[str, str | None]:
    """(status code name, details) the caller must get; details None: grpc's own text."""
    rule = METHOD_ROLES[method]
    needed = " or ".join(_a(role) for role in rule.roles)
    if port == "enroll":
        # The enroll port asks for no client certificate, so none reaches the server.
        identity = "none"
    elif identity in ("none", "expired", "foreign-ca"):
        # mTLS: the handshake fails before any method is looked at.
        return "UNAVAILABLE", None
    if method == _HEALTH_LIST:
        # In health.proto, but grpcio-health's servicer does not implement it.
        return "UNIMPLEMENTED", "Method not implemented!"
    if rule.public:
        return "OK", ""
    if identity == "none":
        return (
            "PERMISSION_DENIED",
            f"{method} needs {needed} client certificate from the Sielum CA",
        )
    caller = _role_of(identity)
    if caller not in {role.value for role in rule.roles}:
        return "PERMISSION_DENIED", f"{method} needs {needed} certificate; this one is {caller}"
    if identity == "revoked-device":
        return "PERMISSION_DENIED", "device has been revoked"
    if identity == "revoked-admin":
        return "PERMISSION_DENIED", "admin gone has been revoked"
    if identity == "revoked-service":
        return "PERMISSION_DENIED", "service gone-svc has been revoked"
    if method in NOT_YET_ANSWERED:
        return "UNIMPLEMENTED", f"{method.rsplit('/', 1)[1]} is not implemented yet"
    return "OK", ""


@pytest.mark.parametrize(
    ("method", "port", "identity"),
    list(itertools.product(sorted(METHOD_ROLES), PORTS, IDENTITIES)),
)
def test_authorization(world: World, method: str, port: str, identity: str) -> None:
    want_code, want_details = expected(method, port, identity)
    # Unenroll revokes its caller: a device of its own makes that call, so that the
    # "device" identity stays active for every other method.
    as_identity = "device-to-unenroll" if (method, identity) == (_UNENROLL, "device") else identity
    try:
        _call(world.channel(port, as_identity), method, _request(method, world))
    except grpc.RpcError as error:
        got = (error.code().name, error.details())  # type: ignore[attr-defined]
    else:
        got = ("OK", "")
    assert got[0] == want_code, got
    if want_details is not None:
        assert got[1] == want_details
    else:
        # grpc's own words for a refused handshake: the connection closed on it.
        assert "failed to connect" in got[1] or "Socket closed" in got[1], got


# --- the dashboard's Connect transport ----------------------------------------------------------

CONNECT_CALLERS = (
    "no-session",
    "session",
    "signed-out",
    "revoked-admin",
    "other-origin",
    "form-post",
)
ADMIN_METHODS = sorted(f"/{ADMIN_SERVICE.full_name}/{m.name}" for m in ADMIN_SERVICE.methods)


def _browsers(h: Harness) -> dict[str, DashboardClient]:
    def signed_in(**fields: Any) -> DashboardClient:
        client = DashboardClient(h.server.dashboard_url, h.ca_pem, **fields)
        link = h.admin().CreateDashboardLogin(admin_pb2.CreateDashboardLoginRequest(), timeout=10)
        assert client.sign_in(link.url).status == 200
        return client

    signed_out = signed_in()
    assert signed_out.sign_out().status == 200
    live = signed_in()
    # An admin who signed in, then was revoked: the session stays, the ADMIN gate refuses it.
    key = make_key()
    left = h.admin().CreateAdmin(
        admin_pb2.CreateAdminRequest(name="left", csr_pem=make_csr(key)), timeout=10
    )
    with h.api_channel(key_pem(key), left.certificate_pem.encode()) as channel:
        link = admin_pb2_grpc.AdminServiceStub(channel).CreateDashboardLogin(
            admin_pb2.CreateDashboardLoginRequest(), timeout=10
        )
    revoked_admin = DashboardClient(h.server.dashboard_url, h.ca_pem)
    assert revoked_admin.sign_in(link.url).status == 200
    h.admin().RevokeAdmin(admin_pb2.RevokeAdminRequest(name="left"), timeout=10)
    return {
        "no-session": DashboardClient(h.server.dashboard_url, h.ca_pem),
        "session": live,
        "signed-out": signed_out,
        "revoked-admin": revoked_admin,
        # A page on another site, in a browser that holds a live session.
        "other-origin": DashboardClient(
            h.server.dashboard_url, h.ca_pem, cookie=live.cookie, origin="https://evil.example"
        ),
        "form-post": live,
    }


def _certificate_only(method: str) -> bool:
    """Managing identities needs an admin's own certificate: a dashboard session may only read."""
    return not METHOD_ROLES[method].admits(CredentialKind.SESSION)


def expected_connect(method: str, caller: str) -> tuple[int, str, str]:
    """(HTTP status, Connect code, message) for a Connect call; code "" for a success."""
    if caller == "other-origin":
        return (
            403,
            "permission_denied",
            "requests must come from the dashboard's own pages (Origin not allowed)",
        )
    if caller == "form-post":
        return 415, "invalid_argument", "Content-Type must be application/json"
    if caller == "signed-out":
        return 401, "unauthenticated", "you are signed out"
    if _certificate_only(method):
        # With a session or without one: no session would ever do.
        return (
            403,
            "permission_denied",
            f"{method} needs an admin's client certificate, not a dashboard session: "
            "use sielum-admin",
        )
    if caller == "no-session":
        return 403, "permission_denied", f"{method} needs an admin dashboard session"
    if caller == "revoked-admin":
        return 403, "permission_denied", "admin left has been revoked"
    if method in NOT_YET_ANSWERED:
        return 501, "unimplemented", f"{method.rsplit('/', 1)[1]} is not implemented yet"
    return 200, "", ""


def _everything(h: Harness) -> tuple[object, ...]:
    """What a refused call must leave as it was: tokens, devices, admins, services, audit trail,
    sessions."""
    store = h.server.store
    tokens = store.list_tokens(now=h.clock.now(), page_size=1000).items
    devices = store.list_devices(page_size=1000).items
    admins = store.list_admins(page_size=1000).items
    services = store.list_services(page_size=1000).items
    with store.db.connection_context():
        sessions = store.db.execute_sql(
            "SELECT admin, expires_at FROM dashboard_session ORDER BY seq"
        ).fetchall()
    return (
        [(t.id, t.uses, t.revoked_at) for t in tokens],
        [(d.id, d.serial, d.revoked_at) for d in devices],
        [(a.name, a.revoked_at) for a in admins],
        [(s.name, s.revoked_at) for s in services],
        len(store.list_audit(limit=1000)),
        [tuple(row) for row in sessions],
    )


def test_connect_covers_exactly_the_admin_service() -> None:
    assert {m for m in METHOD_ROLES if m.startswith(f"/{ADMIN_SERVICE.full_name}/")} == set(
        ADMIN_METHODS
    )


@pytest.mark.parametrize(
    ("method", "caller"), list(itertools.product(ADMIN_METHODS, CONNECT_CALLERS))
)
def test_connect_authorization(world: World, method: str, caller: str) -> None:
    want = expected_connect(method, caller)
    client = world.browsers[caller]
    document = json_format.MessageToDict(_request(method, world))
    before = _everything(world.harness) if want[0] != 200 else None
    if caller == "form-post":
        # What an HTML form on any page can send: no preflight, the browser's cookies.
        answer = client.request(
            "POST",
            method,
            b"label=csrf",
            {**client.browser_headers("application/x-www-form-urlencoded")},
        )
    else:
        answer = client.call(method.rsplit("/", 1)[1], document)
    got = (answer.status, answer.code, answer.message)
    assert got == want, answer.body
    if before is not None:
        assert _everything(world.harness) == before


@pytest.mark.parametrize(
    "method", sorted(m for m in METHOD_ROLES if not m.startswith(f"/{ADMIN_SERVICE.full_name}/"))
)
def test_connect_serves_no_other_service(world: World, method: str) -> None:
    """Enroll, the agent's methods, health, reflection: not on the dashboard, even signed in."""
    client = world.browsers["session"]
    before = _everything(world.harness)
    answer = client.post(method, {}, **{"Connect-Protocol-Version": "1"})
    assert (answer.status, answer.code) == (501, "unimplemented")
    assert answer.message == f"{method} is not a method served here"
    assert _everything(world.harness) == before


def test_fail_stolen_session_cannot_manage_admins(world: World) -> None:
    """A login link read from a process list gives its reader a session, and no more than that.

    The reader signs in first (an Origin is easy to forge outside a browser) and
    asks for an admin certificate of their own, or to revoke the real admin: both
    are refused, saying to use sielum-admin, and nothing changes. The session may
    still list admins, as the dashboard does.
    """
    h = world.harness
    link = h.admin().CreateDashboardLogin(admin_pb2.CreateDashboardLoginRequest(), timeout=10)
    thief = DashboardClient(h.server.dashboard_url, h.ca_pem)
    assert thief.sign_in(link.url).status == 200
    before = _everything(h)
    refusal = "needs an admin's client certificate, not a dashboard session: use sielum-admin"

    answer = thief.call(
        "CreateAdmin",
        json_format.MessageToDict(
            admin_pb2.CreateAdminRequest(name="thief", csr_pem=make_csr(make_key()))
        ),
    )
    assert (answer.status, answer.code) == (403, "permission_denied"), answer.body
    assert answer.message == f"/{ADMIN_SERVICE.full_name}/CreateAdmin {refusal}"
    assert "certificatePem" not in answer.json()

    answer = thief.call("RevokeAdmin", {"name": "admin"})
    assert (answer.status, answer.code) == (403, "permission_denied"), answer.body
    assert answer.message == f"/{ADMIN_SERVICE.full_name}/RevokeAdmin {refusal}"
    assert _everything(h) == before

    listed = thief.call("ListAdmins", {})
    assert listed.status == 200, listed.body
    assert "thief" not in {admin["name"] for admin in listed.json()["admins"]}
    # The certificate the session stood for still manages admins, over gRPC.
    made = h.admin().CreateAdmin(
        admin_pb2.CreateAdminRequest(name="by-certificate", csr_pem=make_csr(make_key())),
        timeout=10,
    )
    assert made.certificate_pem


def test_fail_stolen_session_cannot_manage_services(world: World) -> None:
    """A session may list services, as the dashboard does, but neither make one (a
    certificate that would outlive the session by a year) nor revoke one."""
    h = world.harness
    thief = world.browsers["session"]
    before = _everything(h)
    refusal = "needs an admin's client certificate, not a dashboard session: use sielum-admin"
    answer = thief.call(
        "CreateService",
        json_format.MessageToDict(
            admin_pb2.CreateServiceRequest(name="thief-svc", csr_pem=make_csr(make_key()))
        ),
    )
    assert (answer.status, answer.code) == (403, "permission_denied"), answer.body
    assert answer.message == f"/{ADMIN_SERVICE.full_name}/CreateService {refusal}"
    assert "certificatePem" not in answer.json()
    answer = thief.call("RevokeService", {"name": "matrix-svc"})
    assert (answer.status, answer.code) == (403, "permission_denied"), answer.body
    assert answer.message == f"/{ADMIN_SERVICE.full_name}/RevokeService {refusal}"
    assert _everything(h) == before
    listed = thief.call("ListServices", {})
    assert listed.status == 200, listed.body
    states = {s["name"]: s["state"] for s in listed.json()["services"]}
    assert states["matrix-svc"] == "SERVICE_STATE_ACTIVE"
    assert states["gone-svc"] == "SERVICE_STATE_REVOKED"
    assert "thief-svc" not in states


def test_managing_identities_needs_a_certificate_and_nothing_else_does() -> None:
    """The table keeps exactly the methods that make or revoke an identity (admins, and
    services when they come) from a dashboard session; every other admin method takes one."""
    manage = re.compile(r"/(Create|Revoke)(Admin|Service)$")
    for method, rule in METHOD_ROLES.items():
        if Role.ADMIN not in rule.roles or Role.SERVICE in rule.roles:
            continue
        assert rule.admits(CredentialKind.CERTIFICATE), method
        assert rule.admits(CredentialKind.SESSION) is not bool(manage.search(method)), method
