"""The Store: tokens, devices, admins and the audit trail in SQL, as sielum.model dataclasses."""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import functools
import json
import logging
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, cast

import peewee
import psycopg2
from playhouse.pool import MaxConnectionsExceeded, PooledDatabase

from sielum.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    RenewalRefusedError,
    TokenUnusableError,
    UnavailableError,
)
from sielum.model import (
    ENROLL_ACTION,
    Admin,
    AuditEvent,
    AuditFilter,
    DashboardLogin,
    DashboardSession,
    Device,
    DeviceStanding,
    DeviceState,
    Page,
    RenewalPace,
    StateCounts,
    Token,
    TokenState,
)
from sielum.store import migrations
from sielum.store.database import (
    connect,
    describe_error,
    execute,
    is_sqlite,
    is_unavailable,
    write_transaction,
)
from sielum.store.models import Tables, bind_tables, from_micros, to_micros

_MICROSECOND = timedelta(microseconds=1)

log = logging.getLogger("sielum.store")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

_TOKEN_NOT_FOUND = "enrollment token not found"  # noqa: S105 - a message, not a secret
_DEVICE_NOT_FOUND = "device not found"
_KEY_ENROLLED = "this public key is already enrolled"
_ADMIN_NOT_FOUND = "admin not found"
# The audit detail of a revoke that found the token, device or admin revoked already.
ALREADY_REVOKED = "already revoked"
_MAX_SEQ = 2**63 - 1
_DAY_MICROS = 86_400_000_000
_MIN_MICROS = -(2**63)
_CURSOR = re.compile(r"^(tokens|devices|admins):([1-9][0-9]{0,18})$")
_AUDIT_CURSOR = re.compile(r"^audit:(-?[0-9]{1,19}):([1-9][0-9]{0,18})$")
# Any constant will do, the same in every Sielum process, other than the migration's:
# 'sladmin' in ASCII. RevokeAdmin holds it so that two revocations cannot each see
# the other's admin as the one left active.
_PG_ADMIN_LOCK = 0x736C61646D696E

P = ParamSpec("P")
R = TypeVar("R")

# The drivers' errors that mean "connection trouble", when they escape peewee unwrapped.
_RAW_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    sqlite3.OperationalError,
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
)


