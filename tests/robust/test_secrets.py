"""After a real run, no token secret, private key or passphrase is in a log or in the database."""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sielum.admin.v1 import admin_pb2
from sielum.agent.v1 import agent_pb2, agent_pb2_grpc
from sielum.ca.datadir import init_data_dir
from sielum.enroll.v1 import enroll_pb2, enroll_pb2_grpc
from sielum.tokens import make_secret
from tests.conftest import PG_HOST, PG_PORT, PG_USER
from tests.e2e.conftest import run
from tests.rpc.conftest import key_pem, make_csr, make_key

from .conftest import Serve, create_token

PASSPHRASE = "correct horse battery staple 7f3a"


@dataclass
class Needles:
    """Everything that must never be found, and a few things that must (so the search works)."""

    secret: dict[str, bytes] = field(default_factory=dict)
    present: dict[str, bytes] = field(default_factory=dict)

    def add_secret(self, name: str, value: str) -> None:
        self.secret[name] = value.encode()
        self.secret[f"{name} random part"] = value.rsplit("_", 1)[1][:32].encode()

    def add_key(self, name: str, key: ec.EllipticCurvePrivateKey) -> None:
        scalar = key.private_numbers().private_value.to_bytes(32, "big")
        body_lines = key_pem(key).decode().strip().splitlines()[1:-1]
        self.secret[f"{name} PEM body"] = "".join(body_lines).encode()
        # The first two base64 lines of a PKCS#8 P-256 key hold the private scalar;
        # the rest is the public key, which certificates rightly carry.
        for i, line in enumerate(body_lines[:2]):
            self.secret[f"{name} PEM line {i + 1}"] = line.encode()
        self.secret[f"{name} scalar"] = scalar
        self.secret[f"{name} scalar hex"] = scalar.hex().encode()
        self.secret[f"{name} scalar base64"] = base64.b64encode(scalar).rstrip(b"=")
        self.secret[f"{name} DER"] = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _enroll(stub: Any, secret: str, key: ec.EllipticCurvePrivateKey) -> Any:
    return stub.Enroll(
        enroll_pb2.EnrollRequest(token=secret, csr_pem=make_csr(key), hostname="h"), timeout=10
    )


def _refused(call: Any) -> None:
    with pytest.raises(grpc.RpcError):
        call()


