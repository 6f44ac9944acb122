"""Human durations for flags: '90d', '12h', '30m', '45s', '2w'."""

from __future__ import annotations

import argparse
import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


def parse_duration(text: str) -> timedelta:
    """'7d' -> 7 days. Raises argparse.ArgumentTypeError, so argparse reports it cleanly."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: use a number and a unit, like 90d, 12h, 30m, 45s or 2w"
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise argparse.ArgumentTypeError("duration must be positive")
    return timedelta(seconds=seconds)
