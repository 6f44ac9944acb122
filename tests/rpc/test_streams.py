"""Streams anyone may open (health Watch, reflection) are capped per connection, per address
and in all."""

from __future__ import annotations

import contextlib
import socket
import threading
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
PER_ADDRESS = "too many open streams from this address (at most {})"


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
    """1,100 Watch streams from 100 connections at the default caps of 16 per connection and
    1,000 in all (the cap per address lifted, as all come from 127.0.0.1): 1,000 stay open,
    the rest are refused, and the server keeps answering."""
    h = start_harness(tmp_path, failure_limit=FailureLimit(burst=0), max_streams_per_address=1000)
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


class _FromAddress:
    """A loopback TCP relay whose connections reach the server from another source address.

    grpc's client cannot choose its source address; the relay's own connections to the
    server are bound to `source` (127.0.0.2 is loopback too), so the server sees that peer.
    """

    def __init__(self, server_port: int, source: str) -> None:
        self._server_port = server_port
        self._source = source
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                upstream = socket.socket()
                upstream.bind((self._source, 0))
                upstream.connect(("127.0.0.1", self._server_port))
                self._sockets += [client, upstream]
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def channel(self, ca_pem: bytes) -> grpc.Channel:
        return grpc.secure_channel(
            f"127.0.0.1:{self.port}",
            grpc.ssl_channel_credentials(root_certificates=ca_pem),
            options=[("grpc.ssl_target_name_override", "localhost")],
        )

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


def test_fail_one_client_holds_all_the_stream_slots(tmp_path: Path) -> None:
    """63 connections x 16 Watch streams from one address, at the default caps: 100 stay open
    (the cap per address), the rest are RESOURCE_EXHAUSTED, and a client at another address
    still gets its stream."""
    h = start_harness(tmp_path, failure_limit=FailureLimit(burst=0))
    channels = [h.enroll_channel() for _ in range(63)]
    relay = _FromAddress(h.server.enroll_port, "127.0.0.2")
    other = relay.channel(h.ca_pem)
    try:
        streams = [_watch(channel) for channel in channels for _ in range(16)]
        outcomes = [outcome for _, outcome in streams]
        assert outcomes.count("SERVING") == 100
        assert set(outcomes) == {"SERVING", "RESOURCE_EXHAUSTED: " + PER_ADDRESS.format(100)}
        assert h.server.streams.open_streams == 100
        stream, outcome = _watch(other)
        assert outcome == "SERVING"
        assert h.server.streams.open_streams == 101
        stream.cancel()
        for stream, _ in streams:
            stream.cancel()
    finally:
        other.close()
        relay.close()
        for channel in channels:
            channel.close()
        h.server.stop(grace=1)
