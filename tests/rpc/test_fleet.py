"""Heartbeats at fleet scale: last_seen_at in batches, revocation still at once on every replica."""

from __future__ import annotations

from pathlib import Path

import grpc

from sielum.admin.v1 import admin_pb2
from sielum.agent.v1 import agent_pb2
from sielum.server.app import ServerConfig, SielumServer
from sielum.store.store import Store

from .conftest import Harness, ShiftedClock, start_harness, status_of


def test_a_graceful_stop_writes_what_heartbeats_saw(tmp_path: Path) -> None:
    harness = start_harness(tmp_path)
    try:
        response, key = harness.enroll(harness.create_token().secret)
        harness.agent(key, response.certificate_pem).Heartbeat(
            agent_pb2.HeartbeatRequest(), timeout=10
        )
    finally:
        harness.server.stop(grace=1)
    store = Store.open(harness.server.config.resolved_database_url())
    try:
        assert store.get_device(response.device_id).last_seen_at is not None
    finally:
        store.close()


def replica(harness: Harness, database_url: str) -> SielumServer:
    """A second `serve` on the same database and CA, as behind a load balancer."""
    return SielumServer(
        ServerConfig(
            data_dir=harness.data_dir,
            enroll_addr="127.0.0.1:0",
            api_addr="127.0.0.1:0",
            database_url=database_url,
        ),
        clock=ShiftedClock(),
    ).start()


def test_a_device_revoked_on_one_replica_is_refused_by_the_other_at_once(
    tmp_path: Path, postgres_url: str
) -> None:
    a = start_harness(tmp_path, database_url=postgres_url)
    b = replica(a, postgres_url)
    try:
        response, key = a.enroll(a.create_token().secret)
        # The device keeps one connection to replica A, as sielum-agent run does.
        agent = a.agent(key, response.certificate_pem)
        agent.Heartbeat(agent_pb2.HeartbeatRequest(), timeout=10)
        agent.Heartbeat(agent_pb2.HeartbeatRequest(), timeout=10)
        b_admin = Harness(server=b, data_dir=a.data_dir, clock=a.clock).admin()
        b_admin.RevokeDevice(admin_pb2.RevokeDeviceRequest(id=response.device_id), timeout=10)
        code, details = status_of(lambda: agent.Heartbeat(agent_pb2.HeartbeatRequest(), timeout=10))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert details == "device has been revoked"
    finally:
        b.stop(grace=1)
        a.server.stop(grace=1)


def test_fail_a_flood_of_heartbeats_is_refused_and_others_still_answered(harness: Harness) -> None:
    token = harness.create_token().secret
    flood, flood_key = harness.enroll(token)
    quiet, quiet_key = harness.enroll(token, hostname="host-2")
    agent = harness.agent(flood_key, flood.certificate_pem)
    codes = []
    for _ in range(60):
        try:
            agent.Heartbeat(agent_pb2.HeartbeatRequest(), timeout=10)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            codes.append(error.code())  # type: ignore[attr-defined]
            details = error.details()  # type: ignore[attr-defined]
    # The burst of 20 passes (and what refills meanwhile), the rest is refused.
    assert codes[:20] == [grpc.StatusCode.OK] * 20
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert details == (
        "too many heartbeats from this device: at most 20 at once, then 1 a second; wait and retry"
    )
    # Another device is not held back by the flood.
    beat = harness.agent(quiet_key, quiet.certificate_pem).Heartbeat(
        agent_pb2.HeartbeatRequest(), timeout=10
    )
    assert beat.device_id == quiet.device_id
