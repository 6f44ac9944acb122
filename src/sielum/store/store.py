"""The Store: tokens, devices, admins and the audit trail in SQL, as sielum.model dataclasses."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from playhouse.pool import PooledDatabase

from sielum.model import (
    AuditEvent,
    DashboardLogin,
    DashboardSession,
    DeviceState,
    StateCounts,
    TokenState,
)
from sielum.store import migrations
from sielum.store.audit import AuditStore
from sielum.store.base import (
    ALREADY_REVOKED,
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    PageBudget,
    StoreBase,
    _guarded,
)
from sielum.store.database import connect, execute, is_sqlite, write_transaction
from sielum.store.devices import DeviceStore, device_state_condition
from sielum.store.identities import IdentityStore
from sielum.store.models import to_micros
from sielum.store.statements import token_state_condition
from sielum.store.tokens import TokenStore

_DAY_MICROS = 86_400_000_000


class Store(TokenStore, DeviceStore, IdentityStore, AuditStore, StoreBase):
    """All storage of Sielum. Safe to call from many threads at once.

    On SQLite each thread keeps its own connection; on PostgreSQL each call
    borrows one from the pool and gives it back. Every write is one
    transaction, so a call either happens entirely or not at all.
    """

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


__all__ = [
    "ALREADY_REVOKED",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "PageBudget",
    "Store",
    "device_state_condition",
    "token_state_condition",
]
