"""Store tests on SQLite and PostgreSQL: tokens, enrollment under concurrency, paging, failures."""

from __future__ import annotations

import base64
import collections
import dataclasses
import itertools
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import peewee
import psycopg2
import pytest

from sielum.devices.policy import device_state
from sielum.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    RenewalRefusedError,
    TokenUnusableError,
    UnavailableError,
)
from sielum.model import (
    AuditEvent,
    Device,
    DeviceStanding,
    DeviceState,
    RenewalPace,
    Token,
    TokenState,
)
from sielum.store import Store, connect
from sielum.store.database import is_on_this_host, is_sqlite, redact_url
from sielum.store.models import to_micros
from sielum.store.store import PageBudget, device_hostname_prefix_condition, device_state_condition
from sielum.tokens import token_state

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
US = timedelta(microseconds=1)


# Helpers


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store.open(database_url)
    yield s
    s.close()


def new_token(
    token_id: str = "tok",
    *,
    max_uses: int | None = None,
    expires_at: datetime | None = None,
    created_at: datetime = T0,
) -> Token:
    return Token(
        id=token_id,
        label=f"label of {token_id}",
        secret_hash=bytes(range(32)),
        max_uses=max_uses,
        uses=0,
        expires_at=expires_at,
        created_at=created_at,
        created_by="alice",
    )


def audit(action: str, resource: str, at: datetime = T0) -> AuditEvent:
    return AuditEvent(at=at, actor="admin/alice", action=action, resource=resource, peer="ipv4:1")


def add_token(store: Store, token_id: str = "tok", **kwargs: Any) -> Token:
    return store.create_token(
        new_token(token_id, **kwargs), audit("token.create", f"token/{token_id}")
    )


def new_device(device_id: str, token_id: str = "tok", key: str | None = None) -> Device:
    return Device(
        id=device_id,
        hostname=f"{device_id}.example.org",
        token_id=token_id,
        public_key_sha256=key or f"sha256-of-{device_id}",
        serial=f"serial-{device_id}",
        certificate_pem=f"-----BEGIN CERTIFICATE-----\n{device_id}\n",
        not_after=T0 + timedelta(days=90),
        enrolled_at=T0,
        peer="ipv4:10.0.0.1:5555",
        facts={"os": "linux", "arch": "x86_64"},
    )


def enroll(
    store: Store, device_id: str, token_id: str = "tok", key: str | None = None, now: datetime = T0
) -> Device:
    return store.enroll_device(
        new_device(device_id, token_id, key), now, audit("device.enroll", f"device/{device_id}")
    )


def run_sql(store: Store, sql: str, params: tuple[Any, ...] = ()) -> None:
    """Change the database behind the store's back, as an operator with psql could."""
    with store.db.connection_context():
        store.db.execute_sql(sql.replace("?", store.db.param), params)


def all_tokens(store: Store, **kwargs: Any) -> list[Token]:
    page = store.list_tokens(page_size=1000, **kwargs)
    assert page.next_cursor == ""
    return list(page.items)


def all_devices(store: Store, token_id: str = "") -> list[Device]:
    page = store.list_devices(token_id=token_id, page_size=1000)
    assert page.next_cursor == ""
    return list(page.items)


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# Tokens


def test_create_and_get_token_round_trip(store: Store) -> None:
    token = new_token("tok", max_uses=5, expires_at=T0 + timedelta(days=7, microseconds=1))
    created = store.create_token(token, audit("token.create", "token/tok"))
    assert created == token
    fetched = store.get_token("tok")
    assert fetched == token
    assert isinstance(fetched.secret_hash, bytes)
    assert fetched.created_at.utcoffset() == timedelta(0)
    assert [e.action for e in store.list_audit(resource="token/tok")] == ["token.create"]


def test_get_unknown_token_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError, match=r"^enrollment token not found$"):
        store.get_token("nope")


def test_create_token_with_taken_id_is_refused_and_records_nothing(store: Store) -> None:
    add_token(store, "tok")
    with pytest.raises(AlreadyExistsError):
        add_token(store, "tok", max_uses=3)
    assert store.get_token("tok").max_uses is None
    assert len(store.list_audit(resource="token/tok")) == 1


def test_create_token_refuses_a_token_that_was_used(store: Store) -> None:
    token = Token(**{**new_token().__dict__, "uses": 1})
    with pytest.raises(ValueError, match=r"uses = 0"):
        store.create_token(token, audit("token.create", "token/tok"))
    with pytest.raises(NotFoundError):
        store.get_token("tok")


def test_list_tokens_newest_first(store: Store) -> None:
    for i in range(5):
        add_token(store, f"tok{i}")
    assert [t.id for t in all_tokens(store, now=T0)] == ["tok4", "tok3", "tok2", "tok1", "tok0"]
    first = store.list_tokens(now=T0, page_size=2)
    assert [t.id for t in first.items] == ["tok4", "tok3"]
    second = store.list_tokens(now=T0, page_size=2, cursor=first.next_cursor)
    assert [t.id for t in second.items] == ["tok2", "tok1"]
    third = store.list_tokens(now=T0, page_size=2, cursor=second.next_cursor)
    assert [t.id for t in third.items] == ["tok0"]
    assert third.next_cursor == ""


def test_list_tokens_page_size_defaults_to_100_and_is_capped_at_1000(store: Store) -> None:
    with store.db.connection_context(), store.db.atomic():
        for i in range(1001):
            add_token(store, f"tok{i:04}")
    for requested, served in [(0, 100), (-5, 100), (7, 7), (1000, 1000), (5000, 1000)]:
        page = store.list_tokens(now=T0, page_size=requested)
        assert len(page.items) == served
        assert page.items[0].id == "tok1000"
        assert page.next_cursor != ""
    assert store.list_tokens(now=T0, page_size=1000, cursor=cursor_of("tokens:2")).items == (
        store.get_token("tok0000"),
    )


def test_state_filter_agrees_with_token_state(store: Store) -> None:
    """The SQL filter and the pure function must put every token in the same state."""
    expiries = [None, T0 - US, T0, T0 + US]
    counts = [(0, None), (3, None), (0, 0), (0, 1), (1, 1), (1, 2), (2, 2)]
    combos = list(itertools.product([False, True], expiries, counts))
    for n, (revoked, expires_at, (uses, max_uses)) in enumerate(combos):
        token_id = f"tok{n:02}"
        add_token(store, token_id, max_uses=max_uses, expires_at=expires_at)
        if uses:
            run_sql(store, "UPDATE token SET uses = ? WHERE id = ?", (uses, token_id))
        if revoked:
            store.revoke_token(token_id, T0 - timedelta(days=1), audit("token.revoke", token_id))

    tokens = all_tokens(store, now=T0)
    assert len(tokens) == len(combos)
    for now in [T0 - 2 * US, T0 - US, T0, T0 + US, T0 + timedelta(days=1)]:
        expected = collections.defaultdict(set)
        for t in tokens:
            state = token_state(
                revoked=t.revoked_at is not None,
                expires_at=t.expires_at,
                uses=t.uses,
                max_uses=t.max_uses,
                now=now,
            )
            expected[state].add(t.id)
        for state in TokenState:
            listed = [t.id for t in all_tokens(store, now=now, state=state)]
            assert len(listed) == len(set(listed))
            assert set(listed) == expected[state], (now, state)
    # Every state occurs, so the comparison above tested each branch.
    assert all(expected[state] for state in TokenState)


