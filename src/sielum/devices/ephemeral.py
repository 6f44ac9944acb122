"""Ephemeral devices: the server revokes a device of such a token once it stops calling."""

from __future__ import annotations

import logging

from sielum.clock import Clock
from sielum.logs import log_event
from sielum.model import AuditEvent
from sielum.store.store import Store

log = logging.getLogger("sielum.devices")

EXPIRE_ACTION = "device.expire"
# The actor of what the server does by itself, in the audit trail.
SERVER_ACTOR = "server"
BATCH = 500


class EphemeralSweep:
    """One sweep revokes every device whose token has ephemeral_after and that has not
    called (or, never having called, not enrolled) for that long.

    Any replica, any worker may sweep at any time: each revocation is one conditional
    UPDATE that re-checks the device is due and not revoked, so two sweeps racing revoke
    a device once and audit it once (tests/store/test_requests.py).
    """

    def __init__(self, store: Store, clock: Clock, batch: int = BATCH) -> None:
        self._store = store
        self._clock = clock
        self._batch = batch

    def sweep(self) -> int:
        """Revoke the devices due now; how many this call revoked."""
        revoked = 0
        while True:
            now = self._clock.now()
            due = self._store.find_ephemeral_devices_due(now, self._batch)
            for device_id in due:
                audit = AuditEvent(
                    at=now,
                    actor=SERVER_ACTOR,
                    action=EXPIRE_ACTION,
                    resource=f"device/{device_id}",
                    detail="ephemeral: no call within its token's ephemeral_after",
                )
                if self._store.expire_device(device_id, now, audit):
                    revoked += 1
                    log_event(log, EXPIRE_ACTION, device=device_id, outcome="ok")
            # A full batch may hide more behind it; a shorter one was the last.
            if len(due) < self._batch:
                return revoked
