"""The Store: all of Sielum's storage in one class, made of one part per thing it stores."""

from __future__ import annotations

from playhouse.pool import PooledDatabase

from sielum.store import migrations
from sielum.store.audit import AuditStore
from sielum.store.base import (
    ALREADY_REVOKED,
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    PageBudget,
    _guarded,
)
from sielum.store.certificates import CertificateStore
from sielum.store.counts import CountStore
from sielum.store.database import connect, execute, is_sqlite
from sielum.store.devices import (
    DeviceStore,
    device_hostname_prefix_condition,
    device_state_condition,
)
from sielum.store.events import EventStore
from sielum.store.identities import IdentityStore
from sielum.store.requests import EnrollmentRequestStore, RequestDecidedError
from sielum.store.sessions import SessionStore
from sielum.store.statements import token_state_condition
from sielum.store.tokens import TokenStore


class Store(
    TokenStore,
    DeviceStore,
    EnrollmentRequestStore,
    EventStore,
    CertificateStore,
    IdentityStore,
    AuditStore,
    SessionStore,
    CountStore,
):
    """All storage of Sielum. Safe to call from many threads at once.

    On SQLite each thread keeps its own connection; on PostgreSQL each call
    borrows one from the pool and gives it back. Every write is one
    transaction, so a call either happens entirely or not at all.

    Each part holds the methods of one thing stored (TokenStore in
    sielum.store.tokens, DeviceStore in .devices, and so on) over StoreBase, which
    holds the database they share: the services still call one object, and every
    write appends its audit event in the transaction that makes the change. This
    class adds what concerns the whole database: opening, migrating, closing and
    checking it.
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
        if self._standing_read is not None:
            self._standing_read.close()
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


__all__ = [
    "ALREADY_REVOKED",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "PageBudget",
    "RequestDecidedError",
    "Store",
    "device_hostname_prefix_condition",
    "device_state_condition",
    "token_state_condition",
]
