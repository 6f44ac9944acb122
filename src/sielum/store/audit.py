"""The audit trail in SQL: events appended, and read back newest first, filtered and paged."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sielum.errors import InvalidArgumentError
from sielum.model import ENROLL_ACTION, AuditEvent, AuditFilter, Page
from sielum.store.base import _MAX_SEQ, DEFAULT_PAGE_SIZE, StoreBase, _guarded, _page_size
from sielum.store.database import write_transaction
from sielum.store.models import from_micros, to_micros

_MIN_MICROS = -(2**63)

_AUDIT_CURSOR = re.compile(r"^audit:(-?[0-9]{1,19}):([1-9][0-9]{0,18})$")


class AuditStore(StoreBase):
    """The audit trail; the other parts append to it with StoreBase._insert_audit."""

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
