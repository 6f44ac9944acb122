"""When the agent calls: the jittered renewal point, the heartbeat interval and the backoff."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

# A device renews at a uniformly random point in this first part of the window
# that remains between renew_after (or now, if later) and not_after. For 90-day
# certificates, whose renew_after is day 60, that is days 60 to 70: a fleet
# enrolled in one hour renews over ten days, and every device keeps two thirds of
# the window (twenty days) to retry a renewal that fails
# (tests/unit/test_agent_schedule.py::test_a_fleet_enrolled_in_one_hour_renews_over_days).
RENEWAL_SPREAD = 1 / 3
# Heartbeats are spread by this fraction either side of the interval, so agents
# started together (a rack after a power cut) drift apart instead of calling in step.
INTERVAL_JITTER = 0.10
# The interval the agent keeps when the server advises none (an older server), and the
# bounds it holds an advised one to, whatever the server says: never a tight loop, never
# a day without a word.
DEFAULT_INTERVAL = timedelta(minutes=5)
MIN_ADVISED_INTERVAL = timedelta(seconds=10)
MAX_ADVISED_INTERVAL = timedelta(days=1)
# The first retry after a failure waits about this long; each further one doubles it.
BACKOFF_BASE = timedelta(seconds=1)


def renewal_time(
    renew_after: datetime, not_after: datetime, now: datetime, rng: random.Random
) -> datetime:
    """The moment to renew a certificate, drawn once per certificate.

    A random point in the first RENEWAL_SPREAD of [max(renew_after, now), not_after]:
    never before renew_after, never after the first third of what remains, and at
    once for a certificate already past not_after (the server decides what then).
    """
    start = max(renew_after, now)
    if start >= not_after:
        return start
    return start + (not_after - start) * (RENEWAL_SPREAD * rng.random())


def heartbeat_delay(interval: timedelta, rng: random.Random) -> timedelta:
    """The interval, plus or minus INTERVAL_JITTER of it."""
    return interval * (1 + INTERVAL_JITTER * (2 * rng.random() - 1))


def advised_interval(advised: timedelta | None, fallback: timedelta) -> timedelta:
    """The server's advised heartbeat interval within bounds, or fallback without one."""
    if advised is None or advised <= timedelta(0):
        return fallback
    return min(max(advised, MIN_ADVISED_INTERVAL), MAX_ADVISED_INTERVAL)


def backoff_delay(failures: int, cap: timedelta, rng: random.Random) -> timedelta:
    """Exponential backoff with jitter after the n-th failure in a row, never above cap.

    The ceiling doubles from BACKOFF_BASE up to cap; the delay is a random point in its
    upper half, so agents that lost the server together do not come back in step, and
    none retries in a tight loop.
    """
    if failures < 1:
        raise ValueError("backoff_delay counts failures from 1")
    # min() before the power: 2 ** failures grows without bound over a long outage.
    ceiling: timedelta = min(cap, BACKOFF_BASE * (2 ** min(failures - 1, 32)))
    return ceiling * (0.5 + 0.5 * rng.random())
