"""Schema migrations on SQLite and PostgreSQL: idempotent, safe when processes start together."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest

from sielum.model import (
    Admin,
    AuditEvent,
    AuditFilter,
    Device,
    RenewalPace,
    Service,
    Token,
    TokenPolicy,
    TokenState,
)
from sielum.store import Store, connect, migrations
from sielum.store.database import is_sqlite
from sielum.store.migrations import LATEST_VERSION, MIGRATIONS, SchemaVersionError
from sielum.store.models import bind_tables, to_micros

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _schema_version_rows(store: Store) -> list[tuple[int, int]]:
    with store.db.connection_context():
        cursor = store.db.execute_sql("SELECT id, version FROM schema_version")
        return [tuple(row) for row in cursor.fetchall()]


def _old_token(store: Store, token_id: str, *, max_uses: int | None = None) -> None:
    """A token row as schema version 1 had it, written with that version's columns only
    (the Store of today writes columns later steps added)."""
    p = store.db.param
    with store.db.connection_context():
        store.db.execute_sql(
            "INSERT INTO token (id, label, secret_hash, max_uses, uses, created_at, created_by)"
            f" VALUES ({p}, 'before', {p}, {p}, 0, {p}, 'alice')",
            (token_id, b"h", max_uses, to_micros(T0)),
        )


def _old_device(store: Store, device_id: str, *, key: str, serial: str, hostname: str) -> None:
    """A device row as schema version 1 had it, with a use of its token (see _old_token)."""
    p = store.db.param
    with store.db.connection_context():
        store.db.execute_sql(
            "INSERT INTO device (id, hostname, token_id, public_key_sha256, serial,"
            " certificate_pem, not_after, enrolled_at, peer)"
            f" VALUES ({p}, {p}, 'tok', {p}, {p}, 'PEM', {p}, {p}, 'p')",
            (device_id, hostname, key, serial, to_micros(T0), to_micros(T0)),
        )
        store.db.execute_sql("UPDATE token SET uses = uses + 1 WHERE id = 'tok'")


def test_versions_are_numbered_from_one_without_gaps() -> None:
    versions = [m.version for m in MIGRATIONS]
    assert versions == list(range(1, versions[-1] + 1))
    assert LATEST_VERSION == versions[-1]


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


def _before_admins() -> tuple[migrations.Migration, ...]:
    """The steps before the one that adds admins, wherever that one is numbered."""
    adds_admins = next(
        i
        for i, step in enumerate(MIGRATIONS)
        if any("CREATE TABLE admin (" in sql for sql in step.statements(migrations.SQLITE))
    )
    return MIGRATIONS[:adds_admins]


def test_a_database_from_before_admins_migrates_forward(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its audit trail stays readable, and it gets the time admin certificates register until."""
    earlier = _before_admins()
    with monkeypatch.context() as patched:
        patched.setattr(migrations, "MIGRATIONS", earlier)
        patched.setattr(migrations, "LATEST_VERSION", earlier[-1].version)
        old = Store.open(database_url)
    try:
        with old.db.connection_context():
            assert "admin" not in old.db.get_tables()
        old.record(AuditEvent(at=T0, actor="admin/old", action="token.create", resource="token/t"))
    finally:
        old.close()
    before = datetime.now(UTC).replace(microsecond=0)
    store = Store.open(database_url)
    try:
        assert _schema_version_rows(store) == [(1, LATEST_VERSION)]
        cutoff = store.admin_first_use_cutoff()
        assert cutoff is not None and before <= cutoff <= datetime.now(UTC)
        events = store.list_audit_events(AuditFilter(actor="admin/old")).items
        assert [(e.at, e.action, e.resource) for e in events] == [(T0, "token.create", "token/t")]
        assert store.list_admins().items == ()
        assert store.check_integrity() == []
        # Migrating again keeps the cutoff of the first migration.
        assert store.migrate() == LATEST_VERSION
        assert store.admin_first_use_cutoff() == cutoff
    finally:
        store.close()


