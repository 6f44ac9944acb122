"""The method-to-role table covers every method, and the interceptor enforces it."""

from __future__ import annotations

import grpc
import pytest

from sielum.admin.v1 import admin_pb2, admin_pb2_grpc
from sielum.agent.v1 import agent_pb2, agent_pb2_grpc
from sielum.core.authorization import METHOD_ROLES
from sielum.server.app import iter_services

from .conftest import Harness, status_of


def _served_methods() -> set[str]:
    methods = set()
    for service in iter_services():
        for method in service.methods:
            methods.add(f"/{service.full_name}/{method.name}")
    return methods


def test_every_method_of_every_service_has_a_role() -> None:
    missing = _served_methods() - set(METHOD_ROLES)
    assert not missing, f"methods without an entry in METHOD_ROLES: {sorted(missing)}"


def test_every_role_entry_names_a_real_method() -> None:
    served = _served_methods() | {"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"}
    stale = set(METHOD_ROLES) - served
    # Health/List is in newer grpc-health protos; allow it whether or not this one has it.
    stale.discard("/grpc.health.v1.Health/List")
    assert not stale, f"METHOD_ROLES entries for methods no service has: {sorted(stale)}"


def test_fail_admin_method_without_a_client_certificate(harness: Harness) -> None:
    # On the enroll port (no client certificate asked for) the interceptor refuses.
    stub = admin_pb2_grpc.AdminServiceStub(harness.enroll_channel())
    code, details = status_of(
        lambda: stub.ListEnrollmentTokens(admin_pb2.ListEnrollmentTokensRequest(), timeout=10)
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details == (
        "/sielum.admin.v1.AdminService/ListEnrollmentTokens needs an admin client certificate"
        " from the Sielum CA"
    )


def test_fail_api_port_refuses_a_handshake_without_certificate(harness: Harness) -> None:
    stub = admin_pb2_grpc.AdminServiceStub(harness.api_channel())
    code, _ = status_of(
        lambda: stub.ListEnrollmentTokens(admin_pb2.ListEnrollmentTokensRequest(), timeout=10)
    )
    assert code is grpc.StatusCode.UNAVAILABLE


def test_fail_device_certificate_on_an_admin_method(harness: Harness) -> None:
    response, key = harness.enroll(harness.create_token().secret)
    stub = admin_pb2_grpc.AdminServiceStub(harness.device_channel(key, response.certificate_pem))
    code, details = status_of(
        lambda: stub.CreateEnrollmentToken(
            admin_pb2.CreateEnrollmentTokenRequest(label="x"), timeout=10
        )
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details.endswith("needs an admin certificate; this one is device")
    assert (
        not harness.admin().ListEnrollmentTokens(admin_pb2.ListEnrollmentTokensRequest()).tokens[1:]
    )


def test_fail_admin_certificate_on_a_device_method(harness: Harness) -> None:
    stub = agent_pb2_grpc.AgentServiceStub(harness.admin_channel())
    code, details = status_of(lambda: stub.Heartbeat(agent_pb2.HeartbeatRequest(), timeout=10))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details.endswith("needs a device certificate; this one is admin")


@pytest.mark.parametrize("port", ["enroll", "api"])
def test_unknown_method_is_unimplemented(harness: Harness, port: str) -> None:
    channel = harness.enroll_channel() if port == "enroll" else harness.admin_channel()
    call = channel.unary_unary("/sielum.admin.v1.AdminService/NoSuchMethod")
    code, _ = status_of(lambda: call(b"", timeout=10))
    assert code is grpc.StatusCode.UNIMPLEMENTED
    other = channel.unary_unary("/grpc.reflection.v9.ServerReflection/ServerReflectionInfo")
    code, _ = status_of(lambda: other(b"", timeout=10))
    assert code is grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("port", ["enroll", "api"])
def test_health_is_public_on_both_ports(harness: Harness, port: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = harness.enroll_channel() if port == "enroll" else harness.admin_channel()
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
