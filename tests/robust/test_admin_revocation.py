"""A revoked admin is refused at their very next call by every replica and worker."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from sielum.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.rpc.conftest import key_pem, make_csr, make_key

from .conftest import FAST_RECONNECT, Serve, make_data_dir

CONNECTIONS = 6  # per replica; SO_REUSEPORT spreads them over its workers


def _connections(serve: Serve, ca: bytes, key: bytes, chain: bytes) -> list[grpc.Channel]:
    """Channels that each open a connection of their own (no shared subchannel)."""
    return [
        grpc.secure_channel(
            serve.api_target,
            grpc.ssl_channel_credentials(ca, key, chain),
            options=FAST_RECONNECT,
        )
        for _ in range(CONNECTIONS)
    ]


@pytest.mark.postgres
def test_fail_revoked_admin_is_refused_at_once_on_two_replicas(
    tmp_path: Path, serves: list[Serve], postgres_url: str
) -> None:
    data_dir = make_data_dir(tmp_path)
    # Two replicas of two workers each on one PostgreSQL, the second on threads.
    replicas = [
        Serve(data_dir, ("--database", postgres_url, "--workers", "2")),
        Serve(data_dir, ("--database", postgres_url, "--workers", "2", "--threads", "4")),
    ]
    for replica in replicas:
        serves.append(replica.start())
    ca = (data_dir / "ca.pem").read_bytes()
    key = make_key()
    created = (
        replicas[0]
        .admin()
        .CreateAdmin(admin_pb2.CreateAdminRequest(name="kim", csr_pem=make_csr(key)), timeout=10)
    )
    channels = [
        channel
        for replica in replicas
        for channel in _connections(replica, ca, key_pem(key), created.certificate_pem.encode())
    ]
    stubs = [admin_pb2_grpc.AdminServiceStub(channel) for channel in channels]
    try:
        # Kim works everywhere, on connections that stay open.
        for stub in stubs:
            stub.ListAdmins(admin_pb2.ListAdminsRequest(), timeout=10)

        replicas[1].admin().RevokeAdmin(admin_pb2.RevokeAdminRequest(name="kim"), timeout=10)

        # The very next call on each of those connections is refused.
        for stub in stubs:
            with pytest.raises(grpc.RpcError) as refused:
                stub.CreateEnrollmentToken(
                    admin_pb2.CreateEnrollmentTokenRequest(label="after"), timeout=10
                )
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
            assert refused.value.details() == "admin kim has been revoked"  # type: ignore[attr-defined]
    finally:
        for channel in channels:
            channel.close()
    tokens = (
        replicas[0]
        .admin()
        .ListEnrollmentTokens(admin_pb2.ListEnrollmentTokensRequest(), timeout=10)
    )
    assert [t.label for t in tokens.tokens] == []
    # Both replicas refused Kim: neither kept an answer from before the revocation.
    for replica in replicas:
        assert replica.log.count("admin kim has been revoked") >= CONNECTIONS
