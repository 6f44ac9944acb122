"""Device policy: a device's host name and state, and when its certificate should be renewed."""

from __future__ import annotations

from datetime import datetime

from sielum.errors import InvalidArgumentError, PermissionDeniedError
from sielum.model import Device, DeviceState

MAX_HOSTNAME = 253


def check_hostname(hostname: str) -> str:
    """The host name as stored and searched: stripped, at most 253 printable characters.

    Control characters are refused: an admin reads host names in a terminal, where
    they could rewrite what is shown (and PostgreSQL refuses a NUL byte).
    """
    name = hostname.strip()
    if len(name) > MAX_HOSTNAME:
        raise InvalidArgumentError(f"hostname is longer than {MAX_HOSTNAME} characters")
    if any(not c.isprintable() for c in name):
        raise InvalidArgumentError("hostname contains control characters")
    return name


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
