"""The admin registry: the ADMIN gate, and creating, listing and revoking admins (and the
steps creating and revoking a service share with it)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric import ec

from sielum.ca.authority import CertificateAuthority, IssuedCertificate
from sielum.ca.profile import ADMIN_TTL, issuer_key_id, load_checked_csr, validate_name
from sielum.clock import Clock
from sielum.errors import AlreadyExistsError, NotFoundError
from sielum.identities import policy
from sielum.identity import Caller, Identity
from sielum.logs import log_event
from sielum.model import Admin, AuditEvent, Page, Service
from sielum.paging import check_page_size
from sielum.recorder import CertificateKind, NoRecorder, Recorder
from sielum.store.store import ALREADY_REVOKED, Store

log = logging.getLogger("sielum.admin")


def certify_new_identity(
    role: str,
    name: str,
    csr_pem: str,
    find: Callable[[str], Admin | Service | None],
    sign: Callable[[ec.EllipticCurvePublicKey, str, datetime], IssuedCertificate],
    now: datetime,
) -> tuple[str, IssuedCertificate]:
    """The checked name of a new admin or service (role) and the certificate signed for the
    key of its CSR, after the checks that refuse it without signing anything.

    The name is looked up (find) before signing, to say it is taken without making a
    certificate; the store's unique name decides a race.
    """
    name = validate_name(name, what=f"{role} name")
    csr = load_checked_csr(csr_pem)
    policy.check_name_unused(role, name, find(name))
    return name, sign(csr.public_key, name, now)


def record_created(
    recorder: Recorder, kind: CertificateKind, caller: Caller, name: str, serial: str
) -> None:
    """Count and log the certificate of a new admin or service (kind) that caller created."""
    recorder.certificate_issued(kind)
    log_event(
        log,
        f"{kind.value}.create",
        admin=caller.name,
        created=name,
        serial=serial,
        peer=caller.peer,
        outcome="ok",
    )


def log_revoked(role: str, caller: Caller, name: str, revoked_now: bool) -> None:
    """Log caller's revocation of an admin or service (role); revoked_now False: a repeat.

    The store sets revoked_at to the call's now only when that call revoked it.
    """
    log_event(
        log,
        f"{role}.revoke",
        admin=caller.name,
        revoked=name,
        peer=caller.peer,
        outcome="ok" if revoked_now else ALREADY_REVOKED,
    )


@dataclass(frozen=True)
class NewAdmin:
    """CreateAdmin's answer: the admin and the certificate for the key of its CSR."""

    admin: Admin
    certificate_pem: str
    ca_certificate_pem: str


