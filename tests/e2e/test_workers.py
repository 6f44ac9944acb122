"""`sielum-server serve --workers 2`: two processes on the same ports, one database, one exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from sielum.admin.v1 import admin_pb2, admin_pb2_grpc
from sielum.enroll.v1 import enroll_pb2, enroll_pb2_grpc

from ..rpc.conftest import make_csr, make_key
from .conftest import ServerProcess, init_data_dir, script, start_server, wait_ready

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return sorted(found)


def _wait_for(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _log_events(server: ServerProcess, event: str) -> list[dict[str, object]]:
    entries = [json.loads(x) for x in server.log.splitlines() if x.startswith("{")]
    return [e for e in entries if e.get("event") == event]


def _workers_ready(server: ServerProcess) -> list[int]:
    _wait_for(lambda: _log_events(server, "workers ready"))
    pids = str(_log_events(server, "workers ready")[-1]["pids"])
    return sorted(int(p) for p in pids.split(","))


def _socket_owners(port: int, pids: list[int]) -> dict[int, int]:
    """How many ESTABLISHED connections to local port each of pids holds."""
    inodes: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
                inodes[int(fields[9])] = 0
    owners: dict[int, int] = {}
    for pid in pids:
        count = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                count += 1
        owners[pid] = count
    return owners


def _admin(server: ServerProcess) -> admin_pb2_grpc.AdminServiceStub:
    admin = server.data_dir / "admin"
    creds = grpc.ssl_channel_credentials(
        root_certificates=(server.data_dir / "ca.pem").read_bytes(),
        private_key=(admin / "admin.key").read_bytes(),
        certificate_chain=(admin / "admin.pem").read_bytes(),
    )
    return admin_pb2_grpc.AdminServiceStub(
        grpc.secure_channel(f"localhost:{server.api_port}", creds)
    )


def _fresh_enroll_channel(server: ServerProcess) -> grpc.Channel:
    # A local subchannel pool makes each channel its own TCP connection, so the
    # kernel picks a worker for each one.
    return grpc.secure_channel(
        f"127.0.0.1:{server.enroll_port}",
        grpc.ssl_channel_credentials(root_certificates=(server.data_dir / "ca.pem").read_bytes()),
        options=[("grpc.use_local_subchannel_pool", 1)],
    )


def test_two_workers_share_ports_and_max_uses_and_stop_on_sigterm(
    tmp_path: Path, server_factory: list[ServerProcess]
) -> None:
    server = start_server(init_data_dir(tmp_path), "--workers", "2", "--log-format", "json")
    server_factory.append(server)
    workers = _workers_ready(server)
    assert len(workers) == 2
    assert _children(server.process.pid) == workers

    # Both workers answer: 24 connections, one Enroll each, and each worker owns
    # some of them (all on one worker by chance: 2 in 2**24).
    created = _admin(server).CreateEnrollmentToken(
        admin_pb2.CreateEnrollmentTokenRequest(label="spread"), timeout=10
    )
    channels = [_fresh_enroll_channel(server) for _ in range(24)]
    try:
        for i, channel in enumerate(channels):
            reply = enroll_pb2_grpc.EnrollServiceStub(channel).Enroll(
                enroll_pb2.EnrollRequest(
                    token=created.secret, csr_pem=make_csr(make_key()), hostname=f"spread-{i}"
                ),
                timeout=10,
            )
            assert reply.device_id
        owners = _socket_owners(server.enroll_port, workers)
        assert all(count > 0 for count in owners.values()), owners
    finally:
        for channel in channels:
            channel.close()

    # max_uses holds across workers: 20 agents race for 5 uses, each on its own connection.
    limited = _admin(server).CreateEnrollmentToken(
        admin_pb2.CreateEnrollmentTokenRequest(label="race", max_uses=5), timeout=10
    )
    outcomes: list[grpc.StatusCode] = []
    lock = threading.Lock()
    start = threading.Barrier(20)

    def agent(i: int) -> None:
        channel = _fresh_enroll_channel(server)
        request = enroll_pb2.EnrollRequest(
            token=limited.secret, csr_pem=make_csr(make_key()), hostname=f"race-{i}"
        )
        stub = enroll_pb2_grpc.EnrollServiceStub(channel)
        grpc.channel_ready_future(channel).result(timeout=10)
        start.wait()
        try:
            stub.Enroll(request, timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
        finally:
            channel.close()
        with lock:
            outcomes.append(code)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(grpc.StatusCode.OK) == 5, outcomes
    assert outcomes.count(grpc.StatusCode.PERMISSION_DENIED) == 15, outcomes
    token = _admin(server).GetEnrollmentToken(
        admin_pb2.GetEnrollmentTokenRequest(id=limited.token.id), timeout=10
    )
    assert token.token.uses == 5
    devices = _admin(server).ListDevices(
        admin_pb2.ListDevicesRequest(token_id=limited.token.id), timeout=10
    )
    assert len(devices.devices) == 5

    assert server.stop(signal.SIGTERM) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
    stopped = _log_events(server, "stopped")
    assert len(stopped) == 3  # each worker, then the supervisor
    assert stopped[-1]["exit_codes"] == "0,0"


def test_port_zero_is_resolved_once_for_all_workers(tmp_path: Path) -> None:
    data_dir = init_data_dir(tmp_path)
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                script("sielum-server"), "serve", "--data-dir", str(data_dir), "--workers", "2",
                "--enroll-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0", "--log-format", "json",
                "--metrics-addr", "127.0.0.1:0", "--dashboard-addr", "127.0.0.1:0",
                "--revocation-addr", "127.0.0.1:0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = ServerProcess(process, data_dir, 0, 0, log_path)
    try:
        workers = _workers_ready(server)
        starting = _log_events(server, "starting workers")[0]
        enroll_port = int(str(starting["enroll"]).rsplit(":", 1)[1])
        api_port = int(str(starting["api"]).rsplit(":", 1)[1])
        metrics_port = int(str(starting["metrics"]).rsplit(":", 1)[1])
        dashboard_port = int(str(starting["dashboard"]).rsplit(":", 1)[1])
        assert enroll_port and api_port and enroll_port != api_port
        assert metrics_port not in (0, enroll_port, api_port)
        assert dashboard_port not in (0, enroll_port, api_port, metrics_port)
        serving = _log_events(server, "serving")
        assert sorted(int(str(e["enroll"]).rsplit(":", 1)[1]) for e in serving) == [
            enroll_port,
            enroll_port,
        ]
        assert [str(e["metrics"]) for e in serving] == [f"127.0.0.1:{metrics_port}"] * 2
        # Both workers serve the dashboard on the one port the supervisor chose.
        assert [e["dashboard"] for e in serving] == [f"https://127.0.0.1:{dashboard_port}"] * 2
        wait_ready(enroll_port, (data_dir / "ca.pem").read_bytes(), process)

        # A worker that dies is replaced, and the port keeps answering.
        os.kill(workers[0], signal.SIGKILL)
        _wait_for(lambda: len(_log_events(server, "serving")) == 3)
        assert len(_children(process.pid)) == 2
        wait_ready(enroll_port, (data_dir / "ca.pem").read_bytes(), process)
        assert server.stop(signal.SIGTERM) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_workers_refuse_a_missing_data_dir(tmp_path: Path) -> None:
    result = subprocess.run(
        [script("sielum-server"), "serve", "--data-dir", str(tmp_path / "none"), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "sielum-server init" in result.stderr
