"""Helpers to run the real console scripts as subprocesses against loopback ports."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

BIN = Path(sys.executable).parent


def script(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: install the project with `pip install -e .`")
    return str(path)


# Ports this test process has handed out. The server binds with SO_REUSEPORT (its
# workers share a port), so a port handed out twice does not fail to bind: two servers
# would share it, and a call meant for one server's API port could reach the other's
# enroll port (seen once in CI as "needs an admin client certificate"). Each pytest-xdist
# worker takes only its share of the ports, so that two workers never hand out the same
# one either: by port // 2, since Linux gives bind(("", 0)) ports of one parity.
_HANDED_OUT: set[int] = set()
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def free_port() -> int:
    """A loopback port free now, never handed out before by this run of the tests."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if (port // 2) % _WORKERS == _WORKER % _WORKERS and port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, **kw: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [script(args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
        **kw,  # type: ignore[arg-type]
    )


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    data_dir: Path
    enroll_port: int
    api_port: int
    log_path: Path
    metrics_port: int = 0
    dashboard_port: int = 0  # 0: the dashboard is off
    revocation_port: int = 0  # 0: the revocation port is off

    @property
    def dashboard_url(self) -> str:
        return f"https://127.0.0.1:{self.dashboard_port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


def wait_ready(
    port: int,
    ca_pem: bytes,
    process: subprocess.Popen[str],
    timeout: float = 30,
    host: str = "localhost",
    name: str = "localhost",
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    # A server on another loopback address (127.0.0.2) is checked under the name
    # its certificate has (name).
    options = [] if host == name else [("grpc.ssl_target_name_override", name)]
    channel = grpc.secure_channel(
        f"{host}:{port}", grpc.ssl_channel_credentials(root_certificates=ca_pem), options=options
    )
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early with code {process.returncode}")
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            time.sleep(0.1)
    raise AssertionError("server did not become ready")


def start_server(
    data_dir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    enroll_host: str = "127.0.0.1",
    certificate_name: str = "localhost",
) -> ServerProcess:
    enroll_port, api_port, metrics_port = free_port(), free_port(), free_port()
    # Never the default port 8445: another test or server may hold it.
    dashboard_port = 0 if "--dashboard-addr" in extra else free_port()
    dashboard = [] if dashboard_port == 0 else ["--dashboard-addr", f"127.0.0.1:{dashboard_port}"]
    # Never the default port 8446 either.
    revocation_port = 0 if "--revocation-addr" in extra else free_port()
    revocation = (
        [] if revocation_port == 0 else ["--revocation-addr", f"127.0.0.1:{revocation_port}"]
    )
    log_path = data_dir.parent / f"server-{enroll_port}.log"
    log_file = log_path.open("w")
    host = f"[{enroll_host}]" if ":" in enroll_host else enroll_host
    enroll_addr = f"{host}:{enroll_port}"
    process = subprocess.Popen(
        [
            script("sielum-server"),
            "serve",
            "--data-dir",
            str(data_dir),
            "--enroll-addr",
            enroll_addr,
            "--api-addr",
            f"127.0.0.1:{api_port}",
            # Never the default port: it may be another test's, or someone else's.
            "--metrics-addr",
            f"127.0.0.1:{metrics_port}",
            *dashboard,
            *revocation,
            *extra,
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    server = ServerProcess(
        process,
        data_dir,
        enroll_port,
        api_port,
        log_path,
        metrics_port,
        dashboard_port,
        revocation_port,
    )
    try:
        other_loopback = enroll_host.startswith("127.") and enroll_host != "127.0.0.1"
        ready_host = enroll_host if other_loopback else "localhost"
        wait_ready(
            enroll_port,
            (data_dir / "ca.pem").read_bytes(),
            process,
            host=ready_host,
            name=certificate_name,
        )
    except AssertionError as error:
        server.stop(signal.SIGKILL)
        raise AssertionError(f"{error}\n--- server log ---\n{server.log}") from None
    return server


@pytest.fixture
def server_factory() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)


# --- helpers for the agent and admin clients (tests/e2e/test_agent_cli.py and friends) ---


def init_data_dir(parent: Path, name: str = "data") -> Path:
    """`sielum-server init` into parent/name; returns the data dir."""
    data_dir = parent / name
    result = run("sielum-server", "init", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    return data_dir


@functools.lru_cache(maxsize=64)
def ca_fingerprint(data_dir: Path) -> str:
    """`sielum-server fingerprint`, once per data dir (tmp paths are never reused)."""
    result = run("sielum-server", "fingerprint", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def admin(server: ServerProcess, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    """sielum-admin against the server's API port with the admin bundle `init` wrote."""
    return run(
        "sielum-admin",
        "--server",
        f"127.0.0.1:{server.api_port}",
        "--cert-dir",
        str(server.data_dir / "admin"),
        *args,
        **kw,  # type: ignore[arg-type]
    )


def admin_json(server: ServerProcess, *args: str) -> dict[str, object]:
    import json

    result = admin(server, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def create_token(server: ServerProcess, *args: str) -> tuple[str, str]:
    """(token id, secret) of a new token; args like "--max-uses", "2"."""
    if "--label" not in args:
        args = ("--label", "e2e", *args)
    created = admin_json(server, "tokens", "create", *args)
    return created["token"]["id"], created["secret"]  # type: ignore[index]


def token_uses(server: ServerProcess, token_id: str) -> int:
    return int(admin_json(server, "tokens", "get", token_id)["token"]["uses"])  # type: ignore[index]


def enroll_args(server: ServerProcess, cert_dir: Path, *extra: str) -> list[str]:
    return [
        "sielum-agent",
        "enroll",
        "--server",
        f"https://127.0.0.1:{server.enroll_port}",
        "--ca-fingerprint",
        ca_fingerprint(server.data_dir),
        "--cert-dir",
        str(cert_dir),
        *extra,
    ]


def agent_enroll(
    server: ServerProcess, secret: str, cert_dir: Path, *extra: str, fingerprint: str | None = None
) -> subprocess.CompletedProcess[str]:
    """sielum-agent enroll with the token in SIELUM_ENROLLMENT_TOKEN, as operators should."""
    args = enroll_args(server, cert_dir, *extra)
    if fingerprint is not None:
        args[args.index("--ca-fingerprint") + 1] = fingerprint
    return run(*args, env={"SIELUM_ENROLLMENT_TOKEN": secret})


def agent(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return run("sielum-agent", *args, **kw)  # type: ignore[arg-type]


def log_events(server: ServerProcess, event: str) -> list[str]:
    """The server's text log lines for one event name ("enroll", "renew", ...)."""
    return [line for line in server.log.splitlines() if f" {event} " in f"{line} "]
