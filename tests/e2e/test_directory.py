"""Relying on Sielum from another service, with real processes: the example service of the
README (examples/verify/billing.py) behind sielum.verify, a real server, the real CLIs."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sielum.admin.v1 import admin_pb2
from sielum.agent.v1 import agent_pb2
from sielum.directory.v1 import directory_pb2, directory_pb2_grpc
from tests.rpc.conftest import Harness, key_pem, make_csr, make_key, start_harness
from tests.verify.conftest import TestCA

from .conftest import (
    ServerProcess,
    admin,
    agent,
    agent_enroll,
    create_token,
    free_port,
    init_data_dir,
    start_server,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "verify" / "billing.py"
Kind = directory_pb2.DeviceEventKind


class Billing:
    """examples/verify/billing.py as a subprocess, and a device's way of calling it."""

    def __init__(self, server: ServerProcess, secrets: Path, tmp: Path) -> None:
        tls = TestCA()
        issued = tls.server()
        (secrets / "tls.pem").write_bytes(issued.pem)
        (secrets / "tls.key").write_bytes(key_pem(issued.key))
        self.tls_ca = tls.pem
        self.port = free_port()
        self.log = tmp / "billing.log"
        self.process = subprocess.Popen(
            [sys.executable, str(EXAMPLE)],
            env={
                **os.environ,
                "SIELUM_API": f"127.0.0.1:{server.api_port}",
                "BILLING_SECRETS": str(secrets),
                "BILLING_LISTEN": f"127.0.0.1:{self.port}",
            },
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while "billing: serving" not in self.log.read_text():
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def charge(self, cert_dir: Path) -> tuple[grpc.StatusCode, str]:
        """Charge as the device of cert_dir, on a new connection: (status, reply or details)."""
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca,
            private_key=(cert_dir / "device.key").read_bytes(),
            certificate_chain=(cert_dir / "device.pem").read_bytes(),
        )
        with grpc.secure_channel(f"localhost:{self.port}", credentials) as channel:
            try:
                reply = channel.unary_unary("/billing.v1.Billing/Charge")(b"", timeout=10)
            except grpc.RpcError as error:
                return error.code(), error.details()  # type: ignore[attr-defined]
        return grpc.StatusCode.OK, reply.decode()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def billing(
    tmp_path: Path, server_factory: list[ServerProcess]
) -> Iterator[tuple[ServerProcess, Billing]]:
    server = start_server(init_data_dir(tmp_path))
    server_factory.append(server)
    secrets = tmp_path / "billing"
    created = admin(server, "services", "create", "billing", "--out", str(secrets))
    assert created.returncode == 0, created.stderr
    service = Billing(server, secrets, tmp_path)
    try:
        yield server, service
    finally:
        service.stop()


def refused_within(billing: Billing, cert_dir: Path, seconds: float) -> tuple[grpc.StatusCode, str]:
    deadline = time.monotonic() + seconds
    while True:
        got = billing.charge(cert_dir)
        if got[0] != grpc.StatusCode.OK or time.monotonic() > deadline:
            return got


def accepted_within(
    billing: Billing, cert_dir: Path, seconds: float
) -> tuple[grpc.StatusCode, str]:
    """A device enrolled a moment ago reaches the service with the directory's next event."""
    deadline = time.monotonic() + seconds
    while True:
        got = billing.charge(cert_dir)
        if got[0] == grpc.StatusCode.OK or time.monotonic() > deadline:
            return got


def test_a_service_refuses_a_revoked_device_within_2_seconds(
    tmp_path: Path, billing: tuple[ServerProcess, Billing]
) -> None:
    server, service = billing
    _, secret = create_token(server)
    cert_dir = tmp_path / "agent"
    enrolled = agent_enroll(server, secret, cert_dir)
    assert enrolled.returncode == 0, enrolled.stderr
    device_id = json.loads((cert_dir / "agent.json").read_text())["device_id"]
    code, reply = accepted_within(service, cert_dir, 2.0)
    assert (code, reply.split(" (")[0]) == (grpc.StatusCode.OK, f"charged {device_id}")

    revoked = admin(server, "devices", "revoke", device_id)
    assert revoked.returncode == 0, revoked.stderr
    assert refused_within(service, cert_dir, 2.0) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "device has been revoked",
    )


def test_a_service_refuses_a_superseded_certificate(
    tmp_path: Path, billing: tuple[ServerProcess, Billing]
) -> None:
    """After `sielum-agent renew` and a first call with the new certificate, the old one is
    refused by the service as by Sielum; the new one is accepted."""
    server, service = billing
    _, secret = create_token(server)
    cert_dir = tmp_path / "agent"
    assert agent_enroll(server, secret, cert_dir).returncode == 0
    assert accepted_within(service, cert_dir, 2.0)[0] == grpc.StatusCode.OK
    old = tmp_path / "old"
    old.mkdir()
    for name in ("device.key", "device.pem"):
        (old / name).write_bytes((cert_dir / name).read_bytes())
    assert agent("renew", "--cert-dir", str(cert_dir)).returncode == 0
    assert service.charge(old)[0] == grpc.StatusCode.OK  # honoured until the new one is used
    assert agent("status", "--cert-dir", str(cert_dir)).returncode == 0
    assert refused_within(service, old, 2.0) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "this certificate has been superseded by a renewal; use the device's current one",
    )
    assert service.charge(cert_dir)[0] == grpc.StatusCode.OK


# --- two replicas on one PostgreSQL --------------------------------------------------------------


