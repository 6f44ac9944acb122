"""Admins and the audit trail in the Store, on SQLite and PostgreSQL: names, revocation, paging."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from sielum.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from sielum.model import Admin, AdminState, AuditEvent, AuditFilter
from sielum.store import Store, connect
from sielum.store.database import is_sqlite

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
US = timedelta(microseconds=1)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store.open(database_url)
    yield s
    s.close()


def event(action: str, resource: str, at: datetime = T0, actor: str = "admin/root") -> AuditEvent:
    return AuditEvent(at=at, actor=actor, action=action, resource=resource, peer="127.0.0.1")


def add_admin(store: Store, name: str, by: str = "root") -> Admin:
    return store.create_admin(
        Admin(name=name, created_at=T0, created_by=by), event("admin.create", f"admin/{name}")
    )


def all_events(store: Store) -> list[AuditEvent]:
    return list(store.list_audit_events(page_size=1000).items)


# Admins


def test_create_find_and_list_admins(store: Store) -> None:
    assert store.find_admin("alice") is None
    alice = add_admin(store, "alice", by="init")
    assert alice == Admin(name="alice", created_at=T0, created_by="init")
    assert alice.state is AdminState.ACTIVE
    assert store.find_admin("alice") == alice
    add_admin(store, "bob")
    assert [a.name for a in store.list_admins().items] == ["bob", "alice"]  # newest first
    assert [e.resource for e in all_events(store)] == ["admin/bob", "admin/alice"]


def test_fail_a_name_is_never_reused(store: Store) -> None:
    add_admin(store, "alice")
    add_admin(store, "bob")
    with pytest.raises(AlreadyExistsError, match=r"^admin alice already exists$"):
        add_admin(store, "alice")
    store.revoke_admin("alice", T0, event("admin.revoke", "admin/alice"))
    with pytest.raises(AlreadyExistsError, match=r"^admin alice was revoked; .* never reused$"):
        add_admin(store, "alice")
    # The refusals changed nothing, and audited nothing.
    assert store.find_admin("alice") == Admin("alice", T0, "root", revoked_at=T0)
    assert [e.action for e in all_events(store)] == ["admin.revoke", "admin.create", "admin.create"]


def test_revoke_keeps_the_first_time_and_audits_each_call(store: Store) -> None:
    add_admin(store, "alice")
    add_admin(store, "bob")
    first = store.revoke_admin("bob", T0 + US, event("admin.revoke", "admin/bob"))
    again = store.revoke_admin("bob", T0 + 2 * US, event("admin.revoke", "admin/bob"))
    assert first.revoked_at == again.revoked_at == T0 + US
    assert first.state is AdminState.REVOKED
    trail = store.list_audit(resource="admin/bob")
    assert [(e.action, e.detail) for e in trail] == [
        ("admin.revoke", "already revoked"),
        ("admin.revoke", ""),
        ("admin.create", ""),
    ]


def test_fail_revoking_the_last_active_admin(store: Store) -> None:
    add_admin(store, "alice")
    add_admin(store, "bob")
    store.revoke_admin("bob", T0, event("admin.revoke", "admin/bob"))
    with pytest.raises(
        FailedPreconditionError,
        match=r"^admin alice is the last active admin: create another before revoking it$",
    ):
        store.revoke_admin("alice", T0, event("admin.revoke", "admin/alice"))
    assert store.find_admin("alice") == Admin("alice", T0, "root")
    # Revoking the revoked one again is no change, so it is allowed.
    assert store.revoke_admin("bob", T0, event("admin.revoke", "admin/bob")).revoked_at == T0


def test_revoking_an_unknown_name(store: Store) -> None:
    add_admin(store, "alice")
    with pytest.raises(NotFoundError, match=r"^admin not found$"):
        store.revoke_admin("ghost", T0, event("admin.revoke", "admin/ghost"))
    assert store.find_admin("ghost") is None
    ghost = Admin("ghost", T0, "certificate", revoked_at=T0)
    audit = event("admin.revoke", "admin/ghost")
    recorded = store.revoke_admin("ghost", T0, audit, if_unknown=ghost)
    assert recorded == ghost
    assert store.find_admin("ghost") == recorded


def test_register_if_new_registers_once(database_url: str) -> None:
    """Many first calls of one certificate at once: one row, one audit event."""
    stores = [Store(connect(database_url)) for _ in range(6)]
    stores[0].migrate()
    start = threading.Barrier(len(stores))
    outcomes: list[tuple[Admin, bool]] = []
    lock = threading.Lock()

    def register(store: Store, i: int) -> None:
        start.wait()
        result = store.register_admin_if_new(
            Admin("carol", T0 + i * US, "certificate"), event("admin.register", "admin/carol")
        )
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=register, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert sum(registered for _, registered in outcomes) == 1
        assert len({admin for admin, _ in outcomes}) == 1  # every call sees the one row
        assert [e.action for e in stores[0].list_audit(resource="admin/carol")] == [
            "admin.register"
        ]
    finally:
        for s in stores:
            s.close()


def test_register_if_new_returns_a_revoked_admin_as_it_is(store: Store) -> None:
    add_admin(store, "alice")
    add_admin(store, "dave")
    store.revoke_admin("dave", T0, event("admin.revoke", "admin/dave"))
    admin, registered = store.register_admin_if_new(
        Admin("dave", T0 + US, "certificate"), event("admin.register", "admin/dave")
    )
    assert not registered and admin.revoked_at == T0


def test_admins_revoking_each_other_at_once(database_url: str) -> None:
    """Two admins revoke each other at the same instant, 20 times over: one always remains.

    Each side has its own Store (its own connections, its own SQLite write lock),
    as two server replicas would.
    """
    left, right = Store.open(database_url), Store(connect(database_url))
    try:
        for round_ in range(20):
            a, b = f"a{round_}", f"b{round_}"
            add_admin(left, a)
            add_admin(left, b)
            if round_:
                # The survivor of the last round goes, so only this round's pair is
                # active: each revocation would leave the other as the last one.
                left.revoke_admin(f"a{round_ - 1}", T0, event("admin.revoke", "x/y"))
                left.revoke_admin(f"b{round_ - 1}", T0, event("admin.revoke", "x/y"))
            start = threading.Barrier(2)
            results: dict[str, object] = {}

            def revoke(store: Store, name: str) -> None:
                start.wait()
                try:
                    results[name] = store.revoke_admin(name, T0, event("admin.revoke", "x/y"))
                except FailedPreconditionError as error:
                    results[name] = error

            threads = [
                threading.Thread(target=revoke, args=(left, b)),
                threading.Thread(target=revoke, args=(right, a)),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            refused = [n for n, r in results.items() if isinstance(r, FailedPreconditionError)]
            assert len(refused) == 1, results
            active = [a.name for a in left.list_admins().items if a.revoked_at is None]
            assert active == refused
    finally:
        left.close()
        right.close()


def test_list_admins_pages(store: Store) -> None:
    names = [f"admin-{i}" for i in range(7)]
    for name in names:
        add_admin(store, name)
    seen: list[str] = []
    cursor = ""
    while True:
        page = store.list_admins(page_size=3, cursor=cursor)
        assert len(page.items) <= 3
        seen += [a.name for a in page.items]
        cursor = page.next_cursor
        if not cursor:
            break
    assert seen == list(reversed(names))
    with pytest.raises(InvalidArgumentError, match="page_token is invalid"):
        store.list_admins(cursor=_cursor("tokens:1"))


# The audit trail


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _page_through(store: Store, where: AuditFilter, size: int) -> list[AuditEvent]:
    seen: list[AuditEvent] = []
    cursor = ""
    while True:
        page = store.list_audit_events(where, page_size=size, cursor=cursor)
        assert len(page.items) <= size
        seen += page.items
        cursor = page.next_cursor
        if not cursor:
            return seen


def _trail(store: Store) -> list[AuditEvent]:
    """31 events: three actors, three actions, ten resources; times with ties and out of order."""
    events = []
    for i in range(31):
        # Every third event shares its time with the one before; event 20 was
        # recorded late (another replica's clock), so it sorts before 19..10.
        at = T0 + (i - i % 3) * US if i != 20 else T0 + 9 * US
        events.append(
            AuditEvent(
                at=at,
                actor=("admin/alice", "admin/bob", "token/t1")[i % 3],
                # device.enroll: read through another index than the other actions.
                action=("token.create", "device.enroll", "admin.create")[i % 3],
                resource=f"device/d{i % 10}",
                peer="10.0.0.1",
                detail=f"n={i}",
            )
        )
        store.record(events[-1])
    # Newest first by time; equal times newest recorded first.
    return sorted(events, key=lambda e: (e.at, int(e.detail[2:])), reverse=True)


def test_audit_events_page_newest_first(store: Store) -> None:
    expected = _trail(store)
    for size in (1, 4, 31, 100):
        assert _page_through(store, AuditFilter(), size) == expected
    assert store.list_audit_events(page_size=31).next_cursor == ""
    assert store.list_audit_events(page_size=30).next_cursor != ""


FILTERS = (
    AuditFilter(actor="admin/bob"),
    AuditFilter(resource="device/d3"),
    AuditFilter(action="admin.create"),
    AuditFilter(action="device.enroll"),
    AuditFilter(since=T0 + 12 * US),
    AuditFilter(actor="admin/alice", since=T0 + 9 * US),
    AuditFilter(actor="admin/alice", action="token.create", resource="device/d6"),
    AuditFilter(actor="admin/nobody"),
    AuditFilter(since=T0 + 1000 * US),
)


def test_audit_event_filters(store: Store) -> None:
    trail = _trail(store)
    for where in FILTERS:
        expected = [
            e
            for e in trail
            if (not where.actor or e.actor == where.actor)
            and (not where.resource or e.resource == where.resource)
            and (not where.action or e.action == where.action)
            and (where.since is None or e.at >= where.since)
        ]
        assert _page_through(store, where, 2) == expected, where
        assert _page_through(store, where, 1000) == expected, where


FORGED_CURSORS = (
    "garbage!",
    _cursor("audit:1"),
    _cursor("audit:1:0"),
    _cursor("audit:x:1"),
    _cursor(f"audit:{2**63}:1"),
    _cursor(f"audit:-{2**63 + 1}:1"),
    _cursor(f"audit:1:{2**63}"),
    _cursor("tokens:5"),
    _cursor("audit:1:2\n"),
)


def test_fail_forged_audit_cursors(store: Store) -> None:
    store.record(event("x.y", "a/b"))
    for cursor in FORGED_CURSORS:
        with pytest.raises(InvalidArgumentError, match=r"^page_token is invalid$"):
            store.list_audit_events(cursor=cursor)


def test_audit_cursor_at_the_edges_of_bigint(store: Store) -> None:
    store.record(event("x.y", "a/b"))
    assert store.list_audit_events(cursor=_cursor(f"audit:{2**63 - 1}:{2**63 - 1}")).items
    assert not store.list_audit_events(cursor=_cursor(f"audit:{-(2**63)}:1")).items


def test_every_audit_filter_has_an_index(store: Store) -> None:
    """Each filter's plan searches its index in order: never a scan of the table or a sort.

    PostgreSQL's planner prefers a table scan on a table this small, so it is told to
    avoid scans and sorts wherever it can: with an index that serves the filter in
    order, the plan then names that index and sorts nothing (bench/scale_bench.py
    times both backends at 1,000,000 events).
    """
    sqlite = is_sqlite(store.db)
    for where, index in (
        (AuditFilter(), "audit_event_at_seq"),
        (AuditFilter(since=T0), "audit_event_at_seq"),
        (AuditFilter(actor="admin/a"), "audit_event_actor_at_seq"),
        (AuditFilter(resource="token/t"), "audit_event_resource_at_seq"),
        (AuditFilter(action="token.create"), "audit_event_action_at_seq"),
        # Enrollments, nearly every event, are left out of the action index (migration 6).
        (AuditFilter(action="device.enroll"), "audit_event_at_seq"),
        (AuditFilter(actor="admin/a", since=T0), "audit_event_actor_at_seq"),
    ):
        query = store._audit_query(where, None, 101)
        sql, params = query.sql()
        if sqlite:
            rows = store.db.execute_sql(f"EXPLAIN QUERY PLAN {sql}", params)
            plan = " ".join(str(row[3]) for row in rows)
            assert f"INDEX {index}" in plan, plan
            assert "TEMP B-TREE" not in plan, plan
            continue
        with store.db.atomic():
            store.db.execute_sql("SET LOCAL enable_seqscan = off")
            store.db.execute_sql("SET LOCAL enable_sort = off")
            rows = store.db.execute_sql(f"EXPLAIN {sql}", params)
            plan = " ".join(str(row[0]) for row in rows)
        assert f"using {index}" in plan, plan
        assert "Sort" not in plan, plan


# Which certificates of an admin are honoured


def test_certify_admin_keeps_the_certificate_in_use(store: Store) -> None:
    """A new certificate makes the one in use the previous one; another new one, while the
    last is unused, replaces that unused one and keeps the one in use. Its first use retires
    the previous one, once; a revoked or unknown admin is certified nothing."""
    until = T0 + timedelta(days=365)
    store.create_admin(
        Admin(name="alice", created_at=T0, created_by="root", serial="s1"),
        event("admin.create", "admin/alice"),
    )
    add_admin(store, "root")

    def certify(serial: str, name: str = "alice") -> Admin:
        return store.certify_admin(
            name, serial, T0, until, event("admin.certify", f"admin/{name}", actor="server/x")
        )

    s2 = certify("s2")
    assert (s2.serial, s2.previous_serial, s2.previous_until) == ("s2", "s1", until)
    assert s2.certified_at == T0
    s3 = certify("s3")  # s2 was never used: s1 stays the previous one
    assert (s3.serial, s3.previous_serial, s3.previous_until) == ("s3", "s1", until)
    assert store.retire_previous_admin_certificate("alice", "s2") is False
    assert store.retire_previous_admin_certificate("alice", "s3") is True
    assert store.retire_previous_admin_certificate("alice", "s3") is False
    retired = store.find_admin("alice")
    assert retired is not None
    assert (retired.serial, retired.previous_serial, retired.previous_until) == ("s3", "s1", None)
    s4 = certify("s4")  # s3 was used: it becomes the previous one
    assert (s4.serial, s4.previous_serial, s4.previous_until) == ("s4", "s3", until)
    assert [e.action for e in store.list_audit(resource="admin/alice")].count("admin.certify") == 3

    store.revoke_admin("alice", T0, event("admin.revoke", "admin/alice"))
    for name in ("alice", "nobody"):
        with pytest.raises(NotFoundError, match=r"^admin not found$"):
            certify("s5", name)
    revoked = store.find_admin("alice")
    assert revoked is not None and revoked.serial == "s4"


def test_adopt_admin_certificate_only_over_the_newest_one_of_an_active_admin(store: Store) -> None:
    """A certificate a restored database lost becomes the admin's newest; the one it replaces
    is retired at once. Not when the newest changed since it was judged, nor for a revoked
    admin."""
    store.create_admin(
        Admin(name="alice", created_at=T0, created_by="root", serial="s1", certified_at=T0),
        event("admin.create", "admin/alice"),
    )
    add_admin(store, "root")
    later = T0 + timedelta(days=30)

    def adopt(current: str, serial: str) -> bool:
        return store.adopt_admin_certificate(
            "alice",
            current_serial=current,
            serial=serial,
            certified_at=later,
            audit=event("admin.adopt", "admin/alice", actor="admin/alice"),
        )

    assert adopt("s0", "s9") is False
    assert adopt("s1", "s9") is True
    alice = store.find_admin("alice")
    assert alice is not None
    assert (alice.serial, alice.previous_serial, alice.previous_until, alice.certified_at) == (
        "s9",
        "s1",
        None,
        later,
    )
    store.revoke_admin("alice", later, event("admin.revoke", "admin/alice"))
    assert adopt("s9", "s10") is False
    assert [e.action for e in store.list_audit(resource="admin/alice")].count("admin.adopt") == 1