def test_revoke_token_is_idempotent_and_keeps_first_time(store: Store) -> None:
    add_token(store, "tok")
    enroll(store, "dev1")
    first = store.revoke_token("tok", T0 + timedelta(hours=1), audit("token.revoke", "token/tok"))
    assert first.revoked_at == T0 + timedelta(hours=1)
    again = store.revoke_token("tok", T0 + timedelta(hours=2), audit("token.revoke", "token/tok"))
    assert again.revoked_at == T0 + timedelta(hours=1)
    assert again == store.get_token("tok")
    assert [t.id for t in all_tokens(store, now=T0, state=TokenState.REVOKED)] == ["tok"]
    # Revoking a token never touches the devices enrolled with it.
    assert store.get_device("dev1").revoked_at is None
    # The repeat is recorded once, apart from the revocation itself.
    assert [(e.action, e.detail) for e in store.list_audit(resource="token/tok")] == [
        ("token.revoke", "already revoked"),
        ("token.revoke", ""),
        ("token.create", ""),
    ]


def test_revoke_unknown_token_is_not_found_and_records_nothing(store: Store) -> None:
    with pytest.raises(NotFoundError, match=r"^enrollment token not found$"):
        store.revoke_token("nope", T0, audit("token.revoke", "token/nope"))
    assert store.list_audit() == []


# Enrollment


def test_enroll_consumes_one_use_and_records_device_and_audit(store: Store) -> None:
    add_token(store, "tok", max_uses=3)
    device = new_device("dev1")
    now = T0 + timedelta(minutes=5)
    stored = store.enroll_device(device, now, audit("device.enroll", "device/dev1", now))
    assert stored == device
    token = store.get_token("tok")
    assert token.uses == 1
    assert token.last_used_at == now
    assert store.get_device("dev1") == device
    assert store.find_device_by_key(device.public_key_sha256) == device
    assert store.find_device_by_key("unknown-key") is None
    assert [e.action for e in store.list_audit(resource="device/dev1")] == ["device.enroll"]
    assert store.check_integrity() == []


@pytest.mark.parametrize(
    "case",
    ["fail/revoked", "fail/expired-at-now", "fail/expired", "fail/exhausted", "fail/unknown"],
)
def test_enroll_with_unusable_token_changes_nothing(store: Store, case: str) -> None:
    token_id = "tok"
    if case == "fail/revoked":
        add_token(store, token_id)
        store.revoke_token(token_id, T0 - US, audit("token.revoke", "token/tok"))
    elif case == "fail/expired-at-now":
        add_token(store, token_id, expires_at=T0)
    elif case == "fail/expired":
        add_token(store, token_id, expires_at=T0 - timedelta(days=1))
    elif case == "fail/exhausted":
        add_token(store, token_id, max_uses=1)
        enroll(store, "first")
    else:
        token_id = "missing"
    before = store.get_token(token_id) if token_id == "tok" else None
    audit_before = store.list_audit()

    with pytest.raises(TokenUnusableError, match=r"^enrollment token cannot be used$"):
        enroll(store, "dev2", token_id=token_id, now=T0)

    if before is not None:
        assert store.get_token(token_id) == before
    assert store.find_device_by_key(new_device("dev2").public_key_sha256) is None
    with pytest.raises(NotFoundError):
        store.get_device("dev2")
    assert store.list_audit() == audit_before
    assert store.check_integrity() == []


def test_expiry_boundary_is_exact(store: Store) -> None:
    add_token(store, "later", expires_at=T0 + US)
    add_token(store, "now", expires_at=T0)
    assert enroll(store, "dev1", token_id="later", now=T0).token_id == "later"
    with pytest.raises(TokenUnusableError):
        enroll(store, "dev2", token_id="later", now=T0 + US)
    with pytest.raises(TokenUnusableError):
        enroll(store, "dev3", token_id="now", now=T0)
    assert store.get_token("later").uses == 1
    assert store.get_token("now").uses == 0


def test_last_use_is_allowed_and_then_exhausted(store: Store) -> None:
    add_token(store, "tok", max_uses=2)
    enroll(store, "dev1")
    enroll(store, "dev2")
    with pytest.raises(TokenUnusableError):
        enroll(store, "dev3")
    assert store.get_token("tok").uses == 2
    assert [t.id for t in all_tokens(store, now=T0, state=TokenState.EXHAUSTED)] == ["tok"]


def test_enrolled_key_is_refused_without_consuming_a_use(store: Store) -> None:
    add_token(store, "tok", max_uses=5)
    add_token(store, "other", max_uses=5)
    enroll(store, "dev1", key="cloned-key")
    audit_before = store.list_audit()

    with pytest.raises(AlreadyExistsError, match=r"^this public key is already enrolled$"):
        enroll(store, "dev2", key="cloned-key")
    with pytest.raises(AlreadyExistsError, match=r"^this public key is already enrolled$"):
        enroll(store, "dev3", token_id="other", key="cloned-key")
    with pytest.raises(AlreadyExistsError):
        enroll(store, "dev1", key="fresh-key")  # same device id

    assert store.get_token("tok").uses == 1
    assert store.get_token("other").uses == 0
    assert [d.id for d in all_devices(store)] == ["dev1"]
    assert store.list_audit() == audit_before
    assert store.check_integrity() == []


def test_concurrent_enrollment_respects_max_uses(database_url: str) -> None:
    """40 threads on two stores (two replicas) race for 10 uses: exactly 10 win."""
    replicas = [Store.open(database_url), Store(connect(database_url))]
    try:
        add_token(replicas[0], "tok", max_uses=10)
        start = threading.Barrier(40)
        outcomes: list[str] = []
        lock = threading.Lock()

        def attempt(i: int) -> None:
            store = replicas[i % 2]
            start.wait()
            try:
                enroll(store, f"dev{i:02}")
                outcome = "enrolled"
            except TokenUnusableError:
                outcome = "unusable"
            except Exception as exc:
                outcome = repr(exc)
            with lock:
                outcomes.append(outcome)

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert collections.Counter(outcomes) == {"enrolled": 10, "unusable": 30}
        for store in replicas:
            assert store.get_token("tok").uses == 10
            assert len(all_devices(store, token_id="tok")) == 10
            assert [e.action for e in store.list_audit()].count("device.enroll") == 10
            assert store.check_integrity() == []
    finally:
        for store in replicas:
            store.close()


# Devices and paging


