"""The Store: tokens, devices, admins and the audit trail in SQL, as sielum.model dataclasses."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from playhouse.pool import PooledDatabase

from sielum.model import DeviceState, StateCounts, TokenState
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
from sielum.store.database import connect, execute, is_sqlite
from sielum.store.devices import DeviceStore, device_state_condition
from sielum.store.identities import IdentityStore
from sielum.store.models import to_micros
from sielum.store.sessions import SessionStore
from sielum.store.statements import token_state_condition
from sielum.store.tokens import TokenStore

_DAY_MICROS = 86_400_000_000


class Store(TokenStore, DeviceStore, IdentityStore, AuditStore, SessionStore, StoreBase):
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


__all__ = [
    "ALREADY_REVOKED",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "PageBudget",
    "Store",
    "device_state_condition",
    "token_state_condition",
]
