"""Enrollments written together (Store.enroll_devices, the Committer) on SQLite and PostgreSQL:
one COMMIT, each enrollment its own outcome, max_uses and the event log as if each committed
alone."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Iterator

import peewee
import pytest

from sielum.core.runner import InlineRunner, Runner, ThreadRunner
from sielum.enroll.committer import Committer
from sielum.errors import AlreadyExistsError, TokenUnusableError
from sielum.model import Device, DeviceEventKind
from sielum.store import Store, connect
from sielum.store.database import is_sqlite
from sielum.store.devices import NewDevice
from tests.store.test_events import read_in_order
from tests.store.test_store import T0, add_token, all_devices, audit, enroll, new_device, run_sql


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store.open(database_url)
    yield s
    s.close()


def member(device_id: str, token_id: str = "tok", key: str | None = None) -> NewDevice:
    return NewDevice(
        new_device(device_id, token_id, key), T0, audit("device.enroll", f"device/{device_id}")
    )


def events(store: Store) -> list[tuple[int, str]]:
    return [(e.sequence, e.device_id) for e in store.device_events_after(0, 1000)]


def certificate_of(store: Store, device_id: str) -> str | None:
    """The device its certificate's history row names, None when there is none."""
    record = store.certificate_status(f"serial-{device_id}")
    return None if record is None else record.device_id


def enrolled_ids(store: Store) -> set[str]:
    return {d.id for d in all_devices(store)}


def test_ok_a_batch_writes_every_row_of_each_enrollment(store: Store) -> None:
    add_token(store, "tok")
    add_token(store, "other")
    outcomes = store.enroll_devices([member("a"), member("b", "other"), member("c")])
    assert [o.id for o in outcomes if isinstance(o, Device)] == ["a", "b", "c"]
    assert outcomes[0] == store.get_device("a")
    assert store.get_token("tok").uses == 2
    assert store.get_token("other").uses == 1
    assert sorted(e.resource for e in store.list_audit() if e.action == "device.enroll") == [
        "device/a",
        "device/b",
        "device/c",
    ]
    for device_id in "abc":
        assert certificate_of(store, device_id) == device_id
    # One event each, consecutive.
    assert [s for s, _ in events(store)] == [1, 2, 3]
    assert {d for _, d in events(store)} == {"a", "b", "c"}
    assert all(e.kind is DeviceEventKind.ENROLLED for e in store.device_events_after(0, 10))
    assert store.check_integrity() == []


def test_fail_one_member_over_max_uses_is_refused_and_the_others_enroll(store: Store) -> None:
    add_token(store, "tok", max_uses=2)
    add_token(store, "other")
    outcomes = store.enroll_devices([member("a"), member("b"), member("x", "other"), member("c")])
    refused = [o for o in outcomes if isinstance(o, TokenUnusableError)]
    assert len(refused) == 1
    assert refused[0].message == "enrollment token cannot be used"
    assert enrolled_ids(store) == {"a", "b", "c", "x"} - {
        outcomes_id for outcomes_id, o in zip("abxc", outcomes, strict=True) if o in refused
    }
    assert store.get_token("tok").uses == 2
    assert store.get_token("other").uses == 1
    assert [s for s, _ in events(store)] == [1, 2, 3]
    assert len([e for e in store.list_audit() if e.action == "device.enroll"]) == 3
    assert store.check_integrity() == []


def test_fail_a_duplicate_key_rolls_back_only_its_own_enrollment(store: Store) -> None:
    add_token(store, "tok")
    enroll(store, "old", key="taken")
    batch = [member("a"), member("dup", key="taken")]
    batch += [member("b", key="twice"), member("c", key="twice")]
    outcomes = store.enroll_devices(batch)
    assert isinstance(outcomes[1], AlreadyExistsError)
    assert outcomes[1].message == "this public key is already enrolled"
    # Of two new enrollments with one key, the first in the batch's order wins.
    assert isinstance(outcomes[2], Device)
    assert isinstance(outcomes[3], AlreadyExistsError)
    assert enrolled_ids(store) == {"old", "a", "b"}
    # The refused ones' uses were rolled back with them.
    assert store.get_token("tok").uses == 3
    assert [s for s, _ in events(store)] == [1, 2, 3]
    assert store.check_integrity() == []
    # The log goes on without a gap.
    enroll(store, "d")
    assert [s for s, _ in events(store)] == [1, 2, 3, 4]


