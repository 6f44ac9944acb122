"""Conversions between protobuf's well-known types and Python values (sielum/pb.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from sielum.pb import from_timestamp, to_timestamp


def _from_datetime(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 12, 7, 22, 30, 1, 123456, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # before the epoch
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 6, 1, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
    ],
)
def test_to_timestamp_agrees_with_from_datetime(value: datetime) -> None:
    stamp = to_timestamp(value)
    assert stamp == _from_datetime(value)
    assert 0 <= stamp.nanos < 1_000_000_000
    assert from_timestamp(stamp) == value


def test_to_timestamp_takes_a_naive_value_as_local_time() -> None:
    naive = datetime(2026, 12, 7, 22, 30, 1, 250000)
    assert to_timestamp(naive) == _from_datetime(naive)