def test_paging_through_250_devices_yields_each_once_newest_first(store: Store) -> None:
    add_token(store, "tok")
    for i in range(250):
        enroll(store, f"dev{i:03}")
    seen: list[str] = []
    cursor = ""
    sizes = []
    while True:
        page = store.list_devices(page_size=100, cursor=cursor)
        sizes.append(len(page.items))
        seen += [d.id for d in page.items]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert sizes == [100, 100, 50]
    assert seen == [f"dev{i:03}" for i in reversed(range(250))]


def test_list_devices_by_token(store: Store) -> None:
    add_token(store, "a")
    add_token(store, "b")
    for i in range(6):
        enroll(store, f"dev{i}", token_id="a" if i % 2 == 0 else "b")
    assert [d.id for d in all_devices(store, token_id="a")] == ["dev4", "dev2", "dev0"]
    assert [d.id for d in all_devices(store, token_id="b")] == ["dev5", "dev3", "dev1"]
    assert all_devices(store, token_id="nobody") == []
    first = store.list_devices(token_id="a", page_size=2)
    assert [d.id for d in first.items] == ["dev4", "dev2"]
    rest = store.list_devices(token_id="a", page_size=2, cursor=first.next_cursor)
    assert [d.id for d in rest.items] == ["dev0"]
    assert rest.next_cursor == ""


def test_a_page_with_a_budget_ends_before_it_is_spent(store: Store) -> None:
    """Pages end at whichever comes first, page_size or the byte budget, never empty, and
    paging through still yields each device once, newest first."""
    add_token(store)
    for i in range(12):
        enroll(store, f"dev{i:02}")
    sizes = {f"dev{i:02}": 100 if i != 7 else 1000 for i in range(12)}
    budget = PageBudget(max_bytes=350, size_of=lambda d: sizes[d.id])
    seen: list[list[str]] = []
    cursor = ""
    while True:
        page = store.list_devices(page_size=5, cursor=cursor, budget=budget)
        seen.append([d.id for d in page.items])
        cursor = page.next_cursor
        if not cursor:
            break
    assert seen == [
        ["dev11", "dev10", "dev09"],
        ["dev08"],  # dev07 alone is over budget: it gets a page of its own
        ["dev07"],
        ["dev06", "dev05", "dev04"],
        ["dev03", "dev02", "dev01"],
        ["dev00"],
    ]


def _devices_for_filters(store: Store) -> list[Device]:
    """Devices in every state at T0 and around it, on two host names and two tokens."""
    add_token(store, "a")
    add_token(store, "b")
    made = []
    ends = [T0 - US, T0, T0 + US, T0 + timedelta(days=1)]
    for n, (revoked, not_after, host) in enumerate(
        itertools.product([False, True], ends, ["web-1", "db-1"])
    ):
        device = dataclasses.replace(
            new_device(f"dev{n:02}", token_id="a" if n % 3 else "b"),
            hostname=host,
            not_after=not_after,
        )
        store.enroll_device(device, T0 - timedelta(days=2), audit("device.enroll", device.id))
        if revoked:
            store.revoke_device(
                device.id, T0 - timedelta(days=1), audit("device.revoke", device.id)
            )
        made.append(store.get_device(device.id))
    return made


def _listed(store: Store, **filters: Any) -> list[str]:
    ids: list[str] = []
    cursor = ""
    while True:  # small pages, so paging is tested with every filter
        page = store.list_devices(page_size=2, cursor=cursor, **filters)
        ids += [d.id for d in page.items]
        if not page.next_cursor:
            return ids
        cursor = page.next_cursor


def test_device_state_filter_agrees_with_device_state(store: Store) -> None:
    """The SQL filter and devices.policy.device_state put every device in the same state."""
    devices = _devices_for_filters(store)
    newest_first = [d.id for d in reversed(devices)]
    for now in [T0 - US, T0, T0 + US, T0 + timedelta(days=2)]:
        for state in DeviceState:
            expected = [i for i in newest_first if device_state(store.get_device(i), now) is state]
            assert _listed(store, state=state, now=now) == expected, (now, state)
    # At T0 every state occurs, so each branch of the condition was compared.
    assert {device_state(d, T0) for d in devices} == set(DeviceState)


def test_list_devices_by_hostname_state_and_token_together(store: Store) -> None:
    devices = _devices_for_filters(store)
    newest_first = list(reversed(devices))
    assert _listed(store, hostname="web-1") == [d.id for d in newest_first if d.hostname == "web-1"]
    assert _listed(store, hostname="web") == []
    assert _listed(store, hostname="WEB-1") == []  # exactly, as the contract says
    want = [
        d.id
        for d in newest_first
        if d.hostname == "db-1" and d.token_id == "a" and device_state(d, T0) is DeviceState.ACTIVE
    ]
    assert want
    assert _listed(store, hostname="db-1", token_id="a", state=DeviceState.ACTIVE, now=T0) == want
    with pytest.raises(ValueError, match="a state filter needs now"):
        store.list_devices(state=DeviceState.ACTIVE)


