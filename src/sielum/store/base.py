"""The Store's shared base: the database, the guard around each call, paging and revoking."""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import functools
import logging
import re
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import peewee
import psycopg2
from playhouse.pool import MaxConnectionsExceeded, PooledDatabase

from sielum.errors import InvalidArgumentError, NotFoundError, UnavailableError
from sielum.model import AuditEvent, DeviceEventKind, Page
from sielum.store.database import (
    PreparedRead,
    ReconnectingPostgresqlDatabase,
    describe_error,
    execute,
    is_unavailable,
    write_transaction,
)
from sielum.store.models import Tables, bind_tables, from_micros, to_micros
from sielum.store.statements import _CountSql, _EnrollmentSql

log = logging.getLogger("sielum.store")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

# The audit detail of a revoke that found the token, device, admin or service revoked already.
ALREADY_REVOKED = "already revoked"
_MAX_SEQ = 2**63 - 1

_CURSOR = re.compile(r"^(tokens|devices|admins|services|requests):([1-9][0-9]{0,18})$")

P = ParamSpec("P")
R = TypeVar("R")
# The part of the Store a method belongs to: _guarded keeps its type.
S = TypeVar("S", bound="StoreBase")

# The drivers' errors that mean "connection trouble", when they escape peewee unwrapped.
_RAW_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    sqlite3.OperationalError,
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
)


_CONNECTION_ERRORS = (
    peewee.OperationalError,
    peewee.InterfaceError,
    MaxConnectionsExceeded,
    *_RAW_DRIVER_ERRORS,
)


def as_unavailable(exc: BaseException, where: str) -> UnavailableError | None:
    """UnavailableError, logged, for an error that means "database unreachable"; None for a bug.

    peewee wraps the driver's errors only while a statement executes; reading the
    rows afterwards raises the driver's own, e.g. psycopg2's "cursor already
    closed" when the connection died in between (seen with PostgreSQL
    unreachable). Those are judged as if peewee had wrapped them
    (tests/robust/test_crashes.py::test_ok_connection_lost_while_reading_rows).
    The cause is logged (the driver's message never holds a password); the
    client gets only the generic message.
    """
    if isinstance(exc, _RAW_DRIVER_ERRORS):
        wrapped = peewee.OperationalError(exc)
        wrapped.__context__ = exc  # where peewee's own wrapping leaves the cause
        exc = wrapped
    if not is_unavailable(exc):
        return None
    log.warning("database unavailable in %s: %s", where, describe_error(exc))
    return UnavailableError("database unavailable, try again")


