"""Identity policy: which caller of the admin or service role may call now, which admin
certificates register, and which names are free.

Pure functions of plain values and times; they raise typed errors.
"""

from __future__ import annotations

from datetime import datetime

from sielum.ca.profile import ADMIN_TTL, BACKDATE, validate_name
from sielum.devices.policy import LOST_RENEWAL_MARGIN
from sielum.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from sielum.model import Admin, Service

# How an admin came to be registered, in Admin.created_by when no admin created
# them: by `sielum-server init` or `issue-admin-cert` on the server host, or from a
# certificate made before admins were recorded. The host commands are also their
# actors in the audit trail, as server/<command>.
BY_INIT = "init"
BY_ISSUE_ADMIN_CERT = "issue-admin-cert"
BY_CERTIFICATE = "certificate"


def check_name(name: str) -> str:
    """The name, if it may name an admin (sielum://admin/<name>); else InvalidArgumentError."""
    return validate_name(name, what="admin name")


def actor(name: str) -> str:
    """How the audit trail names an admin: admin/<name>."""
    return f"admin/{name}"


def service_resource(name: str) -> str:
    """How the audit trail names a service: service/<name>."""
    return f"service/{name}"


def check_name_unused(what: str, name: str, found: Admin | Service | None) -> None:
    """AlreadyExistsError if an admin or service (what) of that name was ever registered:
    a name is never reused, so admin/<name> or service/<name> in the audit trail always
    means one identity."""
    if found is None:
        return
    if found.revoked_at is not None:
        raise AlreadyExistsError(
            f"{what} {name} was revoked; a revoked {what}'s name is never reused"
        )
    raise AlreadyExistsError(f"{what} {name} already exists")


def check_existing_name(what: str, name: str) -> str:
    """The name of an admin or service (what) to look up; one that cannot be such a name is
    not found, without asking the database."""
    if not name:
        raise InvalidArgumentError(f"{what} name is required")
    try:
        return validate_name(name, what=f"{what} name")
    except InvalidArgumentError:
        raise NotFoundError(f"{what} not found") from None


def check_service_may_call(name: str, service: Service | None, serial: str, issuer: str) -> None:
    """A service's certificate is honoured only while its service is registered and not
    revoked, and only if it is the one certificate CreateService made for it.

    Revoked: refused from the very next call (tests/rpc/test_services.py::
    test_fail_a_revoked_service_is_refused_at_its_next_call).
    """
    if service is None:
        raise PermissionDeniedError(f"service {name} is not registered")
    if service.revoked_at is not None:
        raise PermissionDeniedError(f"service {name} has been revoked")
    if serial != service.serial or (issuer and issuer != service.issuer):
        raise PermissionDeniedError(
            f"this certificate is not the one made for service {name}: use that one"
        )


SUPERSEDED = (
    "this admin certificate has been superseded by a newer one for the same admin; use that one"
)


def is_honoured(admin: Admin, serial: str, now: datetime, issuer: str = "") -> bool:
    """Whether the admin's certificate serial is honoured at now (revocation aside).

    The newest certificate is; the one before it too, until the newest is first used
    (then previous_until is None) and at most until previous_until. An admin none of
    whose certificates was recorded (serial None: all made before Sielum recorded them)
    has each honoured, as before. A dashboard session has no serial and is not judged
    here (tests/rpc/test_admins.py::
    test_fail_reissued_admin_cert_old_one_refused_once_the_new_one_is_used).

    A certificate of another CA than the one that signed the newest (issuer: a CA
    rollover, with a second server on the same database) is in no chain recorded here,
    and honoured as before (tests/e2e/test_ca_rollover.py::
    test_agents_move_to_a_new_ca_with_enroll_force).
    """
    if not serial or admin.serial is None or serial == admin.serial:
        return True
    if issuer and admin.issuer and issuer != admin.issuer:
        return True
    if admin.previous_until is None or now >= admin.previous_until:
        return False
    return admin.previous_serial is None or serial == admin.previous_serial


def retires_previous(admin: Admin, serial: str, now: datetime) -> bool:
    """Whether a call with serial is the first use of the admin's newest certificate while the
    one before it is still honoured: only then does the admin gate write."""
    return (
        bool(serial)
        and serial == admin.serial
        and admin.previous_until is not None
        and now < admin.previous_until
    )


def is_lost_certificate(admin: Admin, issued: datetime) -> bool:
    """Whether an admin certificate the database does not honour was issued well after the
    newest one it records: one a restored backup does not know of, made its newest on first
    use rather than locking the admin out. The margin is the devices' (LOST_RENEWAL_MARGIN)
    (tests/rpc/test_admins.py::test_ok_restored_backup_takes_the_admins_newer_certificate).
    """
    return admin.certified_at is not None and issued > admin.certified_at + LOST_RENEWAL_MARGIN


def check_may_call(
    name: str, admin: Admin | None, serial: str, now: datetime, issuer: str = ""
) -> None:
    """An admin certificate (or session) is honoured only while its admin is active, and a
    certificate only while it is the admin's newest, or the one before it until the newest
    is first used.

    Revoked: refused from the very next call (tests/rpc/test_admins.py::
    test_fail_a_revoked_admin_is_refused_at_its_next_call).
    """
    if admin is None:
        raise PermissionDeniedError(f"admin {name} is not registered")
    if admin.revoked_at is not None:
        raise PermissionDeniedError(f"admin {name} has been revoked")
    if not is_honoured(admin, serial, now, issuer):
        raise PermissionDeniedError(SUPERSEDED)


def issued_at(not_before: datetime) -> datetime:
    """When a Sielum certificate was signed: its not_before is backdated by BACKDATE."""
    return not_before + BACKDATE


def registers_on_first_use(not_before: datetime | None, cutoff: datetime | None) -> bool:
    """Whether an unregistered admin's certificate registers its admin on first use.

    Only a certificate signed before the database started to record admins
    (cutoff, stored by the migration that made the admin table) does: it was
    made when registering was not possible. Every later certificate came from
    init, issue-admin-cert or CreateAdmin, which register their admin, so an
    unknown name then is refused. A dashboard session has no certificate.
    """
    if not_before is None or cutoff is None:
        return False
    return issued_at(not_before) <= cutoff


def unregistered_certificates_may_be_valid(cutoff: datetime | None, now: datetime) -> bool:
    """Whether a certificate of an admin never registered could still be honoured at now.

    Such certificates were signed by cutoff at the latest and live ADMIN_TTL; until
    the last of them expires, revoking an unknown name records it as revoked
    rather than answering NOT_FOUND, so that its certificate never registers.
    """
    return cutoff is not None and now < cutoff + ADMIN_TTL
