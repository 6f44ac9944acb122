"""The gRPC transport's registration of Sielum's methods (core/methods.py) as gRPC services."""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from sielum.core.methods import UnaryMethod


def grpc_handler(service_name: str, methods: Iterable[UnaryMethod]) -> grpc.GenericRpcHandler:
    """The methods as one gRPC service; the interceptor authorizes and parses each call."""
    return grpc.method_handlers_generic_handler(
        service_name,
        {
            method.name.rsplit("/", 1)[1]: grpc.unary_unary_rpc_method_handler(
                method.handler,
                request_deserializer=method.request_class.FromString,
                response_serializer=method.response_class.SerializeToString,
            )
            for method in methods
        },
    )
