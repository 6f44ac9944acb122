"""Helpers for the robustness suite: serve processes on fixed ports, load clients, DB checks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sielum.admin.v1 import admin_pb2, admin_pb2_grpc
from sielum.ca.datadir import init_data_dir
from sielum.store import Store
from tests.conftest import PG_ADMIN_DB, PG_HOST, PG_PORT, PG_USER, _require_postgres
from tests.e2e.conftest import free_port, script
from tests.rpc.conftest import make_csr, make_key

CLIENT = Path(__file__).with_name("client.py")
FAULTY_SERVE = Path(__file__).with_name("faulty_serve.py")
PG_VERSION = sorted(os.listdir("/etc/postgresql"))[0] if os.path.isdir("/etc/postgresql") else ""

EXHAUSTED = "enrollment token is exhausted: it has no uses left"


def make_data_dir(parent: Path, name: str = "data") -> Path:
    """A fresh CA, server certificate and admin bundle, made in-process (faster than `init`)."""
    data_dir = parent / name
    init_data_dir(data_dir)
    return data_dir


@dataclass
class Serve:
    """One `sielum-server serve` process on fixed ports, restartable on the same ports.

    Every start appends to the same log file, so a secrets search sees all of it.
    """

    data_dir: Path
    extra: tuple[str, ...] = ()
    enroll_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    # Seconds every enrollment waits before its transaction (faulty_serve.py); 0: the real script.
    enroll_delay: float = 0.0
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        if self.log_path is None:
            self.log_path = self.data_dir.parent / f"serve-{self.enroll_port}.log"

    @property
    def enroll_target(self) -> str:
        return f"localhost:{self.enroll_port}"

    @property
    def api_target(self) -> str:
        return f"localhost:{self.api_port}"

    @property
    def log(self) -> str:
        assert self.log_path is not None
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 30) -> Serve:
        assert self.process is None or self.process.poll() is not None, "already running"
        assert self.log_path is not None
        with self.log_path.open("ab") as log:
            command = (
                [sys.executable, str(FAULTY_SERVE), str(self.enroll_delay)]
                if self.enroll_delay
                else [script("sielum-server")]
            )
            self.process = subprocess.Popen(
                [
                    *command,
                    "serve",
                    "--data-dir",
                    str(self.data_dir),
                    "--enroll-addr",
                    f"127.0.0.1:{self.enroll_port}",
                    "--api-addr",
                    f"127.0.0.1:{self.api_port}",
                    # The default ports 8445, 8446 and 9464 may be held by another test or server.
                    "--dashboard-addr",
                    "off",
                    "--metrics-addr",
                    "off",
                    "--revocation-addr",
                    "off",
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                # Its own process group, so kill() reaches every process `serve`
                # runs (it may start worker processes), as a power cut would.
                start_new_session=True,
            )
        self.starts += 1
        try:
            wait_serving(
                self.enroll_target, (self.data_dir / "ca.pem").read_bytes(), self.process, timeout
            )
        except AssertionError as error:
            self.kill()
            raise AssertionError(f"{error}\n--- server log ---\n{self.log}") from None
        return self

    def kill(self) -> None:
        """SIGKILL to every process of the server: no chance to finish anything."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        # Processes of the group other than the leader are not our children, so
        # wait for what matters: nothing listens on the ports any more.
        deadline = time.monotonic() + 10
        while any(_listening(port) for port in (self.enroll_port, self.api_port)):
            assert time.monotonic() < deadline, "killed server still holds its ports"
            time.sleep(0.02)

    def terminate(self, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(api_channel(self.data_dir, self.api_target))


# A restarted server should be seen as soon as it serves: gRPC's default reconnect
# backoff starts at a second, and a shared subchannel would carry it over.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
    ("grpc.use_local_subchannel_pool", 1),
]


def wait_serving(
    target: str, ca_pem: bytes, process: subprocess.Popen[bytes], timeout: float = 30
) -> None:
    """Until the health service at target says SERVING; fails if the process exits first."""
    deadline = time.monotonic() + timeout
    channel = grpc.secure_channel(
        target, grpc.ssl_channel_credentials(root_certificates=ca_pem), options=FAST_RECONNECT
    )
    try:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"server exited early with code {process.returncode}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.02)
        raise AssertionError(f"server did not serve within {timeout} seconds")
    finally:
        channel.close()


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def api_channel(data_dir: Path, target: str) -> grpc.Channel:
    admin = data_dir / "admin"
    return grpc.secure_channel(
        target,
        grpc.ssl_channel_credentials(
            root_certificates=(data_dir / "ca.pem").read_bytes(),
            private_key=(admin / "admin.key").read_bytes(),
            certificate_chain=(admin / "admin.pem").read_bytes(),
        ),
    )


@pytest.fixture
def serves() -> Iterator[list[Serve]]:
    """Serve processes a test starts; any still running are killed afterwards."""
    started: list[Serve] = []
    yield started
    for serve in started:
        serve.kill()


def create_token(serve: Serve, **fields: Any) -> admin_pb2.CreateEnrollmentTokenResponse:
    fields.setdefault("label", "robust")
    return serve.admin().CreateEnrollmentToken(
        admin_pb2.CreateEnrollmentTokenRequest(**fields), timeout=10
    )


