"""The per-device heartbeat limit: a flood is refused, the agent's own schedule never is."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from sielum.devices.ratelimit import HeartbeatLimit, HeartbeatLimiter
from sielum.endpoint.errors import ServerBusyError
from sielum.errors import ResourceExhaustedError

from .test_agent_daemon import DEVICE, START, FakeServer, FakeTime, make_daemon


def test_a_burst_then_one_a_second() -> None:
    now = [0.0]
    limiter = HeartbeatLimiter(HeartbeatLimit(burst=20, rate_per_second=1.0), lambda: now[0])
    for _ in range(20):
        limiter.check("dev")
    with pytest.raises(ResourceExhaustedError) as refused:
        limiter.check("dev")
    assert refused.value.message == (
        "too many heartbeats from this device: at most 20 at once, then 1 a second; wait and retry"
    )
    limiter.check("other")  # one device's flood is its own
    now[0] = 1.0
    limiter.check("dev")
    with pytest.raises(ResourceExhaustedError):
        limiter.check("dev")


def test_buckets_refilled_to_the_brim_are_forgotten() -> None:
    now = [0.0]
    limiter = HeartbeatLimiter(HeartbeatLimit(burst=5, rate_per_second=1.0), lambda: now[0])
    for i in range(1000):
        limiter.check(f"dev{i}")
        now[0] += 0.01
    assert len(limiter) < 1000
    now[0] += 10
    limiter.check("last")
    assert len(limiter) == 1


@pytest.mark.parametrize("seed", range(3))
def test_the_agents_own_schedule_never_nears_the_limit(seed: int) -> None:
    """At the shortest interval a server may advise, with renewals and failures in between."""
    time = FakeTime()
    # An hour-long certificate: a renewal (and its immediate heartbeat) every 40 minutes.
    server = FakeServer(time, ttl=timedelta(hours=1))
    server.advised = timedelta(seconds=10)

    def seconds() -> float:
        return (time.now() - START).total_seconds()

    # A quarter of the burst and a fifth of the rate: the agent stays well clear.
    default = HeartbeatLimit()
    limiter = HeartbeatLimiter(
        HeartbeatLimit(burst=default.burst // 4, rate_per_second=default.rate_per_second / 5),
        seconds,
    )
    rng = random.Random(seed)

    def on_status() -> None:
        limiter.check(DEVICE)  # raises ResourceExhaustedError, which ends the run
        if rng.random() < 0.02:  # now and then the server is busy: a retry follows soon
            server.status_errors.append(ServerBusyError("busy"))

    server.on_status = on_status
    time.stop_when = lambda: server.heartbeats >= 2000
    daemon = make_daemon(time, server, seed=seed, interval=None)
    assert daemon.run() == 0
    assert server.renewals >= 5
