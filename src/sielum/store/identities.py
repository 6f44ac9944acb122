"""Identities in SQL: admins and services (registered, listed, revoked), each by name."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, cast

import peewee

from sielum.errors import AlreadyExistsError, FailedPreconditionError, NotFoundError
from sielum.model import Admin, AuditEvent, Page, Service
from sielum.store.base import ALREADY_REVOKED, DEFAULT_PAGE_SIZE, StoreBase, _guarded, _keyset_page
from sielum.store.database import execute, is_sqlite, write_transaction
from sielum.store.models import to_micros

_ADMIN_NOT_FOUND = "admin not found"
_SERVICE_NOT_FOUND = "service not found"

# Any constant will do, the same in every Sielum process, other than the migration's:
# 'sladmin' in ASCII. RevokeAdmin holds it so that two revocations cannot each see
# the other's admin as the one left active.
_PG_ADMIN_LOCK = 0x736C61646D696E


class IdentityStore(StoreBase):
    """Admins and services, by name; a revoked admin's or service's name is never reused."""

    @_guarded
    def find_admin(self, name: str) -> Admin | None:
        """The admin of that name, None if none was ever registered (one indexed lookup)."""
        A = self._t.admin
        row = A.get_or_none(A.name == name)
        return None if row is None else _admin(row)

    @_guarded
    def create_admin(self, admin: Admin, audit: AuditEvent) -> Admin:
        """Register a new admin; a name taken before, even by a revoked admin, is refused."""
        self._insert_named(self._t.admin, "admin", _admin_row(admin), audit)
        return admin

    def _insert_named(self, table: Any, what: str, row: dict[str, Any], audit: AuditEvent) -> None:
        """Insert the row of a new admin or service with its audit event; a name taken
        before, even by a revoked one, is AlreadyExistsError saying which."""
        name = row["name"]
        try:
            with write_transaction(self.db):
                table.insert(**row).execute()
                self._insert_audit(audit)
        except peewee.IntegrityError as exc:
            existing = table.get_or_none(table.name == name)
            if existing is not None and existing.revoked_at is not None:
                raise AlreadyExistsError(
                    f"{what} {name} was revoked; a revoked {what}'s name is never reused"
                ) from exc
            raise AlreadyExistsError(f"{what} {name} already exists") from exc

    @_guarded
    def register_admin_if_new(self, admin: Admin, audit: AuditEvent) -> tuple[Admin, bool]:
        """Register admin unless an admin of its name exists.

        Returns the admin of that name, and whether this call registered it.

        Two first calls at once register it once: the INSERT does nothing when a
        row of that name exists, and only the call whose INSERT made the row
        records audit. A row made in between (a revocation of the name) is the
        one returned.
        """
        A = self._t.admin
        with write_transaction(self.db):
            # INSERT OR IGNORE on SQLite, ON CONFLICT DO NOTHING on PostgreSQL.
            cursor = cast(Any, self.db).execute(A.insert(**_admin_row(admin)).on_conflict_ignore())
            registered = cursor.rowcount == 1
            if registered:
                self._insert_audit(audit)
            row = A.get(A.name == admin.name)
        return _admin(row), registered

    @_guarded
    def certify_admin(
        self,
        name: str,
        serial: str,
        now: datetime,
        previous_until: datetime,
        audit: AuditEvent,
        issuer: str | None = None,
    ) -> Admin:
        """Record serial, issued at now, as the newest certificate of the active admin name.

        The certificate it replaces stays honoured until previous_until, or until serial
        is first used (retire_previous_admin_certificate). When the one it replaces has
        never been used while an earlier one is still honoured, that earlier one stays
        the previous certificate and the unused one is dropped, as a device's retried
        renewal drops its unused certificate: the admin keeps the certificate they use
        (tests/store/test_admins.py::test_certify_admin_keeps_the_certificate_in_use).
        NotFoundError when no active admin has that name.
        """
        A = self._t.admin
        retired = A.previous_until.is_null()
        with write_transaction(self.db):
            changed = (
                A.update(
                    serial=serial,
                    certified_at=now,
                    issuer=issuer,
                    previous_serial=peewee.Case(None, ((retired, A.serial),), A.previous_serial),
                    previous_until=peewee.Case(
                        None, ((retired, to_micros(previous_until)),), A.previous_until
                    ),
                )
                .where((A.name == name) & A.revoked_at.is_null())
                .execute()
            )
            if not changed:
                raise NotFoundError(_ADMIN_NOT_FOUND)
            self._insert_audit(audit)
            row = A.get(A.name == name)
        return _admin(row)

    @_guarded
    def retire_previous_admin_certificate(self, name: str, serial: str) -> bool:
        """The first use of the admin's newest certificate serial: the one before it is refused
        from now on. False when nothing changed (retired already, or serial is no longer
        the newest); one conditional UPDATE, like retire_previous_certificate's.
        """
        A = self._t.admin
        with write_transaction(self.db):
            changed = (
                A.update(previous_until=None)
                .where((A.name == name) & (A.serial == serial) & A.previous_until.is_null(False))
                .execute()
            )
        return bool(changed)

    @_guarded
    def adopt_admin_certificate(
        self,
        name: str,
        *,
        current_serial: str,
        serial: str,
        certified_at: datetime,
        audit: AuditEvent,
        issuer: str | None = None,
    ) -> bool:
        """Make a certificate the database lost (a restored backup) the admin's newest one.

        One conditional UPDATE, like Store.adopt_certificate's: the admin is active and
        current_serial, judged by the caller, is still the newest. The one it replaces
        becomes the previous certificate, retired at once. False when nothing matched.
        """
        A = self._t.admin
        with write_transaction(self.db):
            changed = (
                A.update(
                    serial=serial,
                    certified_at=certified_at,
                    issuer=issuer,
                    previous_serial=A.serial,
                    previous_until=None,
                )
                .where((A.name == name) & (A.serial == current_serial) & A.revoked_at.is_null())
                .execute()
            )
            if changed:
                self._insert_audit(audit)
        return bool(changed)

    @_guarded
    def admin_first_use_cutoff(self) -> datetime | None:
        """Admin certificates issued up to this time may register on first use."""
        F = self._t.admin_first_use
        row = F.get_or_none(F.id == 1)
        return None if row is None else row.issued_until

    @_guarded
    def list_admins(self, *, page_size: int = DEFAULT_PAGE_SIZE, cursor: str = "") -> Page[Admin]:
        """Admins newest first, revoked ones included."""
        A = self._t.admin
        return _keyset_page(A, A.select(), "admins", page_size, cursor, _admin)

    @_guarded
    def revoke_admin(
        self, name: str, now: datetime, audit: AuditEvent, *, if_unknown: Admin | None = None
    ) -> Admin:
        """Revoke the admin; revoking again keeps the first revoked_at ("already revoked").

        Revoking the last active admin is FailedPreconditionError, whatever runs at
        the same time: on SQLite writers take turns, on PostgreSQL every revocation
        holds one advisory lock for its transaction, so two admins revoking each
        other at once cannot both see the other one left
        (tests/store/test_admins.py::test_admins_revoking_each_other_at_once).
        A name never registered is NotFoundError, or, given if_unknown (a revoked
        admin of that name), recorded as that: then a certificate of that name
        made before admins were registered never registers.
        """
        if if_unknown is not None and (if_unknown.name != name or if_unknown.revoked_at is None):
            raise ValueError("if_unknown must be a revoked admin of that name")
        A = self._t.admin
        with write_transaction(self.db):
            if not is_sqlite(self.db):
                execute(self.db, "SELECT pg_advisory_xact_lock(%s)", (_PG_ADMIN_LOCK,))
            row = A.get_or_none(A.name == name)
            if row is None:
                if if_unknown is None:
                    raise NotFoundError(_ADMIN_NOT_FOUND)
                A.insert(**_admin_row(if_unknown)).execute()
            elif row.revoked_at is None:
                other = (
                    A.select(A.name)
                    .where(A.revoked_at.is_null() & (A.name != name))
                    .order_by(A.name)
                    .limit(1)
                )
                if not is_sqlite(self.db):
                    # The admin left active is locked too: should the database run
                    # transactions in repeatable read rather than the default read
                    # committed, a revocation of that admin committed since this
                    # transaction's snapshot then fails it (UNAVAILABLE, try again)
                    # instead of going unseen.
                    other = other.for_update()
                if not list(other):
                    raise FailedPreconditionError(
                        f"admin {name} is the last active admin: create another before revoking it"
                    )
                A.update(revoked_at=now).where(A.name == name).execute()
            else:
                # A repeat: as for tokens and devices, audited apart from the revocation.
                detail = " ".join(filter(None, (ALREADY_REVOKED, audit.detail)))
                audit = dataclasses.replace(audit, detail=detail)
            self._insert_audit(audit)
            row = A.get(A.name == name)
        return _admin(row)

    @_guarded
    def find_service(self, name: str) -> Service | None:
        """The service of that name, None if none was ever created (one indexed lookup)."""
        S = self._t.service
        row = S.get_or_none(S.name == name)
        return None if row is None else _service(row)

    @_guarded
    def create_service(self, service: Service, audit: AuditEvent) -> Service:
        """Register a new service; a name taken before, even by a revoked service, is refused
        (tests/store/test_services.py::test_a_revoked_services_name_is_never_reused)."""
        self._insert_named(self._t.service, "service", dataclasses.asdict(service), audit)
        return service

    @_guarded
    def list_services(
        self, *, page_size: int = DEFAULT_PAGE_SIZE, cursor: str = ""
    ) -> Page[Service]:
        """Services newest first, revoked ones included."""
        S = self._t.service
        return _keyset_page(S, S.select(), "services", page_size, cursor, _service)

    @_guarded
    def revoke_service(self, name: str, now: datetime, audit: AuditEvent) -> Service:
        """Revoke the service; revoking again keeps the first revoked_at ("already revoked").

        NotFoundError for a name never created.
        """
        S = self._t.service
        with write_transaction(self.db):
            changed = (
                S.update(revoked_at=now).where((S.name == name) & S.revoked_at.is_null()).execute()
            )
            row = S.get_or_none(S.name == name)
            if row is None:
                raise NotFoundError(_SERVICE_NOT_FOUND)
            if not changed:
                detail = " ".join(filter(None, (ALREADY_REVOKED, audit.detail)))
                audit = dataclasses.replace(audit, detail=detail)
            self._insert_audit(audit)
        return _service(row)


def _service(row: Any) -> Service:
    return Service(
        name=row.name,
        created_at=row.created_at,
        created_by=row.created_by,
        serial=row.serial,
        issuer=row.issuer,
        revoked_at=row.revoked_at,
    )


def _admin_row(admin: Admin) -> dict[str, Any]:
    return {
        "name": admin.name,
        "created_at": admin.created_at,
        "created_by": admin.created_by,
        "revoked_at": admin.revoked_at,
        "serial": admin.serial,
        "previous_serial": admin.previous_serial,
        "previous_until": admin.previous_until,
        "certified_at": admin.certified_at,
        "issuer": admin.issuer,
    }


def _admin(row: Any) -> Admin:
    return Admin(
        name=row.name,
        created_at=row.created_at,
        created_by=row.created_by,
        revoked_at=row.revoked_at,
        serial=row.serial,
        previous_serial=row.previous_serial,
        previous_until=row.previous_until,
        certified_at=row.certified_at,
        issuer=row.issuer,
    )