def _plan(store: Store, sql: str, params: tuple[Any, ...]) -> str:
    with store.db.connection_context():
        if is_sqlite(store.db):
            rows = store.db.execute_sql("EXPLAIN QUERY PLAN " + sql, params).fetchall()
            return "\n".join(str(row[-1]) for row in rows)
        # A handful of rows is cheaper to read whole; the question here is whether
        # the planner can use the index at all, as it will on a large table.
        store.db.execute_sql("SET enable_seqscan = off")
        rows = store.db.execute_sql("EXPLAIN " + sql, params).fetchall()
        return "\n".join(str(row[0]) for row in rows)


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({"hostname": "web-1"}, "device_hostname_seq"),
        ({"hostname_prefix": "web-"}, "device_hostname_seq"),
        ({"state": DeviceState.REVOKED}, "device_revoked_seq"),
        ({"state": DeviceState.EXPIRED}, "device_unrevoked_not_after"),
        ({"token_id": "a"}, "device_token_id_seq"),
    ],
)
def test_device_filters_use_their_indexes(
    store: Store, filters: dict[str, Any], index: str
) -> None:
    _devices_for_filters(store)
    if not is_sqlite(store.db):
        add_token(store, "bulk")
        # PostgreSQL plans by its statistics: with a handful of rows two partial indexes
        # of the unrevoked devices cost the same, and which it picks is chance. A fleet
        # of current devices, analysed, is the table the plan is for.
        with store.db.connection_context():
            store.db.execute_sql(
                "INSERT INTO device (id, hostname, token_id, public_key_sha256, serial,"
                " certificate_pem, not_after, enrolled_at, peer, last_seen_at)"
                " SELECT 'bulk' || n, 'bulk-' || n, 'bulk', 'key-bulk' || n, 'sb' || n, 'PEM',"
                " %s, %s, 'p', %s FROM generate_series(1, 2000) AS n",
                (to_micros(T0 + timedelta(days=90)), to_micros(T0), to_micros(T0)),
            )
            store.db.execute_sql("ANALYZE device")
    D = store._t.device
    query = D.select()
    if "hostname" in filters:
        query = query.where(D.hostname == filters["hostname"])
    if "hostname_prefix" in filters:
        # As list_devices asks: with a range, as the test database sorts text by code point.
        ranged = store._text_sorts_by_code_point()
        assert ranged
        query = query.where(
            device_hostname_prefix_condition(D, filters["hostname_prefix"], ranged=ranged)
        )
    if "token_id" in filters:
        query = query.where(D.token_id == filters["token_id"])
    if "state" in filters:
        query = query.where(
            device_state_condition(D, filters["state"], T0, sqlite=is_sqlite(store.db))
        )
    sql, params = query.order_by(D.seq.desc()).limit(101).sql()
    plan = _plan(store, sql, tuple(params))
    assert index in plan, plan
    # And no walk of the whole table in seq order (the primary key) on the side.
    assert "device_pkey" not in plan, plan
    assert not re.search(r"^SCAN \w+$", plan, re.MULTILINE), plan


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",
        cursor_of("devices:1"),
        cursor_of("tokens:x"),
        cursor_of("tokens:-1"),
        cursor_of("tokens:0"),
        cursor_of("tokens:1:2"),
        cursor_of("tokens:99999999999999999999"),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        "a",
    ],
)
def test_invalid_token_cursor_is_refused(store: Store, cursor: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^page_token is invalid$"):
        store.list_tokens(now=T0, cursor=cursor)


def test_cursor_of_one_listing_is_refused_by_the_other(store: Store) -> None:
    add_token(store, "a")
    add_token(store, "b")
    enroll(store, "dev1", token_id="a")
    enroll(store, "dev2", token_id="a")
    tokens_cursor = store.list_tokens(now=T0, page_size=1).next_cursor
    devices_cursor = store.list_devices(page_size=1).next_cursor
    assert tokens_cursor and devices_cursor
    with pytest.raises(InvalidArgumentError, match=r"^page_token is invalid$"):
        store.list_devices(cursor=tokens_cursor)
    with pytest.raises(InvalidArgumentError, match=r"^page_token is invalid$"):
        store.list_tokens(now=T0, cursor=devices_cursor)


def test_get_unknown_device_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError, match=r"^device not found$"):
        store.get_device("nope")
    with pytest.raises(NotFoundError, match=r"^device not found$"):
        store.touch_device("nope", T0)
    with pytest.raises(NotFoundError, match=r"^device not found$"):
        store.revoke_device("nope", T0, audit("device.revoke", "device/nope"))
    assert store.list_audit() == []


def test_revoke_device_is_idempotent(store: Store) -> None:
    add_token(store)
    enroll(store, "dev1")
    enroll(store, "dev2")
    first = store.revoke_device("dev1", T0 + US, audit("device.revoke", "device/dev1"))
    assert first.revoked_at == T0 + US
    again = store.revoke_device("dev1", T0 + 2 * US, audit("device.revoke", "device/dev1"))
    assert again.revoked_at == T0 + US
    assert store.get_device("dev1") == again
    assert store.get_device("dev2").revoked_at is None
    assert store.get_token("tok").revoked_at is None
    assert [(e.action, e.detail) for e in store.list_audit(resource="device/dev1")] == [
        ("device.revoke", "already revoked"),
        ("device.revoke", ""),
        ("device.enroll", ""),
    ]


def test_touch_device_sets_last_seen(store: Store) -> None:
    add_token(store)
    enroll(store, "dev1")
    seen = T0 + timedelta(hours=3, microseconds=7)
    store.touch_device("dev1", seen)
    touched = store.get_device("dev1")
    assert touched.last_seen_at == seen
    assert touched.certificate_pem == new_device("dev1").certificate_pem


PACE = RenewalPace(burst=5, interval=timedelta(days=9))


def renew_in(
    store: Store,
    device_id: str,
    key: str,
    now: datetime,
    *,
    caller: str | None = None,
    serial: str | None = None,
    pace: RenewalPace = PACE,
) -> Device:
    """A renewal of device_id onto key, called with certificate caller (default: the current)."""
    return store.renew_device(
        device_id,
        caller_serial=caller if caller is not None else store.get_device(device_id).serial,
        public_key_sha256=key,
        serial=serial or f"serial-{key}",
        certificate_pem=f"PEM of {key}",
        not_after=now + timedelta(days=90),
        now=now,
        pace=pace,
        audit=audit("device.renew", f"device/{device_id}", now),
    )


def test_renew_device(store: Store) -> None:
    add_token(store)
    enroll(store, "dev1", key="key1")
    enroll(store, "dev2", key="key2")
    now = T0 + timedelta(days=60)
    renewed = store.renew_device(
        "dev1",
        caller_serial="serial-dev1",
        public_key_sha256="key3",
        serial="serial-renewed",
        certificate_pem="PEM renewed",
        not_after=now + timedelta(days=90),
        now=now,
        pace=PACE,
        audit=audit("device.renew", "device/dev1", now),
    )
    assert (renewed.public_key_sha256, renewed.serial, renewed.certificate_pem) == (
        "key3",
        "serial-renewed",
        "PEM renewed",
    )
    assert renewed.not_after == now + timedelta(days=90)
    assert renewed.last_seen_at == now
    assert renewed.enrolled_at == T0
    assert store.get_device("dev1") == renewed
    assert store.find_device_by_key("key1") is None
    assert store.find_device_by_key("key3") == renewed
    assert store.list_audit(resource="device/dev1")[0].action == "device.renew"
    assert store.get_device_standing("dev1") == DeviceStanding(
        id="dev1",
        serial="serial-renewed",
        previous_serial="serial-dev1",
        previous_until=T0 + timedelta(days=90),  # the previous certificate's own not_after
        renewal_tat=now + PACE.interval,
    )

    with pytest.raises(AlreadyExistsError, match=r"^this public key is already enrolled$"):
        renew_in(store, "dev1", "key2", now)
    assert store.get_device("dev1") == renewed
    # Its own current key: nothing to swap.
    with pytest.raises(RenewalRefusedError):
        renew_in(store, "dev1", "key3", now)
    assert store.get_device("dev1") == renewed

    store.revoke_device("dev2", now, audit("device.revoke", "device/dev2"))
    dev2 = store.get_device("dev2")
    with pytest.raises(RenewalRefusedError):
        renew_in(store, "dev2", "key4", now)
    assert store.get_device("dev2") == dev2
    with pytest.raises(RenewalRefusedError):
        renew_in(store, "nope", "key5", now, caller="serial-nope")
    with pytest.raises(NotFoundError, match=r"^device not found$"):
        store.get_device_standing("nope")
    assert store.get_token("tok").uses == 2
    assert store.check_integrity() == []


