"""DeviceVerifier following a real DirectoryService: snapshot, live events, disconnects, resume."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from sielum.verify import CertificateExpiredError, DeviceVerifier
from tests.verify.conftest import Directory, FakeMonotonic, new_id, wait_until


def asked(directory: Directory) -> list[int | None]:
    """The after_sequence of each WatchDevices call so far, None where it was absent."""
    return [
        r.after_sequence if r.HasField("after_sequence") else None for r in directory.fake.requests
    ]


def test_snapshot_then_live_events(directory: Directory) -> None:
    ca, fake = directory.ca, directory.fake
    alice, bob = ca.device("alice"), ca.device("bob")
    fake.enroll("alice", alice, tags=("prod",))
    fake.enroll("bob", bob)
    fake.revoke("bob")
    with directory.verifier() as verifier:
        assert verifier.wait_synced(10)
        assert asked(directory) == [None]
        assert verifier.check(alice.pem)
        record = verifier.verify(alice.pem)
        assert (record.id, record.hostname, record.tags) == ("alice", "alice.lan", ("prod",))
        assert not verifier.check(bob.pem)  # revoked before the snapshot: not in it

        carol = ca.device("carol")
        assert not verifier.check(carol.pem)  # not enrolled yet
        sequence = fake.enroll("carol", carol)
        wait_until(lambda: verifier.status().sequence == sequence)
        assert verifier.check(carol.pem)

        sequence = fake.revoke("alice")
        wait_until(lambda: verifier.status().sequence == sequence)
        assert not verifier.check(alice.pem)
        status = verifier.status()
        assert (status.devices, status.events_applied, status.events_ignored) == (1, 2, 0)


def test_a_renewal_honours_the_previous_certificate_until_the_directory_retires_it(
    directory: Directory,
) -> None:
    ca, fake = directory.ca, directory.fake
    first, second = ca.device("d1"), ca.device("d1")
    fake.enroll("d1", first)
    with directory.verifier() as verifier:
        assert verifier.wait_synced(10)
        assert verifier.check(first.pem) and not verifier.check(second.pem)

        sequence = fake.renew("d1", second, previous=first)
        wait_until(lambda: verifier.status().sequence == sequence)
        assert verifier.check(second.pem) and verifier.check(first.pem)

        # The new certificate was used: the server retires the previous one.
        sequence = fake.renew("d1", second, previous=None)
        wait_until(lambda: verifier.status().sequence == sequence)
        assert verifier.check(second.pem)
        assert not verifier.check(first.pem)


def test_the_previous_certificate_is_refused_after_previous_until(directory: Directory) -> None:
    ca, fake = directory.ca, directory.fake
    first, second = ca.device("d1"), ca.device("d1")
    fake.enroll("d1", first)
    until = datetime.now(UTC) + timedelta(minutes=15)
    fake.renew("d1", second, previous=first, until=until)
    clock = [until.timestamp() - 1]
    with directory.verifier(clock=lambda: clock[0]) as verifier:
        assert verifier.wait_synced(10)
        assert verifier.check(first.pem) and verifier.check(second.pem)
        clock[0] = until.timestamp()
        assert not verifier.check(first.pem)
        assert verifier.check(second.pem)


def test_resume_after_a_disconnect_misses_nothing_and_applies_nothing_twice(
    directory: Directory,
) -> None:
    ca, fake = directory.ca, directory.fake
    a, b, c = ca.device("a"), ca.device("b"), ca.device("c")
    snapshot_at = fake.enroll("a", a)
    with directory.verifier() as verifier:
        assert verifier.wait_synced(10)
        live = fake.enroll("b", b)
        wait_until(lambda: verifier.status().sequence == live)

        # The server goes away; while it is down, b is revoked and c enrolls. On its
        # return it replays one event too many (b's enrollment), which must not bring b back.
        fake.refuse = grpc.StatusCode.UNAVAILABLE
        fake.overlap = 1
        fake.disconnect()
        wait_until(lambda: verifier.status().reconnects >= 2)
        revoked = fake.revoke("b")
        enrolled = fake.enroll("c", c)
        fake.refuse = None
        wait_until(lambda: verifier.status().sequence == enrolled)

        calls = asked(directory)
        assert calls[0] is None, "the first call asks for a snapshot"
        assert set(calls[1:]) == {live}, "every reconnection resumes from the last sequence seen"
        assert snapshot_at < live
        assert verifier.check(a.pem) and verifier.check(c.pem)
        assert not verifier.check(b.pem)
        status = verifier.status()
        assert status.events_applied == 3  # b enrolled, b revoked, c enrolled: once each
        assert status.events_ignored == 1  # the replayed enrollment of b
        assert status.sequence == enrolled and revoked < enrolled
        assert verifier.wait_synced(10)


def test_out_of_range_starts_over_from_a_snapshot(directory: Directory) -> None:
    ca, fake = directory.ca, directory.fake
    a, b = ca.device("a"), ca.device("b")
    fake.enroll("a", a)
    with directory.verifier() as verifier:
        assert verifier.wait_synced(10)
        fake.refuse = grpc.StatusCode.UNAVAILABLE
        fake.disconnect()
        wait_until(lambda: verifier.status().reconnects >= 1)
        fake.revoke("a")
        fake.enroll("b", b)
        fake.pruned_before = 10_000  # the log no longer holds what the verifier needs
        fake.refuse = None
        wait_until(lambda: verifier.check(b.pem))
        assert not verifier.check(a.pem)
        assert None in asked(directory)[1:]
        assert "OUT_OF_RANGE" in verifier.status().last_error


def test_a_silent_stream_is_cancelled_and_resumed(directory: Directory) -> None:
    ca, fake = directory.ca, directory.fake
    a = ca.device("a")
    at = fake.enroll("a", a)
    clock = FakeMonotonic()
    with directory.verifier(monotonic=clock, max_staleness=30) as verifier:
        assert verifier.wait_synced(10)
        clock.advance(16)  # beyond max_staleness / 2 without a word from the server
        wait_until(lambda: len(fake.requests) >= 2)
        assert asked(directory)[1] == at
        assert verifier.wait_synced(10)
        assert verifier.check(a.pem)


def test_unknown_event_kinds_follow_the_generic_rule(directory: Directory) -> None:
    ca, fake = directory.ca, directory.fake
    a = ca.device("a")
    with directory.verifier() as verifier:
        assert verifier.wait_synced(10)
        sequence = fake.publish(99, "a", a.serial, hostname="a.lan")  # a kind added later
        wait_until(lambda: verifier.status().sequence == sequence)
        assert verifier.check(a.pem)
        sequence = fake.publish(98, "a", "")  # no serial: the device is gone
        wait_until(lambda: verifier.status().sequence == sequence)
        assert not verifier.check(a.pem)


def test_stop_ends_the_stream_and_refuses_everything(directory: Directory) -> None:
    ca, fake = directory.ca, directory.fake
    device_id = new_id()
    a = ca.device(device_id)
    fake.enroll(device_id, a)
    verifier: DeviceVerifier = directory.verifier().start()
    assert verifier.wait_synced(10)
    assert verifier.check(a.pem)
    verifier.stop()
    wait_until(lambda: fake.open_streams == 0)
    assert not verifier.check(a.pem)


def test_fail_a_certificate_outside_its_validity_period(directory: Directory) -> None:
    ca, fake = directory.ca, directory.fake
    a = ca.device("a", ttl=timedelta(days=1))
    fake.enroll("a", a)
    clock = [a.certificate.not_valid_after_utc.timestamp()]
    with directory.verifier(clock=lambda: clock[0]) as verifier:
        assert verifier.wait_synced(10)
        assert verifier.check(a.pem), "valid up to and including notAfter"
        clock[0] += 1
        with pytest.raises(CertificateExpiredError) as refused:
            verifier.verify(a.pem)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert refused.value.message == "device certificate has expired or is not yet valid"
        clock[0] = a.certificate.not_valid_before_utc.timestamp() - 1
        assert not verifier.check(a.pem)
