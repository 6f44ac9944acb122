"""The agent's timing policy: renewal spread over a fleet, heartbeat jitter, capped backoff."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from sielum.ca.profile import BACKDATE, DEFAULT_DEVICE_TTL
from sielum.devices.policy import renew_after
from sielum.endpoint.schedule import (
    BACKOFF_BASE,
    RENEWAL_SPREAD,
    advised_interval,
    backoff_delay,
    heartbeat_delay,
    renewal_time,
)

FLEET = 100_000
START = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def _minute(moment: datetime) -> int:
    return int(moment.timestamp() // 60)


def _hour(moment: datetime) -> int:
    return int(moment.timestamp() // 3600)


def test_a_fleet_enrolled_in_one_hour_renews_over_days() -> None:
    """100,000 devices enrolled in one hour with 90-day certificates renew over ten days."""
    rng = random.Random(20260601)
    renewals = []
    for _ in range(FLEET):
        enrolled = START + timedelta(seconds=rng.uniform(0, 3600))
        not_before, not_after = enrolled - BACKDATE, enrolled + DEFAULT_DEVICE_TTL
        due = renew_after(not_before, not_after)
        # The agent draws its plan at its first heartbeat, long before renew_after.
        at = renewal_time(due, not_after, enrolled + timedelta(minutes=5), rng)
        assert due <= at <= due + (not_after - due) * RENEWAL_SPREAD
        renewals.append(at)

    first = min(renewals)
    span = max(renewals) - first
    per_minute = Counter(_minute(at) for at in renewals)
    per_hour = Counter(_hour(at) for at in renewals)
    # Ten days is 14,400 minutes: about 7 renewals a minute, 417 an hour.
    assert span > timedelta(days=9, hours=23)
    assert max(per_minute.values()) <= 0.0003 * FLEET  # 30 in the busiest minute
    assert max(per_hour.values()) <= 0.006 * FLEET  # 600 in the busiest hour
    # No day of the ten is favoured: each holds about a tenth.
    per_day = Counter(int((at - first) / timedelta(days=1)) for at in renewals)
    assert all(0.09 * FLEET <= per_day[day] <= 0.11 * FLEET for day in range(10))


def test_a_fleet_back_after_renew_after_does_not_renew_in_one_minute() -> None:
    """Devices that all come back at one moment past renew_after still spread out."""
    rng = random.Random(7)
    not_before = START - BACKDATE
    not_after = START + DEFAULT_DEVICE_TTL
    due = renew_after(not_before, not_after)
    back = due + timedelta(days=5)  # a fleet switched off over renew_after
    renewals = [renewal_time(due, not_after, back, rng) for _ in range(FLEET)]
    assert min(renewals) >= back
    assert max(renewals) <= back + (not_after - back) * RENEWAL_SPREAD
    assert max(renewals) - min(renewals) > timedelta(days=8)
    assert max(Counter(_minute(at) for at in renewals).values()) <= 0.0003 * FLEET


def test_never_before_renew_after_never_late() -> None:
    rng = random.Random(1)
    for _ in range(10_000):
        lifetime = timedelta(seconds=rng.uniform(60, 400 * 86400))
        not_after = START + lifetime
        due = START + lifetime * rng.uniform(0, 1)
        now = START + lifetime * rng.uniform(-0.5, 1.5)
        at = renewal_time(due, not_after, now, rng)
        start = max(due, now)
        if start >= not_after:
            assert at == start  # expired or no window left: at once
        else:
            assert start <= at <= start + (not_after - start) * RENEWAL_SPREAD


def test_a_short_lived_certificate_already_due_renews_within_a_third_of_what_is_left() -> None:
    """A 60 s certificate: the server's renew_after is already past when it is issued."""
    rng = random.Random(3)
    not_before, not_after = START - BACKDATE, START + timedelta(seconds=60)
    due = renew_after(not_before, not_after)
    assert due < START
    moments = [renewal_time(due, not_after, START, rng) for _ in range(1000)]
    assert min(moments) >= START
    assert max(moments) <= START + timedelta(seconds=20)
    assert max(moments) - min(moments) > timedelta(seconds=18)


def test_the_draw_depends_only_on_the_random_source() -> None:
    due, not_after = START, START + timedelta(days=30)
    first = [renewal_time(due, not_after, START, random.Random(5)) for _ in range(3)]
    assert len(set(first)) == 1
    assert renewal_time(due, not_after, START, random.Random(6)) != first[0]


def test_heartbeat_jitter_is_ten_percent_either_side() -> None:
    rng = random.Random(11)
    interval = timedelta(minutes=5)
    delays = [heartbeat_delay(interval, rng) for _ in range(10_000)]
    assert all(timedelta(seconds=270) <= d <= timedelta(seconds=330) for d in delays)
    assert min(delays) < timedelta(seconds=273)
    assert max(delays) > timedelta(seconds=327)


def test_backoff_doubles_with_jitter_and_stops_at_the_cap() -> None:
    rng = random.Random(13)
    cap = timedelta(minutes=5)
    for failures in range(1, 200):
        ceiling = min(cap, BACKOFF_BASE * 2 ** min(failures - 1, 32))
        delays = [backoff_delay(failures, cap, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not in step
    assert backoff_delay(10_000, cap, rng) <= cap
    with pytest.raises(ValueError, match="from 1"):
        backoff_delay(0, cap, rng)


def test_backoff_under_a_short_interval_is_capped_by_it() -> None:
    rng = random.Random(17)
    cap = timedelta(seconds=2)
    assert all(backoff_delay(n, cap, rng) <= cap for n in range(1, 50))


def test_an_advised_interval_is_held_between_ten_seconds_and_a_day() -> None:
    fallback = timedelta(minutes=5)
    assert advised_interval(None, fallback) == fallback
    assert advised_interval(timedelta(0), fallback) == fallback
    assert advised_interval(timedelta(minutes=20), fallback) == timedelta(minutes=20)
    assert advised_interval(timedelta(milliseconds=5), fallback) == timedelta(seconds=10)
    assert advised_interval(timedelta(days=30), fallback) == timedelta(days=1)
