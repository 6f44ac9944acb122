"""Device policy: a device's state and when its certificate should be renewed."""

from __future__ import annotations

from datetime import datetime

from sielum.errors import PermissionDeniedError
from sielum.model import Device, DeviceState


def device_state(device: Device, now: datetime) -> DeviceState:
    """Revoked > Expired (its certificate's not_after has passed) > Active."""
    if device.revoked_at is not None:
        return DeviceState.REVOKED
    if device.not_after <= now:
        return DeviceState.EXPIRED
    return DeviceState.ACTIVE


def renew_after(not_before: datetime, not_after: datetime) -> datetime:
    """Two thirds into the certificate's lifetime: time enough to retry a failed renewal."""
    return not_before + (not_after - not_before) * 2 / 3


def check_may_call(device: Device) -> None:
    """A revoked device is refused on its very next call."""
    if device.revoked_at is not None:
        raise PermissionDeniedError("device has been revoked")
