"""last_seen_at from heartbeats: noted in memory, written forward only, once a minute."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import peewee
import pytest

from sielum.devices.lastseen import WRITE_EVERY, LastSeen
from sielum.store import devices as store_devices
from sielum.store.store import Store

from .test_store import T0, add_token, enroll, run_sql

MINUTE = timedelta(minutes=1)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store.open(database_url)
    yield s
    s.close()


def test_touch_devices_writes_once_per_minute(store: Store) -> None:
    add_token(store)
    for name in ("dev1", "dev2", "dev3"):
        enroll(store, name)
    seen = {"dev1": T0 + timedelta(seconds=5), "dev2": T0 + timedelta(seconds=6), "gone": T0}
    assert store.touch_devices(seen, MINUTE) == 2  # the unknown device is skipped
    assert store.get_device("dev1").last_seen_at == seen["dev1"]
    assert store.get_device("dev2").last_seen_at == seen["dev2"]
    assert store.get_device("dev3").last_seen_at is None
    # Less than a minute later (another replica's flush): nothing is written.
    later = {"dev1": T0 + timedelta(seconds=64), "dev2": T0 + timedelta(seconds=66)}
    assert store.touch_devices(later, MINUTE) == 1
    assert store.get_device("dev1").last_seen_at == seen["dev1"]
    assert store.get_device("dev2").last_seen_at == later["dev2"]
    # An older flush arriving late never moves it back.
    assert store.touch_devices({"dev2": T0}, MINUTE) == 0
    assert store.get_device("dev2").last_seen_at == later["dev2"]


def test_touch_devices_takes_more_than_one_chunk(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_devices, "TOUCH_CHUNK", 10)  # 1,000 in production
    add_token(store)
    names = [f"dev{i}" for i in range(23)]
    for name in names:
        enroll(store, name, key=f"key-{name}")
    assert store.touch_devices(dict.fromkeys(names, T0), MINUTE) == len(names)
    assert {store.get_device(name).last_seen_at for name in names} == {T0}


def test_heartbeats_are_noted_and_written_in_one_flush(store: Store) -> None:
    add_token(store)
    enroll(store, "dev1")
    enroll(store, "dev2")
    last_seen = LastSeen(store)
    last_seen.seen("dev1", T0)
    last_seen.seen("dev1", T0 + timedelta(seconds=1))
    last_seen.seen("dev2", T0 + timedelta(seconds=2))
    assert store.get_device("dev1").last_seen_at is None  # nothing written yet
    assert last_seen.flush(T0 + timedelta(seconds=2)) == 2
    assert store.get_device("dev1").last_seen_at == T0 + timedelta(seconds=1)
    # Within the minute, a heartbeat is not even noted; after it, it is written.
    last_seen.seen("dev1", T0 + timedelta(seconds=30))
    assert last_seen.pending == 0
    last_seen.seen("dev1", T0 + WRITE_EVERY + timedelta(seconds=2))
    assert last_seen.flush(T0 + WRITE_EVERY + timedelta(seconds=2)) == 1
    assert store.get_device("dev1").last_seen_at == T0 + WRITE_EVERY + timedelta(seconds=2)
    assert last_seen.flush(T0 + WRITE_EVERY + timedelta(seconds=4)) == 0


def test_a_failed_flush_keeps_the_notes_for_the_next(store: Store) -> None:
    add_token(store)
    enroll(store, "dev1")
    last_seen = LastSeen(store)
    last_seen.seen("dev1", T0)
    run_sql(store, "ALTER TABLE device RENAME TO device_away")
    try:
        with pytest.raises(peewee.DatabaseError):
            last_seen.flush(T0)
    finally:
        run_sql(store, "ALTER TABLE device_away RENAME TO device")
    assert last_seen.pending == 1
    assert last_seen.flush(T0) == 1
    assert store.get_device("dev1").last_seen_at == T0