class AdminRegistry:
    """Who is an admin. The server asks check_may_call on every call of the admin role."""

    def __init__(
        self,
        store: Store,
        ca: CertificateAuthority,
        clock: Clock,
        recorder: Recorder | None = None,
    ) -> None:
        self._store = store
        self._ca = ca
        # The chain of an admin's certificates is kept per CA (identities/policy.py::is_honoured).
        self._issuer = issuer_key_id(ca.certificate)
        self._clock = clock
        self._recorder = recorder or NoRecorder()

    def check_may_call(self, caller: Identity) -> None:
        """The ADMIN gate: raises PermissionDeniedError unless caller's admin is active and
        caller's certificate is one the admin may still use.

        One indexed lookup per call and nothing kept after it, so a revocation
        holds from the next call on every worker and replica. A certificate
        signed before admins were recorded registers its admin here, once
        (sielum.identities.policy.registers_on_first_use). The first call with an
        admin's newest certificate retires the one before it: the only other write.
        """
        admin = self._store.find_admin(caller.name)
        if admin is None:
            admin = self._register_on_first_use(caller)
        now = self._clock.now()
        if (
            admin is not None
            and admin.revoked_at is None
            and not policy.is_honoured(admin, caller.serial, now, caller.issuer)
        ):
            if self._adopt_lost_certificate(caller, admin, now):
                return
            admin = self._store.find_admin(caller.name)  # another worker may have adopted it
        policy.check_may_call(caller.name, admin, caller.serial, now, caller.issuer)
        if admin is not None and policy.retires_previous(admin, caller.serial, now):
            if self._store.retire_previous_admin_certificate(caller.name, caller.serial):
                log_event(
                    log,
                    "admin.retire",
                    admin=caller.name,
                    serial=caller.serial,
                    previous=admin.previous_serial or "",
                    outcome="ok",
                )
            else:
                # Retired by another worker, or a newer certificate was recorded in
                # between: judge the admin as they are now.
                policy.check_may_call(
                    caller.name,
                    self._store.find_admin(caller.name),
                    caller.serial,
                    now,
                    caller.issuer,
                )

    def _adopt_lost_certificate(self, caller: Identity, admin: Admin, now: datetime) -> bool:
        """Take caller's certificate as the admin's newest if a restored database lost it."""
        if caller.not_before is None or admin.serial is None:
            return False
        issued = policy.issued_at(caller.not_before)
        if not policy.is_lost_certificate(admin, issued):
            return False
        adopted = self._store.adopt_admin_certificate(
            caller.name,
            current_serial=admin.serial,
            serial=caller.serial,
            certified_at=issued,
            issuer=caller.issuer or None,
            audit=AuditEvent(
                at=now,
                actor=policy.actor(caller.name),
                action="admin.adopt",
                resource=policy.actor(caller.name),
                detail=f"serial={caller.serial} previous={admin.serial}: issued after the "
                "certificate the database held (a restored backup)",
            ),
        )
        if adopted:
            log_event(
                log,
                "admin.adopt",
                level=logging.WARNING,
                admin=caller.name,
                serial=caller.serial,
                previous=admin.serial,
                outcome="ok",
            )
        return adopted

    def _register_on_first_use(self, caller: Identity) -> Admin | None:
        cutoff = self._store.admin_first_use_cutoff()
        if not policy.registers_on_first_use(caller.not_before, cutoff):
            return None
        now = self._clock.now()
        admin, registered = self._store.register_admin_if_new(
            Admin(name=caller.name, created_at=now, created_by=policy.BY_CERTIFICATE),
            AuditEvent(
                at=now,
                actor=policy.actor(caller.name),
                action="admin.register",
                resource=policy.actor(caller.name),
                detail=f"first use of a certificate made before admins were registered, "
                f"serial={caller.serial}",
            ),
        )
        if registered:
            log_event(log, "admin.register", admin=caller.name, serial=caller.serial, outcome="ok")
        return admin

    def create(self, caller: Caller, name: str, csr_pem: str) -> NewAdmin:
        """Register a new admin and certify the key of its CSR; every field is the server's."""
        now = self._clock.now()
        name, issued = certify_new_identity(
            "admin", name, csr_pem, self._store.find_admin, self._ca.sign_admin, now
        )
        admin = self._store.create_admin(
            Admin(
                name=name,
                created_at=now,
                created_by=caller.name,
                serial=issued.serial,
                certified_at=now,
                issuer=self._issuer,
            ),
            caller.audit("admin.create", policy.actor(name), now, f"serial={issued.serial}"),
        )
        record_created(self._recorder, CertificateKind.ADMIN, caller, name, issued.serial)
        return NewAdmin(admin, issued.certificate_pem, self._ca.certificate_pem)

    def list(self, *, page_size: int, cursor: str) -> Page[Admin]:
        return self._store.list_admins(page_size=check_page_size(page_size), cursor=cursor)

    def revoke(self, caller: Caller, name: str) -> Admin:
        """Revoke an admin: their certificates (and sessions) are refused from their next call."""
        name = policy.check_existing_name("admin", name)
        now = self._clock.now()
        audit = caller.audit("admin.revoke", policy.actor(name), now)
        try:
            admin = self._store.revoke_admin(name, now, audit)
        except NotFoundError:
            # A certificate made before admins were registered may still name
            # them; record the name as revoked, so it never registers.
            cutoff = self._store.admin_first_use_cutoff()
            if not policy.unregistered_certificates_may_be_valid(cutoff, now):
                raise
            audit = caller.audit(
                "admin.revoke",
                policy.actor(name),
                now,
                "not registered: recorded as revoked, so no certificate of this name is honoured",
            )
            admin = self._store.revoke_admin(
                name,
                now,
                audit,
                if_unknown=Admin(
                    name=name, created_at=now, created_by=policy.BY_CERTIFICATE, revoked_at=now
                ),
            )
        log_revoked("admin", caller, name, admin.revoked_at == now)
        return admin

    def register_made_on_host(self, name: str, command: str, serial: str) -> bool:
        """Record an admin whose certificate `sielum-server <command>` just made on the host.

        A new name is registered (created_by = command) and True returned; an
        active admin keeps their record, the new certificate becomes their newest
        (audited as admin.certify, a renewal), and the one they used before is
        honoured until the new one is first used; a revoked admin's name is refused.
        """
        now = self._clock.now()
        actor = f"server/{command}"
        admin, registered = self._store.register_admin_if_new(
            Admin(
                name=name,
                created_at=now,
                created_by=command,
                serial=serial,
                certified_at=now,
                issuer=self._issuer,
            ),
            AuditEvent(
                at=now,
                actor=actor,
                action="admin.create",
                resource=policy.actor(name),
                detail=f"serial={serial}",
            ),
        )
        self.check_not_revoked(name, admin)
        if not registered:
            certify = AuditEvent(
                at=now,
                actor=actor,
                action="admin.certify",
                resource=policy.actor(name),
                detail=f"serial={serial}",
            )
            try:
                # Every certificate made before this one was signed by now, so none of
                # them outlives now + ADMIN_TTL; TLS holds each to its own not_after.
                self._store.certify_admin(
                    name, serial, now, now + ADMIN_TTL, certify, issuer=self._issuer
                )
            except NotFoundError:
                self.check_not_revoked(name)  # revoked in between
                raise
        return registered

    def check_not_revoked(self, name: str, admin: Admin | None = None) -> None:
        """Refuses a revoked admin's name, before the host makes a certificate for it."""
        admin = admin if admin is not None else self._store.find_admin(policy.check_name(name))
        if admin is not None and admin.revoked_at is not None:
            raise AlreadyExistsError(
                f"admin {name} was revoked; a revoked admin's name is never reused"
            )
