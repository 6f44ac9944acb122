"""A real Sielum server in-process on loopback port 0 with real TLS and a throwaway CA."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sielum.admin.v1 import admin_pb2, admin_pb2_grpc
from sielum.agent.v1 import agent_pb2_grpc
from sielum.ca.datadir import init_data_dir
from sielum.enroll.ratelimit import FailureLimit
from sielum.enroll.v1 import enroll_pb2, enroll_pb2_grpc
from sielum.server.app import ServerConfig, SielumServer


class ShiftedClock:
    """Real time plus an offset the test can move (TLS still checks real time)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


def make_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: object, common_name: str = "endpoint") -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class Harness:
    server: SielumServer
    data_dir: Path
    clock: ShiftedClock

    @property
    def ca_pem(self) -> bytes:
        return (self.data_dir / "ca.pem").read_bytes()

    @property
    def enroll_target(self) -> str:
        return f"localhost:{self.server.enroll_port}"

    @property
    def api_target(self) -> str:
        return f"localhost:{self.server.api_port}"

    def enroll_channel(self) -> grpc.Channel:
        return grpc.secure_channel(
            self.enroll_target, grpc.ssl_channel_credentials(root_certificates=self.ca_pem)
        )

    def api_channel(self, key: bytes | None = None, chain: bytes | None = None) -> grpc.Channel:
        return grpc.secure_channel(
            self.api_target,
            grpc.ssl_channel_credentials(
                root_certificates=self.ca_pem, private_key=key, certificate_chain=chain
            ),
        )

    def admin_channel(self) -> grpc.Channel:
        admin = self.data_dir / "admin"
        return self.api_channel(
            (admin / "admin.key").read_bytes(), (admin / "admin.pem").read_bytes()
        )

    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(self.admin_channel())

    def enroll_stub(self) -> enroll_pb2_grpc.EnrollServiceStub:
        return enroll_pb2_grpc.EnrollServiceStub(self.enroll_channel())

    def create_token(self, **fields: object) -> admin_pb2.CreateEnrollmentTokenResponse:
        fields.setdefault("label", "test")
        return self.admin().CreateEnrollmentToken(
            admin_pb2.CreateEnrollmentTokenRequest(**fields),
            timeout=10,  # type: ignore[arg-type]
        )

    def enroll(
        self, secret: str, key: ec.EllipticCurvePrivateKey | None = None, **fields: object
    ) -> tuple[enroll_pb2.EnrollResponse, ec.EllipticCurvePrivateKey]:
        key = key or make_key()
        fields.setdefault("hostname", "host-1")
        response = self.enroll_stub().Enroll(
            enroll_pb2.EnrollRequest(token=secret, csr_pem=make_csr(key), **fields),  # type: ignore[arg-type]
            timeout=10,
        )
        return response, key

    def device_channel(self, key: ec.EllipticCurvePrivateKey, certificate_pem: str) -> grpc.Channel:
        return self.api_channel(key_pem(key), certificate_pem.encode())

    def agent(
        self, key: ec.EllipticCurvePrivateKey, certificate_pem: str
    ) -> agent_pb2_grpc.AgentServiceStub:
        return agent_pb2_grpc.AgentServiceStub(self.device_channel(key, certificate_pem))


def start_harness(tmp_path: Path, database_url: str = "", **config: object) -> Harness:
    data_dir = tmp_path / "data"
    init_data_dir(data_dir)
    clock = ShiftedClock()
    server = SielumServer(
        ServerConfig(
            data_dir=data_dir,
            enroll_addr="127.0.0.1:0",
            api_addr="127.0.0.1:0",
            database_url=database_url,
            **config,  # type: ignore[arg-type]
        ),
        clock=clock,
    ).start()
    return Harness(server=server, data_dir=data_dir, clock=clock)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = start_harness(tmp_path, failure_limit=FailureLimit(burst=1000, rate_per_second=1000.0))
    try:
        yield h
    finally:
        h.server.stop(grace=1)


def status_of(call: object) -> tuple[grpc.StatusCode, str]:
    """Runs a zero-argument callable that must fail with an RpcError; returns code and details."""
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    error = caught.value
    return error.code(), error.details()  # type: ignore[attr-defined]
