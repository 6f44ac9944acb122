"""Who is calling: the roles, a caller's identity, and the authorized call handlers receive."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from sielum.model import AuditEvent


class Role(enum.Enum):
    PUBLIC = "public"
    ADMIN = "admin"
    SERVICE = "service"  # another system that integrates with Sielum (sielum://service/<name>)
    DEVICE = "device"


class CredentialKind(enum.Enum):
    """What a caller proved itself with; the method table may ask for one in particular."""

    CERTIFICATE = "client certificate"
    SESSION = "dashboard session"


@dataclass(frozen=True)
class Identity:
    """A caller as its credential names it: a client certificate or a dashboard session.

    `serial`, `not_before`, `not_after`, `public_key_sha256` and `certificate_pem` are
    the certificate's; a dashboard session has no certificate of its own, so they are
    empty there.
    """

    role: Role
    name: str  # the admin's or service's name, or the device id
    serial: str = ""
    not_before: datetime | None = None
    not_after: datetime | None = None
    public_key_sha256: str = ""  # ca.profile.public_key_sha256 of the certificate's key
    credential: CredentialKind = CredentialKind.CERTIFICATE
    certificate_pem: str = ""  # the certificate itself, as the peer presented it
    issuer: str = ""  # the key identifier of the CA that signed it (ca.profile.issuer_key_id)


@dataclass(frozen=True)
class Call:
    """What a handler knows of the call it answers, after authorization.

    Every transport (gRPC, the dashboard's Connect protocol) builds one through
    the same Authorizer (core/authorization.py), so a handler never sees an unchecked caller.
    """

    method: str  # the full method name, "/sielum.admin.v1.AdminService/ListDevices"
    caller: Identity | None  # None only on a public method called without a credential
    peer: str  # the caller's address, for logs and the audit trail

    def identity(self) -> Identity:
        """The caller; only public methods are ever called without one."""
        if self.caller is None:
            raise RuntimeError(f"{self.method} was called without an identity")
        return self.caller


@dataclass(frozen=True)
class Caller:
    """The admin making the call, and from where."""

    name: str
    peer: str

    def audit(self, action: str, resource: str, at: datetime, detail: str = "") -> AuditEvent:
        """The audit event for this admin's action on resource."""
        return AuditEvent(
            at=at,
            actor=f"admin/{self.name}",
            action=action,
            resource=resource,
            peer=self.peer,
            detail=detail,
        )
