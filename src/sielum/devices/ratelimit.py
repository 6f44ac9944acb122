"""Per-device limit on heartbeats: a burst, then one a second, per server process."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sielum.errors import ResourceExhaustedError


@dataclass(frozen=True)
class HeartbeatLimit:
    """burst heartbeats at once, then one more every 1/rate seconds. burst 0 disables it.

    `sielum-agent run` heartbeats once per advised interval (10 s at the least, 5 m by
    default), and once more right after a renewal: a fiftieth of the sustained rate at
    most. Only a loop or a flood reaches it.
    """

    burst: int = 20
    rate_per_second: float = 1.0
    max_devices: int = 100_000

    @property
    def message(self) -> str:
        return (
            f"too many heartbeats from this device: at most {self.burst} at once, then "
            f"{self.rate_per_second:g} a second; wait and retry"
        )


class HeartbeatLimiter:
    """A token bucket per device, in this process's memory.

    Per process rather than global: a global count would be a database write per
    heartbeat, the very cost the fleet work removed, and one device's connection
    lands on one worker of one replica, where its bucket is. A device that opens
    connections to every worker of every replica gets that many buckets, which is
    still a fixed multiple of the rate rather than whatever its CPU can send.
    """

    def __init__(self, limit: HeartbeatLimit, monotonic: Callable[[], float] = time.monotonic):
        self._limit = limit
        self._monotonic = monotonic
        self._lock = threading.Lock()
        # device -> (tokens left, time of last update); oldest first, so the cap drops stale ones.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, device_id: str) -> None:
        """Spend one heartbeat of device_id's bucket, or raise ResourceExhaustedError."""
        limit = self._limit
        if limit.burst <= 0:
            return
        with self._lock:
            now = self._monotonic()
            tokens, at = self._buckets.get(device_id, (float(limit.burst), now))
            level = min(float(limit.burst), tokens + (now - at) * limit.rate_per_second)
            if level < 1.0:
                raise ResourceExhaustedError(limit.message)
            buckets = self._buckets
            buckets[device_id] = (level - 1.0, now)
            buckets.move_to_end(device_id)
            # A bucket refilled to the brim is the same as none: drop those from the front.
            while len(buckets) > limit.max_devices or (buckets and self._full(buckets, now)):
                buckets.popitem(last=False)

    def _full(self, buckets: OrderedDict[str, tuple[float, float]], now: float) -> bool:
        tokens, at = next(iter(buckets.values()))
        return tokens + (now - at) * self._limit.rate_per_second >= self._limit.burst

    def __len__(self) -> int:
        return len(self._buckets)