def _exercise(serve: Serve, needles: Needles) -> None:
    """Tokens made, used up, revoked and guessed; agents enrolled, retried, renewed."""
    ca = (serve.data_dir / "ca.pem").read_bytes()
    stub = enroll_pb2_grpc.EnrollServiceStub(
        grpc.secure_channel(serve.enroll_target, grpc.ssl_channel_credentials(ca))
    )
    once = create_token(serve, max_uses=2, label="used up")
    revoked = create_token(serve, label="revoked")
    open_ = create_token(serve, label="open")
    for name, created in (("used-up", once), ("revoked", revoked), ("open", open_)):
        needles.add_secret(f"token {name}", created.secret)
        needles.present[f"token id {name}"] = created.token.id.encode()

    keys = [make_key() for _ in range(6)]
    for i, key in enumerate(keys):
        needles.add_key(f"device key {i}", key)
    _enroll(stub, once.secret, keys[0])
    _enroll(stub, once.secret, keys[0])  # a retry with the same key
    _enroll(stub, once.secret, keys[1])
    _refused(lambda: _enroll(stub, once.secret, keys[2]))  # exhausted
    _enroll(stub, revoked.secret, keys[3])
    serve.admin().RevokeEnrollmentToken(
        admin_pb2.RevokeEnrollmentTokenRequest(id=revoked.token.id), timeout=10
    )
    _refused(lambda: _enroll(stub, revoked.secret, keys[2]))  # revoked
    _refused(lambda: _enroll(stub, open_.secret, keys[0]))  # cloned key
    # Near misses that a careless log line would echo: a typo, junk around the
    # secret, the right id with a wrong secret.
    typo = open_.secret[:-9] + ("a" if open_.secret[-9] != "a" else "b") + open_.secret[-8:]
    for text in (typo, open_.secret + "!", f"token={open_.secret}"):
        _refused(lambda text=text: _enroll(stub, text, keys[2]))
    wrong = make_secret(open_.token.id).reveal()
    needles.add_secret("a guessed secret", wrong)
    _refused(lambda: _enroll(stub, wrong, keys[2]))
    device = _enroll(stub, open_.secret, keys[4])
    needles.present["device id"] = device.device_id.encode()

    # The device talks over mTLS and renews onto a new key.
    channel = grpc.secure_channel(
        serve.api_target,
        grpc.ssl_channel_credentials(ca, key_pem(keys[4]), device.certificate_pem.encode()),
    )
    agent = agent_pb2_grpc.AgentServiceStub(channel)
    agent.Heartbeat(agent_pb2.HeartbeatRequest(), timeout=10)
    agent.RenewCertificate(agent_pb2.RenewCertificateRequest(csr_pem=make_csr(keys[5])), timeout=10)

    # A new admin made with `sielum-admin admins create`: their key is made by the
    # tool, and they use it at once.
    bundle = serve.data_dir.parent / "newbie"
    admin_cli = ("sielum-admin", "--server", f"127.0.0.1:{serve.api_port}")
    created = run(
        *admin_cli, "--cert-dir", str(serve.data_dir / "admin"),
        "admins", "create", "newbie", "--out", str(bundle),
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    needles.add_key(
        "created admin key",
        serialization.load_pem_private_key((bundle / "admin.key").read_bytes(), None),  # type: ignore[arg-type]
    )
    used = run(*admin_cli, "--cert-dir", str(bundle), "audit", "list", "--actor", "admin/newbie")
    assert used.returncode == 0, used.stderr
    needles.present["new admin"] = b"admin/newbie"


def _find(needles: Needles, haystacks: dict[str, bytes]) -> None:
    assert haystacks and all(haystacks.values()), "nothing to search"
    leaks = [
        f"{what} found in {where}"
        for where, data in haystacks.items()
        for what, needle in needles.secret.items()
        if needle in data
    ]
    assert leaks == []
    # The search itself works: ids that belong there are found there.
    everything = b"".join(haystacks.values())
    for what, needle in needles.present.items():
        assert needle in everything, f"{what} not found anywhere: is the search blind?"


def _database_files(data_dir: Path) -> dict[str, bytes]:
    """The database and every file SQLite (or a lock) keeps beside it, if not empty."""
    files = {p.name: p.read_bytes() for p in sorted(data_dir.glob("sielum.db*"))}
    assert files.get("sielum.db"), "no SQLite database to search"
    return {name: data for name, data in files.items() if data}


@pytest.mark.e2e
def test_no_secret_in_logs_or_sqlite(tmp_path: Path, serves: list[Serve]) -> None:
    data_dir = tmp_path / "data"
    init_data_dir(data_dir, passphrase=PASSPHRASE.encode())
    serve = Serve(data_dir, env={"SIELUM_CA_PASSPHRASE": PASSPHRASE})
    serves.append(serve.start())
    needles = Needles()
    needles.secret["CA passphrase"] = PASSPHRASE.encode()
    admin_key = serialization.load_pem_private_key(
        (data_dir / "admin" / "admin.key").read_bytes(), None
    )
    needles.add_key("admin key", admin_key)  # type: ignore[arg-type]
    _exercise(serve, needles)

    # The WAL and its index while the server runs (a clean stop checkpoints them away),
    # then every file the database left behind.
    running = _database_files(data_dir)
    assert "sielum.db-wal" in running
    assert serve.terminate() == 0
    haystacks = {f"{name} (running)": data for name, data in running.items()}
    haystacks.update(_database_files(data_dir))
    haystacks["server log"] = serve.log.encode()
    _find(needles, haystacks)


@pytest.mark.e2e
@pytest.mark.postgres
def test_no_secret_in_logs_or_a_postgresql_dump(
    tmp_path: Path, serves: list[Serve], postgres_url: str
) -> None:
    data_dir = tmp_path / "data"
    init_data_dir(data_dir)
    serve = Serve(data_dir, ("--database", postgres_url, "--log-format", "json"))
    serves.append(serve.start())
    needles = Needles()
    _exercise(serve, needles)
    assert serve.terminate() == 0

    database = postgres_url.rsplit("/", 1)[1]
    dump = subprocess.run(
        ["pg_dump", "-h", PG_HOST, "-p", PG_PORT, "-U", PG_USER, "--no-owner", database],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    assert b"COPY public.device" in dump
    _find(needles, {"pg_dump": dump, "server log": serve.log.encode()})