def test_ok_lost_renewal_answer_renews_again_while_the_new_certificate_is_unused(
    store: Store,
) -> None:
    """The certificate a renewal replaced may renew again (a lost answer), days later, while
    the new one is unused; its renewal drops the unused one and keeps its own bound: one
    chain survives. Once the current certificate is used, the previous one is refused."""
    add_token(store)
    enroll(store, "dev1", key="key-a")  # serial-dev1, the first certificate A
    now = T0 + timedelta(days=60)
    renew_in(store, "dev1", "key-b", now)  # A -> B; A honoured until B is used
    standing = store.get_device_standing("dev1")
    assert standing.previous_until == T0 + timedelta(days=90)  # A's own not_after
    # A's answer was lost and the device stayed offline for days: A renews onto C.
    later = now + timedelta(days=3)
    renew_in(store, "dev1", "key-c", later, caller="serial-dev1")
    standing = store.get_device_standing("dev1")
    assert (standing.serial, standing.previous_serial) == ("serial-key-c", "serial-dev1")
    assert standing.previous_until == T0 + timedelta(days=90)
    # B was dropped: it renews nothing.
    with pytest.raises(RenewalRefusedError):
        renew_in(store, "dev1", "key-d", later, caller="serial-key-b")
    # The first use of C retires A, once.
    assert store.retire_previous_certificate("dev1", "serial-key-c", later) is True
    assert store.retire_previous_certificate("dev1", "serial-key-c", later) is False
    standing = store.get_device_standing("dev1")
    assert (standing.serial, standing.previous_serial, standing.previous_until) == (
        "serial-key-c",
        "serial-dev1",
        None,
    )
    with pytest.raises(RenewalRefusedError):
        renew_in(store, "dev1", "key-d", later, caller="serial-dev1")
    # A serial that is not current retires nothing.
    assert store.retire_previous_certificate("dev1", "serial-dev1", later) is False
    assert store.get_device("dev1").serial == "serial-key-c"
    assert [e.action for e in store.list_audit(resource="device/dev1")].count("device.renew") == 2


def test_fail_superseded_cert_renewal_made_before_the_new_rule_keeps_its_overlap(
    store: Store,
) -> None:
    """A renewal recorded by an earlier release bounded the previous certificate by a
    15-minute overlap in previous_until: that bound still holds (no row gains a longer life)."""
    add_token(store)
    enroll(store, "dev1", key="key-a")
    now = T0 + timedelta(days=60)
    renew_in(store, "dev1", "key-b", now)
    run_sql(
        store,
        "UPDATE device SET previous_until = ? WHERE id = ?",
        (to_micros(now + timedelta(minutes=15)), "dev1"),
    )
    with pytest.raises(RenewalRefusedError):
        renew_in(store, "dev1", "key-c", now + timedelta(minutes=15), caller="serial-dev1")
    renew_in(store, "dev1", "key-c", now + timedelta(minutes=14), caller="serial-dev1")
    assert store.get_device("dev1").serial == "serial-key-c"


def test_adopt_certificate_only_over_the_current_one_of_an_active_device(store: Store) -> None:
    """A certificate the database lost (a restored backup) replaces the current one, which
    becomes the previous one, retired; not when the current one changed since it was judged,
    nor for a revoked device, nor with a key enrolled as another device."""
    add_token(store)
    enroll(store, "dev1", key="key-a")
    enroll(store, "dev2", key="key-other")

    def adopt(device_id: str, current: str, key: str) -> bool:
        return store.adopt_certificate(
            device_id,
            current_serial=current,
            serial=f"serial-{key}",
            public_key_sha256=key,
            certificate_pem=f"PEM of {key}",
            not_after=T0 + timedelta(days=120),
            audit=audit("device.adopt", f"device/{device_id}"),
        )

    with pytest.raises(AlreadyExistsError, match=r"^this public key is already enrolled$"):
        adopt("dev1", "serial-dev1", "key-other")
    assert adopt("dev1", "serial-elsewhere", "key-c") is False
    assert adopt("dev1", "serial-dev1", "key-c") is True
    device = store.get_device("dev1")
    assert (device.serial, device.public_key_sha256, device.not_after) == (
        "serial-key-c",
        "key-c",
        T0 + timedelta(days=120),
    )
    standing = store.get_device_standing("dev1")
    assert (standing.previous_serial, standing.previous_until) == ("serial-dev1", None)
    store.revoke_device("dev2", T0, audit("device.revoke", "device/dev2"))
    assert adopt("dev2", "serial-dev2", "key-d") is False
    assert [e.action for e in store.list_audit(resource="device/dev1")].count("device.adopt") == 1
    assert store.check_integrity() == []


def test_fail_renewal_loop_is_paced(store: Store) -> None:
    """Five renewals at once, then one per interval: a loop cannot make the CA sign forever."""
    add_token(store)
    enroll(store, "dev1", key="key-0")
    now = T0 + timedelta(days=1)
    for i in range(1, 6):
        renew_in(store, "dev1", f"key-{i}", now)
    before = store.get_device("dev1")
    with pytest.raises(RenewalRefusedError):
        renew_in(store, "dev1", "key-6", now)
    with pytest.raises(RenewalRefusedError):
        renew_in(store, "dev1", "key-6", now + PACE.interval - US)
    assert store.get_device("dev1") == before
    renew_in(store, "dev1", "key-6", now + PACE.interval)
    with pytest.raises(RenewalRefusedError):
        renew_in(store, "dev1", "key-7", now + PACE.interval)
    # A device renewing once per lifetime share never builds up a debt.
    steady = now + timedelta(days=365)
    for i in range(20):
        renew_in(store, "dev1", f"steady-{i}", steady + i * PACE.interval)
    assert [e.action for e in store.list_audit(limit=1000)].count("device.renew") == 26


def test_renewals_racing_from_one_certificate_leave_one_chain(database_url: str) -> None:
    """12 renewals of one certificate at once on two stores (two replicas): every one that
    succeeds replaces the previous winner, and only the last winner and the first certificate
    are honoured afterwards."""
    replicas = [Store.open(database_url), Store(connect(database_url))]
    try:
        add_token(replicas[0])
        enroll(replicas[0], "dev1", key="key-a")
        now = T0 + timedelta(days=60)
        pace = RenewalPace(burst=100, interval=timedelta(seconds=1))
        start = threading.Barrier(12)
        outcomes: list[str] = []
        lock = threading.Lock()

        def attempt(i: int) -> None:
            store = replicas[i % 2]
            start.wait()
            try:
                renew_in(store, "dev1", f"key-{i}", now, caller="serial-dev1", pace=pace)
                outcome = "renewed"
            except Exception as exc:
                outcome = repr(exc)
            with lock:
                outcomes.append(outcome)

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert outcomes == ["renewed"] * 12
        store = replicas[0]
        standing = store.get_device_standing("dev1")
        assert standing.previous_serial == "serial-dev1"
        winner = store.get_device("dev1")
        assert standing.serial == winner.serial == f"serial-{winner.public_key_sha256}"
        assert store.check_integrity() == []
        # Every other renewal's certificate is neither current nor previous.
        losers = {f"serial-key-{i}" for i in range(12)} - {winner.serial}
        assert len(losers) == 11
        assert not losers & {standing.serial, standing.previous_serial}
    finally:
        for store in replicas:
            store.close()


