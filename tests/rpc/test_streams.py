"""Streams anyone may open (health Watch, reflection) are capped per connection and in all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sielum.enroll.ratelimit import FailureLimit

from .conftest import Harness, start_harness

PER_CONNECTION = "too many open streams on this connection (at most {})"
IN_ALL = "too many open streams on this server (at most {}); try later"


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[Harness]:
    h = start_harness(
        tmp_path,
        failure_limit=FailureLimit(burst=0),
        max_streams_per_connection=4,
        max_streams=10,
    )
    try:
        yield h
    finally:
        h.server.stop(grace=1)


def _watch(channel: grpc.Channel) -> tuple[Any, str]:
    """A Watch stream and what it got first: "SERVING", or the refusal's code and details."""
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=30)
    try:
        first = next(stream)
    except grpc.RpcError as error:
        return stream, f"{error.code().name}: {error.details()}"  # type: ignore[attr-defined]
    return stream, health_pb2.HealthCheckResponse.ServingStatus.Name(first.status)


def test_fail_watch_streams_beyond_the_caps_are_refused(capped: Harness) -> None:
    first = capped.enroll_channel()
    streams = [_watch(first) for _ in range(5)]
    assert [outcome for _, outcome in streams] == ["SERVING"] * 4 + [
        "RESOURCE_EXHAUSTED: " + PER_CONNECTION.format(4)
    ]
    # A stream that ends frees its slot.
    streams[0][0].cancel()
    streams[0] = _watch(first)
    assert streams[0][1] == "SERVING"

    channels = [capped.enroll_channel() for _ in range(3)]
    more = [_watch(channel) for channel in channels for _ in range(3)]
    outcomes = [outcome for _, outcome in more]
    assert outcomes == ["SERVING"] * 6 + ["RESOURCE_EXHAUSTED: " + IN_ALL.format(10)] * 3
    # Unary calls are not streams: they still answer.
    check = health_pb2_grpc.HealthStub(channels[2]).Check(health_pb2.HealthCheckRequest())
    assert check.status == health_pb2.HealthCheckResponse.SERVING

    for stream, _ in streams + more:
        stream.cancel()
    for channel in (first, *channels):
        channel.close()
    fresh = [capped.enroll_channel() for _ in range(3)]
    again = [_watch(channel)[1] for channel in fresh for _ in range(3)]
    assert again == ["SERVING"] * 9


def test_fail_many_watch_streams_are_capped(tmp_path: Path) -> None:
    """1,100 Watch streams from 100 connections at the default caps (16 per connection,
    1,000 in all): 1,000 stay open, the rest are refused, and the server keeps answering."""
    h = start_harness(tmp_path, failure_limit=FailureLimit(burst=0))
    channels = [h.enroll_channel() for _ in range(100)]
    try:
        streams = [_watch(channel) for channel in channels for _ in range(11)]
        outcomes = [outcome for _, outcome in streams]
        assert outcomes.count("SERVING") == 1000
        assert outcomes[1000:] == ["RESOURCE_EXHAUSTED: " + IN_ALL.format(1000)] * 100
        assert h.server.streams.open_streams == 1000
        beat = health_pb2_grpc.HealthStub(h.enroll_channel()).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert beat.status == health_pb2.HealthCheckResponse.SERVING
        for stream, _ in streams:
            stream.cancel()
    finally:
        for channel in channels:
            channel.close()
        h.server.stop(grace=1)
