"""Dashboard sign-in and the overview's counts, on SQLite and PostgreSQL.

Login codes and sessions live in the database, hashed; the sessions service is
run here on a real store with a fixed clock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from sielum.clock import FixedClock
from sielum.errors import UnauthenticatedError
from sielum.model import AuditEvent, Device, Token
from sielum.sessions import (
    IDLE_LIMIT,
    DashboardSessions,
    NewSession,
    new_credential,
)
from sielum.store import Store

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CERT_NOT_AFTER = T0 + timedelta(days=365)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store.open(database_url)
    yield s
    s.close()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def dashboard(store: Store, clock: FixedClock) -> DashboardSessions:
    return DashboardSessions(store, clock)


@pytest.fixture
def on_sqlite(sqlite_url: str, clock: FixedClock) -> Iterator[DashboardSessions]:
    """For the lifetimes: decided in Python, so one backend shows them."""
    s = Store.open(sqlite_url)
    yield DashboardSessions(s, clock)
    s.close()


def _sign_in(dashboard: DashboardSessions, admin: str = "alice") -> NewSession:
    login = dashboard.create_login(admin, CERT_NOT_AFTER, "10.0.0.1")
    return dashboard.start_session(login.code.reveal(), "10.0.0.2")


def _session_rows(store: Store) -> int:
    with store.db.connection_context():
        return int(store.db.execute_sql("SELECT COUNT(*) FROM dashboard_session").fetchone()[0])


def _audit_actions(store: Store) -> list[tuple[str, str, str]]:
    return [(e.actor, e.action, e.peer) for e in reversed(store.list_audit(limit=1000))]


def test_ok_a_login_code_starts_a_session_as_its_admin(
    store: Store, dashboard: DashboardSessions
) -> None:
    login = dashboard.create_login("alice", CERT_NOT_AFTER, "10.0.0.1")
    assert login.expires_at == T0 + timedelta(minutes=5)
    new = dashboard.start_session(login.code.reveal(), "10.0.0.2")
    assert new.session.admin == "alice"
    assert new.session.expires_at == T0 + timedelta(hours=8)
    assert dashboard.check(new.key.reveal()) == new.session
    # Only hashes are stored.
    assert store.get_dashboard_session(new.key.digest()) == new.session
    stored_login = store.get_dashboard_login(login.code.digest())
    assert stored_login is not None and stored_login.used_at == T0
    assert _audit_actions(store) == [
        ("admin/alice", "dashboard.login_link", "10.0.0.1"),
        ("admin/alice", "dashboard.login", "10.0.0.2"),
    ]


@pytest.mark.parametrize("case", ["used", "expired", "unknown", "malformed"])
def test_fail_a_code_that_cannot_sign_in_starts_no_session(
    store: Store, dashboard: DashboardSessions, clock: FixedClock, case: str
) -> None:
    login = dashboard.create_login("alice", CERT_NOT_AFTER, "10.0.0.1")
    code = login.code.reveal()
    if case == "used":
        dashboard.start_session(code, "10.0.0.2")
    elif case == "expired":
        clock.advance(timedelta(minutes=5))
    elif case == "unknown":
        code = new_credential().reveal()
    else:
        code = code[:-1] + "!"
    sessions_before, audit_before = _session_rows(store), _audit_actions(store)
    with pytest.raises(UnauthenticatedError) as refused:
        dashboard.start_session(code, "10.0.0.3")
    want = {
        "used": "this login link was already used",
        "expired": "this login link has expired",
        "unknown": "this login link is not valid",
        "malformed": "this login link is not valid",
    }[case]
    assert refused.value.message == want
    assert (_session_rows(store), _audit_actions(store)) == (sessions_before, audit_before)


def test_a_login_code_starts_one_session_under_concurrency(
    store: Store, dashboard: DashboardSessions
) -> None:
    """Twelve tabs opening one link at once: one session (the conditional UPDATE)."""
    login = dashboard.create_login("alice", CERT_NOT_AFTER, "10.0.0.1")
    start = threading.Barrier(12)
    outcomes: list[str] = []
    lock = threading.Lock()

    def open_link() -> None:
        start.wait()
        try:
            dashboard.start_session(login.code.reveal(), "10.0.0.2")
            outcome = "session"
        except UnauthenticatedError as error:
            outcome = error.message
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=open_link) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["session"] + ["this login link was already used"] * 11
    assert _session_rows(store) == 1


def test_session_capped_by_the_admins_certificate(
    on_sqlite: DashboardSessions, clock: FixedClock
) -> None:
    dashboard = on_sqlite
    login = dashboard.create_login("alice", T0 + timedelta(hours=1), "10.0.0.1")
    new = dashboard.start_session(login.code.reveal(), "10.0.0.2")
    assert new.session.expires_at == T0 + timedelta(hours=1)
    clock.advance(timedelta(hours=1))
    with pytest.raises(UnauthenticatedError, match="the dashboard session has ended"):
        dashboard.check(new.key.reveal())
    # A link asked for a minute before the certificate ends lasts that minute.
    clock.at = T0
    short = dashboard.create_login("alice", T0 + timedelta(minutes=1), "10.0.0.1")
    assert short.expires_at == T0 + timedelta(minutes=1)


def test_session_ends_after_30_idle_minutes_and_use_keeps_it(
    on_sqlite: DashboardSessions, clock: FixedClock
) -> None:
    dashboard = on_sqlite
    new = _sign_in(dashboard)
    key = new.key.reveal()
    for _ in range(10):  # used every 29 minutes for almost 5 hours
        clock.advance(timedelta(minutes=29))
        dashboard.check(key)
    clock.advance(IDLE_LIMIT)
    with pytest.raises(UnauthenticatedError, match="30 minutes without use"):
        dashboard.check(key)


def test_session_ends_after_8_hours_however_busy(
    on_sqlite: DashboardSessions, clock: FixedClock
) -> None:
    dashboard = on_sqlite
    key = _sign_in(dashboard).key.reveal()
    for _ in range(47):
        clock.advance(timedelta(minutes=10))
        dashboard.check(key)
    clock.advance(timedelta(minutes=10))  # 8 hours since sign-in
    with pytest.raises(UnauthenticatedError, match="the dashboard session has ended"):
        dashboard.check(key)


def test_sign_out_deletes_the_session_and_is_audited(
    store: Store, dashboard: DashboardSessions
) -> None:
    new = _sign_in(dashboard)
    ended = dashboard.end(new.key.reveal(), "10.0.0.9")
    assert ended == new.session
    assert store.get_dashboard_session(new.key.digest()) is None
    with pytest.raises(UnauthenticatedError, match="you are signed out"):
        dashboard.check(new.key.reveal())
    assert _audit_actions(store)[-1] == ("admin/alice", "dashboard.logout", "10.0.0.9")
    # Signing out again, or with no session, changes nothing.
    audit = _audit_actions(store)
    assert dashboard.end(new.key.reveal(), "10.0.0.9") is None
    assert dashboard.end("not a key", "10.0.0.9") is None
    assert _audit_actions(store) == audit


def test_ending_all_sessions_of_an_admin_leaves_the_others(
    store: Store, dashboard: DashboardSessions
) -> None:
    alice = [_sign_in(dashboard, "alice") for _ in range(3)]
    bob = _sign_in(dashboard, "bob")
    assert dashboard.end_all_of("alice") == 3
    for new in alice:
        with pytest.raises(UnauthenticatedError):
            dashboard.check(new.key.reveal())
    assert dashboard.check(bob.key.reveal()).admin == "bob"


def test_open_sessions_are_counted_without_the_ended_ones(
    dashboard: DashboardSessions, clock: FixedClock
) -> None:
    _sign_in(dashboard)
    clock.advance(timedelta(minutes=20))
    _sign_in(dashboard)
    signed_out = _sign_in(dashboard)
    dashboard.end(signed_out.key.reveal(), "10.0.0.9")
    assert dashboard.count_open(clock.now()) == 2
    clock.advance(timedelta(minutes=10))  # the first one has been idle 30 minutes now
    assert dashboard.count_open(clock.now()) == 1


def test_old_codes_and_ended_sessions_are_purged(
    store: Store, dashboard: DashboardSessions, clock: FixedClock
) -> None:
    idle = _sign_in(dashboard)
    old_code = dashboard.create_login("alice", CERT_NOT_AFTER, "10.0.0.1")
    clock.advance(timedelta(minutes=31))
    busy = _sign_in(dashboard)  # asking for its link purged what time had ended
    assert store.get_dashboard_session(idle.key.digest()) is None
    assert store.get_dashboard_login(old_code.code.digest()) is None
    assert store.get_dashboard_session(busy.key.digest()) is not None


def test_a_use_is_written_at_most_once_a_minute(
    on_sqlite: DashboardSessions, clock: FixedClock
) -> None:
    """Each call would otherwise be a write; idle time may thus count up to a minute early."""
    key = _sign_in(on_sqlite).key.reveal()
    clock.advance(timedelta(seconds=30))
    on_sqlite.check(key)  # not written: idle still counts from the sign-in
    clock.advance(timedelta(seconds=30))
    on_sqlite.check(key)  # written: idle counts from here
    clock.advance(IDLE_LIMIT - timedelta(microseconds=1))
    on_sqlite.check(key)
    other = _sign_in(on_sqlite).key.reveal()
    clock.advance(timedelta(seconds=30))
    on_sqlite.check(other)
    clock.advance(IDLE_LIMIT - timedelta(seconds=30))
    with pytest.raises(UnauthenticatedError, match="30 minutes without use"):
        on_sqlite.check(other)


# --- enrollments per day for the overview (its counts by state: tests/store/test_store.py) ----


def _token(token_id: str, **fields: object) -> Token:
    values: dict[str, object] = {
        "id": token_id,
        "label": token_id,
        "secret_hash": bytes(32),
        "max_uses": None,
        "uses": 0,
        "expires_at": None,
        "created_at": T0 - timedelta(days=60),
        "created_by": "alice",
    }
    return Token(**{**values, **fields})  # type: ignore[arg-type]


def _audit(resource: str) -> AuditEvent:
    return AuditEvent(at=T0, actor="admin/alice", action="x", resource=resource)


def _device(device_id: str, token_id: str, enrolled_at: datetime, not_after: datetime) -> Device:
    return Device(
        id=device_id,
        hostname=device_id,
        token_id=token_id,
        public_key_sha256=f"key-{device_id}",
        serial=device_id,
        certificate_pem="pem",
        not_after=not_after,
        enrolled_at=enrolled_at,
        peer="10.0.0.1",
    )


def test_enrollments_per_day_counts_utc_days_from_since(store: Store) -> None:
    store.create_token(_token("t"), _audit("token/t"))
    day = datetime(2026, 3, 1, tzinfo=UTC)
    moments = [
        day - timedelta(microseconds=1),  # Feb 28, before since
        day,  # the first instant of Mar 1
        day + timedelta(hours=23, minutes=59),
        day + timedelta(days=2, hours=5),
        day + timedelta(days=2, hours=6),
        day + timedelta(days=2, hours=7),
    ]
    for n, moment in enumerate(moments):
        store.enroll_device(
            _device(f"d{n}", "t", moment, moment + timedelta(days=90)), moment, _audit(f"d/{n}")
        )
    assert store.enrollments_per_day(day) == {
        day.date(): 2,
        (day + timedelta(days=2)).date(): 3,
    }