def test_first_use_and_a_renewal_from_the_previous_race(database_url: str) -> None:
    """The first use of the new certificate and a renewal from the previous one (a thief
    holding the old key), at once on two replicas, many times: either the renewal wins and
    the first use retires nothing, or the retirement wins and the renewal is refused; never
    both, so the old key never outlives the first use of the new one."""
    replicas = [Store.open(database_url), Store(connect(database_url))]
    try:
        add_token(replicas[0])
        pace = RenewalPace(burst=1000, interval=timedelta(seconds=1))
        outcomes: set[tuple[bool, bool]] = set()
        for round_ in range(20):
            device_id = f"dev{round_}"
            enroll(replicas[0], device_id, key=f"key-a{round_}")
            now = T0 + timedelta(days=60)
            renew_in(replicas[0], device_id, f"key-b{round_}", now, pace=pace)
            start = threading.Barrier(2)
            result: dict[str, bool] = {}

            def retire(device_id: str = device_id, round_: int = round_) -> None:
                start.wait()
                result["retired"] = replicas[1].retire_previous_certificate(
                    device_id, f"serial-key-b{round_}", now
                )

            def renew(device_id: str = device_id, round_: int = round_) -> None:
                start.wait()
                try:
                    renew_in(
                        replicas[0],
                        device_id,
                        f"key-c{round_}",
                        now + timedelta(seconds=1),
                        caller=f"serial-{device_id}",
                        pace=pace,
                    )
                    result["renewed"] = True
                except RenewalRefusedError:
                    result["renewed"] = False

            threads = [threading.Thread(target=retire), threading.Thread(target=renew)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            assert result["retired"] != result["renewed"], result
            outcomes.add((result["retired"], result["renewed"]))
            standing = replicas[0].get_device_standing(device_id)
            if result["retired"]:
                assert standing.serial == f"serial-key-b{round_}"
                assert standing.previous_until is None
            else:
                assert standing.serial == f"serial-key-c{round_}"
                assert standing.previous_serial == f"serial-{device_id}"
        assert replicas[0].check_integrity() == []
    finally:
        for store in replicas:
            store.close()


def test_facts_round_trip(store: Store) -> None:
    add_token(store)
    facts = {"os": "linux", "kernel": "6.1.0-18-amd64", "empty": "", "ünïcode": "✓"}
    device = Device(**{**new_device("dev1").__dict__, "facts": facts})
    store.enroll_device(device, T0, audit("device.enroll", "device/dev1"))
    assert store.get_device("dev1").facts == facts


# Audit trail


def test_audit_trail_newest_first_by_resource_with_limit(store: Store) -> None:
    for i in range(5):
        store.record(audit(f"act{i}", "thing/a" if i % 2 == 0 else "thing/b", T0 + i * US))
    assert [e.action for e in store.list_audit()] == ["act4", "act3", "act2", "act1", "act0"]
    assert [e.action for e in store.list_audit(resource="thing/a")] == ["act4", "act2", "act0"]
    assert [e.action for e in store.list_audit(limit=2)] == ["act4", "act3"]
    assert store.list_audit(resource="thing/a")[0] == audit("act4", "thing/a", T0 + 4 * US)


# Datetimes


def test_datetimes_come_back_as_utc_with_the_same_instant(store: Store) -> None:
    plus_two = timezone(timedelta(hours=2))
    created = datetime(2026, 3, 1, 14, 0, 0, 123456, tzinfo=plus_two)
    expires = datetime(2100, 1, 1, tzinfo=plus_two)
    store.create_token(
        new_token("tok", expires_at=expires, created_at=created),
        audit("token.create", "token/tok", datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=UTC)),
    )
    token = store.get_token("tok")
    assert token.created_at == created
    assert token.created_at.tzinfo is UTC
    assert token.created_at.microsecond == 123456
    assert token.expires_at == expires
    assert token.expires_at is not None and token.expires_at.tzinfo is UTC
    assert store.list_audit()[0].at == datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=UTC)


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match=r"timezone-aware"):
        add_token(store, "tok", expires_at=datetime(2026, 1, 1))
    with pytest.raises(NotFoundError):
        store.get_token("tok")
    with pytest.raises(ValueError, match=r"timezone-aware"):
        store.list_tokens(now=datetime(2026, 1, 1), state=TokenState.ACTIVE)


# Integrity


def test_check_integrity_finds_a_device_that_consumed_no_use(store: Store) -> None:
    add_token(store, "tok", max_uses=1)
    assert store.check_integrity() == []
    run_sql(
        store,
        "INSERT INTO device (id, hostname, token_id, public_key_sha256, serial,"
        " certificate_pem, not_after, enrolled_at, peer, facts)"
        " VALUES ('sneaky', 'h', 'tok', 'k', 's', 'p', 0, 0, '', '{}')",
    )
    assert store.check_integrity() == ["token tok: uses is 0 but 1 devices enrolled with it"]


def test_uses_beyond_max_uses_cannot_be_stored(store: Store) -> None:
    add_token(store, "tok", max_uses=1)
    with pytest.raises(peewee.IntegrityError):
        run_sql(store, "UPDATE token SET uses = 2 WHERE id = 'tok'")


# Failures of the database itself


def test_unmigrated_database_error_is_not_mistaken_for_unavailable(database_url: str) -> None:
    store = Store(connect(database_url))
    try:
        with pytest.raises(peewee.DatabaseError):
            store.get_token("tok")
    finally:
        store.close()


