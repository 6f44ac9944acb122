"""Per-address limit on failed enrollments: a token bucket that only failures drain."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sielum.core.addresses import peer_group
from sielum.errors import ResourceExhaustedError

LIMITED = "too many failed enrollments from this address; wait and retry"


@dataclass(frozen=True)
class FailureLimit:
    """burst failures at once, then one more every 1/rate seconds. burst 0 disables the limit."""

    burst: int = 20
    rate_per_second: float = 0.2
    max_peers: int = 100_000


class FailureLimiter:
    """Charges failed enrollments to their address's bucket, and refuses one whose bucket is empty.

    Only the enrollment service decides what is charged: requests whose secret did
    not verify (guesses, garbage), and the verified secrets of revoked or expired
    tokens. A request whose secret verifies is never refused here, so garbage from
    one address behind a NAT or a layer-4 load balancer cannot lock out the valid
    agents that share it (tests/robust/test_ratelimit.py).
    """

    def __init__(self, limit: FailureLimit, monotonic: Callable[[], float] = time.monotonic):
        self._limit = limit
        self._monotonic = monotonic
        self._lock = threading.Lock()
        # group -> (tokens left, time of last update); oldest first, so the cap drops stale ones.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, group: str, now: float) -> float:
        tokens, at = self._buckets.get(group, (float(self._limit.burst), now))
        return min(float(self._limit.burst), tokens + (now - at) * self._limit.rate_per_second)

    def _store(self, group: str, level: float, now: float) -> None:
        self._buckets[group] = (level, now)
        self._buckets.move_to_end(group)
        while len(self._buckets) > self._limit.max_peers:
            self._buckets.popitem(last=False)

    def charge(self, peer: str) -> None:
        """One failure of an unverified request: spend it, or raise ResourceExhaustedError.

        Checked and spent under one lock, so guesses on many connections at once
        buy no more answers than guesses on one
        (tests/robust/test_ratelimit.py::test_fail_parallel_guessing_buys_no_extra_attempts).
        A refused request spends nothing: the address regains answers at the rate.
        """
        if self._limit.burst <= 0:
            return
        group = peer_group(peer)
        with self._lock:
            now = self._monotonic()
            level = self._level(group, now)
            if level < 1.0:
                raise ResourceExhaustedError(LIMITED)
            self._store(group, level - 1.0, now)

    def record_failure(self, peer: str) -> None:
        """A failure that is answered anyway (a verified secret of a revoked or expired token).

        No floor at zero: each one is paid for, by the address's next guesses.
        """
        if self._limit.burst <= 0:
            return
        group = peer_group(peer)
        with self._lock:
            now = self._monotonic()
            self._store(group, self._level(group, now) - 1.0, now)