def test_watch_with_two_replicas_sees_every_event_once(tmp_path: Path, postgres_url: str) -> None:
    """Two servers on one database, enrollments, renewals and revocations racing on both, and
    a subscriber that drops its stream at random and resumes from the last sequence it saw,
    on either replica: it sees every event exactly once, in sequence order, and the devices
    it ends with are the database's."""
    one = start_harness(tmp_path, postgres_url)
    two = Harness(
        server=type(one.server)(
            type(one.server.config)(
                data_dir=one.data_dir,
                enroll_addr="127.0.0.1:0",
                api_addr="127.0.0.1:0",
                database_url=postgres_url,
            )
        ).start(),
        data_dir=one.data_dir,
        clock=one.clock,
    )
    replicas = (one, two)
    try:
        secret = one.create_token().secret
        stubs = [directory_pb2_grpc.DirectoryServiceStub(h.admin_channel()) for h in replicas]
        writers, per_writer = 4, 250  # 1,000 enrollments
        stop = threading.Event()
        errors: list[BaseException] = []
        seen: list[int] = []
        standing: dict[str, str] = {}  # device id -> serial, from the events

        def write(w: int) -> None:
            rng = random.Random(w)
            harness = replicas[w % 2]
            try:
                for i in range(per_writer):
                    reply, key = harness.enroll(secret, hostname=f"w{w}-{i}")
                    roll = rng.random()
                    if roll < 0.2:
                        new_key = make_key()
                        harness.agent(key, reply.certificate_pem).RenewCertificate(
                            agent_pb2.RenewCertificateRequest(csr_pem=make_csr(new_key)),
                            timeout=10,
                        )
                    elif roll < 0.35:
                        replicas[(w + 1) % 2].admin().RevokeDevice(
                            admin_pb2.RevokeDeviceRequest(id=reply.device_id), timeout=10
                        )
            except BaseException as error:
                errors.append(error)

        def subscribe() -> None:
            rng = random.Random(99)
            position: int | None = None
            while True:
                stub = stubs[rng.randrange(2)]
                request = (
                    directory_pb2.WatchDevicesRequest()
                    if position is None
                    else directory_pb2.WatchDevicesRequest(after_sequence=position)
                )
                call = stub.WatchDevices(request, timeout=120)
                budget = rng.randrange(1, 60)
                try:
                    for event in call:
                        if event.kind == Kind.DEVICE_EVENT_KIND_CURRENT:
                            standing[event.device_id] = event.serial
                            continue
                        if event.kind == Kind.DEVICE_EVENT_KIND_SYNCED:
                            position = event.sequence
                            if stop.is_set() and event.sequence >= one.server.store.event_head():
                                return
                            continue
                        if position is not None and event.sequence != position + 1:
                            errors.append(AssertionError(f"{event.sequence} after {position}"))
                            return
                        position = event.sequence
                        seen.append(event.sequence)
                        if event.kind in (
                            Kind.DEVICE_EVENT_KIND_REVOKED,
                            Kind.DEVICE_EVENT_KIND_UNENROLLED,
                        ):
                            standing.pop(event.device_id, None)
                        else:
                            standing[event.device_id] = event.serial
                        budget -= 1
                        if budget == 0:
                            break  # drop the stream; resume from position
                finally:
                    call.cancel()

        subscriber = threading.Thread(target=subscribe)
        subscriber.start()
        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        subscriber.join(timeout=60)
        assert not subscriber.is_alive()
        assert errors == []
        head = one.server.store.event_head()
        assert head >= writers * per_writer
        assert seen == list(range(seen[0], head + 1))  # from the first after its snapshot
        rows: dict[str, str] = {}
        cursor = ""
        while True:
            page = one.server.store.list_devices(page_size=1000, cursor=cursor)
            rows.update({d.id: d.serial for d in page.items if d.revoked_at is None})
            cursor = page.next_cursor
            if not cursor:
                break
        assert len(rows) > 500
        assert standing == rows
    finally:
        two.server.stop(grace=1)
        one.server.stop(grace=1)


def test_metrics_count_open_streams_over_workers(
    tmp_path: Path, server_factory: list[ServerProcess]
) -> None:
    """sielum_directory_subscribers is the streams open on every worker, summed; events
    streamed count up; promtool accepts the exposition."""
    from sielum.server import multiproc

    from .test_metrics import promtool_accepts, scrape, value
    from .test_workers import _workers_ready

    base = tmp_path / "multiproc"
    base.mkdir()
    server = start_server(
        init_data_dir(tmp_path), "--workers", "2", "--log-format", "json",
        env={multiproc.ENV: str(base)},
    )  # fmt: skip
    server_factory.append(server)
    _workers_ready(server)
    admin_dir = server.data_dir / "admin"
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(server.data_dir / "ca.pem").read_bytes(),
        private_key=(admin_dir / "admin.key").read_bytes(),
        certificate_chain=(admin_dir / "admin.pem").read_bytes(),
    )
    channels, calls = [], []
    for i in range(4):
        # A channel of its own each (a distinct option keeps grpc from sharing one
        # connection), so the streams spread over the workers.
        channel = grpc.secure_channel(
            f"localhost:{server.api_port}", credentials, options=[("sielum.test", i)]
        )
        call = directory_pb2_grpc.DirectoryServiceStub(channel).WatchDevices(
            directory_pb2.WatchDevicesRequest(), timeout=60
        )
        assert next(call).kind == Kind.DEVICE_EVENT_KIND_SYNCED
        channels.append(channel)
        calls.append(call)
    text, samples = scrape(server.metrics_port)
    promtool_accepts(text)
    assert value(samples, "sielum_directory_subscribers") == 4
    assert value(samples, "sielum_directory_events_streamed_total") >= 4
    for call in calls:
        call.cancel()
    deadline = time.monotonic() + 10
    while value(scrape(server.metrics_port)[1], "sielum_directory_subscribers") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for channel in channels:
        channel.close()