def test_sqlite_locked_beyond_timeout_is_unavailable(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store.open(sqlite_url)
    add_token(store)
    # Shorten this thread's busy timeout so the test need not wait ten seconds.
    store.db.execute_sql("PRAGMA busy_timeout = 50")
    blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with caplog.at_level(logging.WARNING, logger="sielum.store"):
            with pytest.raises(UnavailableError, match=r"^database unavailable, try again$"):
                add_token(store, "tok2")
        assert "database is locked" in caplog.text
    finally:
        blocker.rollback()
        blocker.close()
    assert add_token(store, "tok2").id == "tok2"
    store.close()


def test_unreachable_postgres_is_unavailable_and_logs_no_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Port 1 on localhost: nothing listens, the connection is refused at once.
    store = Store(connect("postgresql://sielum:pw-hunter2@127.0.0.1:1/sielum"))
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(UnavailableError, match=r"^database unavailable, try again$") as info:
            store.get_token("tok")
    assert "pw-hunter2" not in caplog.text
    assert "pw-hunter2" not in str(info.value)
    assert "database unavailable in get_token" in caplog.text


def _psql(postgres_url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run sql as another client of the same server, from its maintenance database."""
    admin_db = os.environ.get("SIELUM_TEST_PG_DB", "test")  # as tests/conftest.py
    conn = psycopg2.connect(postgres_url.rsplit("/", 1)[0] + "/" + admin_db, connect_timeout=3)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


def _backends(postgres_url: str) -> list[tuple[Any, ...]]:
    dbname = postgres_url.rsplit("/", 1)[1]
    return _psql(postgres_url, "SELECT pid FROM pg_stat_activity WHERE datname = %s", (dbname,))


def _terminate_backends(postgres_url: str, *, wait: bool) -> None:
    dbname = postgres_url.rsplit("/", 1)[1]
    killed = _psql(
        postgres_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
        (dbname,),
    )
    assert killed
    deadline = time.monotonic() + 10
    while wait and _backends(postgres_url) and time.monotonic() < deadline:
        time.sleep(0.02)


def _fill_pool(store: Store, n: int) -> None:
    """Have n connections open in the pool, as after a burst of concurrent calls."""
    barrier = threading.Barrier(n)

    def call() -> None:
        with store.db.connection_context():
            barrier.wait()
            store.get_token("tok")

    threads = [threading.Thread(target=call) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_store_recovers_after_postgres_drops_its_connections(postgres_url: str) -> None:
    store = Store.open(postgres_url)
    try:
        add_token(store)
        _fill_pool(store, 4)
        assert len(_backends(postgres_url)) >= 4

        # The contract: the next call succeeds or is UNAVAILABLE, the one after succeeds.
        _terminate_backends(postgres_url, wait=False)
        try:
            store.get_token("tok")
        except UnavailableError:
            pass
        assert store.get_token("tok").uses == 0

        # Once the old backends are gone, reconnecting is invisible: the first read
        # and the first write succeed although every pooled connection was dead.
        _fill_pool(store, 4)
        _terminate_backends(postgres_url, wait=True)
        assert store.get_token("tok").uses == 0
        _fill_pool(store, 4)
        _terminate_backends(postgres_url, wait=True)
        assert enroll(store, "dev1").id == "dev1"
        assert store.get_token("tok").uses == 1
        assert store.check_integrity() == []
    finally:
        store.close()


def test_store_is_unavailable_while_postgres_refuses_and_recovers_after(
    postgres_url: str,
) -> None:
    dbname = postgres_url.rsplit("/", 1)[1]
    store = Store.open(postgres_url)
    try:
        add_token(store)
        _fill_pool(store, 3)
        # As good as a server that is down: live connections die, new ones are refused.
        _psql(postgres_url, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        _terminate_backends(postgres_url, wait=True)
        with pytest.raises(UnavailableError, match=r"^database unavailable, try again$"):
            store.get_token("tok")
        with pytest.raises(UnavailableError, match=r"^database unavailable, try again$"):
            enroll(store, "dev1")
        _psql(postgres_url, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        assert enroll(store, "dev1").id == "dev1"
        assert store.get_token("tok").uses == 1
    finally:
        store.close()


# connect()


@pytest.mark.parametrize(
    "url",
    [
        "",
        "sielum.db",
        "mysql://root:pw-hunter2@db/sielum",
        "sqlite://sielum.db",
        "sqlite:///",
        "sqlite:///:memory:",
        "postgresql://sielum:pw-hunter2@db:notaport/sielum",
        "postgresql://sielum:pw-hunter2@db:5432",
        "postgresql://sielum:pw-hunter2@db:5432/",
    ],
)
def test_connect_refuses_bad_urls_without_echoing_them(url: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        connect(url)
    assert "pw-hunter2" not in info.value.message
    assert "sqlite:///" in info.value.message or "directory" in info.value.message


def test_connect_sqlite_missing_directory_says_so(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"directory .* does not exist"):
        connect(f"sqlite:///{tmp_path}/missing/sielum.db")


def test_connect_sqlite_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = Store.open("sqlite:///relative.db")
    try:
        add_token(store)
    finally:
        store.close()
    assert (tmp_path / "relative.db").is_file()


def test_connect_sqlite_pragmas(sqlite_url: str) -> None:
    db = connect(sqlite_url)
    try:

        def pragma(name: str) -> object:
            return db.execute_sql(f"PRAGMA {name}").fetchone()[0]

        assert pragma("journal_mode") == "wal"
        assert pragma("busy_timeout") == 10000
        assert pragma("foreign_keys") == 1
        assert pragma("synchronous") == 1  # NORMAL
        assert pragma("wal_autocheckpoint") == 10_000
        assert pragma("journal_size_limit") == 64 * 1024 * 1024
    finally:
        db.close()


def test_connect_accepts_postgres_scheme(postgres_url: str) -> None:
    store = Store.open(postgres_url.replace("postgresql://", "postgres://", 1))
    try:
        assert add_token(store).id == "tok"
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("sqlite:///sielum.db", True),
        ("postgresql://postgres@127.0.0.1:5432/test", True),
        ("postgresql://u@localhost/db", True),
        ("postgresql://u@[::1]:5432/db", True),
        ("postgresql:///db", True),  # libpq's default: the Unix socket
        ("postgresql:///db?host=/var/run/postgresql", True),
        ("postgresql://u:p%40ss@127.0.0.1/db", True),
        ("postgresql://u@db.example:5432/db", False),
        ("postgresql://u@10.0.0.5/db", False),
        ("postgresql://u@127.0.0.1,db2.example/db", False),  # a fallback host elsewhere
        ("postgresql://u@localhost/db?host=db.example", False),  # the query names the host
    ],
)
def test_is_on_this_host(url: str, local: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decides whether the server runs calls on its event loop or on threads."""
    monkeypatch.delenv("PGHOST", raising=False)
    monkeypatch.delenv("PGHOSTADDR", raising=False)
    assert is_on_this_host(url) is local


def test_is_on_this_host_reads_pghost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOST", "db.example")
    assert not is_on_this_host("postgresql:///db")
    assert is_on_this_host("sqlite:///sielum.db")


def test_redact_url_hides_password() -> None:
    assert redact_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert (
        redact_url("sqlite:////var/lib/sielum/sielum.db") == "sqlite:////var/lib/sielum/sielum.db"
    )


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        (
            "postgresql://u@h/db?password=s3cret&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        (
            "postgresql://u:p%40ss@h1:5432,h2:5433/db?sslpassword=k3y&application_name=x",
            "postgresql://u:***@h1:5432,h2:5433/db?sslpassword=***&application_name=x",
        ),
        # A password with "@" in the query must not be taken for the userinfo.
        (
            "postgresql://h/db?user=u&password=a@b:c&host=/run/postgresql",
            "postgresql://h/db?user=u&password=***&host=/run/postgresql",
        ),
        (
            "postgres://u:x@h/db?oauth_client_secret=z&oauth_client_id=sielum&passfile=/p",
            "postgres://u:***@h/db?oauth_client_secret=***&oauth_client_id=sielum&passfile=***",
        ),
        # Unknown parameters are redacted too: a later libpq may add secret ones.
        (
            "postgresql:///db?new_secret_thing=1&Password=2",
            "postgresql:///db?new_secret_thing=***&Password=***",
        ),
        ("postgresql://u:@h/db", "postgresql://u:***@h/db"),
        ("postgresql://h/db#frag", "postgresql://h/db#***"),
    ],
)
def test_fail_secrets_of_a_database_url_reach_the_log(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


# Counts by state


def test_state_counts_agree_with_the_policies(store: Store) -> None:
    """The counts each scrape reads equal what token_state and device_state say row by row."""
    combos = itertools.product([False, True], [None, T0 - US, T0 + US], [None, 0, 2])
    for n, (revoked, expires_at, uses_left) in enumerate(combos):
        token_id = f"tok{n:02}"
        add_token(store, token_id)
        for d in range(n % 3):
            enroll(store, f"dev{n:02}-{d}", token_id)
        # The token's limits afterwards, as they stand when the counts are taken.
        run_sql(
            store,
            "UPDATE token SET max_uses = CASE WHEN ? THEN uses + ? END, expires_at = ?,"
            " revoked_at = ? WHERE id = ?",
            (
                uses_left is not None,
                uses_left or 0,
                None if expires_at is None else to_micros(expires_at),
                to_micros(T0 - timedelta(days=1)) if revoked else None,
                token_id,
            ),
        )
    for n, device in enumerate(all_devices(store)):
        if n % 3 == 0:
            store.revoke_device(device.id, T0, audit("device.revoke", device.id))
        elif n % 3 == 1:  # its certificate ends at T0: expired then, as device_state says
            run_sql(
                store, "UPDATE device SET not_after = ? WHERE id = ?", (to_micros(T0), device.id)
            )
    assert store.check_integrity() == []

    tokens, devices = all_tokens(store, now=T0), all_devices(store)
    for now in (T0 - timedelta(days=1), T0, T0 + timedelta(days=100)):
        expected_tokens = collections.Counter(
            token_state(
                revoked=t.revoked_at is not None,
                expires_at=t.expires_at,
                uses=t.uses,
                max_uses=t.max_uses,
                now=now,
            )
            for t in tokens
        )
        expected_devices = collections.Counter(device_state(d, now) for d in devices)
        counts = store.state_counts(now)
        assert counts.tokens == {state: expected_tokens[state] for state in TokenState}, now
        assert counts.devices == {state: expected_devices[state] for state in DeviceState}, now
    # Every state occurs at T0, so each branch of each count was compared.
    at_t0 = store.state_counts(T0)
    assert all(at_t0.tokens.values()) and all(at_t0.devices.values()), at_t0


def test_state_counts_of_an_empty_database_are_zeros(store: Store) -> None:
    counts = store.state_counts(T0)
    assert counts.tokens == dict.fromkeys(TokenState, 0)
    assert counts.devices == dict.fromkeys(DeviceState, 0)


def test_silent_devices_count_by_last_call(store: Store) -> None:
    """Not revoked, last heartbeat (else enrollment) before the cutoff: sielum_devices_silent."""
    add_token(store, "tok")
    ages = {  # device -> (enrolled this long before T0, last heartbeat this long before T0)
        "fresh": (timedelta(days=30), timedelta(minutes=5)),
        "two-hours": (timedelta(days=30), timedelta(hours=2)),
        "two-days": (timedelta(days=30), timedelta(days=2)),
        "never-new": (timedelta(minutes=10), None),
        "never-old": (timedelta(days=9), None),
        "revoked-old": (timedelta(days=30), timedelta(days=20)),
    }
    for device_id, (enrolled, seen) in ages.items():
        enroll(store, device_id)
        run_sql(
            store,
            "UPDATE device SET enrolled_at = ?, last_seen_at = ? WHERE id = ?",
            (to_micros(T0 - enrolled), None if seen is None else to_micros(T0 - seen), device_id),
        )
    store.revoke_device("revoked-old", T0, audit("device.revoke", "revoked-old"))
    cutoffs = {
        "1h": T0 - timedelta(hours=1),
        "24h": T0 - timedelta(hours=24),
        "7d": T0 - timedelta(days=7),
    }
    assert store.count_silent_devices(cutoffs) == {"1h": 3, "24h": 2, "7d": 1}
    # A heartbeat at the cutoff itself is not older than it.
    assert store.count_silent_devices({"at": T0 - timedelta(hours=2)}) == {"at": 2}


def test_silent_devices_are_counted_on_their_index(sqlite_url: str) -> None:
    """Each scrape reads the partial index of migration 12, never the device table."""
    store = Store.open(sqlite_url)
    try:
        with store.db.connection_context():
            plan = [
                str(row[-1])
                for row in store.db.execute_sql(
                    "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM device"
                    " WHERE revoked_at IS NULL AND last_seen_at < ?",
                    (0,),
                ).fetchall()
            ]
            plan += [
                str(row[-1])
                for row in store.db.execute_sql(
                    "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM device"
                    " WHERE revoked_at IS NULL AND last_seen_at IS NULL AND enrolled_at < ?",
                    (0,),
                ).fetchall()
            ]
    finally:
        store.close()
    assert sum("device_unrevoked_last_seen" in step for step in plan) == 2, plan
    assert not any(step.startswith("SCAN device") and "INDEX" not in step for step in plan), plan


def test_state_counts_read_indexes_not_the_device_table(sqlite_url: str) -> None:
    """A scrape of a million-device database reads no device row but those revoked or expired."""
    store = Store.open(sqlite_url)
    try:
        with store.db.connection_context():
            sql = store._count_sql.devices
            plan = [
                str(row[-1])
                for row in store.db.execute_sql(f"EXPLAIN QUERY PLAN {sql}", (0,)).fetchall()
            ]
    finally:
        store.close()
    assert any("device_revoked_seq" in step for step in plan), plan
    assert any("device_unrevoked_not_after" in step for step in plan), plan
    assert not any(step.startswith("SCAN device") and "INDEX" not in step for step in plan), plan


def test_standing_read_sees_every_commit_and_survives_dropped_connections(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The device gate's read runs on PostgreSQL as a prepared statement on connections of
    its own (store/database.py PreparedRead): it still sees another replica's revocation
    at once, comes back after PostgreSQL dropped its connections, and answers UNAVAILABLE
    while PostgreSQL refuses them."""
    dbname = postgres_url.rsplit("/", 1)[1]
    store = Store.open(postgres_url)
    other = Store.open(postgres_url)  # another replica
    try:
        add_token(store)
        enroll(store, "dev1")
        assert store.get_device_standing("dev1").revoked_at is None
        assert _psql(
            postgres_url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE %s",
            (dbname, "EXECUTE sielum_standing%"),
        ) == [(1,)]
        other.revoke_device("dev1", T0, audit("device.revoke", "device/dev1"))
        assert store.get_device_standing("dev1").revoked_at == T0

        _terminate_backends(postgres_url, wait=True)
        # Its kept connection is dead: the read reconnects and prepares anew.
        assert store.get_device_standing("dev1").revoked_at == T0
        assert "lost the PostgreSQL connection" in caplog.text
        with pytest.raises(NotFoundError, match=r"^device not found$"):
            store.get_device_standing("nope")

        _psql(postgres_url, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        _terminate_backends(postgres_url, wait=True)
        with pytest.raises(UnavailableError, match=r"^database unavailable, try again$"):
            store.get_device_standing("dev1")
        _psql(postgres_url, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        assert store.get_device_standing("dev1").revoked_at == T0
    finally:
        other.close()
        store.close()
