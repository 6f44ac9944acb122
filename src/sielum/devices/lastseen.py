"""Heartbeats' last_seen_at: noted in memory, written at most once per device per minute."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Protocol

from sielum.errors import SielumError
from sielum.logs import log_event

log = logging.getLogger("sielum.server")

# A device's last_seen_at is written at most once per this long (docs/api.md): so it
# lags the device's last heartbeat by up to this plus FLUSH_EVERY.
WRITE_EVERY = timedelta(minutes=1)
# How often each server process writes what its heartbeats saw, in one transaction.
FLUSH_EVERY = timedelta(seconds=2)


class Toucher(Protocol):
    def touch_devices(self, seen: Mapping[str, datetime], at_most_every: timedelta) -> int: ...


class LastSeen:
    """What this process's heartbeats saw, written by flush() in one transaction.

    A heartbeat only notes the time in memory (seen()), so a fleet's heartbeats do not
    each take the database's write lock. A device written less than WRITE_EVERY ago by
    this process is not noted again; the UPDATE also skips a row written less than
    WRITE_EVERY ago by any process, so all workers and replicas together write a
    device at most once per WRITE_EVERY.

    Only last_seen_at waits here: the device's standing (revoked, superseded) is read
    from the database on every call. A crash loses at most the last FLUSH_EVERY of
    notes (the device's next heartbeat notes it again); a graceful stop flushes them.
    """

    def __init__(self, store: Toucher, every: timedelta = WRITE_EVERY) -> None:
        self._store = store
        self._every = every
        self._lock = threading.Lock()
        self._pending: dict[str, datetime] = {}
        # Devices this process wrote within the last `every`, oldest first.
        self._written: dict[str, datetime] = {}

    def seen(self, device_id: str, now: datetime) -> None:
        with self._lock:
            written = self._written.get(device_id)
            if written is not None and now - written < self._every:
                return
            self._pending[device_id] = now

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self, now: datetime) -> int:
        """Write what was seen since the last flush; returns the rows changed.

        On any error the notes are kept for the next flush; an outage (UnavailableError)
        is logged here, anything else raised.
        """
        with self._lock:
            batch, self._pending = self._pending, {}
            self._forget_before(now - self._every)
        if not batch:
            return 0
        try:
            changed = self._store.touch_devices(batch, self._every)
        except BaseException as error:
            with self._lock:
                for device_id, at in batch.items():
                    if device_id not in self._pending:
                        self._pending[device_id] = at
            if not isinstance(error, SielumError):
                raise
            log_event(
                log,
                "last_seen",
                logging.WARNING,
                outcome="failed",
                reason=error.message,
                devices=len(batch),
            )
            return 0
        with self._lock:
            for device_id, at in batch.items():
                # Re-inserted, so the dict stays in the order of the times written.
                self._written.pop(device_id, None)
                self._written[device_id] = at
        return changed

    def _forget_before(self, cutoff: datetime) -> None:
        """Drop the devices written before cutoff: from the front, oldest first."""
        written = self._written
        while written:
            device_id, at = next(iter(written.items()))
            if at > cutoff:
                return
            del written[device_id]
