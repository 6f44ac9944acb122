"""Schema migrations on SQLite and PostgreSQL: idempotent, safe when processes start together."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime

import pytest

from sielum.model import AuditEvent, Token
from sielum.store import Store, connect
from sielum.store.migrations import LATEST_VERSION, MIGRATIONS, SchemaVersionError
from sielum.store.models import bind_tables

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _schema_version_rows(store: Store) -> list[tuple[int, int]]:
    with store.db.connection_context():
        cursor = store.db.execute_sql("SELECT id, version FROM schema_version")
        return [tuple(row) for row in cursor.fetchall()]


def test_versions_are_numbered_from_one_without_gaps() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert LATEST_VERSION == len(MIGRATIONS)


def test_migrating_twice_is_a_noop(database_url: str) -> None:
    store = Store.open(database_url)
    try:
        token = Token(
            id="tok",
            label="l",
            secret_hash=b"h",
            max_uses=None,
            uses=0,
            expires_at=None,
            created_at=T0,
            created_by="alice",
        )
        store.create_token(token, AuditEvent(at=T0, actor="a", action="x", resource="token/tok"))
        assert store.migrate() == LATEST_VERSION
        assert store.migrate() == LATEST_VERSION
        assert _schema_version_rows(store) == [(1, LATEST_VERSION)]
        assert store.get_token("tok") == token
        assert store.check_integrity() == []
    finally:
        store.close()
    reopened = Store.open(database_url)
    try:
        assert reopened.get_token("tok") == token
    finally:
        reopened.close()


def test_migrated_schema_matches_the_models(database_url: str) -> None:
    store = Store.open(database_url)
    try:
        with store.db.connection_context():
            for model in bind_tables(store.db).all():
                table = model._meta.table_name
                in_db = {c.name for c in store.db.get_columns(table)}
                assert in_db == set(model._meta.columns), table
            assert set(store.db.get_tables()) >= {"token", "device", "audit_event"}
    finally:
        store.close()


def test_threads_migrating_at_once(database_url: str) -> None:
    """Each thread has its own database object, i.e. its own connections: like processes."""
    n = 6
    start = threading.Barrier(n)
    results: list[object] = []
    lock = threading.Lock()

    def run() -> None:
        store = Store(connect(database_url))
        start.wait()
        try:
            outcome: object = store.migrate()
        except Exception as exc:
            outcome = exc
        finally:
            store.close()
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [LATEST_VERSION] * n
    store = Store.open(database_url)
    try:
        assert _schema_version_rows(store) == [(1, LATEST_VERSION)]
        assert store.check_integrity() == []
    finally:
        store.close()


def test_processes_migrating_at_once(database_url: str) -> None:
    script = (
        "import sys; from sielum.store import Store; "
        "s = Store.open(sys.argv[1]); print(s.migrate()); s.close()"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, database_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.strip() == str(LATEST_VERSION)
    store = Store.open(database_url)
    try:
        assert _schema_version_rows(store) == [(1, LATEST_VERSION)]
    finally:
        store.close()


def test_newer_schema_is_refused(database_url: str) -> None:
    store = Store.open(database_url)
    try:
        with store.db.connection_context():
            store.db.execute_sql(f"UPDATE schema_version SET version = {LATEST_VERSION + 1}")
        with pytest.raises(SchemaVersionError, match=r"newer than this Sielum knows"):
            store.migrate()
        assert store.check_integrity() == [
            f"schema version is {LATEST_VERSION + 1}, this Sielum expects {LATEST_VERSION}"
        ]
    finally:
        store.close()


def test_a_version_1_database_migrates_forward(database_url: str) -> None:
    """A database made before admins were recorded keeps its trail and gets the first-use cutoff."""
    from sielum.model import AuditFilter
    from sielum.store.database import execute, write_transaction
    from sielum.store.migrations import dialect_of

    db = connect(database_url)
    with db.connection_context(), write_transaction(db):
        for statement in MIGRATIONS[0].statements(dialect_of(db)):
            execute(db, statement)
        execute(db, "CREATE TABLE schema_version (id INTEGER PRIMARY KEY, version INTEGER)")
        execute(db, "INSERT INTO schema_version (id, version) VALUES (1, 1)")
        execute(
            db,
            "INSERT INTO audit_event (at, actor, action, resource) "
            "VALUES (1, 'admin/old', 'token.create', 'token/aaaaaaaaaaaaaaaa')",
        )
    db.close()
    before = datetime.now(UTC).replace(microsecond=0)
    store = Store.open(database_url)
    try:
        assert _schema_version_rows(store) == [(1, LATEST_VERSION)]
        cutoff = store.admin_first_use_cutoff()
        assert cutoff is not None and before <= cutoff <= datetime.now(UTC)
        events = store.list_audit_events(AuditFilter(actor="admin/old")).items
        assert [(e.action, e.resource) for e in events] == [
            ("token.create", "token/aaaaaaaaaaaaaaaa")
        ]
        assert store.list_admins().items == ()
        assert store.check_integrity() == []
        # Migrating again keeps the cutoff of the first migration.
        assert store.migrate() == LATEST_VERSION
        assert store.admin_first_use_cutoff() == cutoff
    finally:
        store.close()
