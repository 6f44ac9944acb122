"""gRPC reflection that lists, on each port, only the services that can be called there.

A call without a client certificate (the enroll port never asks for one) is shown
EnrollService, health and reflection; a call with one (the API port always asks)
is shown every service. A handler cannot see the port it was called on, but it
sees whether the TLS handshake carried a client certificate, which is what tells
the two ports apart. Only listing differs: asking for a file or a symbol by name
answers the same on both (the descriptors are public in proto/).

grpcio-reflection serves and ships grpc.reflection.v1alpha alone. grpc.reflection.v1
is the same protocol under another package name, so it is served by the same
servicer, and its descriptor is made from v1alpha's (renamed) and added to the
descriptor pool, so that it can be listed and described like any other service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
V1 = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_V1ALPHA_PACKAGE = ".grpc.reflection.v1alpha."
_V1_PACKAGE = ".grpc.reflection.v1."


def add_v1_descriptor(pool: descriptor_pool.DescriptorPool | None = None) -> None:
    """Adds grpc/reflection/v1/reflection.proto to pool (the default one), made from v1alpha's."""
    pool = pool if pool is not None else descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return  # already there (a grpcio-reflection that ships it, or a second server)
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name = _V1_FILE
    file.package = "grpc.reflection.v1"
    file.ClearField("options")  # v1alpha's are deprecated and name its Java and Go packages
    for message in file.message_type:
        for field in message.field:
            if field.type_name.startswith(_V1ALPHA_PACKAGE):
                field.type_name = _V1_PACKAGE + field.type_name.removeprefix(_V1ALPHA_PACKAGE)
    for service in file.service:
        for method in service.method:
            method.input_type = _V1_PACKAGE + method.input_type.removeprefix(_V1ALPHA_PACKAGE)
            method.output_type = _V1_PACKAGE + method.output_type.removeprefix(_V1ALPHA_PACKAGE)
    pool.AddSerializedFile(file.SerializeToString())


class PortReflection:
    """One reflection servicer for both ports: what it lists depends on the caller's certificate."""

    def __init__(self, without_certificate: Iterable[str], with_certificate: Iterable[str]) -> None:
        self._public = reflection.aio.ReflectionServicer(tuple(without_certificate))
        self._full = reflection.aio.ReflectionServicer(tuple(with_certificate))

    async def ServerReflectionInfo(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        certificate = context.auth_context().get("x509_pem_cert")
        servicer = self._full if certificate else self._public
        async for reply in servicer.ServerReflectionInfo(request_iterator, context):
            yield reply


def add_to_server(
    server: grpc.aio.Server, without_certificate: Iterable[str], with_certificate: Iterable[str]
) -> None:
    """Serves reflection v1alpha and v1 on server, both listed."""
    add_v1_descriptor()
    servicer = PortReflection((*without_certificate, V1, V1ALPHA), (*with_certificate, V1, V1ALPHA))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((_v1_handler(servicer),))


def _v1_handler(servicer: PortReflection) -> grpc.GenericRpcHandler:
    """Serves grpc.reflection.v1 with the v1alpha servicer: the two are wire-identical.

    Clients try v1 first and fall back on UNIMPLEMENTED; serving both spares them
    the round trip.
    """
    return grpc.method_handlers_generic_handler(
        V1,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
