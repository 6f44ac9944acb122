"""Conversions between protobuf well-known types and plain Python values."""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from sielum.errors import InvalidArgumentError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_timestamp(value: datetime) -> Timestamp:
    """The instant as a Timestamp; a naive value is taken as local time, as astimezone does.

    An aware value is counted from the epoch in whole microseconds, what
    Timestamp.FromDatetime gives, at a third of its cost: every heartbeat's answer
    carries three (tests/unit/test_pb.py::test_to_timestamp_agrees_with_from_datetime).
    """
    if value.tzinfo is None:
        stamp = Timestamp()
        stamp.FromDatetime(value.astimezone(UTC))
        return stamp
    seconds, micros = divmod((value - _EPOCH) // _MICROSECOND, 1_000_000)
    return Timestamp(seconds=seconds, nanos=micros * 1000)


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
