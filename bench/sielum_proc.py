"""Runs `sielum-server` as the benchmark's server process and makes its enrollment token."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sielum.admin.v1 import admin_pb2, admin_pb2_grpc

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(server_src: Path | None) -> dict[str, str]:
    """The environment of a server process: another checkout's src/ ahead of the installed one."""
    env = {k: v for k, v in os.environ.items() if k != "SIELUM_DATABASE_URL"}
    if server_src is not None:
        env["PYTHONPATH"] = str(server_src)
    return env


def init_data_dir(data_dir: Path, server_src: Path | None = None) -> None:
    if (data_dir / "ca.pem").exists():
        return
    subprocess.run(
        [str(BIN / "sielum-server"), "init", "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        env=server_env(server_src),
    )


@dataclass
class SielumProcess:
    process: subprocess.Popen[bytes]
    data_dir: Path
    enroll_port: int
    api_port: int
    log_path: Path
    metrics_port: int = 0  # 0: --metrics-addr off

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ca_pem(self) -> bytes:
        return (self.data_dir / "ca.pem").read_bytes()

    @property
    def enroll_target(self) -> str:
        return f"127.0.0.1:{self.enroll_port}"

    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        admin = self.data_dir / "admin"
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=(admin / "admin.key").read_bytes(),
            certificate_chain=(admin / "admin.pem").read_bytes(),
        )
        return admin_pb2_grpc.AdminServiceStub(
            grpc.secure_channel(f"127.0.0.1:{self.api_port}", creds)
        )

    def create_token(self, max_uses: int = 10_000_000) -> str:
        reply = self.admin().CreateEnrollmentToken(
            admin_pb2.CreateEnrollmentTokenRequest(label="bench", max_uses=max_uses), timeout=10
        )
        return str(reply.secret)

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return -9


def start_sielum(
    data_dir: Path,
    *,
    database_url: str = "",
    workers: int | None = None,
    extra: tuple[str, ...] = (),
    log_path: Path | None = None,
    server_src: Path | None = None,
    metrics: bool = True,
    dashboard: bool = False,
) -> SielumProcess:
    """Starts `sielum-server serve` and waits until it answers.

    With `server_src` (another checkout's src/, the "before" of a comparison), the server
    may predate the dashboard and metrics flags: neither is passed, and `extra` may set them.
    """
    init_data_dir(data_dir, server_src)
    enroll_port, api_port = free_port(), free_port()
    metrics_port = free_port() if metrics and server_src is None else 0
    optional = (
        []
        if server_src is not None
        else [
            "--metrics-addr",
            f"127.0.0.1:{metrics_port}" if metrics else "off",
            "--dashboard-addr",
            f"127.0.0.1:{free_port()}" if dashboard else "off",
        ]
    )
    log_path = log_path or data_dir.parent / f"sielum-{enroll_port}.log"
    args = [
        str(BIN / "sielum-server"),
        "serve",
        "--data-dir",
        str(data_dir),
        "--enroll-addr",
        f"127.0.0.1:{enroll_port}",
        "--api-addr",
        f"127.0.0.1:{api_port}",
        "--log-format",
        "json",
        *optional,
        *extra,
    ]
    if database_url:
        args += ["--database", database_url]
    if workers is not None:
        args += ["--workers", str(workers)]
    process = subprocess.Popen(
        args, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, env=server_env(server_src)
    )
    server = SielumProcess(process, data_dir, enroll_port, api_port, log_path, metrics_port)
    channel = grpc.secure_channel(
        server.enroll_target, grpc.ssl_channel_credentials(root_certificates=server.ca_pem)
    )
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"sielum-server exited:\n{log_path.read_text()[-3000:]}")
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return server
            except grpc.RpcError:
                time.sleep(0.1)
    finally:
        channel.close()
    server.stop()
    raise RuntimeError("sielum-server did not become ready")
