"""The history of device certificates on SQLite and PostgreSQL: what the CRL and OCSP read."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from sielum.model import CertificateRecord, Token, TokenPolicy
from sielum.store import Store, connect, migrations
from sielum.store.database import is_sqlite
from sielum.store.models import to_micros

from .test_migrations import _old_token
from .test_store import T0, add_token, audit, enroll, renew_in
from .test_store import _plan as plan_of

DAY = timedelta(days=1)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store.open(database_url)
    yield s
    s.close()


def status(store: Store, serial: str) -> CertificateRecord:
    record = store.certificate_status(serial)
    assert record is not None, serial
    return record


def refused(store: Store, now: datetime) -> dict[str, CertificateRecord]:
    return {r.serial: r for r in store.refused_certificates(now)}


def adopt(store: Store, device_id: str, current: str, key: str, at: datetime) -> bool:
    return store.adopt_certificate(
        device_id,
        current_serial=current,
        serial=f"serial-{key}",
        public_key_sha256=key,
        certificate_pem=f"PEM of {key}",
        not_after=at + timedelta(days=90),
        audit=audit("device.adopt", f"device/{device_id}", at),
    )


def test_an_enrolled_certificate_is_recorded_and_honoured(store: Store) -> None:
    add_token(store)
    enroll(store, "dev1")
    record = status(store, "serial-dev1")
    assert record == CertificateRecord(
        serial="serial-dev1", device_id="dev1", not_after=T0 + timedelta(days=90)
    )
    assert store.certificate_status("serial-nobody") is None
    assert refused(store, T0) == {}


def test_the_previous_certificate_is_superseded_at_the_first_use_of_the_new_one(
    store: Store,
) -> None:
    add_token(store)
    enroll(store, "dev1")
    stamp = store.revocation_stamp()
    renewed_at, used_at = T0 + 60 * DAY, T0 + 61 * DAY
    renew_in(store, "dev1", "key-b", renewed_at)
    # Honoured until the new one is used: not refused, nothing for the CRL to change.
    assert status(store, "serial-dev1").superseded_at is None
    assert status(store, "serial-key-b").superseded_at is None
    assert store.revocation_stamp() == stamp
    assert refused(store, renewed_at) == {}

    assert store.retire_previous_certificate("dev1", "serial-key-b", used_at) is True
    assert status(store, "serial-dev1").superseded_at == used_at
    assert status(store, "serial-key-b").superseded_at is None
    assert store.revocation_stamp() != stamp
    assert list(refused(store, used_at)) == ["serial-dev1"]
    # Retiring again changes nothing: the first time stays.
    stamp = store.revocation_stamp()
    assert store.retire_previous_certificate("dev1", "serial-key-b", used_at + DAY) is False
    assert status(store, "serial-dev1").superseded_at == used_at
    assert store.revocation_stamp() == stamp


def test_a_retry_from_the_previous_certificate_supersedes_the_unused_one_it_replaces(
    store: Store,
) -> None:
    add_token(store)
    enroll(store, "dev1")
    first, retry = T0 + 60 * DAY, T0 + 62 * DAY
    renew_in(store, "dev1", "key-b", first)
    stamp = store.revocation_stamp()
    # The answer was lost: the agent renews again with the certificate it holds.
    renew_in(store, "dev1", "key-c", retry, caller="serial-dev1")
    assert status(store, "serial-key-b").superseded_at == retry
    assert status(store, "serial-dev1").superseded_at is None  # still the honoured previous
    assert status(store, "serial-key-c").superseded_at is None
    assert store.revocation_stamp() != stamp
    assert list(refused(store, retry)) == ["serial-key-b"]


def test_an_adopted_certificate_supersedes_the_one_the_database_held(store: Store) -> None:
    add_token(store)
    enroll(store, "dev1")
    at = T0 + 70 * DAY
    assert adopt(store, "dev1", "serial-dev1", "key-lost", at) is True
    assert status(store, "serial-dev1").superseded_at == at
    assert status(store, "serial-key-lost").superseded_at is None
    assert list(refused(store, at)) == ["serial-dev1"]


def test_revoking_lists_every_certificate_of_the_device_with_the_first_reason(
    store: Store,
) -> None:
    add_token(store)
    enroll(store, "dev1")
    enroll(store, "dev2", key="key-2")
    renew_in(store, "dev1", "key-b", T0 + 10 * DAY)
    assert store.retire_previous_certificate("dev1", "serial-key-b", T0 + 11 * DAY)
    renew_in(store, "dev1", "key-c", T0 + 20 * DAY)  # key-b: the honoured previous
    stamp = store.revocation_stamp()
    revoked_at = T0 + 21 * DAY
    device = store.revoke_device(
        "dev1",
        revoked_at,
        audit("device.revoke", "device/dev1", revoked_at),
        reason="keyCompromise",
    )
    assert device.revoked_at == revoked_at
    assert store.revocation_stamp() != stamp
    listed = refused(store, revoked_at)
    assert set(listed) == {"serial-dev1", "serial-key-b", "serial-key-c"}
    # Superseded first, it stays superseded; the others carry the reason as given.
    assert listed["serial-dev1"].superseded_at == T0 + 11 * DAY
    for serial in ("serial-key-b", "serial-key-c"):
        assert (listed[serial].revoked_at, listed[serial].reason) == (revoked_at, "keyCompromise")
        assert status(store, serial).reason == "keyCompromise"
    assert status(store, "serial-dev2").revoked_at is None
    # The rows the CRL is rebuilt from say the same, times in microseconds.
    rows = {row[0]: row for row in store.refused_certificate_rows(revoked_at)}
    assert rows == {
        serial: (
            serial,
            to_micros(record.not_after),
            None if record.superseded_at is None else to_micros(record.superseded_at),
            None if record.revoked_at is None else to_micros(record.revoked_at),
            record.reason,
        )
        for serial, record in listed.items()
    }

    # Revoking again keeps the first time and reason, and moves nothing.
    stamp = store.revocation_stamp()
    later = revoked_at + DAY
    store.revoke_device("dev1", later, audit("device.revoke", "device/dev1", later), reason="")
    assert (status(store, "serial-key-c").revoked_at, status(store, "serial-key-c").reason) == (
        revoked_at,
        "keyCompromise",
    )
    assert store.revocation_stamp() == stamp


def test_a_revocation_without_reason_is_unspecified(store: Store) -> None:
    add_token(store)
    enroll(store, "dev1")
    store.revoke_device("dev1", T0, audit("device.revoke", "device/dev1"))
    assert status(store, "serial-dev1").reason == "unspecified"


def test_certificates_leave_the_list_once_expired(store: Store) -> None:
    add_token(store)
    enroll(store, "dev1")  # not_after T0 + 90 days
    store.revoke_device("dev1", T0, audit("device.revoke", "device/dev1"))
    assert list(refused(store, T0 + 90 * DAY - timedelta(microseconds=1))) == ["serial-dev1"]
    assert refused(store, T0 + 90 * DAY) == {}
    # OCSP still knows it.
    assert status(store, "serial-dev1").revoked_at == T0


def test_the_crl_and_ocsp_queries_use_their_indexes(store: Store) -> None:
    add_token(store)
    for i in range(20):
        enroll(store, f"dev{i}", key=f"key{i}")
    store.revoke_device("dev3", T0, audit("device.revoke", "device/dev3"))
    if not is_sqlite(store.db):
        with store.db.connection_context():
            store.db.execute_sql("ANALYZE device")  # few revoked: start from them
    plan = plan_of(store, store._certificate_sql.refused, (0, 0))
    assert "device_certificate_superseded" in plan, plan
    assert "device_revoked_seq" in plan, plan
    assert "device_certificate_device_id" in plan, plan
    changes_plan = plan_of(store, store._certificate_sql.refused_after, (1, 0))
    assert "device_certificate_refused_change" in changes_plan, changes_plan
    status_plan = plan_of(store, store._certificate_sql.status, ("serial-dev1",))
    # SQLite keeps the table WITHOUT ROWID: its rows are its primary key's tree.
    key = (
        "SEARCH c USING PRIMARY KEY (serial=?)"
        if is_sqlite(store.db)
        else "device_certificate_pkey"
    )
    assert key in status_plan, status_plan


class ChangesReader:
    """What the CRL publisher keeps: rows by serial, read whole once, then as changes."""

    def __init__(self, store: Store, now: datetime) -> None:
        self.store = store
        self.stamp = store.revocation_stamp()
        self.rows = {row[0]: row for row in store.refused_certificate_rows(now)}

    def catch_up(self, now: datetime) -> list[Any]:
        stamp = self.store.revocation_stamp()  # first, as the publisher reads it
        changes = self.store.refused_certificate_changes(self.stamp, now)
        self.rows.update((row[0], row) for row in changes)
        self.stamp = stamp
        return changes

    def listed(self, now: datetime) -> dict[str, Any]:
        return {serial: row for serial, row in self.rows.items() if row[1] > to_micros(now)}


def whole(store: Store, now: datetime) -> dict[str, Any]:
    return {row[0]: row for row in store.refused_certificate_rows(now)}


def test_the_changes_since_a_stamp_add_up_to_the_whole_list(store: Store) -> None:
    """Each way a certificate becomes refused marks it with the change that did it, so a
    reader that read the list once and then only the changes holds the whole list."""
    add_token(store)
    store.create_token(
        Token("eph", "l", b"h", None, 0, None, T0, "alice",
              policy=TokenPolicy(ephemeral_after=timedelta(hours=1))),
        audit("token.create", "token/eph"),
    )  # fmt: skip
    for i in range(6):
        enroll(store, f"dev{i}", key=f"key{i}")
    enroll(store, "eph1", token_id="eph", key="key-eph")
    reader = ChangesReader(store, T0)
    assert reader.rows == {}

    def step(now: datetime) -> list[Any]:
        changes = reader.catch_up(now)
        assert reader.listed(now) == whole(store, now)
        return changes

    renew_in(store, "dev1", "key-1b", T0 + 60 * DAY)
    assert step(T0 + 60 * DAY) == []  # the previous is honoured: nothing refused
    assert store.retire_previous_certificate("dev1", "serial-key-1b", T0 + 61 * DAY)
    assert [row[0] for row in step(T0 + 61 * DAY)] == ["serial-dev1"]
    renew_in(store, "dev2", "key-2b", T0 + 60 * DAY)
    renew_in(store, "dev2", "key-2c", T0 + 62 * DAY, caller="serial-dev2")  # a lost answer
    assert [row[0] for row in step(T0 + 62 * DAY)] == ["serial-key-2b"]
    assert adopt(store, "dev3", "serial-dev3", "key-3lost", T0 + 62 * DAY)
    step(T0 + 62 * DAY)
    store.revoke_device(
        "dev4", T0 + 63 * DAY, audit("device.revoke", "device/dev4"), reason="keyCompromise"
    )
    # dev1 revoked after its renewal: its current certificate is listed as revoked, the
    # one it retired stays listed as superseded.
    store.revoke_device("dev1", T0 + 63 * DAY, audit("device.revoke", "device/dev1"))
    changes = {row[0]: row for row in step(T0 + 63 * DAY)}
    assert set(changes) == {"serial-dev4", "serial-key-1b"}
    assert changes["serial-dev4"][4] == "keyCompromise"
    assert reader.rows["serial-dev1"][2] is not None  # superseded_at, as before
    # Revoked again: nothing new.
    store.revoke_device("dev4", T0 + 64 * DAY, audit("device.revoke", "device/dev4"))
    assert step(T0 + 64 * DAY) == []
    now = T0 + 65 * DAY
    assert store.expire_device("eph1", now, audit("device.expire", "device/eph1", now))
    assert [row[0] for row in step(now)] == ["serial-eph1"]
    # Past not_after, entries leave the list; the reader drops them by their time.
    assert step(T0 + 91 * DAY) == []
    assert "serial-dev4" not in reader.listed(T0 + 91 * DAY)


def test_every_change_is_read_while_writers_race_on_two_connections(database_url: str) -> None:
    """Eight writers on two stores (two replicas) revoke and retire certificates while a
    reader reads the changes as fast as it can: the changes it read add up to the whole
    list, so no change committed out of stamp order was skipped."""
    first, second = Store.open(database_url), Store.open(database_url)
    try:
        add_token(first)
        for i in range(120):
            enroll(first, f"d{i}", key=f"k{i}")
            if i % 2:
                renew_in(first, f"d{i}", f"k{i}b", T0 + 60 * DAY)
        now = T0 + 61 * DAY
        reader = ChangesReader(first, now)
        done = threading.Event()

        def write(store: Store, ids: range) -> None:
            for i in ids:
                if i % 2:
                    store.retire_previous_certificate(f"d{i}", f"serial-k{i}b", now)
                else:
                    store.revoke_device(f"d{i}", now, audit("device.revoke", f"device/d{i}", now))

        def read() -> None:
            while not done.is_set():
                reader.catch_up(now)

        reading = threading.Thread(target=read)
        reading.start()
        writers = [
            threading.Thread(target=write, args=(first if n % 2 else second, range(n, 120, 8)))
            for n in range(8)
        ]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join()
        done.set()
        reading.join()
        reader.catch_up(now)
        listed = whole(first, now)
        assert len(listed) == 120
        assert reader.listed(now) == listed
    finally:
        first.close()
        second.close()


def _version_before_history() -> tuple[migrations.Migration, ...]:
    return tuple(m for m in migrations.MIGRATIONS if m.version < 10)


def test_step_10_records_the_certificates_of_devices_enrolled_before_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Current certificates as they are; a previous one still honoured until its own
    not_after; one already retired superseded, with the conservative bound; revoked devices
    unspecified."""
    earlier = _version_before_history()
    with monkeypatch.context() as patched:
        patched.setattr(migrations, "MIGRATIONS", earlier)
        patched.setattr(migrations, "LATEST_VERSION", earlier[-1].version)
        old = Store(connect(database_url))
        try:
            old.migrate()
            _old_token(old, "tok")
            far = T0 + 3650 * DAY  # honoured previous: previous_until ahead of the migration
            rows: list[tuple[Any, ...]] = [
                ("plain", "k1", "a1", None, None, None),
                ("honoured", "k2", "b2", "b1", far, None),
                ("retired", "k3", "c2", "c1", None, None),
                ("revoked", "k4", "d1", None, None, T0),
            ]
            with old.db.connection_context():
                p = old.db.param
                for device_id, key, serial, previous, until, revoked in rows:
                    old.db.execute_sql(
                        "INSERT INTO device (id, hostname, token_id, public_key_sha256, serial,"
                        " certificate_pem, not_after, enrolled_at, peer, previous_serial,"
                        f" previous_until, revoked_at) VALUES ({', '.join([p] * 12)})",
                        (
                            device_id, "h", "tok", key, serial, "PEM", _us(T0 + 90 * DAY),
                            _us(T0), "p", previous, None if until is None else _us(until),
                            None if revoked is None else _us(revoked),
                        ),
                    )  # fmt: skip
        finally:
            old.close()
    store = Store.open(database_url)
    try:
        assert status(store, "a1") == CertificateRecord("a1", "plain", T0 + 90 * DAY)
        assert status(store, "b1") == CertificateRecord("b1", "honoured", far)
        retired = status(store, "c1")
        assert retired.superseded_at is not None
        assert retired.not_after == T0 + 180 * DAY  # the current's not_after + 90 days
        assert status(store, "c2").superseded_at is None
        assert (status(store, "d1").revoked_at, status(store, "d1").reason) == (T0, "unspecified")
        assert set(refused(store, T0)) == {"c1", "d1"}
        # Step 13 marks the certificates refused before it, so changes read from any
        # earlier stamp find them too.
        assert {row[0] for row in store.refused_certificate_changes(0, T0)} == {"c1", "d1"}
    finally:
        store.close()


def _us(at: datetime) -> int:
    return to_micros(at)
