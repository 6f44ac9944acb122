"""Authorization as data: the method-to-role table, caller identity, and the one interceptor."""

from __future__ import annotations

import enum
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import grpc
from cryptography import x509

from sielum.ca.profile import role_of
from sielum.errors import (
    InternalError,
    InvalidArgumentError,
    PermissionDeniedError,
    SielumError,
)
from sielum.logs import log_event
from sielum.server.pb import peer_host
from sielum.server.runner import Runner

log = logging.getLogger("sielum.server")


class Role(enum.Enum):
    PUBLIC = "public"
    ADMIN = "admin"
    DEVICE = "device"


# Every method the server answers, with the role it needs. A method served but
# missing here is denied; tests/rpc/test_authorization.py walks every service
# descriptor and fails if one is left out.
METHOD_ROLES: Mapping[str, Role] = {
    "/sielum.enroll.v1.EnrollService/Enroll": Role.PUBLIC,
    "/sielum.admin.v1.AdminService/CreateEnrollmentToken": Role.ADMIN,
    "/sielum.admin.v1.AdminService/GetEnrollmentToken": Role.ADMIN,
    "/sielum.admin.v1.AdminService/ListEnrollmentTokens": Role.ADMIN,
    "/sielum.admin.v1.AdminService/RevokeEnrollmentToken": Role.ADMIN,
    "/sielum.admin.v1.AdminService/ListDevices": Role.ADMIN,
    "/sielum.admin.v1.AdminService/GetDevice": Role.ADMIN,
    "/sielum.admin.v1.AdminService/RevokeDevice": Role.ADMIN,
    "/sielum.agent.v1.AgentService/Heartbeat": Role.DEVICE,
    "/sielum.agent.v1.AgentService/RenewCertificate": Role.DEVICE,
    "/grpc.health.v1.Health/Check": Role.PUBLIC,
    "/grpc.health.v1.Health/Watch": Role.PUBLIC,
    "/grpc.health.v1.Health/List": Role.PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Role.PUBLIC,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": Role.PUBLIC,
}


class CallContext(Protocol):
    """What handlers read of a call's context: the peer and its verified certificate.

    Both grpc's and grpc.aio's servicer contexts have it.
    """

    def peer(self) -> str: ...

    def auth_context(self) -> Mapping[str, Any]: ...  # values: lists of bytes


@dataclass(frozen=True)
class Identity:
    """Who is calling, from the verified client certificate."""

    role: Role
    name: str  # the admin's name or the device id
    serial: str
    not_before: datetime
    not_after: datetime


@functools.lru_cache(maxsize=4096)
def _identity_from_pem(pem: bytes) -> Identity | None:
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    found = role_of(certificate)
    if found is None:
        return None
    role, name = found
    return Identity(
        role=Role(role),
        name=name,
        serial=format(certificate.serial_number, "x"),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
    )


def identify(context: CallContext) -> Identity | None:
    """The caller's identity, or None without a client certificate of ours.

    grpc has verified the chain against the Sielum CA before a handler runs, so
    the certificate here is one the CA signed and that is within its validity.
    """
    pems = list(context.auth_context().get("x509_pem_cert", ()))
    if not pems:
        return None
    return _identity_from_pem(pems[0])


def require_identity(context: CallContext) -> Identity:
    caller = identify(context)
    if caller is None:
        raise PermissionDeniedError("a Sielum client certificate is required")
    return caller