def test_fail_a_member_whose_statement_fails_gets_its_own_error(store: Store) -> None:
    add_token(store, "tok")
    # A trigger refuses one hostname: that enrollment's INSERT fails, the others stand.
    refuse_hostname(store, "bad.example.org", when="BEFORE INSERT")
    bad = NewDevice(new_device("bad", key="k-bad"), T0, audit("device.enroll", "device/bad"))
    outcomes = store.enroll_devices([member("a"), bad, member("b")])
    assert isinstance(outcomes[1], peewee.DatabaseError)
    assert not isinstance(outcomes[1], peewee.IntegrityError)
    assert enrolled_ids(store) == {"a", "b"}
    assert store.get_token("tok").uses == 2
    assert [s for s, _ in events(store)] == [1, 2]


def refuse_hostname(store: Store, hostname: str, *, when: str) -> None:
    """A trigger that fails the INSERT of a device with hostname (when: 'BEFORE INSERT'),
    or, with when='AT COMMIT', the COMMIT of a transaction that inserted one."""
    assert hostname.replace(".", "").isalnum()  # formatted into the SQL below
    if is_sqlite(store.db):
        if when == "AT COMMIT":
            # A deferred foreign key is checked at COMMIT: a row pointing nowhere fails it.
            run_sql(store, "CREATE TABLE nowhere (id TEXT PRIMARY KEY)")
            run_sql(
                store,
                "CREATE TABLE commit_guard (device_id TEXT"
                " REFERENCES nowhere (id) DEFERRABLE INITIALLY DEFERRED)",
            )
            when, body = "AFTER INSERT", "INSERT INTO commit_guard VALUES (NEW.id);"
        else:
            # Not RAISE(), which SQLite reports as a constraint failed (a duplicate, to
            # us): a blob over SQLite's size limit fails the INSERT as a DataError.
            body = "SELECT zeroblob(2000000000);"
        run_sql(
            store,
            f"CREATE TRIGGER refuse {when} ON device WHEN NEW.hostname = '{hostname}'"
            f" BEGIN {body} END",
        )
        return
    if when == "AT COMMIT":
        run_sql(
            store,
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'refused hostname at commit'; END $$",
        )
        run_sql(
            store,
            "CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON device"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
            f" WHEN (NEW.hostname = '{hostname}') EXECUTE FUNCTION refuse()",
        )
        return
    run_sql(
        store,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'refused hostname'; END $$",
    )
    run_sql(
        store,
        f"CREATE TRIGGER refuse {when} ON device FOR EACH ROW"
        f" WHEN (NEW.hostname = '{hostname}') EXECUTE FUNCTION refuse()",
    )


def test_fail_a_commit_that_fails_records_no_member(store: Store) -> None:
    add_token(store, "tok", max_uses=10)
    enroll(store, "before")
    refuse_hostname(store, "late.example.org", when="AT COMMIT")
    late = NewDevice(new_device("late"), T0, audit("device.enroll", "device/late"))
    with pytest.raises(peewee.DatabaseError):
        store.enroll_devices([member("a"), late, member("b")])
    # Nothing of the batch: no use, no device, no audit event, no certificate, no event.
    assert store.get_token("tok").uses == 1
    assert enrolled_ids(store) == {"before"}
    assert [e.resource for e in store.list_audit() if e.action == "device.enroll"] == [
        "device/before"
    ]
    assert certificate_of(store, "before") == "before"
    assert certificate_of(store, "a") is None
    assert events(store) == [(1, "before")]
    # The next batch continues the log where it was.
    assert all(isinstance(o, Device) for o in store.enroll_devices([member("c"), member("d")]))
    assert [s for s, _ in events(store)] == [1, 2, 3]
    assert store.check_integrity() == []


