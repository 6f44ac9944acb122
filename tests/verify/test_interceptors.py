"""interceptor() on grpc.server and aio_interceptor() on grpc.aio.server, called over real mTLS."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from sielum.verify import HEALTH_METHODS, DeviceVerifier, aio_interceptor, interceptor
from tests.verify.conftest import Directory, FakeMonotonic, Issued, TestCA, key_pem, wait_until

SAY = "/sielum.test.Echo/Say"
COUNT = "/sielum.test.Echo/Count"
PUBLIC = "/sielum.test.Echo/Public"
ALLOW = HEALTH_METHODS | {PUBLIC}
SUPERSEDED = "this certificate has been superseded by a renewal; use the device's current one"


def sync_handlers(verifier: DeviceVerifier) -> grpc.GenericRpcHandler:
    """A service whose handlers learn the calling device from the verifier."""

    def say(request: bytes, context: grpc.ServicerContext) -> bytes:
        return verifier.caller(context).id.encode()

    def count(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from (b"1", b"2")

    return grpc.method_handlers_generic_handler(
        "sielum.test.Echo",
        {
            "Say": grpc.unary_unary_rpc_method_handler(say),
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "Public": grpc.unary_unary_rpc_method_handler(lambda request, context: b"public"),
        },
    )


def aio_handlers(verifier: DeviceVerifier) -> grpc.GenericRpcHandler:
    async def say(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return verifier.caller(context).id.encode()

    async def count(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for reply in (b"1", b"2"):
            yield reply

    async def public(request: bytes, context: Any) -> bytes:
        return b"public"

    return grpc.method_handlers_generic_handler(
        "sielum.test.Echo",
        {
            "Say": grpc.unary_unary_rpc_method_handler(say),
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "Public": grpc.unary_unary_rpc_method_handler(public),
        },
    )


def server_credentials(ca: TestCA, trust: bytes, require: bool) -> grpc.ServerCredentials:
    issued = ca.server()
    return grpc.ssl_server_credentials(
        [(key_pem(issued.key), issued.pem)], root_certificates=trust, require_client_auth=require
    )


def serve_sync(
    verifier: DeviceVerifier, credentials: grpc.ServerCredentials
) -> tuple[str, Callable[[], None]]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), interceptors=[interceptor(verifier, ALLOW)]
    )
    server.add_generic_rpc_handlers([sync_handlers(verifier)])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return f"127.0.0.1:{port}", lambda: server.stop(grace=None)


def serve_aio(
    verifier: DeviceVerifier, credentials: grpc.ServerCredentials
) -> tuple[str, Callable[[], None]]:
    """A grpc.aio server on its own event loop in a thread, so the test can call it blocking."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server_box: list[grpc.aio.Server] = []

    async def start() -> int:
        server = grpc.aio.server(interceptors=[aio_interceptor(verifier, ALLOW)])
        server.add_generic_rpc_handlers([aio_handlers(verifier)])
        port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        server_box.append(server)
        return port

    port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(server_box[0].stop(None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    return f"127.0.0.1:{port}", stop


SERVERS = {"grpc.server": serve_sync, "grpc.aio.server": serve_aio}


def call(
    target: str, ca: TestCA, client: Issued | None, method: str = SAY
) -> tuple[grpc.StatusCode, Any]:
    """Calls method over TLS with the client's certificate (or none); the status and reply."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.pem,
        private_key=key_pem(client.key) if client else None,
        certificate_chain=client.pem if client else None,
    )
    with grpc.secure_channel(target, credentials) as channel:
        try:
            if method == COUNT:
                reply: Any = list(channel.unary_stream(method)(b"", timeout=10))
            else:
                reply = channel.unary_unary(method)(b"", timeout=10)
        except grpc.RpcError as error:
            return error.code(), error.details()  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, reply


@pytest.fixture(params=sorted(SERVERS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fleet(directory: Directory) -> dict[str, Issued]:
    """Devices in each standing: current, revoked, superseded, and one of another CA."""
    ca, fake = directory.ca, directory.fake
    devices = {
        "current": ca.device("alice"),
        "revoked": ca.device("bob"),
        "superseded": ca.device("carol"),
        "renewed": ca.device("carol"),
        "other-ca": TestCA().device("alice"),
    }
    fake.enroll("alice", devices["current"])
    fake.enroll("bob", devices["revoked"])
    fake.revoke("bob")
    fake.enroll("carol", devices["superseded"])
    fake.renew("carol", devices["renewed"], previous=None)
    return devices


def test_only_current_device_certificates_are_admitted(
    kind: str, directory: Directory, fleet: dict[str, Issued]
) -> None:
    ca = directory.ca
    with directory.verifier() as verifier:
        assert verifier.wait_synced(10)
        target, stop = SERVERS[kind](verifier, server_credentials(ca, ca.pem, require=True))
        try:
            assert call(target, ca, fleet["current"]) == (grpc.StatusCode.OK, b"alice")
            assert call(target, ca, fleet["renewed"]) == (grpc.StatusCode.OK, b"carol")
            assert call(target, ca, fleet["current"], COUNT) == (grpc.StatusCode.OK, [b"1", b"2"])
            assert call(target, ca, fleet["revoked"]) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "device has been revoked",
            )
            assert call(target, ca, fleet["revoked"], COUNT) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "device has been revoked",
            )
            assert call(target, ca, fleet["superseded"]) == (
                grpc.StatusCode.PERMISSION_DENIED,
                SUPERSEDED,
            )
            # Another CA, or no certificate: this server's TLS refuses the handshake.
            for client in (fleet["other-ca"], None):
                code, _ = call(target, ca, client)
                assert code == grpc.StatusCode.UNAVAILABLE
        finally:
            stop()


def test_a_server_trusting_more_than_the_sielum_ca_still_refuses_other_certificates(
    kind: str, directory: Directory, fleet: dict[str, Issued]
) -> None:
    ca = directory.ca
    other = TestCA()
    other_device = other.device("alice")
    with directory.verifier() as verifier:
        assert verifier.wait_synced(10)
        trust = ca.pem + other.pem
        target, stop = SERVERS[kind](verifier, server_credentials(ca, trust, require=True))
        try:
            assert call(target, ca, other_device) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "certificate is not issued by the trusted Sielum CA",
            )
            assert call(target, ca, fleet["current"]) == (grpc.StatusCode.OK, b"alice")
        finally:
            stop()


def test_a_call_without_a_certificate_is_refused_unless_its_method_is_allowed(
    kind: str, directory: Directory, fleet: dict[str, Issued]
) -> None:
    ca = directory.ca
    with directory.verifier() as verifier:
        assert verifier.wait_synced(10)
        target, stop = SERVERS[kind](verifier, server_credentials(ca, ca.pem, require=False))
        try:
            assert call(target, ca, None) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "a client certificate from the Sielum CA is required",
            )
            assert call(target, ca, None, PUBLIC) == (grpc.StatusCode.OK, b"public")
        finally:
            stop()


def test_a_stale_directory_makes_the_interceptor_answer_unavailable(
    kind: str, directory: Directory, fleet: dict[str, Issued]
) -> None:
    ca, fake = directory.ca, directory.fake
    clock = FakeMonotonic()
    with directory.verifier(monotonic=clock, max_staleness=30) as verifier:
        assert verifier.wait_synced(10)
        target, stop = SERVERS[kind](verifier, server_credentials(ca, ca.pem, require=True))
        try:
            fake.refuse = grpc.StatusCode.UNAVAILABLE
            fake.disconnect()
            wait_until(lambda: verifier.status().reconnects >= 1)
            clock.advance(31)
            code, message = call(target, ca, fleet["current"])
            assert code == grpc.StatusCode.UNAVAILABLE
            assert message.startswith("the device directory has not confirmed its index")
            fake.refuse = None
            assert verifier.wait_synced(10)
            assert call(target, ca, fleet["current"]) == (grpc.StatusCode.OK, b"alice")
        finally:
            stop()
