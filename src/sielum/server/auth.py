"""Authorization as data: the method-to-role table, and the one check every transport calls."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping

from cryptography import x509

from sielum.ca.profile import public_key_sha256, role_of
from sielum.errors import PermissionDeniedError, SielumError
from sielum.identity import Call, Identity, Role
from sielum.logs import log_event

log = logging.getLogger("sielum.server")

# Every method the server answers, with the role it needs. A method served but
# missing here is denied; tests/rpc/test_authorization.py walks every service
# descriptor and fails if one is left out.
METHOD_ROLES: Mapping[str, Role] = {
    "/sielum.enroll.v1.EnrollService/Enroll": Role.PUBLIC,
    "/sielum.admin.v1.AdminService/CreateEnrollmentToken": Role.ADMIN,
    "/sielum.admin.v1.AdminService/GetEnrollmentToken": Role.ADMIN,
    "/sielum.admin.v1.AdminService/ListEnrollmentTokens": Role.ADMIN,
    "/sielum.admin.v1.AdminService/RevokeEnrollmentToken": Role.ADMIN,
    "/sielum.admin.v1.AdminService/ListDevices": Role.ADMIN,
    "/sielum.admin.v1.AdminService/GetDevice": Role.ADMIN,
    "/sielum.admin.v1.AdminService/RevokeDevice": Role.ADMIN,
    "/sielum.admin.v1.AdminService/CreateAdmin": Role.ADMIN,
    "/sielum.admin.v1.AdminService/ListAdmins": Role.ADMIN,
    "/sielum.admin.v1.AdminService/RevokeAdmin": Role.ADMIN,
    "/sielum.admin.v1.AdminService/ListAuditEvents": Role.ADMIN,
    "/sielum.admin.v1.AdminService/CreateDashboardLogin": Role.ADMIN,
    "/sielum.admin.v1.AdminService/GetOverview": Role.ADMIN,
    "/sielum.agent.v1.AgentService/Heartbeat": Role.DEVICE,
    "/sielum.agent.v1.AgentService/RenewCertificate": Role.DEVICE,
    "/sielum.agent.v1.AgentService/Unenroll": Role.DEVICE,
    "/grpc.health.v1.Health/Check": Role.PUBLIC,
    "/grpc.health.v1.Health/Watch": Role.PUBLIC,
    "/grpc.health.v1.Health/List": Role.PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Role.PUBLIC,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": Role.PUBLIC,
}

Gate = Callable[[Identity], None]
"""Raises PermissionDeniedError when a caller of a role may not call now (revoked, superseded)."""

CERTIFICATE = "client certificate from the Sielum CA"


@functools.lru_cache(maxsize=4096)
def identity_from_certificate(pem: bytes) -> Identity | None:
    """The identity a verified client certificate names, None for one without a Sielum role."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    found = role_of(certificate)
    if found is None:
        return None
    role, name = found
    return Identity(
        role=Role(role),
        name=name,
        serial=format(certificate.serial_number, "x"),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        public_key_sha256=public_key_sha256(certificate.public_key()),
        certificate_pem=pem.decode("ascii", "replace"),
    )


class Authorizer:
    """The one authorization check: the method table, then the gate of the caller's role.

    Both transports call authorize() before a handler runs: the gRPC interceptor
    with the identity of the verified client certificate, the dashboard with the
    identity of the session (tests/robust/test_authorization_matrix.py walks every
    method through both).
    """

    def __init__(self, roles: Mapping[str, Role], gates: Mapping[Role, Gate]) -> None:
        self._roles = roles
        self._gates = gates

    def authorize(
        self, method: str, caller: Identity | None, peer: str, *, credential: str = CERTIFICATE
    ) -> Call:
        """The authorized call, or PermissionDeniedError (logged) saying why not.

        credential names what the transport takes as proof ("client certificate
        from the Sielum CA", "dashboard session"), for the refusal's message.
        """
        try:
            self._check(method, caller, credential)
        except SielumError as error:
            log_event(log, "denied", method=method, peer=peer, reason=error.message)
            raise
        return Call(method=method, caller=caller, peer=peer)

    def admit(self, caller: Identity, peer: str) -> None:
        """The gate of the caller's role alone, for a transport's request that calls no method.

        The dashboard asks it before telling a page who is signed in, so that a
        session of a revoked admin shows as ended there as on every method.
        """
        gate = self._gates.get(caller.role)
        if gate is None:
            return
        try:
            gate(caller)
        except SielumError as error:
            log_event(
                log,
                "denied",
                caller=f"{caller.role.value}/{caller.name}",
                peer=peer,
                reason=error.message,
            )
            raise

    def _check(self, method: str, caller: Identity | None, credential: str) -> None:
        needed = self._roles.get(method)
        if needed is None:
            raise PermissionDeniedError(f"method {method} is not open to any caller")
        if needed is Role.PUBLIC:
            return
        if caller is None:
            raise PermissionDeniedError(f"{method} needs {_a(needed)} {credential}")
        if caller.role is not needed:
            raise PermissionDeniedError(
                f"{method} needs {_a(needed)} certificate; this one is {caller.role.value}"
            )
        gate = self._gates.get(caller.role)
        if gate is not None:
            gate(caller)


def _a(role: Role) -> str:
    return f"an {role.value}" if role.value[0] in "aeiou" else f"a {role.value}"