@dataclass(frozen=True)
class Agent:
    """One endpoint: its own key and the CSR made from it, before any clock starts."""

    key: ec.EllipticCurvePrivateKey
    csr_pem: str

    @classmethod
    def new(cls) -> Agent:
        key = make_key()
        return cls(key, make_csr(key))

    @property
    def private_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def enroll_requests(agents: Sequence[Agent], secrets: Sequence[str]) -> list[dict[str, Any]]:
    """One request per agent; agent i uses secrets[i % len(secrets)]."""
    return [
        {
            "id": i,
            "token": secrets[i % len(secrets)],
            "csr_pem": agent.csr_pem,
            "hostname": f"host-{i}",
        }
        for i, agent in enumerate(agents)
    ]


def run_clients(
    tmp_path: Path,
    ca_pem: bytes,
    targets_per_client: Sequence[Sequence[str]],
    requests: Sequence[dict[str, Any]],
    *,
    concurrency: int = 16,
    timeout: float = 10,
    retry_codes: Sequence[str] = (),
    max_attempts: int = 1,
    max_seconds: float = 60,
    during: Any = None,
) -> list[dict[str, Any]]:
    """Run the requests from len(targets_per_client) client processes released at once.

    Client c gets every c-th request and spreads them over its targets. `during`,
    if given, runs in this process once the clients are released (to kill a
    server, stop PostgreSQL, ...). Returns every request's final outcome.
    """
    n = len(targets_per_client)
    procs: list[tuple[subprocess.Popen[str], Path]] = []
    try:
        for c, targets in enumerate(targets_per_client):
            job = {
                "targets": list(targets),
                "ca_pem": ca_pem.decode(),
                "requests": list(requests[c::n]),
                "concurrency": concurrency,
                "timeout": timeout,
                "retry_codes": list(retry_codes),
                "max_attempts": max_attempts,
                "max_seconds": max_seconds,
            }
            tag = uuid.uuid4().hex[:8]
            job_path = tmp_path / f"client-{tag}.json"
            result_path = tmp_path / f"client-{tag}-result.json"
            job_path.write_text(json.dumps(job))
            proc = subprocess.Popen(
                [sys.executable, str(CLIENT), str(job_path), str(result_path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append((proc, result_path))
        for proc, _ in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "ready", f"client did not get ready: {line!r}"
        for proc, _ in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        if during is not None:
            during()
        results: list[dict[str, Any]] = []
        for proc, result_path in procs:
            assert proc.wait(timeout=max_seconds + timeout + 60) == 0
            results += json.loads(result_path.read_text())
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert sorted(r["id"] for r in results) == sorted(r["id"] for r in requests)
    return results


def device_rows(database_url: str) -> list[dict[str, Any]]:
    """Every device row as the database holds it, read with the real Store."""
    store = Store.open(database_url)
    try:
        with store.db.connection_context():
            cursor = store.db.execute_sql(
                "SELECT id, token_id, serial, public_key_sha256, certificate_pem FROM device"
            )
            columns = [c[0] for c in cursor.description]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    finally:
        store.close()


def token_rows(database_url: str) -> dict[str, tuple[int, int | None]]:
    """token id -> (uses, max_uses)."""
    store = Store.open(database_url)
    try:
        with store.db.connection_context():
            cursor = store.db.execute_sql("SELECT id, uses, max_uses FROM token")
            return {row[0]: (row[1], row[2]) for row in cursor.fetchall()}
    finally:
        store.close()


def integrity_problems(database_url: str) -> list[str]:
    store = Store.open(database_url)
    try:
        return store.check_integrity()
    finally:
        store.close()


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir.resolve() / 'sielum.db'}"


# PostgreSQL that a test may stop and start


def pg_ctl(action: str, *flags: str) -> None:
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, "main", action, *flags],
        check=True,
        capture_output=True,
        timeout=60,
    )


def pg_ready() -> bool:
    result = subprocess.run(
        ["pg_isready", "-h", PG_HOST, "-p", PG_PORT, "-q"], check=False, timeout=10
    )
    return result.returncode == 0


def wait_pg_ready(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pg_ready():
            return
        time.sleep(0.2)
    raise AssertionError("PostgreSQL did not come back")


def _pg_admin_execute(sql: str, params: Sequence[object] = ()) -> None:
    import psycopg2

    conn = psycopg2.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_ADMIN_DB, connect_timeout=5
    )
    try:
        conn.autocommit = True
        conn.cursor().execute(sql, params)
    finally:
        conn.close()


@contextlib.contextmanager
def temporary_postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards over a new connection.

    tests/conftest.py's postgres_url keeps one admin connection open for the
    drop; that connection dies when a test stops the cluster, and it cannot
    serve a module-scoped fixture.
    """
    _require_postgres()
    name = f"sielum_robust_{uuid.uuid4().hex[:12]}"
    _pg_admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        # Whatever the test did, the cluster is running again before we leave.
        if not pg_ready():
            pg_ctl("start")
            wait_pg_ready()
        _pg_admin_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        _pg_admin_execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture
def restartable_postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for a test that stops and starts the cluster."""
    with temporary_postgres_database() as url:
        yield url
