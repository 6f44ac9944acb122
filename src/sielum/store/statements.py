"""Statements the Store builds once rather than per call, and the token state SQL they share."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import peewee

from sielum.model import Device, TokenState
from sielum.store.database import is_sqlite
from sielum.store.models import Tables, to_micros


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


_TOKEN_COLUMNS = (
    "id", "label", "secret_hash", "max_uses", "uses", "expires_at", "created_at", "created_by",
    "revoked_at", "last_used_at", "policy", "ephemeral_after",
)  # fmt: skip
_DEVICE_COLUMNS = (
    "id", "hostname", "token_id", "public_key_sha256", "serial", "certificate_pem", "not_after",
    "enrolled_at", "last_seen_at", "revoked_at", "peer", "facts", "tags",
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


# The event a change of a device's standing appends, read from the device row as the
# change left it: a revoked device carries no serial; previous_serial only while the
# previous certificate is still honoured (devices/policy.py::is_honoured). Parameters:
# sequence, at, kind, device id.
_EVENT_COLUMNS = (
    "INSERT INTO device_event"
    " (sequence, at, kind, device_id, serial, previous_serial, previous_until, hostname, tags)"
)
_EVENT_STANDING = (
    " CASE WHEN revoked_at IS NULL THEN serial ELSE '' END,"
    " CASE WHEN revoked_at IS NULL AND previous_until IS NOT NULL"
    " THEN COALESCE(previous_serial, '') ELSE '' END,"
    " CASE WHEN revoked_at IS NULL AND previous_serial IS NOT NULL THEN previous_until END,"
    " hostname, tags"
)
_INSERT_DEVICE_EVENT = (
    f"{_EVENT_COLUMNS} SELECT ?, ?, ?, id,{_EVENT_STANDING} FROM device WHERE id = ?"  # noqa: S608
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
    advance_event_head: str
    insert_device_event: str
    advance_event_head_by: str
    param: str
    # A batch's statements (store/devices.py::enroll_devices), by the batch's size.
    batches: dict[int, _BatchSql] = dataclasses.field(default_factory=dict, compare=False)

    def batch(self, size: int) -> _BatchSql:
        """The statements that write the rows of size enrollments at once (made once per size)."""
        statements = self.batches.get(size)
        if statements is None:
            statements = self.batches[size] = _BatchSql.build(self.param, size)
        return statements

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
            # SQLite takes the row id as the sequence (migrations._v9_device_events).
            advance_event_head=(
                ""
                if is_sqlite(db)
                else "UPDATE event_head SET sequence = sequence + 1 WHERE id = 1 RETURNING sequence"
            ),
            insert_device_event=_INSERT_DEVICE_EVENT.replace("?", p),
            advance_event_head_by=(
                ""
                if is_sqlite(db)
                else f"UPDATE event_head SET sequence = sequence + {p} WHERE id = 1"  # noqa: S608
                " RETURNING sequence"
            ),
            param=p,
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
class _BatchSql:
    """One statement per table for the rows of a batch of enrollments, after their devices.

    The enrollments' certificates, audit events and device events, each table in one
    multi-row INSERT rather than one INSERT per enrollment.
    """

    insert_certificates: str
    insert_audits: str
    insert_events: str

    @classmethod
    def build(cls, p: str, size: int) -> _BatchSql:
        ids = ", ".join([p] * size)
        audit_row = "(" + ", ".join([p] * len(_AUDIT_COLUMNS)) + ")"
        event_rows = ", ".join([f"({p}, {p}, {p}, {p})"] * size)
        # Only placeholders and constant names are formatted in; values are parameters.
        return cls(
            insert_certificates=(
                "INSERT INTO device_certificate (serial, device_id, not_after)"  # noqa: S608
                f" SELECT serial, id, not_after FROM device WHERE id IN ({ids})"
                " ON CONFLICT (serial) DO NOTHING"
            ),
            insert_audits=(
                f"INSERT INTO audit_event ({_columns(_AUDIT_COLUMNS)})"  # noqa: S608
                f" VALUES {', '.join([audit_row] * size)}"
            ),
            # The event of each device as its own INSERT would read it; the CTE's column
            # names are none of device's, so the standing's columns stay unambiguous.
            insert_events=(
                f"WITH e (e_sequence, e_at, e_kind, e_device) AS (VALUES {event_rows})"  # noqa: S608
                f" {_EVENT_COLUMNS} SELECT e_sequence, e_at, e_kind, id,{_EVENT_STANDING}"
                " FROM e JOIN device ON device.id = e_device"
            ),
        )


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
