"""Per-peer limit on failed enrollments: a token bucket that only failures drain."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sielum.errors import ResourceExhaustedError


@dataclass(frozen=True)
class FailureLimit:
    """burst failures at once, then one more every 1/rate seconds. burst 0 disables the limit."""

    burst: int = 20
    rate_per_second: float = 0.2
    max_peers: int = 100_000


class FailureLimiter:
    """Refuses a peer whose recent failed enrollments used up its bucket.

    Successful enrollments never drain the bucket, so a whole office behind one
    NAT address can enroll at once (tests/rpc/test_enroll.py guards both sides).
    """

    def __init__(self, limit: FailureLimit, monotonic: Callable[[], float] = time.monotonic):
        self._limit = limit
        self._monotonic = monotonic
        self._lock = threading.Lock()
        # peer -> (tokens left, time of last update); oldest first, so the cap drops stale peers.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, peer: str, now: float) -> float:
        tokens, at = self._buckets.get(peer, (float(self._limit.burst), now))
        return min(float(self._limit.burst), tokens + (now - at) * self._limit.rate_per_second)

    def check(self, peer: str) -> None:
        """Raise ResourceExhaustedError when the peer has no failures left to spend."""
        if self._limit.burst <= 0:
            return
        with self._lock:
            if peer in self._buckets and self._level(peer, self._monotonic()) < 1.0:
                raise ResourceExhaustedError(
                    "too many failed enrollments from this address; wait and retry"
                )

    def record_failure(self, peer: str) -> None:
        if self._limit.burst <= 0:
            return
        with self._lock:
            now = self._monotonic()
            level = self._level(peer, now)
            # No floor at zero: failures that passed check() together, in parallel,
            # are all paid for, so guessing on many connections at once buys no
            # more attempts over time than guessing on one. The debt is at most
            # the number of calls one peer had in flight at once
            # (tests/robust/test_ratelimit.py::test_parallel_failures_are_all_paid_for).
            self._buckets[peer] = (level - 1.0, now)
            self._buckets.move_to_end(peer)
            while len(self._buckets) > self._limit.max_peers:
                self._buckets.popitem(last=False)
