"""When the server's own certificates need an operator: pure policy over not_after and `now`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

# Warn this long before a certificate the server depends on expires: a month leaves
# time to renew the server certificate, or to carry out the CA plan in the README.
WARN_WITHIN = timedelta(days=30)
# And repeat the warning this often while it holds, so that it is seen in any log window.
WARN_EVERY = timedelta(days=1)


@dataclass(frozen=True)
class ExpiryWarning:
    certificate: str  # "server certificate" or "CA certificate"
    not_after: datetime
    days_left: int  # negative once expired
    action: str  # what the operator should do


def expiry_warning(
    certificate: str, not_after: datetime, action: str, now: datetime
) -> ExpiryWarning | None:
    """A warning when not_after is less than WARN_WITHIN away (or past), else None."""
    left = not_after - now
    if left >= WARN_WITHIN:
        return None
    return ExpiryWarning(
        certificate=certificate,
        not_after=not_after,
        days_left=left.days,
        action=action,
    )


def warning_due(last_warned: datetime | None, now: datetime) -> bool:
    """Whether to log a warning again: the first time, then once per WARN_EVERY."""
    return last_warned is None or now - last_warned >= WARN_EVERY
