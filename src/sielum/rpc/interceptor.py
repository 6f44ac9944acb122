"""The gRPC transport's guard: authorize every call, parse its request, map errors to statuses."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Protocol

import grpc

from sielum.core.addresses import peer_group
from sielum.core.authorization import Authorizer, identity_from_certificate
from sielum.core.observer import CallObserver, CallStarted, observe_nothing, start_nothing
from sielum.core.runner import Runner
from sielum.errors import (
    InternalError,
    InvalidArgumentError,
    ResourceExhaustedError,
    SielumError,
)
from sielum.identity import Call, Identity
from sielum.logs import log_event
from sielum.pb import peer_host

log = logging.getLogger("sielum.server")

# A stream of ours is authorized again this often while it lasts (seconds).
REAUTHORIZE = 2.0


class GrpcContext(Protocol):
    """What the guard reads of a grpc.aio call's context: the peer and its verified certificate."""

    def peer(self) -> str: ...

    def auth_context(self) -> Mapping[str, Any]: ...  # values: lists of bytes


def identify(context: GrpcContext) -> Identity | None:
    """The caller's identity, or None without a client certificate of ours.

    grpc has verified the chain against the Sielum CA before a handler runs, so
    the certificate here is one the CA signed and that is within its validity.
    """
    pems = list(context.auth_context().get("x509_pem_cert", ()))
    if not pems:
        return None
    return identity_from_certificate(pems[0])


