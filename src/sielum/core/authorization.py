"""Authorization as data: the method-to-role table, and the one check every transport calls."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography import x509

from sielum.ca.profile import issuer_key_id, public_key_sha256, role_of
from sielum.errors import PermissionDeniedError, SielumError
from sielum.identity import Call, CredentialKind, Identity, Role
from sielum.logs import log_event

log = logging.getLogger("sielum.server")


@dataclass(frozen=True)
class Rule:
    """Who may call a method: the roles it admits and, when it matters, the credential
    the caller must show.

    credentials None takes any credential the role can hold (a client
    certificate, or for an admin a dashboard session as well).
    """

    roles: tuple[Role, ...]
    credentials: frozenset[CredentialKind] | None = None

    def admits(self, credential: CredentialKind) -> bool:
        return self.credentials is None or credential in self.credentials

    @property
    def public(self) -> bool:
        return Role.PUBLIC in self.roles


PUBLIC = Rule((Role.PUBLIC,))
ADMIN = Rule((Role.ADMIN,))
DEVICE = Rule((Role.DEVICE,))
# The directory answers the services that rely on device certificates, and admins.
SERVICE_OR_ADMIN = Rule((Role.SERVICE, Role.ADMIN), frozenset({CredentialKind.CERTIFICATE}))
# Making or revoking an identity needs an admin's own certificate, never a
# dashboard session: a session is a bearer cookie that a stolen login link or a
# compromised browser hands over, and must not be able to mint an admin
# certificate that outlives it by a year
# (tests/robust/test_authorization_matrix.py::test_fail_stolen_session_cannot_manage_admins;
# ::test_managing_identities_needs_a_certificate_and_nothing_else_does holds every
# Create/Revoke of an Admin or a Service to this rule, and no other method).
ADMIN_BY_CERTIFICATE = Rule((Role.ADMIN,), frozenset({CredentialKind.CERTIFICATE}))

# Every method the server answers, with the rule its caller must meet. A method
# served but missing here is denied; tests/rpc/test_authorization.py walks every
# service descriptor and fails if one is left out. A service may call the
# DirectoryService and nothing else: a service certificate is refused on every
# AdminService and AgentService method
# (tests/rpc/test_services.py::test_fail_a_service_may_call_no_admin_or_agent_method).
METHOD_ROLES: Mapping[str, Rule] = {
    "/sielum.enroll.v1.EnrollService/Enroll": PUBLIC,
    "/sielum.admin.v1.AdminService/CreateEnrollmentToken": ADMIN,
    "/sielum.admin.v1.AdminService/GetEnrollmentToken": ADMIN,
    "/sielum.admin.v1.AdminService/ListEnrollmentTokens": ADMIN,
    "/sielum.admin.v1.AdminService/RevokeEnrollmentToken": ADMIN,
    "/sielum.admin.v1.AdminService/ListDevices": ADMIN,
    "/sielum.admin.v1.AdminService/GetDevice": ADMIN,
    "/sielum.admin.v1.AdminService/RevokeDevice": ADMIN,
    "/sielum.admin.v1.AdminService/CreateAdmin": ADMIN_BY_CERTIFICATE,
    "/sielum.admin.v1.AdminService/ListAdmins": ADMIN,
    "/sielum.admin.v1.AdminService/RevokeAdmin": ADMIN_BY_CERTIFICATE,
    "/sielum.admin.v1.AdminService/CreateService": ADMIN_BY_CERTIFICATE,
    "/sielum.admin.v1.AdminService/ListServices": ADMIN,
    "/sielum.admin.v1.AdminService/RevokeService": ADMIN_BY_CERTIFICATE,
    "/sielum.admin.v1.AdminService/ListAuditEvents": ADMIN,
    "/sielum.admin.v1.AdminService/CreateDashboardLogin": ADMIN,
    "/sielum.admin.v1.AdminService/GetOverview": ADMIN,
    "/sielum.admin.v1.AdminService/ListEnrollmentRequests": ADMIN,
    "/sielum.admin.v1.AdminService/ApproveEnrollmentRequest": ADMIN,
    "/sielum.admin.v1.AdminService/DenyEnrollmentRequest": ADMIN,
    "/sielum.agent.v1.AgentService/Heartbeat": DEVICE,
    "/sielum.agent.v1.AgentService/RenewCertificate": DEVICE,
    "/sielum.agent.v1.AgentService/Unenroll": DEVICE,
    "/sielum.directory.v1.DirectoryService/CheckCertificate": SERVICE_OR_ADMIN,
    "/sielum.directory.v1.DirectoryService/WatchDevices": SERVICE_OR_ADMIN,
    "/sielum.directory.v1.DirectoryService/GetTrustBundle": SERVICE_OR_ADMIN,
    "/grpc.health.v1.Health/Check": PUBLIC,
    "/grpc.health.v1.Health/Watch": PUBLIC,
    "/grpc.health.v1.Health/List": PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": PUBLIC,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": PUBLIC,
}

Gate = Callable[[Identity], None]
"""Raises PermissionDeniedError when a caller of a role may not call now (revoked, superseded)."""

# What a refusal says the caller lacks, for each credential a transport takes.
_PROOF: Mapping[CredentialKind, str] = {
    CredentialKind.CERTIFICATE: "client certificate from the Sielum CA",
    CredentialKind.SESSION: "dashboard session",
}


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
        issuer=issuer_key_id(certificate),
    )


class Authorizer:
    """The one authorization check: the method table, then the gate of the caller's role.

    Both transports call authorize() before a handler runs: the gRPC interceptor
    with the identity of the verified client certificate, the dashboard with the
    identity of the session (tests/robust/test_authorization_matrix.py walks every
    method through both).
    """

    def __init__(self, rules: Mapping[str, Rule], gates: Mapping[Role, Gate]) -> None:
        self._rules = rules
        self._gates = gates

    def authorize(
        self,
        method: str,
        caller: Identity | None,
        peer: str,
        *,
        credential: CredentialKind = CredentialKind.CERTIFICATE,
    ) -> Call:
        """The authorized call, or PermissionDeniedError (logged) saying why not.

        credential is what the transport takes as proof (a client certificate,
        a dashboard session): a method whose rule does not take it is refused
        even before a caller is looked for.
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

    def _check(self, method: str, caller: Identity | None, credential: CredentialKind) -> None:
        rule = self._rules.get(method)
        if rule is None:
            raise PermissionDeniedError(f"method {method} is not open to any caller")
        if rule.public:
            return
        needed = " or ".join(_a(role) for role in rule.roles)
        shown = caller.credential if caller is not None else credential
        if not rule.admits(shown):
            raise PermissionDeniedError(
                f"{method} needs {needed}'s client certificate, not a {shown.value}: "
                "use sielum-admin"
            )
        if caller is None:
            raise PermissionDeniedError(f"{method} needs {needed} {_PROOF[credential]}")
        if caller.role not in rule.roles:
            raise PermissionDeniedError(
                f"{method} needs {needed} certificate; this one is {caller.role.value}"
            )
        gate = self._gates.get(caller.role)
        if gate is not None:
            gate(caller)


def _a(role: Role) -> str:
    return f"an {role.value}" if role.value[0] in "aeiou" else f"a {role.value}"
