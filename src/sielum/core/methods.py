"""Sielum's services as data: each method with its message classes and handler.

The gRPC transport (rpc/handlers.py) registers these, and the dashboard's Connect
transport serves the same unary ones, so both transports call one handler per method.
A server-streaming method (DirectoryService/WatchDevices) is an async generator of
(request, Call); only the gRPC transport serves it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from sielum.identity import Call

# A unary handler's reply, or an awaitable of it when the rest of its work waits on the
# event loop (an enrollment waiting for its batch's COMMIT: enroll/committer.py).
Handler = Callable[[Any, Call], Message | Awaitable[Message]]
StreamHandler = Callable[[Any, Call], AsyncIterator[Message]]


@dataclass(frozen=True)
class UnaryMethod:
    name: str  # the full method name, "/sielum.admin.v1.AdminService/ListDevices"
    request_class: type[Message]
    response_class: type[Message]
    handler: Handler


@dataclass(frozen=True)
class StreamMethod:
    name: str
    request_class: type[Message]
    response_class: type[Message]
    handler: StreamHandler


Method = UnaryMethod | StreamMethod


def service_methods(service: ServiceDescriptor, servicer: object) -> tuple[Method, ...]:
    """Every method of service, answered by servicer's method of the same name.

    A method the servicer lacks stops the server at start-up rather than at the
    first call; so does a client-streaming one (none is served).
    """
    methods: list[Method] = []
    for method in service.methods:
        name = f"/{service.full_name}/{method.name}"
        handler = getattr(servicer, method.name, None)
        if handler is None:
            raise TypeError(f"{type(servicer).__name__} does not answer {name[1:]}")
        if method.client_streaming:
            raise TypeError(f"{name[1:]}: client-streaming methods are not served")
        kind = StreamMethod if method.server_streaming else UnaryMethod
        methods.append(
            kind(
                name=name,
                request_class=message_factory.GetMessageClass(method.input_type),
                response_class=message_factory.GetMessageClass(method.output_type),
                handler=handler,
            )
        )
    return tuple(methods)


def unary_methods(service: ServiceDescriptor, servicer: object) -> tuple[UnaryMethod, ...]:
    """service_methods() of a service that has only unary methods (what the dashboard serves)."""
    methods = service_methods(service, servicer)
    unary = tuple(m for m in methods if isinstance(m, UnaryMethod))
    if len(unary) != len(methods):
        raise TypeError(f"{service.full_name} has streaming methods")
    return unary