class StreamLimit:
    """Counts open streaming calls per connection, per address and in all; refuses one beyond a cap.

    Streams (health Watch, reflection) are open to anyone on the enroll port and each
    holds memory until its client goes: unbounded, 20,000 of them cost 370 MB
    (tests/rpc/test_streams.py::test_fail_many_watch_streams_are_capped). The cap per
    address keeps one client from holding every slot of the server on many connections
    (tests/rpc/test_streams.py::test_fail_one_client_holds_all_the_stream_slots); an
    address is counted as the failure limit counts it, IPv6 by its /64.
    """

    def __init__(self, per_connection: int, total: int, per_address: int | None = None) -> None:
        self._per_connection = per_connection
        self._total = total
        self._per_address = total if per_address is None else per_address
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}  # connection (its peer address and port) -> streams
        self._by_address: dict[str, int] = {}  # peer_group of the address -> streams
        self._count = 0

    def acquire(self, connection: str) -> None:
        """Take a slot for one stream of connection (grpc's peer string), or raise
        ResourceExhaustedError."""
        address = peer_group(peer_host(connection))
        with self._lock:
            if self._count >= self._total:
                raise ResourceExhaustedError(
                    f"too many open streams on this server (at most {self._total}); try later"
                )
            from_address = self._by_address.get(address, 0)
            if from_address >= self._per_address:
                raise ResourceExhaustedError(
                    f"too many open streams from this address (at most {self._per_address})"
                )
            held = self._open.get(connection, 0)
            if held >= self._per_connection:
                raise ResourceExhaustedError(
                    f"too many open streams on this connection (at most {self._per_connection})"
                )
            self._open[connection] = held + 1
            self._by_address[address] = from_address + 1
            self._count += 1

    def release(self, connection: str) -> None:
        address = peer_group(peer_host(connection))
        with self._lock:
            held = self._open.pop(connection, 0) - 1
            if held > 0:
                self._open[connection] = held
            from_address = self._by_address.pop(address, 0) - 1
            if from_address > 0:
                self._by_address[address] = from_address
            self._count -= 1

    @property
    def open_streams(self) -> int:
        return self._count


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Authorizes every call through the Authorizer, then maps SielumError to its status.

    Sielum's own handlers (the methods named in `ours`) are plain blocking
    functions of (request, Call); the runner decides where they run
    (core/runner.py). Library handlers (health, reflection) take grpc's own
    context; their coroutines run on the loop.

    Unknown methods pass through as None, so grpc answers UNIMPLEMENTED: clients
    such as `buf curl` rely on that to fall back between reflection versions.
    They are not observed either: their names are the caller's to choose.

    observe is told of every call to a method the server registers, with the
    status it ended with (server/metrics.py counts them).
    """

    def __init__(
        self,
        authorizer: Authorizer,
        run: Runner,
        ours: Collection[str],
        streams: StreamLimit,
        observe: CallObserver | None = None,
        started: CallStarted | None = None,
    ) -> None:
        self._authorizer = authorizer
        self._run = run
        self._ours = frozenset(ours)
        self._streams = streams
        self._observe: CallObserver = observe or observe_nothing
        self._started: CallStarted = started or start_nothing
        # Registrations are fixed before the server starts, so each method's
        # wrapped handler is built once, not per call.
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None  # grpc answers UNIMPLEMENTED; counted by neither metric
            wrapped = self._wrap(handler, method)
            self._wrapped[method] = wrapped
        # grpc.aio asks the interceptor once per call: every call served starts here.
        self._started(method)
        return wrapped

    def _admit(self, method: str, context: GrpcContext) -> Call:
        return self._authorizer.authorize(method, identify(context), peer_host(context.peer()))

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if handler.unary_unary is not None:
            parse = _parser(handler.request_deserializer, method)
            behavior: Callable[[Any, Any], Any] = handler.unary_unary
            if inspect.iscoroutinefunction(behavior):
                return self._unary(method, parse, behavior, handler.response_serializer)
            return self._blocking_unary(method, parse, behavior, handler.response_serializer)
        if handler.unary_stream is not None and method in self._ours:
            return grpc.unary_stream_rpc_method_handler(
                self._our_stream(
                    method,
                    _parser(handler.request_deserializer, method),
                    handler.unary_stream,  # type: ignore[arg-type]  # ours take a Call
                ),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(method, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # No service here takes a client stream with a single reply.
        raise TypeError(f"{method}: stream-unary handlers are not served")

    def _blocking_unary(
        self,
        method: str,
        parse: Callable[[bytes, str], Any],
        behavior: Callable[[Any, Any], Any],
        serializer: Callable[[Any], bytes] | None,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Authorization, parsing and the handler run as one blocking call.

        A handler may return an awaitable for the rest of its work, awaited here on
        the loop: an enrollment waiting for its batch's COMMIT (enroll/committer.py).
        """

        ours = method in self._ours
        observe = self._observe

        def call(raw: bytes, context: GrpcContext) -> Any:
            authorized = self._admit(method, context)
            return behavior(parse(raw, authorized.peer), authorized if ours else context)

        async def guarded(raw: bytes, context: Any) -> Any:
            started = time.perf_counter()
            try:
                reply = await self._run(functools.partial(call, raw, context))
                if inspect.isawaitable(reply):  # the rest of its work waits on the loop
                    reply = await reply
            except asyncio.CancelledError:
                observe(method, grpc.StatusCode.CANCELLED, time.perf_counter() - started)
                raise
            except Exception as error:
                code, message = _answer_to(error, method)
            else:
                observe(method, grpc.StatusCode.OK, time.perf_counter() - started)
                return reply
            # Counted before abort() sends the status: a client that has its answer
            # finds its call counted (tests/e2e/test_metrics.py scrapes right after).
            observe(method, code, time.perf_counter() - started)
            await context.abort(code, message)

        return grpc.unary_unary_rpc_method_handler(
            guarded, request_deserializer=None, response_serializer=serializer
        )

    def _unary(
        self,
        method: str,
        parse: Callable[[bytes, str], Any],
        behavior: Callable[[Any, Any], Awaitable[Any]],
        serializer: Callable[[Any], bytes] | None,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        observe = self._observe

        async def guarded(raw: bytes, context: Any) -> Any:
            started = time.perf_counter()
            try:
                authorized = self._admit(method, context)
                request = parse(raw, authorized.peer)
            except SielumError as error:
                observe(method, error.code, time.perf_counter() - started)
                await context.abort(error.code, error.message)
            try:
                reply = await behavior(request, context)
            except BaseException as error:
                code = _status_of(error, context)
                raise
            else:
                code = _code_set_on(context) or grpc.StatusCode.OK
            finally:
                observe(method, code, time.perf_counter() - started)
            return reply

        return grpc.unary_unary_rpc_method_handler(
            guarded, request_deserializer=None, response_serializer=serializer
        )

    def _streaming(
        self, method: str, behavior: Callable[[Any, Any], Any]
    ) -> Callable[[Any, Any], Awaitable[None]]:
        """Library streams (health Watch, reflection): authorized, counted, then passed through.

        grpc.aio streams either yield their replies or write them to the context;
        the guard writes what a generator yields, so both shapes pass through.
        """

        observe = self._observe

        async def guarded(request: Any, context: Any) -> None:
            started = time.perf_counter()
            connection = context.peer()
            try:
                self._admit(method, context)
                self._streams.acquire(connection)
            except SielumError as error:
                observe(method, error.code, time.perf_counter() - started)
                await context.abort(error.code, error.message)
            try:
                replies = behavior(request, context)
                if inspect.isasyncgen(replies):
                    async for reply in replies:
                        await context.write(reply)
                else:
                    await replies
            except BaseException as error:
                code = _status_of(error, context)
                raise
            else:
                code = _code_set_on(context) or grpc.StatusCode.OK
            finally:
                # Also when the client goes: grpc cancels this coroutine.
                self._streams.release(connection)
                observe(method, code, time.perf_counter() - started)

        return guarded

    def _our_stream(
        self,
        method: str,
        parse: Callable[[bytes, str], Any],
        behavior: Callable[[Any, Call], Any],
    ) -> Callable[[bytes, Any], Awaitable[None]]:
        """Sielum's own streams (DirectoryService/WatchDevices): an async generator of
        (request, Call), authorized like a unary call and again every REAUTHORIZE
        seconds while it lasts, so that revoking its caller ends it within that
        (tests/rpc/test_directory.py::test_fail_revoking_a_service_ends_its_streams).
        """

        observe = self._observe

        async def guarded(raw: bytes, context: Any) -> None:
            started = time.perf_counter()
            connection = context.peer()
            try:
                call = await self._run(functools.partial(self._admit, method, context))
                request = parse(raw, call.peer)
                self._streams.acquire(connection)
            except SielumError as error:
                observe(method, error.code, time.perf_counter() - started)
                await context.abort(error.code, error.message)
            code = grpc.StatusCode.OK
            message = ""
            pump = asyncio.ensure_future(_write_all(behavior(request, call), context))
            try:
                while not pump.done():
                    await asyncio.wait((pump,), timeout=REAUTHORIZE)
                    if pump.done():
                        break
                    try:
                        await self._run(functools.partial(self._admit, method, context))
                    except SielumError as error:
                        code, message = error.code, error.message
                        break
                if code is grpc.StatusCode.OK:
                    pump.result()  # raises what the stream raised
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as error:
                code, message = _answer_to(error, method)
            finally:
                # Also when the client goes: grpc cancels this coroutine.
                if not pump.done():
                    pump.cancel()
                    await asyncio.gather(pump, return_exceptions=True)
                self._streams.release(connection)
                observe(method, code, time.perf_counter() - started)
            if code is not grpc.StatusCode.OK:
                await context.abort(code, message)

        return guarded


def _answer_to(error: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """The status and message a handler of ours that raised error ends its call with."""
    if isinstance(error, SielumError):
        return error.code, error.message
    if isinstance(error, NotImplementedError):
        # A method not answered (yet), ours or a library's (health List).
        return grpc.StatusCode.UNIMPLEMENTED, str(error)
    # The cause stays in the log; the client gets a generic message.
    log.exception("unexpected error in %s", method)
    internal = InternalError("internal error")
    return internal.code, internal.message


async def _write_all(replies: Any, context: Any) -> None:
    async for reply in replies:
        await context.write(reply)


def _code_set_on(context: Any) -> grpc.StatusCode | None:
    """The status a library handler set on its context (set_code, abort), if any."""
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else None


def _status_of(error: BaseException, context: Any) -> grpc.StatusCode:
    """The status a library handler's exception ends its call with."""
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    # context.abort() raises after it set the code on the context.
    return _code_set_on(context) or grpc.StatusCode.UNKNOWN


Deserializer = Callable[[bytes], Any]


def _message_name(deserializer: Deserializer) -> str:
    """'sielum.enroll.v1.EnrollRequest' for EnrollRequest.FromString, else a plain word."""
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "protobuf"))


def _parser(deserializer: Deserializer | None, method: str) -> Callable[[bytes, str], Any]:
    """Parses a request after authorization, refusing bytes that are no such message.

    grpc's own deserialization answers INTERNAL ("Exception deserializing
    request!") to bytes that are not the request message, e.g. a string field
    that is not UTF-8; a malformed request is the caller's mistake, so it gets
    INVALID_ARGUMENT (tests/robust/test_hostile_input.py::test_fail_random_bytes_on_the_wire).
    """
    if deserializer is None:
        return lambda raw, peer: raw
    refusal = f"request is not a valid {_message_name(deserializer)} message"

    def parse(raw: bytes, peer: str) -> Any:
        try:
            return deserializer(raw)
        except Exception:
            log_event(log, "malformed request", level=logging.WARNING, method=method, peer=peer)
            raise InvalidArgumentError(refusal) from None

    return parse