def _guarded(method: Callable[Concatenate[Store, P], R]) -> Callable[Concatenate[Store, P], R]:
    """Run a Store method on a connection and turn "database unreachable" into UnavailableError.

    Other database errors are bugs and propagate as they are. The cause is
    logged (the driver's message never holds a password); the client gets only
    the generic message.
    """

    def wrapper(store: Store, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            with store._connection():
                return method(store, *args, **kwargs)
        except (peewee.OperationalError, peewee.InterfaceError, MaxConnectionsExceeded) as exc:
            if not is_unavailable(exc):
                raise
            log.warning("database unavailable in %s: %s", method.__name__, describe_error(exc))
            raise UnavailableError("database unavailable, try again") from exc
        except _RAW_DRIVER_ERRORS as exc:
            # peewee wraps the driver's errors only while a statement executes; reading
            # the rows afterwards raises the driver's own, e.g. psycopg2's "cursor
            # already closed" when the connection died in between (seen with
            # PostgreSQL unreachable). Judged as if peewee had wrapped them
            # (tests/robust/test_crashes.py::test_ok_connection_lost_while_reading_rows).
            wrapped = peewee.OperationalError(exc)
            wrapped.__context__ = exc  # where peewee's own wrapping leaves the cause
            if not is_unavailable(wrapped):
                raise
            log.warning("database unavailable in %s: %s", method.__name__, describe_error(wrapped))
            raise UnavailableError("database unavailable, try again") from exc

    functools.update_wrapper(wrapper, method)
    return wrapper


class Store:
    """All storage of Sielum. Safe to call from many threads at once.

    On SQLite each thread keeps its own connection; on PostgreSQL each call
    borrows one from the pool and gives it back. Every write is one
    transaction, so a call either happens entirely or not at all.
    """

    def __init__(self, db: peewee.Database) -> None:
        self.db = db
        self._t: Tables = bind_tables(db)
        self._pooled = isinstance(db, PooledDatabase)
        self._sql = _EnrollmentSql.build(db, self._t)
        self._count_sql = _CountSql.build(db, self._t)

    @classmethod
    def open(cls, url: str) -> Store:
        """Connect to url and migrate the schema forward."""
        store = cls(connect(url))
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
        return store

    def _connection(self) -> contextlib.AbstractContextManager[Any]:
        if self._pooled:
            return self.db.connection_context()
        # SQLite: the thread's connection stays open between calls (peewee opens
        # it on first use); opening a file and setting pragmas per call would cost.
        return contextlib.nullcontext()

    @_guarded
    def migrate(self) -> int:
        return migrations.migrate(self.db)

    def close(self) -> None:
        """Close the connections: all of a pool's, or the calling thread's SQLite connection."""
        if isinstance(self.db, PooledDatabase):
            self.db.close_all()
        else:
            self.db.close()

    @_guarded
    def check_integrity(self) -> list[str]:
        """Problems found, one line each; empty when the database is sound."""
        problems: list[str] = []
        if is_sqlite(self.db):
            rows = execute(self.db, "PRAGMA integrity_check").fetchall()
            problems += [f"sqlite: {r[0]}" for r in rows if r[0] != "ok"]
            for table, rowid, parent, _ in execute(self.db, "PRAGMA foreign_key_check"):
                problems.append(f"{table} row {rowid} refers to a missing {parent}")
        version = migrations.current_version(self.db)
        if version != migrations.LATEST_VERSION:
            problems.append(
                f"schema version is {version}, this Sielum expects {migrations.LATEST_VERSION}"
            )
            return problems
        # One statement, so PostgreSQL reads uses and the device count from one snapshot.
        cursor = execute(
            self.db,
            "SELECT t.id, t.uses, t.max_uses, COALESCE(d.n, 0)"
            " FROM token t LEFT JOIN"
            " (SELECT token_id, COUNT(*) AS n FROM device GROUP BY token_id) d"
            " ON d.token_id = t.id"
            " WHERE t.uses <> COALESCE(d.n, 0)"
            " OR (t.max_uses IS NOT NULL AND t.uses > t.max_uses)"
            " ORDER BY t.seq",
        )
        for token_id, uses, max_uses, devices in cursor.fetchall():
            if uses != devices:
                problems.append(
                    f"token {token_id}: uses is {uses} but {devices} devices enrolled with it"
                )
            if max_uses is not None and uses > max_uses:
                problems.append(f"token {token_id}: uses {uses} exceeds max_uses {max_uses}")
        cursor = execute(
            self.db,
            "SELECT d.id, d.token_id FROM device d LEFT JOIN token t ON t.id = d.token_id"
            " WHERE t.id IS NULL ORDER BY d.seq",
        )
        for device_id, token_id in cursor.fetchall():
            problems.append(f"device {device_id}: its token {token_id} does not exist")
        return problems

    # Tokens

    @_guarded
    def create_token(self, token: Token, audit: AuditEvent) -> Token:
        if token.uses != 0:
            raise ValueError("a new enrollment token starts with uses = 0")
        if token.max_uses is not None and token.max_uses < 0:
            raise InvalidArgumentError("max_uses must not be negative")
        T = self._t.token
        try:
            with write_transaction(self.db):
                T.insert(**_token_row(token)).execute()
                self._insert_audit(audit)
                row = T.get(T.id == token.id)
        except peewee.IntegrityError as exc:
            raise AlreadyExistsError("an enrollment token with this id already exists") from exc
        return _token(row)

    @_guarded
    def get_token(self, token_id: str) -> Token:
        row = execute(self.db, self._sql.select_token, (token_id,)).fetchone()
        if row is None:
            raise NotFoundError(_TOKEN_NOT_FOUND)
        return _token_from_tuple(row)

    @_guarded
    def list_tokens(
        self,
        *,
        now: datetime,
        state: TokenState | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        cursor: str = "",
    ) -> Page[Token]:
        """Tokens newest first; with state, only those token_state() puts in that state at now."""
        T = self._t.token
        query = T.select()
        if state is not None:
            query = query.where(token_state_condition(T, state, now))
        return _keyset_page(T, query, "tokens", page_size, cursor, _token)

    @_guarded
    def revoke_token(self, token_id: str, now: datetime, audit: AuditEvent) -> Token:
        """Revoke; revoking again keeps the first revoked_at. Devices are not touched."""
        return _token(self._revoke(self._t.token, token_id, now, audit, _TOKEN_NOT_FOUND))

    # Enrollment

    @_guarded
    def find_device_by_key(self, public_key_sha256: str) -> Device | None:
        row = execute(self.db, self._sql.select_device_by_key, (public_key_sha256,)).fetchone()
        return None if row is None else _device_from_tuple(row)

    @_guarded
    def enroll_device(self, device: Device, now: datetime, audit: AuditEvent) -> Device:
        """Consume one use of device.token_id and record the device, in one transaction.

        The conditional UPDATE is the whole guarantee that a token with max_uses N
        yields at most N devices: PostgreSQL re-checks its WHERE against the row
        as the previous writer committed it, SQLite runs writers one at a time
        (tests/store/test_store.py::test_concurrent_enrollment_respects_max_uses).
        """
        sql = self._sql
        facts = _facts_json(device.facts)
        try:
            with write_transaction(self.db):
                consumed = execute(self.db, sql.consume_use, sql.consume_use_params(device, now))
                if consumed.rowcount == 0:
                    raise TokenUnusableError("enrollment token cannot be used")
                execute(self.db, sql.insert_device, _device_values(device, facts))
                self._insert_audit(audit)
        except peewee.IntegrityError as exc:
            # The transaction rolled back, so the use was not consumed.
            raise AlreadyExistsError(_KEY_ENROLLED) from exc
        # Every column was written from device, so reading the row back would
        # only return it again; facts as the store gives them everywhere else.
        return dataclasses.replace(device, facts=_facts(facts))

    # Devices

    @_guarded
    def get_device(self, device_id: str) -> Device:
        D = self._t.device
        row = D.get_or_none(D.id == device_id)
        if row is None:
            raise NotFoundError(_DEVICE_NOT_FOUND)
        return _device(row)

    @_guarded
    def get_device_standing(self, device_id: str) -> DeviceStanding:
        """What the device gate needs, in one indexed lookup of a few short columns."""
        row = execute(self.db, self._sql.select_standing, (device_id,)).fetchone()
        if row is None:
            raise NotFoundError(_DEVICE_NOT_FOUND)
        return DeviceStanding(
            id=row[0],
            serial=row[1],
            previous_serial=row[2],
            previous_until=_time(row[3]),
            revoked_at=_time(row[4]),
            renewal_tat=_time(row[5]),
        )

    @_guarded
    def list_devices(
        self,
        *,
        token_id: str = "",
        hostname: str = "",
        state: DeviceState | None = None,
        now: datetime | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        cursor: str = "",
        budget: PageBudget[Device] | None = None,
    ) -> Page[Device]:
        """Devices newest first: all, or those of token_id, with hostname, in state at now.

        Each filter has an index (migrations v1 and v2): token_id and hostname walk
        theirs newest first; revoked ones are a partial index of their own; expired
        ones are read from the unrevoked devices' not_after index; active ones are
        most devices, found by walking the table newest first
        (tests/store/test_store.py::test_device_filters_use_their_indexes).

        With a budget, the page also ends before the device that would take it over
        budget.max_bytes (never before the first), and the cursor resumes there.
        """
        D = self._t.device
        query = D.select()
        if token_id:
            query = query.where(D.token_id == token_id)
        if hostname:
            query = query.where(D.hostname == hostname)
        if state is not None:
            if now is None:
                raise ValueError("a state filter needs now")
            query = query.where(device_state_condition(D, state, now, sqlite=is_sqlite(self.db)))
        return _keyset_page(D, query, "devices", page_size, cursor, _device, budget)

    @_guarded
    def revoke_device(self, device_id: str, now: datetime, audit: AuditEvent) -> Device:
        """Revoke; revoking again keeps the first revoked_at."""
        return _device(self._revoke(self._t.device, device_id, now, audit, _DEVICE_NOT_FOUND))

    def _revoke(
        self, model: Any, row_id: str, now: datetime, audit: AuditEvent, not_found: str
    ) -> Any:
        """Set revoked_at once and audit the call; a repeat changes nothing.

        A repeat keeps the first revoked_at, and its audit event says "already
        revoked", so the trail shows one revocation and every later attempt apart
        from it (tests/store/test_store.py::test_revoke_token_is_idempotent_and_keeps_first_time).
        """
        with write_transaction(self.db):
            changed = (
                model.update(revoked_at=now)
                .where((model.id == row_id) & model.revoked_at.is_null())
                .execute()
            )
            row = model.get_or_none(model.id == row_id)
            if row is None:
                raise NotFoundError(not_found)
            if not changed:
                detail = " ".join(filter(None, (ALREADY_REVOKED, audit.detail)))
                audit = dataclasses.replace(audit, detail=detail)
            self._insert_audit(audit)
        return row

    @_guarded
    def touch_device(self, device_id: str, now: datetime) -> None:
        """Record that the device was heard from at now (one UPDATE: heartbeats are frequent)."""
        D = self._t.device
        with write_transaction(self.db):
            if D.update(last_seen_at=now).where(D.id == device_id).execute() == 0:
                raise NotFoundError(_DEVICE_NOT_FOUND)

    @_guarded
    def renew_device(
        self,
        device_id: str,
        *,
        caller_serial: str,
        public_key_sha256: str,
        serial: str,
        certificate_pem: str,
        not_after: datetime,
        now: datetime,
        pace: RenewalPace,
        audit: AuditEvent,
    ) -> Device:
        """Swap in the device's new key and certificate, if caller_serial may still renew.

        One conditional UPDATE checks and swaps, like a token's use: the device is not
        revoked, caller_serial is its current certificate (or the previous one, while
        the current one has never been used), the new key is not the current one, and
        the renewal pace allows one more (renewal_tat, a GCRA). So however renewals
        from one certificate race, on any number of replicas, one chain survives: the
        last renewal's certificate and the one it replaced
        (tests/store/test_store.py::test_renewals_racing_from_one_certificate_leave_one_chain).

        The caller's certificate becomes previous_serial: renewing from the current
        certificate honours it until its own not_after (the row's not_after before the
        swap) or until the new one is first used (retire_previous_certificate);
        renewing from the previous one (a retry after a lost answer) keeps it as it was
        and drops the unused certificate that retry replaces. RenewalRefusedError when
        the UPDATE matched nothing; the device service re-reads the device to say why.
        """
        now_us, interval_us = to_micros(now), pace.interval // _MICROSECOND
        limit_us = now_us + interval_us * (pace.burst - 1)
        params = (
            public_key_sha256, serial, certificate_pem, to_micros(not_after),
            now_us, caller_serial,
            caller_serial,
            now_us, now_us, interval_us,
            device_id, public_key_sha256,
            caller_serial, caller_serial, now_us,
            limit_us,
        )  # fmt: skip
        D = self._t.device
        try:
            with write_transaction(self.db):
                if execute(self.db, self._sql.renew_device, params).rowcount == 0:
                    raise RenewalRefusedError("device cannot renew now")
                self._insert_audit(audit)
                row = D.get(D.id == device_id)
        except peewee.IntegrityError as exc:
            raise AlreadyExistsError(_KEY_ENROLLED) from exc
        return _device(row)

    @_guarded
    def retire_previous_certificate(self, device_id: str, serial: str) -> bool:
        """The first use of the device's current certificate serial: the previous one is refused
        from now on. False when nothing changed (retired already, or serial is no longer
        current).

        One conditional UPDATE, on the first use only (the device gate asks it when the
        standing it read still honours a previous certificate). It clears previous_until
        rather than comparing times, so that a renewal from the previous certificate racing
        with it on another replica fails its own `previous_until > now`, whatever the
        clocks say (tests/store/test_store.py::test_first_use_and_a_renewal_from_the_previous_race).
        """
        with write_transaction(self.db):
            cursor = execute(self.db, self._sql.retire_previous, (device_id, serial))
            return bool(cursor.rowcount)

    @_guarded
    def adopt_certificate(
        self,
        device_id: str,
        *,
        current_serial: str,
        serial: str,
        public_key_sha256: str,
        certificate_pem: str,
        not_after: datetime,
        audit: AuditEvent,
    ) -> bool:
        """Make a certificate the database lost (a restored backup) the device's current one.

        One conditional UPDATE: the device is not revoked and current_serial, judged
        by the caller, is still current. The certificate it replaces becomes the
        previous one, retired at once (the adopted one is in use). False when the
        UPDATE matched nothing; AlreadyExistsError when the key is another device's.
        """
        D = self._t.device
        try:
            with write_transaction(self.db):
                changed = (
                    D.update(
                        serial=serial,
                        public_key_sha256=public_key_sha256,
                        certificate_pem=certificate_pem,
                        not_after=not_after,
                        previous_serial=D.serial,
                        previous_until=None,
                    )
                    .where(
                        (D.id == device_id) & (D.serial == current_serial) & D.revoked_at.is_null()
                    )
                    .execute()
                )
                if changed:
                    self._insert_audit(audit)
        except peewee.IntegrityError as exc:
            raise AlreadyExistsError(_KEY_ENROLLED) from exc
        return bool(changed)

    # Admins

    @_guarded
    def find_admin(self, name: str) -> Admin | None:
        """The admin of that name, None if none was ever registered (one indexed lookup)."""
        A = self._t.admin
        row = A.get_or_none(A.name == name)
        return None if row is None else _admin(row)

    @_guarded
    def create_admin(self, admin: Admin, audit: AuditEvent) -> Admin:
        """Register a new admin; a name taken before, even by a revoked admin, is refused."""
        A = self._t.admin
        try:
            with write_transaction(self.db):
                A.insert(**_admin_row(admin)).execute()
                self._insert_audit(audit)
        except peewee.IntegrityError as exc:
            existing = A.get_or_none(A.name == admin.name)
            if existing is not None and existing.revoked_at is not None:
                raise AlreadyExistsError(
                    f"admin {admin.name} was revoked; a revoked admin's name is never reused"
                ) from exc
            raise AlreadyExistsError(f"admin {admin.name} already exists") from exc
        return admin

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

    # Audit trail

    @_guarded
    def record(self, event: AuditEvent) -> None:
        """Append one event to the audit trail, in a transaction of its own.

        For changes made elsewhere (a dashboard login); the Store's own writes
        record their event in the transaction that makes the change.
        """
        with write_transaction(self.db):
            self._insert_audit(event)

    @_guarded
    def list_audit_events(
        self,
        where: AuditFilter | None = None,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        cursor: str = "",
    ) -> Page[AuditEvent]:
        """Events newest first (by at, then by seq), keyset-paged, each filter optional.

        Ordered by (at, seq) rather than by seq alone so that `since` is a bound
        of the same index range the page is read from: each filter has an index
        (column, at, seq), and the unfiltered listing (at, seq), so a page reads
        about page_size rows whatever the table holds, even when few events
        match (bench/scale_bench.py; figures in bench/RESULTS.md).
        """
        size = _page_size(page_size)
        query = self._audit_query(where or AuditFilter(), _decode_audit_cursor(cursor), size + 1)
        rows = list(query.tuples())
        more = len(rows) > size
        next_cursor = _encode_audit_cursor(rows[size - 1][1], rows[size - 1][0]) if more else ""
        return Page(items=tuple(_audit_event(r) for r in rows[:size]), next_cursor=next_cursor)

    def _audit_query(self, where: AuditFilter, after: tuple[int, int] | None, limit: int) -> Any:
        """The SELECT of one page of list_audit_events (its plan is tested)."""
        A = self._t.audit_event
        query = A.select(A.seq, A.at, A.actor, A.action, A.resource, A.peer, A.detail)
        if where.actor:
            query = query.where(A.actor == where.actor)
        if where.resource:
            query = query.where(A.resource == where.resource)
        if where.action:
            query = query.where(A.action == where.action)
            if where.action != ENROLL_ACTION:
                # The action index leaves enrollments out (migration 6); SQLite reads a
                # partial index only for a query that states the index's condition.
                query = query.where(A.action != ENROLL_ACTION)
        if where.since is not None:
            query = query.where(A.at >= where.since)
        if after is not None:
            at, seq = after
            # The same as (at, seq) < (cursor), written so both databases read it
            # as a range on at within the index.
            query = query.where((A.at <= at) & ((A.at < at) | (A.seq < seq)))
        return query.order_by(A.at.desc(), A.seq.desc()).limit(limit)

    def list_audit(self, *, resource: str = "", limit: int = DEFAULT_PAGE_SIZE) -> list[AuditEvent]:
        """The newest events first, all or those about one resource (e.g. "token/<id>")."""
        page = self.list_audit_events(AuditFilter(resource=resource), page_size=limit)
        return list(page.items)

    def _insert_audit(self, event: AuditEvent) -> None:
        execute(self.db, self._sql.insert_audit, _audit_values(event))

    # Counts

    @_guarded
    def state_counts(self, now: datetime) -> StateCounts:
        """How many tokens and devices are in each state at now; every state is present.

        Built to be asked often (each metrics scrape) of a database with a million
        devices without reading every device row: tokens are counted with
        token_state_condition, the SQL of the state filter; all devices are the
        sum of the tokens' uses (a use is consumed in the transaction that records
        its device, and check_integrity holds them equal); revoked and expired
        devices are counted on the partial indexes of migration 2, so their cost
        grows with those devices alone
        (tests/store/test_store.py::test_state_counts_agree_with_the_policies,
        ::test_state_counts_read_indexes_not_the_device_table).
        """
        sql = self._count_sql
        *by_state, devices = execute(self.db, sql.tokens, sql.tokens_params(now)).fetchone()
        revoked, expired = (
            int(n) for n in execute(self.db, sql.devices, (to_micros(now),)).fetchone()
        )
        return StateCounts(
            tokens={state: int(n) for state, n in zip(TokenState, by_state, strict=True)},
            devices={
                DeviceState.ACTIVE: int(devices) - revoked - expired,
                DeviceState.EXPIRED: expired,
                DeviceState.REVOKED: revoked,
            },
        )

    @_guarded
    def enrollments_per_day(self, since: datetime) -> dict[date, int]:
        """Devices enrolled at or after since, counted per UTC day (days without any absent)."""
        rows = execute(
            self.db,
            f"SELECT enrolled_at / {_DAY_MICROS}, COUNT(*) FROM device"  # noqa: S608 - a constant
            f" WHERE enrolled_at >= {self.db.param} GROUP BY 1",
            (to_micros(since),),
        ).fetchall()
        epoch = datetime(1970, 1, 1, tzinfo=UTC).date()
        return {epoch + timedelta(days=int(day)): int(count) for day, count in rows}

    # Dashboard login codes and sessions

    @_guarded
    def create_dashboard_login(self, login: DashboardLogin, audit: AuditEvent) -> None:
        L = self._t.dashboard_login
        with write_transaction(self.db):
            L.insert(
                code_hash=bytes(login.code_hash),
                admin=login.admin,
                created_at=login.created_at,
                expires_at=login.expires_at,
                session_limit=login.session_limit,
                used_at=login.used_at,
            ).execute()
            self._insert_audit(audit)

    @_guarded
    def get_dashboard_login(self, code_hash: bytes) -> DashboardLogin | None:
        L = self._t.dashboard_login
        row = L.get_or_none(L.code_hash == bytes(code_hash))
        return None if row is None else _dashboard_login(row)

    @_guarded
    def redeem_dashboard_login(
        self,
        code_hash: bytes,
        now: datetime,
        open_session: Callable[[DashboardLogin], tuple[DashboardSession, AuditEvent]],
    ) -> DashboardSession | None:
        """Spend the login code and start the session open_session makes, in one transaction.

        The code is spent by one conditional UPDATE, as a token's use is: of any
        number of calls with one code, on any replica, one starts a session
        (tests/store/test_dashboard.py::test_a_login_code_starts_one_session_under_concurrency).
        None when the code is unknown, spent or expired.
        """
        L, S = self._t.dashboard_login, self._t.dashboard_session
        with write_transaction(self.db):
            spent = (
                L.update(used_at=now)
                .where(
                    (L.code_hash == bytes(code_hash)) & L.used_at.is_null() & (L.expires_at > now)
                )
                .execute()
            )
            if spent == 0:
                return None
            session, audit = open_session(_dashboard_login(L.get(L.code_hash == bytes(code_hash))))
            S.insert(
                key_hash=bytes(session.key_hash),
                admin=session.admin,
                created_at=session.created_at,
                last_seen_at=session.last_seen_at,
                expires_at=session.expires_at,
            ).execute()
            self._insert_audit(audit)
        return session

    @_guarded
    def get_dashboard_session(self, key_hash: bytes) -> DashboardSession | None:
        S = self._t.dashboard_session
        row = S.get_or_none(S.key_hash == bytes(key_hash))
        return None if row is None else _dashboard_session(row)

    @_guarded
    def touch_dashboard_session(self, key_hash: bytes, now: datetime) -> None:
        """Record the session's latest use (its idle time counts from here)."""
        S = self._t.dashboard_session
        with write_transaction(self.db):
            S.update(last_seen_at=now).where(
                (S.key_hash == bytes(key_hash)) & (S.last_seen_at < now)
            ).execute()

    @_guarded
    def end_dashboard_session(
        self, key_hash: bytes, audit: Callable[[DashboardSession], AuditEvent] | None = None
    ) -> DashboardSession | None:
        """Delete the session (and record audit(session)); None when there was none."""
        S = self._t.dashboard_session
        with write_transaction(self.db):
            row = S.get_or_none(S.key_hash == bytes(key_hash))
            if row is None:
                return None
            session = _dashboard_session(row)
            S.delete().where(S.key_hash == bytes(key_hash)).execute()
            if audit is not None:
                self._insert_audit(audit(session))
        return session

    @_guarded
    def end_dashboard_sessions_of(self, admin: str) -> int:
        """Delete every session of admin; how many there were."""
        S = self._t.dashboard_session
        with write_transaction(self.db):
            return int(S.delete().where(S.admin == admin).execute())

    @_guarded
    def count_dashboard_sessions(self, now: datetime, idle_since: datetime) -> int:
        """Sessions neither expired at now nor idle since idle_since (for metrics)."""
        S = self._t.dashboard_session
        return int(S.select().where((S.expires_at > now) & (S.last_seen_at > idle_since)).count())

    @_guarded
    def purge_dashboard_credentials(self, now: datetime, idle_since: datetime) -> None:
        """Forget login codes past their expiry and sessions ended by time (expired or idle)."""
        L, S = self._t.dashboard_login, self._t.dashboard_session
        with write_transaction(self.db):
            L.delete().where(L.expires_at <= now).execute()
            S.delete().where((S.expires_at <= now) | (S.last_seen_at <= idle_since)).execute()


def token_state_condition(T: Any, state: TokenState, now: datetime) -> Any:
    """SQL that holds exactly when tokens.token_state() gives state at now.

    First match wins, as there: Revoked > Expired > Exhausted > Active, and
    expires_at == now is expired
    (tests/store/test_store.py::test_state_filter_agrees_with_token_state).
    """
    to_micros(now)  # rejects a naive now here rather than deep inside peewee
    not_revoked = T.revoked_at.is_null()
    expired = T.expires_at.is_null(False) & (T.expires_at <= now)
    not_expired = T.expires_at.is_null() | (T.expires_at > now)
    exhausted = T.max_uses.is_null(False) & (T.uses >= T.max_uses)
    uses_left = T.max_uses.is_null() | (T.uses < T.max_uses)
    if state is TokenState.REVOKED:
        return T.revoked_at.is_null(False)
    if state is TokenState.EXPIRED:
        return not_revoked & expired
    if state is TokenState.EXHAUSTED:
        return not_revoked & not_expired & exhausted
    return not_revoked & not_expired & uses_left


def device_state_condition(
    D: Any, state: DeviceState, now: datetime, *, sqlite: bool = False
) -> Any:
    """SQL that holds exactly when devices.policy.device_state() gives state at now.

    Revoked > Expired (not_after <= now) > Active
    (tests/store/test_store.py::test_device_state_filter_agrees_with_device_state).
    """
    to_micros(now)  # rejects a naive now here rather than deep inside peewee
    if state is DeviceState.REVOKED:
        return D.revoked_at.is_null(False)
    expired = D.revoked_at.is_null() & (D.not_after <= now)
    if state is DeviceState.EXPIRED and sqlite:
        # SQLite, asked for the newest first, would rather walk the whole table in seq
        # order than read the few expired rows from their index and sort them; for a
        # subquery it reads the index. PostgreSQL reads the index for the plain
        # condition, but walks the table to merge-join the subquery
        # (bench/device_filters.py).
        E = D.alias()
        return D.seq.in_(E.select(E.seq).where(E.revoked_at.is_null() & (E.not_after <= now)))
    if state is DeviceState.EXPIRED:
        return expired
    return D.revoked_at.is_null() & (D.not_after > now)


_TOKEN_COLUMNS = (
    "id", "label", "secret_hash", "max_uses", "uses", "expires_at", "created_at", "created_by",
    "revoked_at", "last_used_at",
)  # fmt: skip
_DEVICE_COLUMNS = (
    "id", "hostname", "token_id", "public_key_sha256", "serial", "certificate_pem", "not_after",
    "enrolled_at", "last_seen_at", "revoked_at", "peer", "facts",
)  # fmt: skip
_AUDIT_COLUMNS = ("at", "actor", "action", "resource", "peer", "detail")
# Stand-ins compiled into the consume-use UPDATE, replaced by real values per call.
_TOKEN_ID_SLOT = "\x00token-id"  # noqa: S105 - a placeholder, not a secret
_NOW_SLOT = datetime(2999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


# Store.renew_device's check-and-swap; its parameters are listed there, in this order.
_RENEW_DEVICE = (
    "UPDATE device SET"
    " public_key_sha256 = ?, serial = ?, certificate_pem = ?, not_after = ?,"
    " last_seen_at = ?, previous_serial = ?,"
    # In SET, not_after is the row's before the swap: the caller's own, when it is current.
    " previous_until = CASE WHEN serial = ? THEN not_after ELSE previous_until END,"
    " renewal_tat = CASE WHEN renewal_tat IS NULL OR renewal_tat < ? THEN ? ELSE renewal_tat END"
    " + ?"
    " WHERE id = ? AND revoked_at IS NULL AND public_key_sha256 <> ?"
    " AND (serial = ? OR (previous_serial = ? AND previous_until > ?))"
    " AND (renewal_tat IS NULL OR renewal_tat <= ?)"
)


def _columns(names: Sequence[str]) -> str:
    return ", ".join(f'"{name}"' for name in names)


@dataclasses.dataclass(frozen=True)
class _EnrollmentSql:
    """The enrollment path's statements, and the device gate's, made once per Store.

    peewee builds a query's SQL anew on every call, and on the enrollment path that
    cost more CPU than the database itself (bench/profile_enroll.py, bench/RESULTS.md);
    these are built once and only their parameters change per call.
    """

    select_token: str
    select_device_by_key: str
    select_standing: str
    renew_device: str
    retire_previous: str
    consume_use: str
    consume_use_template: tuple[object, ...]
    insert_device: str
    insert_audit: str

    @classmethod
    def build(cls, db: peewee.Database, tables: Tables) -> _EnrollmentSql:
        T, p = tables.token, db.param
        # The UPDATE comes from token_state_condition itself, so the SQL that
        # consumes a use and the state every list shows cannot drift apart.
        usable = token_state_condition(T, TokenState.ACTIVE, _NOW_SLOT)
        consume_sql, template = (
            T.update(uses=T.uses + 1, last_used_at=_NOW_SLOT)
            .where((T.id == _TOKEN_ID_SLOT) & usable)
            .sql()
        )
        # Only constant column names are formatted in; every value is a parameter.
        token_columns, device_columns = _columns(_TOKEN_COLUMNS), _columns(_DEVICE_COLUMNS)
        device_values = ", ".join([p] * len(_DEVICE_COLUMNS))
        audit_values = ", ".join([p] * len(_AUDIT_COLUMNS))
        return cls(
            select_token=f"SELECT {token_columns} FROM token WHERE id = {p}",  # noqa: S608
            select_device_by_key=(
                f"SELECT {device_columns} FROM device WHERE public_key_sha256 = {p}"  # noqa: S608
            ),
            # The device gate's one lookup, on every device call: no PEM, no facts.
            select_standing=(
                "SELECT id, serial, previous_serial, previous_until, revoked_at,"  # noqa: S608
                f" renewal_tat FROM device WHERE id = {p}"
            ),
            renew_device=_RENEW_DEVICE.replace("?", p),
            retire_previous=(
                "UPDATE device SET previous_until = NULL"  # noqa: S608
                f" WHERE id = {p} AND serial = {p} AND previous_until IS NOT NULL"
            ),
            consume_use=consume_sql,
            consume_use_template=tuple(template),
            insert_device=f"INSERT INTO device ({device_columns}) VALUES ({device_values})",  # noqa: S608
            insert_audit=(
                f"INSERT INTO audit_event ({_columns(_AUDIT_COLUMNS)}) VALUES ({audit_values})"  # noqa: S608
            ),
        )

    def consume_use_params(self, device: Device, now: datetime) -> list[object]:
        now_micros, slot_micros = to_micros(now), to_micros(_NOW_SLOT)
        return [
            device.token_id
            if value == _TOKEN_ID_SLOT
            else now_micros
            if value == slot_micros
            else value
            for value in self.consume_use_template
        ]


@dataclasses.dataclass(frozen=True)
class _CountSql:
    """state_counts' statements, made once per Store.

    Building them with peewee at each call took a hundred times longer than
    running them on a small database (6 ms against 0.07 ms).
    """

    tokens: str
    tokens_template: tuple[object, ...]
    devices: str

    @classmethod
    def build(cls, db: peewee.Database, tables: Tables) -> _CountSql:
        T = tables.token
        by_state = [
            peewee.fn.COALESCE(
                peewee.fn.SUM(
                    peewee.Case(None, ((token_state_condition(T, state, _NOW_SLOT), 1),), 0)
                ),
                0,
            )
            for state in TokenState
        ]
        tokens_sql, template = T.select(
            *by_state, peewee.fn.COALESCE(peewee.fn.SUM(T.uses), 0)
        ).sql()
        p = db.param
        return cls(
            tokens=tokens_sql,
            tokens_template=tuple(template),
            # Each WHERE implies its partial index's own, so the planner counts on it.
            devices=(
                "SELECT (SELECT COUNT(*) FROM device WHERE revoked_at IS NOT NULL), (SELECT"  # noqa: S608
                f" COUNT(*) FROM device WHERE revoked_at IS NULL AND not_after <= {p})"
            ),
        )

    def tokens_params(self, now: datetime) -> list[object]:
        now_micros, slot_micros = to_micros(now), to_micros(_NOW_SLOT)
        return [now_micros if value == slot_micros else value for value in self.tokens_template]


def _micros(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def _time(value: int | None) -> datetime | None:
    return None if value is None else from_micros(int(value))


def _device_values(device: Device, facts_json: str) -> tuple[object, ...]:
    return (
        device.id,
        device.hostname,
        device.token_id,
        device.public_key_sha256,
        device.serial,
        device.certificate_pem,
        to_micros(device.not_after),
        to_micros(device.enrolled_at),
        _micros(device.last_seen_at),
        _micros(device.revoked_at),
        device.peer,
        facts_json,
    )


def _audit_values(event: AuditEvent) -> tuple[object, ...]:
    return (
        to_micros(event.at),
        event.actor,
        event.action,
        event.resource,
        event.peer,
        event.detail,
    )


def _token_from_tuple(row: Sequence[Any]) -> Token:
    """A Token from a row of _TOKEN_COLUMNS."""
    return Token(
        id=row[0],
        label=row[1],
        secret_hash=bytes(row[2]),  # psycopg2 hands BYTEA back as memoryview
        max_uses=row[3],
        uses=row[4],
        expires_at=_time(row[5]),
        created_at=from_micros(int(row[6])),
        created_by=row[7],
        revoked_at=_time(row[8]),
        last_used_at=_time(row[9]),
    )


def _device_from_tuple(row: Sequence[Any]) -> Device:
    """A Device from a row of _DEVICE_COLUMNS."""
    return Device(
        id=row[0],
        hostname=row[1],
        token_id=row[2],
        public_key_sha256=row[3],
        serial=row[4],
        certificate_pem=row[5],
        not_after=from_micros(int(row[6])),
        enrolled_at=from_micros(int(row[7])),
        last_seen_at=_time(row[8]),
        revoked_at=_time(row[9]),
        peer=row[10],
        facts=_facts(row[11]),
    )


def _page_size(requested: int) -> int:
    if requested <= 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def _encode_cursor(kind: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, kind: str) -> int | None:
    """The seq a cursor points after, None for the first page; InvalidArgumentError if forged."""
    if not cursor:
        return None
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        match = _CURSOR.fullmatch(raw.decode("ascii"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        match = None
    # A seq beyond BIGINT cannot come from us; SQLite would fail to bind it (INTERNAL)
    # (tests/robust/test_hostile_input.py::test_admin_list_calls_with_hostile_paging).
    if match is None or match.group(1) != kind or int(match.group(2)) > _MAX_SEQ:
        raise InvalidArgumentError("page_token is invalid")
    return int(match.group(2))


@dataclasses.dataclass(frozen=True)
class PageBudget(Generic[R]):
    """At most max_bytes of items in one page, each item counted by size_of."""

    max_bytes: int
    size_of: Callable[[R], int]


def _keyset_page(
    model: Any,
    query: Any,
    kind: str,
    page_size: int,
    cursor: str,
    convert: Callable[[Any], R],
    budget: PageBudget[R] | None = None,
) -> Page[R]:
    """One page of query, newest first, after the cursor's seq; one row more says "more"."""
    size = _page_size(page_size)
    after = _decode_cursor(cursor, kind)
    if after is not None:
        query = query.where(model.seq < after)
    rows = list(query.order_by(model.seq.desc()).limit(size + 1))
    items = [convert(r) for r in rows[:size]]
    if budget is not None:
        spent = 0
        for i, item in enumerate(items):
            spent += budget.size_of(item)
            if spent > budget.max_bytes and i > 0:
                items, rows = items[:i], rows[: i + 1]  # rows[i] now says "more"
                size = i
                break
    more = len(rows) > size
    next_cursor = _encode_cursor(kind, rows[size - 1].seq) if more else ""
    return Page(items=tuple(items), next_cursor=next_cursor)


def _encode_audit_cursor(at: Any, seq: int) -> str:
    micros = at if isinstance(at, int) else to_micros(at)
    return base64.urlsafe_b64encode(f"audit:{micros}:{seq}".encode()).decode().rstrip("=")


def _decode_audit_cursor(cursor: str) -> tuple[int, int] | None:
    """(at in microseconds, seq) a cursor points after; None for the first page."""
    if not cursor:
        return None
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        match = _AUDIT_CURSOR.fullmatch(raw.decode("ascii"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        match = None
    if match is None:
        raise InvalidArgumentError("page_token is invalid")
    at, seq = int(match.group(1)), int(match.group(2))
    # Values beyond BIGINT cannot come from us, and the drivers would fail to bind them.
    if not _MIN_MICROS <= at <= _MAX_SEQ or seq > _MAX_SEQ:
        raise InvalidArgumentError("page_token is invalid")
    return at, seq


def _audit_event(row: Sequence[Any]) -> AuditEvent:
    """An AuditEvent from (seq, at, actor, action, resource, peer, detail)."""
    at = row[1] if isinstance(row[1], datetime) else from_micros(int(row[1]))
    return AuditEvent(
        at=at, actor=row[2], action=row[3], resource=row[4], peer=row[5], detail=row[6]
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


def _token_row(token: Token) -> dict[str, Any]:
    return {
        "id": token.id,
        "label": token.label,
        "secret_hash": bytes(token.secret_hash),
        "max_uses": token.max_uses,
        "uses": token.uses,
        "expires_at": token.expires_at,
        "created_at": token.created_at,
        "created_by": token.created_by,
        "revoked_at": token.revoked_at,
        "last_used_at": token.last_used_at,
    }


def _token(row: Any) -> Token:
    return Token(
        id=row.id,
        label=row.label,
        secret_hash=bytes(row.secret_hash),  # psycopg2 hands BYTEA back as memoryview
        max_uses=row.max_uses,
        uses=row.uses,
        expires_at=row.expires_at,
        created_at=row.created_at,
        created_by=row.created_by,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def _dashboard_login(row: Any) -> DashboardLogin:
    return DashboardLogin(
        code_hash=bytes(row.code_hash),
        admin=row.admin,
        created_at=row.created_at,
        expires_at=row.expires_at,
        session_limit=row.session_limit,
        used_at=row.used_at,
    )


def _dashboard_session(row: Any) -> DashboardSession:
    return DashboardSession(
        key_hash=bytes(row.key_hash),
        admin=row.admin,
        created_at=row.created_at,
        last_seen_at=row.last_seen_at,
        expires_at=row.expires_at,
    )


def _device_row(device: Device) -> dict[str, Any]:
    return {
        "id": device.id,
        "hostname": device.hostname,
        "token_id": device.token_id,
        "public_key_sha256": device.public_key_sha256,
        "serial": device.serial,
        "certificate_pem": device.certificate_pem,
        "not_after": device.not_after,
        "enrolled_at": device.enrolled_at,
        "last_seen_at": device.last_seen_at,
        "revoked_at": device.revoked_at,
        "peer": device.peer,
        "facts": _facts_json(device.facts),
    }


def _facts_json(facts: Mapping[str, str]) -> str:
    return json.dumps(dict(facts), sort_keys=True, separators=(",", ":"))


def _facts(text: str) -> dict[str, str]:
    value = json.loads(text or "{}")
    return {str(k): str(v) for k, v in value.items()}


def _device(row: Any) -> Device:
    return Device(
        id=row.id,
        hostname=row.hostname,
        token_id=row.token_id,
        public_key_sha256=row.public_key_sha256,
        serial=row.serial,
        certificate_pem=row.certificate_pem,
        not_after=row.not_after,
        enrolled_at=row.enrolled_at,
        peer=row.peer,
        facts=_facts(row.facts),
        last_seen_at=row.last_seen_at,
        revoked_at=row.revoked_at,
    )
