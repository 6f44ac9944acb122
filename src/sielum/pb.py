"""Conversions between protobuf well-known types and plain Python values."""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from sielum.errors import InvalidArgumentError


def to_timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def to_duration(value: timedelta) -> Duration:
    duration = Duration()
    duration.FromTimedelta(value)
    return duration


def from_timestamp(stamp: Timestamp, field: str = "timestamp") -> datetime:
    """A request's Timestamp as an aware datetime; out of range is the caller's mistake."""
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidArgumentError(f"{field} is out of range") from None


def peer_host(peer: str) -> str:
    """The address part of grpc's peer string: 'ipv4:10.0.0.1:5000' -> '10.0.0.1'.

    'ipv6:[::1]:5000' -> '::1'; a unix socket or an unknown form is returned whole.
    grpc percent-encodes the brackets of an IPv6 peer ('ipv6:%5B::1%5D:5000'), so the
    address is decoded first (tests/unit/test_tokenpolicy.py::test_peer_host_decodes_ipv6).
    """
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        host = urllib.parse.unquote(rest.rsplit(":", 1)[0])
        return host.strip("[]")
    return peer