def test_replicas_enrolling_in_batches_never_exceed_max_uses_and_keep_events_in_order(
    postgres_url: str,
) -> None:
    """Two replicas, eight writers, batches of five on one token with 50 uses for 160
    enrollments: exactly 50 win, and a reader polling the log never sees n+1 before n."""
    replicas = [Store.open(postgres_url), Store(connect(postgres_url))]
    reader = Store(connect(postgres_url))
    try:
        add_token(replicas[0], "tok", max_uses=50)
        add_token(replicas[0], "free")
        writers, batches, size = 8, 4, 5
        start = threading.Barrier(writers)
        done = threading.Event()
        errors: list[BaseException] = []
        outcomes: list[str] = []
        seen: list[int] = []
        lock = threading.Lock()

        def write(w: int) -> None:
            store = replicas[w % 2]
            start.wait()
            try:
                for b in range(batches):
                    # One of each batch on a token without a limit: it always enrolls.
                    batch = [member(f"w{w}b{b}m{m}") for m in range(size)]
                    batch.append(member(f"w{w}b{b}free", "free"))
                    for outcome in store.enroll_devices(batch)[:size]:
                        with lock:
                            outcomes.append(type(outcome).__name__)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        poller = threading.Thread(target=read_in_order, args=(reader, done, seen, errors))
        poller.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        done.set()
        poller.join(timeout=120)
        assert errors == []
        assert collections.Counter(outcomes) == {"Device": 50, "TokenUnusableError": 110}
        free = writers * batches
        assert seen == list(range(1, 50 + free + 1))
        for store in replicas:
            assert store.get_token("tok").uses == 50
            assert len(all_devices(store, token_id="tok")) == 50
            assert len(all_devices(store, token_id="free")) == free
            assert store.check_integrity() == []
    finally:
        for s in (*replicas, reader):
            s.close()


# The committer: enrollments handed over in one turn of the loop share one batch


@pytest.fixture(params=["loop", "threads"])
def runner(request: pytest.FixtureRequest) -> Iterator[Runner]:
    run: Runner = InlineRunner() if request.param == "loop" else ThreadRunner(2)
    yield run
    run.close()


def commit_all(committer: Committer, batch: list[NewDevice]) -> list[Device | BaseException]:
    async def main() -> list[Device | BaseException]:
        return await asyncio.gather(
            *(committer.commit(new) for new in batch), return_exceptions=True
        )

    return asyncio.run(main())


def test_ok_enrollments_of_one_turn_commit_in_one_batch_each_with_its_outcome(
    store: Store, runner: Runner
) -> None:
    add_token(store, "tok", max_uses=3)
    add_token(store, "other")
    enroll(store, "old", key="taken")
    committer = Committer(store.enroll_devices, runner)
    batch = [member(f"d{i}") for i in range(4)] + [member("dup", "other", key="taken")]
    outcomes = commit_all(committer, batch)
    assert committer.batches == 1
    assert [type(o).__name__ for o in outcomes[:4]].count("Device") == 2
    assert [type(o).__name__ for o in outcomes[:4]].count("TokenUnusableError") == 2
    assert isinstance(outcomes[4], AlreadyExistsError)
    assert store.get_token("tok").uses == 3
    assert [s for s, _ in events(store)] == [1, 2, 3]


def test_ok_a_lone_enrollment_commits_alone(store: Store, runner: Runner) -> None:
    add_token(store, "tok")
    committer = Committer(store.enroll_devices, runner)
    (outcome,) = commit_all(committer, [member("alone")])
    assert isinstance(outcome, Device)
    assert committer.batches == 1
    assert store.get_device("alone").serial == "serial-alone"


def test_ok_more_than_a_batch_at_once_commits_in_several(store: Store, runner: Runner) -> None:
    add_token(store, "tok")
    committer = Committer(store.enroll_devices, runner, max_batch=4)
    outcomes = commit_all(committer, [member(f"d{i}") for i in range(10)])
    assert all(isinstance(o, Device) for o in outcomes)
    assert committer.batches == 3
    assert [s for s, _ in events(store)] == list(range(1, 11))


def test_fail_a_failed_commit_fails_every_enrollment_of_its_batch(
    store: Store, runner: Runner
) -> None:
    add_token(store, "tok")
    refuse_hostname(store, "late.example.org", when="AT COMMIT")
    late = NewDevice(new_device("late"), T0, audit("device.enroll", "device/late"))
    committer = Committer(store.enroll_devices, runner)
    outcomes = commit_all(committer, [member("a"), late, member("b")])
    assert all(isinstance(o, peewee.DatabaseError) for o in outcomes)
    assert store.get_token("tok").uses == 0
    assert enrolled_ids(store) == set()
    assert events(store) == []
    # The committer goes on with the next batch.
    assert all(isinstance(o, Device) for o in commit_all(committer, [member("c"), member("d")]))
    assert [s for s, _ in events(store)] == [1, 2]