def _insert_device(store: Store, device_id: str, *, hostname: str, key: str, serial: str) -> None:
    """A device row as an older Sielum wrote it, with the columns of step 1 only: the
    store of today also writes tables of later steps when it enrolls."""
    with store.db.connection_context():
        p = store.db.param
        store.db.execute_sql(
            "INSERT INTO device (id, hostname, token_id, public_key_sha256, serial,"
            f" certificate_pem, not_after, enrolled_at, peer) VALUES ({', '.join([p] * 9)})",
            (device_id, hostname, "tok", key, serial, "PEM", 0, 0, "p"),
        )
        # As enrolling did: the token's use.
        store.db.execute_sql(f"UPDATE token SET uses = uses + 1 WHERE id = {p}", ("tok",))


def _indexes(store: Store) -> set[str]:
    with store.db.connection_context():
        if is_sqlite(store.db):
            sql = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'device'"
        else:
            sql = "SELECT indexname FROM pg_indexes WHERE tablename = 'device'"
        return {row[0] for row in store.db.execute_sql(sql).fetchall()}


def test_v2_indexes_a_version_1_database_keeping_its_rows(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patched:
        patched.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
        patched.setattr(migrations, "LATEST_VERSION", 1)
        old = Store.open(database_url)
    try:
        assert _schema_version_rows(old) == [(1, 1)]
        _old_token(old, "tok")
        _old_device(old, "dev", key="k", serial="1", hostname="web-1")
        assert not _indexes(old) & {"device_hostname_seq", "device_revoked_seq"}
    finally:
        old.close()

    store = Store.open(database_url)
    try:
        assert _schema_version_rows(store) == [(1, LATEST_VERSION)]
        assert _indexes(store) >= {
            "device_hostname_seq",
            "device_revoked_seq",
            "device_unrevoked_not_after",
        }
        assert [d.id for d in store.list_devices(hostname="web-1").items] == ["dev"]
        assert store.check_integrity() == []
    finally:
        store.close()


def test_v3_keeps_devices_enrolled_before_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device enrolled under schema version 2 reads back with no previous certificate and
    no renewal yet, and renews normally."""
    with monkeypatch.context() as patched:
        patched.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2])
        patched.setattr(migrations, "LATEST_VERSION", 2)
        old = Store.open(database_url)
    try:
        assert _schema_version_rows(old) == [(1, 2)]
        _old_token(old, "tok")
        _old_device(old, "dev1", key="key1", serial="ab12", hostname="h")
    finally:
        old.close()

    store = Store.open(database_url)
    try:
        assert _schema_version_rows(store) == [(1, LATEST_VERSION)]
        standing = store.get_device_standing("dev1")
        assert (standing.serial, standing.previous_serial, standing.previous_until) == (
            "ab12",
            None,
            None,
        )
        assert standing.renewal_tat is None
        renewed = store.renew_device(
            "dev1",
            caller_serial="ab12",
            public_key_sha256="key2",
            serial="cd34",
            certificate_pem="PEM 2",
            not_after=T0,
            now=T0,
            pace=RenewalPace(burst=5, interval=timedelta(days=9)),
            audit=AuditEvent(at=T0, actor="device/dev1", action="device.renew", resource="d"),
        )
        assert renewed.serial == "cd34"
        assert store.get_device_standing("dev1").previous_serial == "ab12"
        assert store.check_integrity() == []
    finally:
        store.close()


def test_v5_adds_the_dashboard_to_a_version_4_database(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database made by the release before the dashboard keeps its rows and gains its tables."""
    with monkeypatch.context() as patched:
        patched.setattr(migrations, "MIGRATIONS", MIGRATIONS[:4])
        patched.setattr(migrations, "LATEST_VERSION", 4)
        old = Store(connect(database_url))
        try:
            assert old.migrate() == 4
            token = Token(
                id="tok",
                label="before",
                secret_hash=b"h",
                max_uses=3,
                uses=0,
                expires_at=None,
                created_at=T0,
                created_by="alice",
            )
            _old_token(old, "tok", max_uses=3)
        finally:
            old.close()
    store = Store.open(database_url)
    try:
        assert _schema_version_rows(store) == [(1, LATEST_VERSION)]
        assert store.get_token("tok") == token
        with store.db.connection_context():
            tables = set(store.db.get_tables())
        assert {"dashboard_login", "dashboard_session"} <= tables
        assert "device_enrolled_at" in _indexes(store)
        assert store.state_counts(T0).tokens[TokenState.ACTIVE] == 1
        assert store.check_integrity() == []
    finally:
        store.close()


def test_v7_keeps_admins_and_renewals_made_before_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admins registered before step 7 have no recorded certificate (each of theirs stays
    honoured), and a device renewed before it keeps its 15-minute bound."""
    with monkeypatch.context() as patched:
        patched.setattr(migrations, "MIGRATIONS", MIGRATIONS[:6])
        patched.setattr(migrations, "LATEST_VERSION", 6)
        old = Store(connect(database_url))
        try:
            assert old.migrate() == 6
            with old.db.connection_context():
                p = old.db.param
                old.db.execute_sql(
                    f"INSERT INTO admin (name, created_at, created_by) VALUES ({p}, {p}, {p})",
                    ("alice", 0, "init"),
                )
        finally:
            old.close()
    store = Store.open(database_url)
    try:
        assert _schema_version_rows(store) == [(1, LATEST_VERSION)]
        alice = store.find_admin("alice")
        assert alice is not None
        assert (alice.serial, alice.previous_serial, alice.previous_until) == (None, None, None)
        assert alice.certified_at is None
        certified = store.certify_admin(
            "alice",
            "ab12",
            T0,
            T0 + timedelta(days=365),
            AuditEvent(at=T0, actor="server/x", action="admin.certify", resource="admin/alice"),
        )
        # Every certificate made before ab12 is honoured until ab12 is first used.
        assert (certified.serial, certified.previous_serial, certified.previous_until) == (
            "ab12",
            None,
            T0 + timedelta(days=365),
        )
        assert store.check_integrity() == []
    finally:
        store.close()


def test_v8_adds_services_to_a_version_7_database(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database made by the release before services keeps its admins and gains the service
    table, which starts empty."""
    with monkeypatch.context() as patched:
        patched.setattr(migrations, "MIGRATIONS", MIGRATIONS[:7])
        patched.setattr(migrations, "LATEST_VERSION", 7)
        old = Store(connect(database_url))
        try:
            assert old.migrate() == 7
            old.create_admin(
                Admin(name="alice", created_at=T0, created_by="init"),
                AuditEvent(at=T0, actor="server/init", action="admin.create", resource="admin/a"),
            )
            with old.db.connection_context():
                assert "service" not in old.db.get_tables()
        finally:
            old.close()
    store = Store.open(database_url)
    try:
        assert _schema_version_rows(store) == [(1, LATEST_VERSION)]
        assert store.find_admin("alice") == Admin(name="alice", created_at=T0, created_by="init")
        assert store.list_services().items == ()
        service = Service(
            name="billing", created_at=T0, created_by="alice", serial="ab12", issuer="c0ffee"
        )
        store.create_service(
            service,
            AuditEvent(
                at=T0, actor="admin/alice", action="service.create", resource="service/billing"
            ),
        )
        assert store.find_service("billing") == service
        assert store.check_integrity() == []
    finally:
        store.close()


def test_v11_gives_tokens_and_devices_made_before_it_no_policy_and_no_tags(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens and devices of a version 8 database read back with an empty policy and no
    tags, enroll as before, and the request queue starts empty."""
    with monkeypatch.context() as patched:
        patched.setattr(migrations, "MIGRATIONS", MIGRATIONS[:8])
        patched.setattr(migrations, "LATEST_VERSION", 8)
        old = Store.open(database_url)
        try:
            _old_token(old, "tok", max_uses=2)
            _old_device(old, "dev1", key="key1", serial="ab", hostname="h1")
        finally:
            old.close()
    store = Store.open(database_url)
    try:
        assert _schema_version_rows(store) == [(1, LATEST_VERSION)]
        token = store.get_token("tok")
        assert token.policy == TokenPolicy()
        assert store.get_device("dev1").tags == ()
        device = Device(
            id="dev2", hostname="h2", token_id="tok", public_key_sha256="key2", serial="cd",
            certificate_pem="PEM", not_after=T0, enrolled_at=T0, peer="p", tags=("web",),
        )  # fmt: skip
        store.enroll_device(device, T0, AuditEvent(at=T0, actor="a", action="y", resource="d"))
        assert [d.id for d in store.list_devices(tag="web").items] == ["dev2"]
        assert store.list_enrollment_requests(now=T0).items == ()
        assert store.check_integrity() == []
    finally:
        store.close()
