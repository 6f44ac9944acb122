"""sielum-server as a real process: init, serve, a token over the API, an Enroll, SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import signal
import socket
import ssl
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from sielum.admin.v1 import admin_pb2, admin_pb2_grpc
from sielum.enroll.v1 import enroll_pb2, enroll_pb2_grpc

from ..rpc.conftest import make_csr, make_key
from .conftest import ServerProcess, free_port, run, script, start_server, wait_ready


def _admin_stub(server: ServerProcess) -> admin_pb2_grpc.AdminServiceStub:
    admin = server.data_dir / "admin"
    creds = grpc.ssl_channel_credentials(
        root_certificates=(server.data_dir / "ca.pem").read_bytes(),
        private_key=(admin / "admin.key").read_bytes(),
        certificate_chain=(admin / "admin.pem").read_bytes(),
    )
    return admin_pb2_grpc.AdminServiceStub(
        grpc.secure_channel(f"localhost:{server.api_port}", creds)
    )


def test_init_serve_enroll_and_sigterm(tmp_path: Path, server_factory: list[ServerProcess]) -> None:
    data_dir = tmp_path / "data"
    init = run("sielum-server", "init", "--data-dir", str(data_dir), "--san", "enroll.example.test")
    assert init.returncode == 0, init.stderr
    fingerprint = run("sielum-server", "fingerprint", "--data-dir", str(data_dir))
    assert fingerprint.returncode == 0
    assert fingerprint.stdout.strip().startswith("sha256:")
    assert f"CA fingerprint: {fingerprint.stdout.strip()}" in init.stdout
    openssl = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(data_dir / "ca.pem")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (
        openssl.stdout.split("=", 1)[1].strip().replace(":", "").lower()
        == fingerprint.stdout.strip()[7:]
    )
    assert stat.S_IMODE((data_dir / "ca.key").stat().st_mode) == 0o600

    again = run("sielum-server", "init", "--data-dir", str(data_dir))
    assert again.returncode != 0
    assert "refusing to overwrite" in again.stderr

    server = start_server(data_dir, "--log-format", "json")
    server_factory.append(server)
    created = _admin_stub(server).CreateEnrollmentToken(
        admin_pb2.CreateEnrollmentTokenRequest(label="e2e", max_uses=3), timeout=10
    )
    key = make_key()
    enroll = enroll_pb2_grpc.EnrollServiceStub(
        grpc.secure_channel(
            f"localhost:{server.enroll_port}",
            grpc.ssl_channel_credentials(root_certificates=(data_dir / "ca.pem").read_bytes()),
        )
    )
    response = enroll.Enroll(
        enroll_pb2.EnrollRequest(token=created.secret, csr_pem=make_csr(key), hostname="e2e-host"),
        timeout=10,
    )
    devices = _admin_stub(server).ListDevices(admin_pb2.ListDevicesRequest(), timeout=10)
    assert [d.id for d in devices.devices] == [response.device_id]

    assert server.stop(signal.SIGTERM) == 0
    log_lines = [json.loads(line) for line in server.log.splitlines() if line.startswith("{")]
    events = [entry["event"] for entry in log_lines]
    assert "serving" in events and "stopped" in events
    # SQLite is on this host: the calls run on each worker's event loop.
    assert {e["calls"] for e in log_lines if e["event"] == "serving"} == {"event loop"}
    enrolled = [e for e in log_lines if e["event"] == "enroll"]
    assert enrolled and enrolled[0]["outcome"] == "ok"
    assert enrolled[0]["device"] == response.device_id
    assert enrolled[0]["token"] == created.token.id
    assert created.secret not in server.log
    random_part = created.secret.split("_")[2]
    assert random_part[:20] not in server.log


def test_issue_admin_cert_makes_a_working_admin(
    tmp_path: Path, server_factory: list[ServerProcess]
) -> None:
    data_dir = tmp_path / "data"
    assert run("sielum-server", "init", "--data-dir", str(data_dir)).returncode == 0
    out = tmp_path / "alice"
    issued = run(
        "sielum-server",
        "issue-admin-cert",
        "--data-dir",
        str(data_dir),
        "--name",
        "alice",
        "--out",
        str(out),
    )
    assert issued.returncode == 0, issued.stderr
    server = start_server(data_dir)
    server_factory.append(server)
    creds = grpc.ssl_channel_credentials(
        root_certificates=(out / "ca.pem").read_bytes(),
        private_key=(out / "admin.key").read_bytes(),
        certificate_chain=(out / "admin.pem").read_bytes(),
    )
    stub = admin_pb2_grpc.AdminServiceStub(
        grpc.secure_channel(f"localhost:{server.api_port}", creds)
    )
    created = stub.CreateEnrollmentToken(
        admin_pb2.CreateEnrollmentTokenRequest(label="by alice"), timeout=10
    )
    assert created.token.created_by == "alice"
    assert server.stop() == 0


def test_serve_fails_clearly_without_init(tmp_path: Path) -> None:
    result = run("sielum-server", "serve", "--data-dir", str(tmp_path / "missing"))
    assert result.returncode != 0
    assert "sielum-server init" in result.stderr


def test_serve_refuses_negative_workers_and_threads(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert run("sielum-server", "init", "--data-dir", str(data_dir)).returncode == 0
    for flag, value, message in (
        ("--workers", "0", "--workers must be at least 1"),
        ("--threads", "-1", "--threads must be 0 or more"),
    ):
        result = run("sielum-server", "serve", "--data-dir", str(data_dir), flag, value)
        assert result.returncode != 0
        assert message in result.stderr, result.stderr


def test_serve_refuses_a_heartbeat_interval_outside_ten_seconds_to_a_day(tmp_path: Path) -> None:
    # Outside the bounds: a fleet in a tight loop, or devices silent for days.
    for value in ("5s", "2d"):
        result = run(
            "sielum-server",
            "serve",
            "--data-dir",
            str(tmp_path / "x"),
            "--heartbeat-interval",
            value,
        )
        assert result.returncode == 2, result.stderr
        assert (
            "argument --heartbeat-interval: heartbeat interval must be between 10s and 1d"
            in result.stderr
        ), result.stderr


def test_encrypted_ca_needs_the_passphrase(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    short = run(
        "sielum-server",
        "init",
        "--data-dir",
        str(data_dir),
        env={"SIELUM_CA_PASSPHRASE": "hunter2"},
    )
    assert short.returncode == 2
    assert short.stderr == (
        "sielum-server: SIELUM_CA_PASSPHRASE is too short (7 characters): use at least 12, "
        "for example four random words\n"
    )
    assert not data_dir.exists()
    env = {"SIELUM_CA_PASSPHRASE": "correct horse"}
    assert run("sielum-server", "init", "--data-dir", str(data_dir), env=env).returncode == 0
    assert b"ENCRYPTED" in (data_dir / "ca.key").read_bytes()
    out = tmp_path / "bob"
    missing = run(
        "sielum-server",
        "issue-admin-cert",
        "--data-dir",
        str(data_dir),
        "--name",
        "bob",
        "--out",
        str(out),
        env={"SIELUM_CA_PASSPHRASE": ""},
    )
    assert missing.returncode != 0
    assert "SIELUM_CA_PASSPHRASE" in missing.stderr
    ok = run(
        "sielum-server",
        "issue-admin-cert",
        "--data-dir",
        str(data_dir),
        "--name",
        "bob",
        "--out",
        str(out),
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    assert "correct horse" not in ok.stdout + ok.stderr


def test_fail_database_password_in_the_url_query_reaches_the_serving_line(
    tmp_path: Path, server_factory: list[ServerProcess], postgres_url: str
) -> None:
    """A PostgreSQL URL with a password in its userinfo and in its query (password,
    sslpassword): `serve` starts, and its 'serving' line names the database with neither."""
    data_dir = tmp_path / "data"
    assert run("sielum-server", "init", "--data-dir", str(data_dir)).returncode == 0
    user_host = postgres_url.removeprefix("postgresql://")
    user, _, rest = user_host.partition("@")
    # The test cluster trusts loopback connections, so libpq sends none of these.
    url = (
        f"postgresql://{user}:userinfo-pw-1@{rest}"
        "?password=query-pw-2&sslpassword=key-pw-3&application_name=sielum-e2e"
    )
    server = start_server(data_dir, "--database", url, "--log-format", "json")
    server_factory.append(server)
    assert server.stop(signal.SIGTERM) == 0
    serving = [
        json.loads(line)
        for line in server.log.splitlines()
        if line.startswith("{") and json.loads(line)["event"] == "serving"
    ]
    assert serving  # one line per worker
    assert {line["database"] for line in serving} == {
        f"postgresql://{user}:***@{rest}?password=***&sslpassword=***&application_name=sielum-e2e"
    }
    for secret in ("userinfo-pw-1", "query-pw-2", "key-pw-3"):
        assert secret not in server.log


# (URL, what of it is secret): each wrong in its own way, each with a password.
BAD_DATABASE_URLS = (
    # A stray % in the password: libpq's own message quoted it, twice, in a traceback.
    ("postgresql://sielum:My%Pass@127.0.0.1/test", "My%Pass"),
    ("postgresql://sielum:Secr3t-zz%zz@127.0.0.1/test", "Secr3t-zz"),
    ("mysql://sielum:Secr3t-scheme@127.0.0.1/test", "Secr3t-scheme"),
    ("postgresql://sielum:Secr3t-port@127.0.0.1:99999/test", "Secr3t-port"),
    ("postgresql://sielum:Secr3t-word@127.0.0.1:port/test", "Secr3t-word"),
    ("postgresql://sielum:Secr3t-ipv6@[::1/test", "Secr3t-ipv6"),
    ("postgresql://sielum:Secr3t-query@127.0.0.1/test?no_such_parameter=1", "Secr3t-query"),
    ("postgresql://sielum:Secr3t-nodb@127.0.0.1", "Secr3t-nodb"),
)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_fail_database_url_error_prints_the_password(tmp_path: Path, log_format: str) -> None:
    """A bad --database URL: one clean line (a JSON one with --log-format json), exit 2,
    no traceback, and nothing of the password, whatever is wrong with the URL."""
    data_dir = tmp_path / "data"
    assert run("sielum-server", "init", "--data-dir", str(data_dir)).returncode == 0
    for url, secret in BAD_DATABASE_URLS:
        for workers in ("1", "2"):
            result = run(
                "sielum-server",
                "serve",
                "--data-dir",
                str(data_dir),
                "--database",
                url,
                "--workers",
                workers,
                "--enroll-addr",
                "127.0.0.1:0",
                "--api-addr",
                "127.0.0.1:0",
                "--dashboard-addr",
                "off",
                "--metrics-addr",
                "off",
                "--revocation-addr",
                "off",
                "--log-format",
                log_format,
            )
            output = result.stdout + result.stderr
            assert result.returncode == 2, (url, output)
            assert "Traceback" not in output, (url, output)
            assert secret not in output, (url, output)
            assert result.stdout == ""
            lines = result.stderr.splitlines()
            if log_format == "json":
                entries = [json.loads(line) for line in lines]  # every line, or it raises
                errors = [e for e in entries if e["level"] == "error"]
                assert len(errors) == 1, (url, output)
                (error,) = errors
                message = error["event"]
                assert (error["code"], error["exit_code"]) == ("usage", 2)
            else:
                # The start-up's INFO line, then the one error line.
                errors = [line for line in lines if line.startswith("sielum-server: ")]
                assert len(errors) == 1 and lines[-1] == errors[0], (url, output)
                message = errors[0].removeprefix("sielum-server: ")
            assert "database URL" in message, (url, output)


def test_ok_database_password_with_special_characters(
    tmp_path: Path, server_factory: list[ServerProcess], postgres_url: str
) -> None:
    """A password full of URL syntax, percent-encoded as it must be: serve starts, says nothing
    of it. (The cluster trusts loopback, so libpq sends no password; the URL must still parse.)"""
    data_dir = tmp_path / "data"
    assert run("sielum-server", "init", "--data-dir", str(data_dir)).returncode == 0
    user, _, rest = postgres_url.removeprefix("postgresql://").partition("@")
    encoded = "p%40ss%3Aw%25rd%2F%23%3F%20x"  # p@ss:w%rd/#? x
    server = start_server(
        data_dir, "--database", f"postgresql://{user}:{encoded}@{rest}", "--log-format", "json"
    )
    server_factory.append(server)
    assert server.stop(signal.SIGTERM) == 0
    for secret in (encoded, "p@ss:w%rd", "w%25rd"):
        assert secret not in server.log


IDLE_CONNECTIONS = 1100


# The server's open-files limit is set by util-linux's prlimit, which sets it and then
# execs the server: a preexec_fn would run Python in a fork of this test process, whose
# gRPC threads' fork handlers then poll a descriptor the fork closes, and abort the child
# now and then (SIGABRT, "epoll_wait error: Bad file descriptor", seen once in CI).
SOFT_LIMIT_1024 = ("prlimit", "--nofile=1024:", "--")
OPEN_FILES_400 = ("prlimit", "--nofile=400:400", "--")


def test_fail_idle_connections_starve_the_admin_api(tmp_path: Path) -> None:
    """1,100 TCP connections to the enroll port that never start TLS, against a server started
    with the usual soft limit of 1,024 open files: the admin API still answers, and the idle
    connections are closed once the handshake timeout passes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < IDLE_CONNECTIONS + 400:
        pytest.skip(f"the hard open-files limit ({hard}) leaves no room for the attack")
    if soft != resource.RLIM_INFINITY and soft < IDLE_CONNECTIONS + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this test's own sockets
    data_dir = tmp_path / "data"
    assert run("sielum-server", "init", "--data-dir", str(data_dir)).returncode == 0
    enroll_port, api_port = free_port(), free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [
                *SOFT_LIMIT_1024,
                script("sielum-server"), "serve", "--data-dir", str(data_dir), "--workers", "1",
                "--enroll-addr", f"127.0.0.1:{enroll_port}", "--api-addr", f"127.0.0.1:{api_port}",
                "--handshake-timeout", "5", "--revocation-addr", "off",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = ServerProcess(process, data_dir, enroll_port, api_port, log_path)  # type: ignore[arg-type]
    idle: list[socket.socket] = []
    try:
        wait_ready(enroll_port, (data_dir / "ca.pem").read_bytes(), process)
        assert "open files limit" in server.log and "raised_from=1024" in server.log
        for _ in range(IDLE_CONNECTIONS):
            idle.append(socket.create_connection(("127.0.0.1", enroll_port), timeout=10))
        # Every idle connection reached the server and holds a descriptor there.
        deadline = time.monotonic() + 30
        while len(os.listdir(f"/proc/{process.pid}/fd")) < IDLE_CONNECTIONS:
            assert time.monotonic() < deadline, "the server did not take the connections"
            time.sleep(0.1)

        tokens = _admin_stub(server).ListEnrollmentTokens(
            admin_pb2.ListEnrollmentTokensRequest(), timeout=30
        )
        assert list(tokens.tokens) == []

        # And the idle connections are closed: each reads as end of file (or a reset).
        waiting = selectors.DefaultSelector()
        for sock in idle:
            waiting.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + 120
        while waiting.get_map():
            left = len(waiting.get_map())
            assert time.monotonic() < deadline, f"{left} idle connections still open"
            for key, _ in waiting.select(timeout=1.0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    closed = sock.recv(1) == b""
                except ConnectionError:
                    closed = True
                if closed:
                    waiting.unregister(sock)
        waiting.close()
        assert len(os.listdir(f"/proc/{process.pid}/fd")) < 200
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def _wait_closed_by_server(sockets: list[socket.socket], seconds: float) -> None:
    """Wait until the server has closed every socket (end of file or a reset when read)."""
    waiting = selectors.DefaultSelector()
    for sock in sockets:
        waiting.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + seconds
    while waiting.get_map():
        left = len(waiting.get_map())
        assert time.monotonic() < deadline, f"{left} idle connections still open"
        for key, _ in waiting.select(timeout=1.0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                closed = sock.recv(65536) == b""  # an answer first (a 408), then the end
            except (OSError, ssl.SSLError):
                closed = True
            if closed:
                waiting.unregister(sock)
    waiting.close()


HTTP_ATTACKERS = 380


def _connections_held(pid: int, port: int) -> int:
    """The TCP connections on local port that process pid holds a descriptor of."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    held = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01" and fields[9] in inodes:
            held += 1
    return held


def test_fail_idle_http_connections_starve_the_admin_api(tmp_path: Path) -> None:
    """Against a server whose open-files limit is 400 (soft and hard), 380 plain TCP
    connections to the metrics port that send nothing, then 380 dashboard POSTs with a
    plausible Origin whose body never finishes: the admin API still answers, each listener
    holds at most its share of the limit (1/8: 50), and the server closes every one of the
    connections once --idle-timeout has passed (a 408 for the bodies)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 2 * HTTP_ATTACKERS + 200:
        if hard != resource.RLIM_INFINITY and hard < 2 * HTTP_ATTACKERS + 200:
            pytest.skip(f"the hard open-files limit ({hard}) leaves no room for the attack")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this test's own sockets
    data_dir = tmp_path / "data"
    assert run("sielum-server", "init", "--data-dir", str(data_dir)).returncode == 0
    enroll_port, api_port, metrics_port, dashboard_port = (free_port() for _ in range(4))
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [
                *OPEN_FILES_400,
                script("sielum-server"), "serve", "--data-dir", str(data_dir), "--workers", "1",
                "--enroll-addr", f"127.0.0.1:{enroll_port}", "--api-addr", f"127.0.0.1:{api_port}",
                "--metrics-addr", f"127.0.0.1:{metrics_port}",
                "--dashboard-addr", f"127.0.0.1:{dashboard_port}", "--revocation-addr", "off",
                "--idle-timeout", "3", "--handshake-timeout", "3",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = ServerProcess(process, data_dir, enroll_port, api_port, log_path)  # type: ignore[arg-type]
    held: list[socket.socket] = []
    try:
        ca_pem = (data_dir / "ca.pem").read_bytes()
        wait_ready(enroll_port, ca_pem, process)
        assert "soft=400 hard=400" in server.log

        for _ in range(HTTP_ATTACKERS):
            held.append(socket.create_connection(("127.0.0.1", metrics_port), timeout=10))
        assert _connections_held(process.pid, metrics_port) <= 50

        tls = ssl.create_default_context(cadata=ca_pem.decode())
        origin = f"https://127.0.0.1:{dashboard_port}"
        request = (
            "POST /sielum.admin.v1.AdminService/ListEnrollmentTokens HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{dashboard_port}\r\nOrigin: {origin}\r\n"
            "Content-Type: application/json\r\nConnect-Protocol-Version: 1\r\n"
            "Content-Length: 100000\r\n\r\n{"
        ).encode()
        slow_bodies = 0
        for _ in range(HTTP_ATTACKERS):
            raw = socket.create_connection(("127.0.0.1", dashboard_port), timeout=10)
            try:
                conn = tls.wrap_socket(raw, server_hostname="localhost")
                conn.sendall(request)  # and the rest of the body never comes
            except TimeoutError:
                raise AssertionError("the dashboard took a connection and never answered it")
            except (OSError, ssl.SSLError):
                raw.close()  # refused at once: the listener is full
                continue
            held.append(conn)
            slow_bodies += 1
        assert 0 < slow_bodies <= HTTP_ATTACKERS

        fds = len(os.listdir(f"/proc/{process.pid}/fd"))
        assert fds < 300, f"the server holds {fds} descriptors"
        assert _connections_held(process.pid, dashboard_port) <= 50
        tokens = _admin_stub(server).ListEnrollmentTokens(
            admin_pb2.ListEnrollmentTokensRequest(), timeout=30
        )
        assert list(tokens.tokens) == []

        _wait_closed_by_server(held, 60)
        assert "listener=metrics" in server.log and "listener=dashboard" in server.log
        assert "EMFILE" not in server.log and "Too many open files" not in server.log
        # Once the attack is over, both listeners answer again.
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert scrape.status == 200
    finally:
        for sock in held:
            sock.close()
        server.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_grpc_core_lines_reach_the_log_in_its_json_format(
    tmp_path: Path, server_factory: list[ServerProcess], workers: str
) -> None:
    """A failed TLS handshake makes the C core log a line; it comes out as one JSON object.

    With one worker the server process captures its core's lines; with two, each
    worker does, while the supervisor (no grpc in it) logs its own lines.
    """
    data_dir = tmp_path / "data"
    assert run("sielum-server", "init", "--data-dir", str(data_dir)).returncode == 0
    server = start_server(data_dir, "--log-format", "json", "--workers", workers)
    server_factory.append(server)
    # Plain HTTP to a TLS port, and a TLS client that trusts another CA.
    with socket.create_connection(("127.0.0.1", server.api_port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        raw.recv(100)
    untrusting = ssl.create_default_context()
    with (
        socket.create_connection(("127.0.0.1", server.enroll_port), timeout=5) as raw,
        contextlib.suppress(ssl.SSLError),
        untrusting.wrap_socket(raw, server_hostname="localhost"),
    ):
        pass
    deadline = time.monotonic() + 20
    while "tls_handshake_failed" not in server.log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.stop(signal.SIGTERM) == 0

    lines = server.log.splitlines()
    entries = [json.loads(line) for line in lines]  # every line, not only ours
    handshakes = [e for e in entries if e["event"] == "tls_handshake_failed"]
    assert handshakes, server.log
    for entry in handshakes:
        # In plain words, at info: a client's mistake, not the server's.
        assert entry["logger"] == "grpc"
        assert entry["level"] == "info"
        assert entry["reason"].startswith("a client "), entry
        assert entry["source"].startswith("ssl_transport_security.cc:")
    assert not [e for e in entries if e["event"].startswith("Handshake failed")]
    assert [e["event"] for e in entries if e["logger"] == "sielum.server"][-1] == "stopped"


@pytest.mark.parametrize(
    ("workers", "moment"),
    [
        ("1", "open files limit"),  # the first line: signal handlers are set
        ("2", "open files limit"),  # the supervisor is loading the CA and the database
        ("2", "starting workers"),  # the workers are being started
        ("2", " serving "),  # one worker serves, the other may still be starting
    ],
)
def test_sigterm_while_starting_stops_cleanly(tmp_path: Path, workers: str, moment: str) -> None:
    data_dir = tmp_path / "data"
    assert run("sielum-server", "init", "--data-dir", str(data_dir)).returncode == 0
    process = subprocess.Popen(
        [
            script("sielum-server"), "serve", "--data-dir", str(data_dir),
            "--enroll-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0",
            "--metrics-addr", "off", "--dashboard-addr", "off", "--workers", workers,
            "--revocation-addr", "off",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stderr is not None
    lines: list[str] = []
    try:
        for line in process.stderr:
            lines.append(line)
            if moment in line:
                process.send_signal(signal.SIGTERM)
                break
        rest = process.communicate(timeout=60)[1]
    finally:
        if process.poll() is None:
            process.kill()
    log = "".join(lines) + rest
    assert any(moment in line for line in lines), log
    assert process.returncode == 0, log
    assert "Traceback" not in log
    assert "SIGTERM received" in log
