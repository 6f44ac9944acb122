"""The gRPC transport's registration of Sielum's methods (core/methods.py) as gRPC services."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from sielum.core.methods import Method, UnaryMethod


def grpc_handler(service_name: str, methods: Iterable[Method]) -> grpc.GenericRpcHandler:
    """The methods as one gRPC service; the interceptor authorizes and parses each call."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in methods:
        make = (
            grpc.unary_unary_rpc_method_handler
            if isinstance(method, UnaryMethod)
            else grpc.unary_stream_rpc_method_handler
        )
        handlers[method.name.rsplit("/", 1)[1]] = make(
            method.handler,
            request_deserializer=method.request_class.FromString,
            response_serializer=method.response_class.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service_name, handlers)
