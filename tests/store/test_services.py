"""Service identities in the Store, on SQLite and PostgreSQL: names, revocation, paging."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from sielum.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from sielum.model import AuditEvent, AuditFilter, Service, ServiceState
from sielum.store import Store

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store.open(database_url)
    yield s
    s.close()


def event(action: str, name: str, at: datetime = T0) -> AuditEvent:
    return AuditEvent(
        at=at, actor="admin/root", action=action, resource=f"service/{name}", peer="127.0.0.1"
    )


def service(name: str, serial: str = "ab12") -> Service:
    return Service(name=name, created_at=T0, created_by="root", serial=serial, issuer="c0ffee")


def add_service(store: Store, name: str) -> Service:
    return store.create_service(service(name), event("service.create", name))


def actions(store: Store) -> list[tuple[str, str, str]]:
    events = store.list_audit_events(AuditFilter(), page_size=1000).items
    return [(e.action, e.resource, e.detail) for e in events]


def test_create_find_and_list_services(store: Store) -> None:
    assert store.find_service("billing") is None
    made = add_service(store, "billing")
    assert store.find_service("billing") == made
    assert made.state is ServiceState.ACTIVE
    add_service(store, "crm")
    assert [s.name for s in store.list_services().items] == ["crm", "billing"]
    assert actions(store) == [
        ("service.create", "service/crm", ""),
        ("service.create", "service/billing", ""),
    ]


def test_list_services_pages_newest_first(store: Store) -> None:
    names = [f"s{i}" for i in range(5)]
    for name in names:
        add_service(store, name)
    seen: list[str] = []
    cursor = ""
    while True:
        page = store.list_services(page_size=2, cursor=cursor)
        seen += [s.name for s in page.items]
        cursor = page.next_cursor
        if not cursor:
            break
    assert seen == list(reversed(names))
    with pytest.raises(InvalidArgumentError):
        store.list_services(cursor="admins:1")  # another list's cursor


def test_a_revoked_services_name_is_never_reused(store: Store) -> None:
    add_service(store, "billing")
    with pytest.raises(AlreadyExistsError) as caught:
        add_service(store, "billing")
    assert caught.value.message == "service billing already exists"
    store.revoke_service("billing", T0, event("service.revoke", "billing"))
    with pytest.raises(AlreadyExistsError) as caught:
        add_service(store, "billing")
    assert caught.value.message == (
        "service billing was revoked; a revoked service's name is never reused"
    )
    assert [a[0] for a in actions(store)] == ["service.revoke", "service.create"]


def test_revoke_service_keeps_the_first_time(store: Store) -> None:
    add_service(store, "billing")
    first = store.revoke_service("billing", T0, event("service.revoke", "billing"))
    assert first.revoked_at == T0
    assert first.state is ServiceState.REVOKED
    later = T0 + timedelta(hours=1)
    again = store.revoke_service("billing", later, event("service.revoke", "billing", later))
    assert again.revoked_at == T0
    assert store.find_service("billing") == first
    assert actions(store)[:2] == [
        ("service.revoke", "service/billing", "already revoked"),
        ("service.revoke", "service/billing", ""),
    ]


def test_fail_revoke_an_unknown_service_changes_nothing(store: Store) -> None:
    with pytest.raises(NotFoundError) as caught:
        store.revoke_service("ghost", T0, event("service.revoke", "ghost"))
    assert caught.value.message == "service not found"
    assert actions(store) == []


def test_two_creations_of_one_name_at_once_make_one_service(store: Store) -> None:
    """The unique name decides a race the registry's check before signing cannot."""
    results: list[str] = []
    barrier = threading.Barrier(4)

    def create(serial: str) -> None:
        barrier.wait()
        try:
            store.create_service(service("raced", serial), event("service.create", "raced"))
            results.append(serial)
        except AlreadyExistsError:
            results.append("refused")

    threads = [threading.Thread(target=create, args=(f"s{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = [r for r in results if r != "refused"]
    assert len(made) == 1 and results.count("refused") == 3
    found = store.find_service("raced")
    assert found is not None and found.serial == made[0]
    assert len(actions(store)) == 1