def _guarded(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Run a Store method on a connection and turn "database unreachable" into UnavailableError.

    Other database errors are bugs and propagate as they are (as_unavailable).
    """

    def wrapper(store: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            with store._connection():
                return method(store, *args, **kwargs)
        except _CONNECTION_ERRORS as exc:
            unavailable = as_unavailable(exc, method.__name__)
            if unavailable is None:
                raise
            raise unavailable from exc

    functools.update_wrapper(wrapper, method)
    return wrapper


class StoreBase:
    """The database, and the helpers every part of the Store calls; Store combines the parts.

    Each part (TokenStore, DeviceStore, ...) is a subclass of this one, holding the
    methods of what it stores. They share one database and its prebuilt statements,
    so that a method of one part writes its audit event, a row of another, in the
    transaction that makes the change.
    """

    def __init__(self, db: peewee.Database) -> None:
        self.db = db
        self._t: Tables = bind_tables(db)
        self._pooled = isinstance(db, PooledDatabase)
        self._sql = _EnrollmentSql.build(db, self._t)
        self._count_sql = _CountSql.build(db, self._t)
        # PostgreSQL: the device gate's lookup, on connections of its own (PreparedRead).
        self._standing_read = (
            PreparedRead(db, "sielum_standing", self._sql.select_standing)
            if isinstance(db, ReconnectingPostgresqlDatabase)
            else None
        )

    def _connection(self) -> contextlib.AbstractContextManager[Any]:
        if self._pooled:
            return self.db.connection_context()
        # SQLite: the thread's connection stays open between calls (peewee opens
        # it on first use); opening a file and setting pragmas per call would cost.
        return contextlib.nullcontext()

    def _revoke(
        self,
        model: Any,
        row_id: str,
        now: datetime,
        audit: AuditEvent,
        not_found: str,
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

    def _insert_audit(self, event: AuditEvent) -> None:
        execute(self.db, self._sql.insert_audit, _audit_values(event))

    def _record_device_event(self, kind: DeviceEventKind, device_id: str, now: datetime) -> int:
        """Append the event of a change to device_id, made in this transaction; its sequence.

        Called as the transaction's last statements: the UPDATE of event_head locks that
        one row until COMMIT, so writers of events commit one after the other in
        sequence order, on every replica, and a reader never sees sequence n+1 before n
        (tests/store/test_events.py::test_replicas_commit_events_in_sequence_order).
        The lock is held for the two statements and the commit, not for the change.
        """
        if not self._sql.advance_event_head:  # SQLite: the row id is the sequence
            cursor = execute(
                self.db, self._sql.insert_device_event, (None, to_micros(now), int(kind), device_id)
            )
            return int(cursor.lastrowid)
        sequence = int(execute(self.db, self._sql.advance_event_head).fetchone()[0])
        execute(
            self.db,
            self._sql.insert_device_event,
            (sequence, to_micros(now), int(kind), device_id),
        )
        return sequence

    def _record_device_events(
        self, kind: DeviceEventKind, changes: Sequence[tuple[str, datetime]]
    ) -> None:
        """_record_device_event for several devices changed in this transaction, in one INSERT.

        Called as the transaction's last statements, as that one is: on PostgreSQL one
        UPDATE of event_head takes a run of len(changes) sequences, so the events stay
        consecutive and commit in sequence order
        (tests/store/test_group_commit.py::test_replicas_enrolling_in_batches_keep_events_in_order).
        """
        statements = self._sql.batch(len(changes))
        params: list[object] = []
        if not self._sql.advance_event_head_by:  # SQLite: the row ids are the sequences
            for device_id, at in changes:
                params += (None, to_micros(at), int(kind), device_id)
        else:
            last = execute(self.db, self._sql.advance_event_head_by, (len(changes),)).fetchone()[0]
            first = int(last) - len(changes) + 1
            for offset, (device_id, at) in enumerate(changes):
                params += (first + offset, to_micros(at), int(kind), device_id)
        execute(self.db, statements.insert_events, params)

    def _insert_audits(self, events: Sequence[AuditEvent]) -> None:
        """_insert_audit for several events, in one INSERT."""
        params = [value for event in events for value in _audit_values(event)]
        execute(self.db, self._sql.batch(len(events)).insert_audits, params)


def _micros(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def _time(value: int | None) -> datetime | None:
    return None if value is None else from_micros(int(value))


def _audit_values(event: AuditEvent) -> tuple[object, ...]:
    return (
        to_micros(event.at),
        event.actor,
        event.action,
        event.resource,
        event.peer,
        event.detail,
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
    *,
    key: Any = None,
) -> Page[R]:
    """One page of query, newest first, after the cursor's seq; one row more says "more".

    key is the column that orders the page, model.seq or a column the query joined equal
    to it (an index the query walks in that order)."""
    size = _page_size(page_size)
    key = model.seq if key is None else key
    after = _decode_cursor(cursor, kind)
    if after is not None:
        query = query.where(key < after)
        if key is not model.seq:
            # Said of model.seq too: PostgreSQL carries an equality across a join, not a
            # bound, and would merge-join from the newest row instead of the cursor.
            query = query.where(model.seq < after)
    rows = list(query.order_by(key.desc()).limit(size + 1))
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
