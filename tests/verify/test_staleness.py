"""Fail closed: refuse every certificate before the first snapshot and once the index is stale."""

from __future__ import annotations

import logging

import grpc
import pytest

from sielum.verify import DirectoryUnavailableError, VerifierStatus
from tests.verify.conftest import Directory, FakeMonotonic, wait_until


def test_nothing_is_admitted_before_the_first_snapshot(directory: Directory) -> None:
    ca, fake = directory.ca, directory.fake
    a = ca.device("a")
    fake.enroll("a", a)
    fake.refuse = grpc.StatusCode.PERMISSION_DENIED  # say, our service was revoked
    with directory.verifier() as verifier:
        wait_until(lambda: verifier.status().reconnects >= 2)
        assert not verifier.wait_synced(0.1)
        assert not verifier.check(a.pem)
        with pytest.raises(DirectoryUnavailableError) as refused:
            verifier.verify(a.pem)
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        assert refused.value.message == "the device directory is not synced yet; try again shortly"
        status = verifier.status()
        assert not status.healthy and status.sequence is None
        assert status.staleness_seconds == float("inf")
        assert status.last_error == "PERMISSION_DENIED: directory refuses"

        fake.refuse = None
        assert verifier.wait_synced(10)
        assert verifier.check(a.pem)


def test_stale_beyond_max_staleness_fails_closed_then_recovers(
    directory: Directory, caplog: pytest.LogCaptureFixture
) -> None:
    ca, fake = directory.ca, directory.fake
    a = ca.device("a")
    fake.enroll("a", a)
    clock = FakeMonotonic()
    reports: list[VerifierStatus] = []
    verifier = directory.verifier(
        monotonic=clock, max_staleness=30, on_status_change=reports.append
    )
    with caplog.at_level(logging.INFO, logger="sielum.verify"), verifier:
        assert verifier.wait_synced(10)
        wait_until(lambda: reports and reports[-1].healthy)

        # 14 s: within max_staleness, and short of the half that counts a stream as dead.
        clock.advance(14)
        assert verifier.check(a.pem)
        assert verifier.status().staleness_seconds == 14

        # The directory goes away for longer than max_staleness.
        fake.refuse = grpc.StatusCode.UNAVAILABLE
        fake.disconnect()
        wait_until(lambda: verifier.status().reconnects >= 1)
        clock.advance(17)
        assert not verifier.check(a.pem)
        with pytest.raises(DirectoryUnavailableError) as refused:
            verifier.verify(a.pem)
        assert refused.value.message == (
            "the device directory has not confirmed its index for over 30 s; "
            "device certificates are refused until it does"
        )
        wait_until(lambda: not reports[-1].healthy)
        stale = [r for r in caplog.records if "stale" in r.getMessage()]
        assert len(stale) == 1, "staleness is logged once, not per check"
        assert stale[0].levelno == logging.WARNING

        fake.refuse = None
        assert verifier.wait_synced(10)
        assert verifier.check(a.pem)
        wait_until(lambda: reports[-1].healthy)
        assert [r.healthy for r in reports] == [True, False, True]


def test_keepalives_keep_an_idle_index_fresh(directory: Directory) -> None:
    ca, fake = directory.ca, directory.fake
    a = ca.device("a")
    fake.enroll("a", a)
    clock = FakeMonotonic()
    with directory.verifier(monotonic=clock, max_staleness=30) as verifier:
        assert verifier.wait_synced(10)
        for _ in range(4):  # 4 x 10 s: past max_staleness, but the server keeps saying so
            clock.advance(10)
            before = verifier.status().staleness_seconds
            fake.keepalive()
            wait_until(lambda: verifier.status().staleness_seconds == 0)
            assert before == 10
        assert verifier.check(a.pem)
        assert verifier.status().reconnects == 0
