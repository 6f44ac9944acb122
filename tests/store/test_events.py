"""The device event log on SQLite and PostgreSQL: one event per change, in commit order."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest

from sielum.errors import AlreadyExistsError
from sielum.model import DeviceEventKind
from sielum.store import Store, connect
from tests.store.test_store import T0, add_token, audit, enroll, new_device, renew_in

Kind = DeviceEventKind


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store.open(database_url)
    yield s
    s.close()


def kinds(store: Store, after: int = 0) -> list[tuple[int, Kind, str]]:
    return [(e.sequence, e.kind, e.device_id) for e in store.device_events_after(after, 1000)]


def test_every_change_of_a_device_logs_one_event_with_its_standing(store: Store) -> None:
    assert store.event_head() == 0
    assert store.device_events_after(0, 10) == []
    add_token(store)
    enroll(store, "dev1", key="key1")
    enroll(store, "dev2", key="key2")
    later = T0 + timedelta(days=60)
    renew_in(store, "dev1", "key1b", later)
    assert store.retire_previous_certificate("dev1", "serial-key1b", later) is True
    store.revoke_device("dev2", later, audit("device.revoke", "device/dev2"))
    # A repeat changes nothing and logs nothing.
    store.revoke_device("dev2", later, audit("device.revoke", "device/dev2"))
    store.revoke_device(
        "dev1", later, audit("device.unenroll", "device/dev1"), kind=Kind.UNENROLLED
    )

    events = store.device_events_after(0, 100)
    assert [(e.sequence, e.kind, e.device_id) for e in events] == [
        (1, Kind.ENROLLED, "dev1"),
        (2, Kind.ENROLLED, "dev2"),
        (3, Kind.RENEWED, "dev1"),
        (4, Kind.RENEWED, "dev1"),
        (5, Kind.REVOKED, "dev2"),
        (6, Kind.UNENROLLED, "dev1"),
    ]
    assert store.event_head() == 6
    enrolled, renewed, retired, revoked = events[0], events[2], events[3], events[4]
    assert (enrolled.serial, enrolled.previous_serial, enrolled.hostname, enrolled.at) == (
        "serial-dev1",
        "",
        "dev1.example.org",
        T0,
    )
    # The renewal honours the previous certificate until its own not_after...
    assert (renewed.serial, renewed.previous_serial, renewed.previous_until) == (
        "serial-key1b",
        "serial-dev1",
        T0 + timedelta(days=90),
    )
    # ...and its first use retires it.
    assert (retired.serial, retired.previous_serial, retired.previous_until) == (
        "serial-key1b",
        "",
        None,
    )
    assert (revoked.serial, revoked.previous_serial, revoked.hostname) == (
        "",
        "",
        "dev2.example.org",
    )
    assert kinds(store, after=4) == [(5, Kind.REVOKED, "dev2"), (6, Kind.UNENROLLED, "dev1")]
    assert len(store.device_events_after(0, 2)) == 2


def test_fail_a_change_that_rolls_back_logs_nothing_and_leaves_no_gap(store: Store) -> None:
    add_token(store)
    enroll(store, "dev1", key="key1")
    with pytest.raises(AlreadyExistsError):
        enroll(store, "dev2", key="key1")  # the key is dev1's: the whole enrollment rolls back
    assert store.retire_previous_certificate("dev1", "serial-dev1", T0) is False
    enroll(store, "dev3", key="key3")
    assert kinds(store) == [(1, Kind.ENROLLED, "dev1"), (2, Kind.ENROLLED, "dev3")]


def test_adopting_a_certificate_logs_a_renewal(store: Store) -> None:
    add_token(store)
    enroll(store, "dev1", key="key1")
    assert store.adopt_certificate(
        "dev1",
        current_serial="serial-dev1",
        serial="serial-key9",
        public_key_sha256="key9",
        certificate_pem="PEM of key9",
        not_after=T0 + timedelta(days=120),
        audit=audit("device.adopt", "device/dev1"),
    )
    event = store.device_events_after(1, 10)[0]
    assert (event.kind, event.serial, event.previous_serial) == (Kind.RENEWED, "serial-key9", "")


def test_snapshot_pages_list_devices_not_revoked(store: Store) -> None:
    add_token(store)
    for i in range(5):
        enroll(store, f"dev{i}", key=f"key{i}")
    store.revoke_device("dev2", T0, audit("device.revoke", "device/dev2"))
    renew_in(store, "dev4", "key4b", T0 + timedelta(days=60))
    seen: list[str] = []
    cursor = 0
    pages = 0
    while True:
        page, cursor = store.current_devices(cursor, 2, T0, 7)
        pages += 1
        seen += [e.device_id for e in page]
        assert all(e.kind is Kind.CURRENT and e.serial and e.sequence == 7 for e in page)
        assert all(e.at == T0 for e in page)
        if not cursor:
            break
    assert seen == ["dev0", "dev1", "dev3", "dev4"]
    assert pages == 3  # a full last page is followed by an empty one
    dev4 = store.current_devices(0, 10, T0, 7)[0][-1]
    assert (dev4.serial, dev4.previous_serial) == ("serial-key4b", "serial-dev4")


def test_replicas_commit_events_in_sequence_order(postgres_url: str) -> None:
    """Two replicas, eight writers: a reader polling the log never sees n+1 before n.

    A sequence taken at INSERT (a database sequence) would fail this: a writer that
    took 7 can commit after one that took 8, and a reader that saw 8 resumes past 7.
    """
    replicas = [Store.open(postgres_url), Store(connect(postgres_url))]
    reader = Store(connect(postgres_url))
    try:
        add_token(replicas[0])
        writers, per_writer = 8, 25
        done = threading.Event()
        errors: list[BaseException] = []
        seen: list[int] = []

        def write(w: int) -> None:
            store = replicas[w % 2]
            try:
                for i in range(per_writer):
                    device_id = f"w{w}d{i}"
                    store.enroll_device(
                        new_device(device_id, key=f"k{w}-{i}"),
                        T0,
                        audit("device.enroll", f"device/{device_id}"),
                    )
                    if i % 3 == 0:
                        store.revoke_device(device_id, T0, audit("device.revoke", device_id))
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        poller = threading.Thread(target=read_in_order, args=(reader, done, seen, errors))
        poller.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        poller.join()
        assert errors == []
        changes = writers * (per_writer + len(range(0, per_writer, 3)))
        assert seen == list(range(1, changes + 1))
        assert reader.event_head() == changes
    finally:
        for s in (*replicas, reader):
            s.close()


def read_in_order(
    reader: Store, done: threading.Event, seen: list[int], errors: list[BaseException]
) -> None:
    """Poll the event log until done is set, appending each sequence read to seen; an
    event out of order (a gap, or one seen twice) is appended to errors, and ends it."""
    position = 0
    while True:
        finished = done.is_set()
        for event in reader.device_events_after(position, 1000):
            if event.sequence != position + 1:
                errors.append(AssertionError(f"saw {event.sequence} after {position}"))
                return
            position = event.sequence
            seen.append(position)
        if finished:
            return
