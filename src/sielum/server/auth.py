"""Authorization as data: the method-to-role table, caller identity, and the one interceptor."""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from cryptography import x509

from sielum.ca.profile import role_of
from sielum.errors import InternalError, PermissionDeniedError, SielumError
from sielum.server.logs import log_event
from sielum.server.pb import peer_host

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


def identify(context: grpc.ServicerContext) -> Identity | None:
    """The caller's identity, or None without a client certificate of ours.

    grpc has verified the chain against the Sielum CA before a handler runs, so
    the certificate here is one the CA signed and that is within its validity.
    """
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        return None
    return _identity_from_pem(pems[0])


def require_identity(context: grpc.ServicerContext) -> Identity:
    caller = identify(context)
    if caller is None:
        raise PermissionDeniedError("a Sielum client certificate is required")
    return caller


DeviceGate = Callable[[str], None]
"""Raises PermissionDeniedError when the device may not call (revoked, unknown)."""


class ServerInterceptor(grpc.ServerInterceptor):
    """Checks the caller's role for every call, then maps SielumError to its status.

    Unknown methods pass through as None, so grpc answers UNIMPLEMENTED: clients
    such as `buf curl` rely on that to fall back between reflection versions.
    """

    def __init__(self, roles: Mapping[str, Role], device_gate: DeviceGate) -> None:
        self._roles = roles
        self._device_gate = device_gate

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        return _wrap(handler, method, functools.partial(self._authorize, method))

    def _authorize(self, method: str, context: grpc.ServicerContext) -> None:
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


def _a(role: Role) -> str:
    return f"an {role.value}" if role.value[0] in "aeiou" else f"a {role.value}"


Deserializer = Callable[[bytes], Any]


def _message_name(deserializer: Deserializer) -> str:
    """'sielum.enroll.v1.EnrollRequest' for EnrollRequest.FromString, else a plain word."""
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "protobuf"))


def _parser(
    deserializer: Deserializer | None, context_method: str
) -> Callable[[Any, grpc.ServicerContext], Any]:
    """Parses a request after authorization, refusing bytes that are no such message.

    grpc's own deserialization answers INTERNAL ("Exception deserializing
    request!") to bytes that are not the request message, e.g. a string field
    that is not UTF-8; a malformed request is the caller's mistake, so it gets
    INVALID_ARGUMENT (tests/robust/test_hostile_input.py::test_fail_random_bytes_on_the_wire).
    """
    if deserializer is None:
        return lambda raw, context: raw
    refusal = f"request is not a valid {_message_name(deserializer)} message"

    def parse(raw: Any, context: grpc.ServicerContext) -> Any:
        try:
            return deserializer(raw)
        except Exception:
            log_event(
                log,
                "malformed request",
                level=logging.WARNING,
                method=context_method,
                peer=peer_host(context.peer()),
            )
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal)

    return parse


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    method: str,
    authorize: Callable[[grpc.ServicerContext], None],
) -> grpc.RpcMethodHandler[Any, Any]:
    ours = method.startswith("/sielum.")
    parse = _parser(handler.request_deserializer, method)
    streaming_requests = handler.stream_unary is not None or handler.stream_stream is not None

    def parse_request(request: Any, context: grpc.ServicerContext) -> Any:
        if streaming_requests:
            return (parse(raw, context) for raw in request)
        return parse(request, context)

    def guard(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                authorize(context)
            except SielumError as error:
                log_event(
                    log,
                    "denied",
                    method=method,
                    peer=peer_host(context.peer()),
                    reason=error.message,
                )
                context.abort(error.code, error.message)
            request = parse_request(request, context)
            if not ours:
                return behavior(request, context)
            try:
                return behavior(request, context)
            except SielumError as error:
                context.abort(error.code, error.message)
            except Exception:
                # The cause stays in the log; the client gets a generic message.
                log.exception("unexpected error in %s", method)
                internal = InternalError("internal error")
                context.abort(internal.code, internal.message)

        return guarded

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            guard(handler.unary_unary),
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            guard(handler.unary_stream),
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            guard(handler.stream_unary),
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )
    assert handler.stream_stream is not None, "a handler has one of the four behaviours"
    return grpc.stream_stream_rpc_method_handler(
        guard(handler.stream_stream),
        request_deserializer=None,
        response_serializer=handler.response_serializer,
    )