DeviceGate = Callable[[str], None]
"""Raises PermissionDeniedError when the device may not call (revoked, unknown)."""


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Checks the caller's role for every call, then maps SielumError to its status.

    Sielum's own handlers are plain blocking functions (store and CA work); the
    runner decides where they run (server/runner.py). Library handlers (health,
    reflection) are coroutines and run on the loop.

    Unknown methods pass through as None, so grpc answers UNIMPLEMENTED: clients
    such as `buf curl` rely on that to fall back between reflection versions.
    """

    def __init__(self, roles: Mapping[str, Role], device_gate: DeviceGate, run: Runner) -> None:
        self._roles = roles
        self._device_gate = device_gate
        self._run = run
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
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = wrapped
        return wrapped

    def _authorize(self, method: str, context: CallContext) -> None:
        needed = self._roles.get(method)
        if needed is None:
            raise PermissionDeniedError(f"method {method} is not open to any caller")
        if needed is Role.PUBLIC:
            return
        caller = identify(context)
        if caller is None:
            raise PermissionDeniedError(
                f"{method} needs {_a(needed)} client certificate from the Sielum CA"
            )
        if caller.role is not needed:
            raise PermissionDeniedError(
                f"{method} needs {_a(needed)} certificate; this one is {caller.role.value}"
            )
        if caller.role is Role.DEVICE:
            self._device_gate(caller.name)

    def _admit(self, method: str, context: CallContext) -> None:
        try:
            self._authorize(method, context)
        except SielumError as error:
            log_event(
                log, "denied", method=method, peer=peer_host(context.peer()), reason=error.message
            )
            raise

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if handler.unary_unary is not None:
            parse = _parser(handler.request_deserializer, method)
            behavior: Callable[[Any, Any], Any] = handler.unary_unary
            if inspect.iscoroutinefunction(behavior):
                return self._unary(method, parse, behavior, handler.response_serializer)
            return self._blocking_unary(method, parse, behavior, handler.response_serializer)
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
        parse: Callable[[bytes, CallContext], Any],
        behavior: Callable[[Any, CallContext], Any],
        serializer: Callable[[Any], bytes] | None,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Authorization, parsing and the handler run as one blocking call."""

        def call(raw: bytes, context: CallContext) -> Any:
            self._admit(method, context)
            return behavior(parse(raw, context), context)

        async def guarded(raw: bytes, context: Any) -> Any:
            try:
                return await self._run(functools.partial(call, raw, context))
            except SielumError as error:
                await context.abort(error.code, error.message)
            except NotImplementedError as error:
                # A generated servicer's method left unimplemented (health List).
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, str(error))
            except Exception:
                # The cause stays in the log; the client gets a generic message.
                log.exception("unexpected error in %s", method)
                internal = InternalError("internal error")
                await context.abort(internal.code, internal.message)

        return grpc.unary_unary_rpc_method_handler(
            guarded, request_deserializer=None, response_serializer=serializer
        )

    def _unary(
        self,
        method: str,
        parse: Callable[[bytes, CallContext], Any],
        behavior: Callable[[Any, Any], Awaitable[Any]],
        serializer: Callable[[Any], bytes] | None,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        async def guarded(raw: bytes, context: Any) -> Any:
            try:
                self._admit(method, context)
                request = parse(raw, context)
            except SielumError as error:
                await context.abort(error.code, error.message)
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            guarded, request_deserializer=None, response_serializer=serializer
        )

    def _streaming(
        self, method: str, behavior: Callable[[Any, Any], Any]
    ) -> Callable[[Any, Any], Awaitable[None]]:
        """Library streams (health Watch, reflection): authorized, then passed through.

        grpc.aio streams either yield their replies or write them to the context;
        the guard writes what a generator yields, so both shapes pass through.
        """

        async def guarded(request: Any, context: Any) -> None:
            try:
                self._admit(method, context)
            except SielumError as error:
                await context.abort(error.code, error.message)
            replies = behavior(request, context)
            if inspect.isasyncgen(replies):
                async for reply in replies:
                    await context.write(reply)
            else:
                await replies

        return guarded


def _a(role: Role) -> str:
    return f"an {role.value}" if role.value[0] in "aeiou" else f"a {role.value}"


Deserializer = Callable[[bytes], Any]


def _message_name(deserializer: Deserializer) -> str:
    """'sielum.enroll.v1.EnrollRequest' for EnrollRequest.FromString, else a plain word."""
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "protobuf"))


def _parser(deserializer: Deserializer | None, method: str) -> Callable[[bytes, CallContext], Any]:
    """Parses a request after authorization, refusing bytes that are no such message.

    grpc's own deserialization answers INTERNAL ("Exception deserializing
    request!") to bytes that are not the request message, e.g. a string field
    that is not UTF-8; a malformed request is the caller's mistake, so it gets
    INVALID_ARGUMENT (tests/robust/test_hostile_input.py::test_fail_random_bytes_on_the_wire).
    """
    if deserializer is None:
        return lambda raw, context: raw
    refusal = f"request is not a valid {_message_name(deserializer)} message"

    def parse(raw: bytes, context: CallContext) -> Any:
        try:
            return deserializer(raw)
        except Exception:
            log_event(
                log,
                "malformed request",
                level=logging.WARNING,
                method=method,
                peer=peer_host(context.peer()),
            )
            raise InvalidArgumentError(refusal) from None

    return parse
