"""Sielum's services as data: each unary method with its message classes and handler.

The gRPC transport (rpc/handlers.py) registers these, and the dashboard's Connect
transport serves the same ones, so both transports call one handler per method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from sielum.identity import Call

Handler = Callable[[Any, Call], Message]


@dataclass(frozen=True)
class UnaryMethod:
    name: str  # the full method name, "/sielum.admin.v1.AdminService/ListDevices"
    request_class: type[Message]
    response_class: type[Message]
    handler: Handler


def unary_methods(service: ServiceDescriptor, servicer: object) -> tuple[UnaryMethod, ...]:
    """Every method of service, answered by servicer's method of the same name.

    A method the servicer lacks stops the server at start-up rather than at the
    first call.
    """
    methods = []
    for method in service.methods:
        handler = getattr(servicer, method.name, None)
        if handler is None:
            raise TypeError(
                f"{type(servicer).__name__} does not answer {service.full_name}/{method.name}"
            )
        methods.append(
            UnaryMethod(
                name=f"/{service.full_name}/{method.name}",
                request_class=message_factory.GetMessageClass(method.input_type),
                response_class=message_factory.GetMessageClass(method.output_type),
                handler=handler,
            )
        )
    return tuple(methods)
