"""Interceptors for grpc.server and grpc.aio.server: admit only device certificates that check."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from sielum.verify.errors import VerifyError
from sielum.verify.verifier import DeviceVerifier

# Health checks come from load balancers and orchestrators that hold no device
# certificate, and say nothing but whether the service is up.
HEALTH_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})

if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]


class DeviceInterceptor(grpc.ServerInterceptor):
    """For grpc.server: every call but those in `allow` needs a device certificate that checks.

    A refused call ends with the refusal's status (PERMISSION_DENIED, or UNAVAILABLE
    while the directory is stale) and its message, before the handler runs.
    """

    def __init__(self, verifier: DeviceVerifier, allow: Collection[str] = HEALTH_METHODS) -> None:
        self._verifier = verifier
        self._allow = frozenset(allow)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method in self._allow:
            return handler
        return _rebuild(handler, self._guard_response, self._guard_stream)

    def _admit(self, context: grpc.ServicerContext) -> None:
        try:
            self._verifier.caller(context)
        except VerifyError as error:
            context.abort(error.code, error.message)

    def _guard_response(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            self._admit(context)
            return behavior(request, context)

        return guarded

    def _guard_stream(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            self._admit(context)
            yield from behavior(request, context)

        return guarded


class AioDeviceInterceptor(grpc.aio.ServerInterceptor):
    """For grpc.aio.server: the same admission as DeviceInterceptor, on the event loop.

    The check is a few dict lookups on a cached certificate, so it runs on the loop
    without an executor.
    """

    def __init__(self, verifier: DeviceVerifier, allow: Collection[str] = HEALTH_METHODS) -> None:
        self._verifier = verifier
        self._allow = frozenset(allow)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in self._allow:
            return handler
        return _rebuild(handler, self._guard_response, self._guard_stream)

    async def _admit(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            self._verifier.caller(context)
        except VerifyError as error:
            await context.abort(error.code, error.message)

    def _guard_response(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await self._admit(context)
            reply = behavior(request, context)
            return await reply if inspect.isawaitable(reply) else reply

        return guarded

    def _guard_stream(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):

            async def replies(request: Any, context: Any) -> AsyncIterator[Any]:
                await self._admit(context)
                async for reply in behavior(request, context):
                    yield reply

            return replies

        # A handler that writes its replies with context.write() and returns nothing.
        async def writes(request: Any, context: Any) -> None:
            await self._admit(context)
            result = behavior(request, context)
            if inspect.isawaitable(result):
                await result

        return writes


def _rebuild(
    handler: Handler,
    guard_response: Callable[[Callable[..., Any]], Callable[..., Any]],
    guard_stream: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> Handler:
    """The handler with its behavior guarded, whichever of the four shapes it has."""
    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(guard_response(handler.unary_unary), **codecs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(guard_stream(handler.unary_stream), **codecs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(guard_response(handler.stream_unary), **codecs)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(guard_stream(handler.stream_stream), **codecs)
    raise TypeError("RpcMethodHandler with no behavior")
