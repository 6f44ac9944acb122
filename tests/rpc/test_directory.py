"""DirectoryService over the API port: CheckCertificate, GetTrustBundle, WatchDevices."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from sielum.admin.v1 import admin_pb2
from sielum.agent.v1 import agent_pb2
from sielum.directory.v1 import directory_pb2, directory_pb2_grpc

from .conftest import Harness, key_pem, make_csr, make_key, start_harness, status_of
from .test_services import create_service, revoke_service

Status = directory_pb2.CertificateStatus
Kind = directory_pb2.DeviceEventKind


@pytest.fixture
def on_both(tmp_path: Path, database_url: str) -> Iterator[Harness]:
    harness = start_harness(tmp_path, database_url)
    try:
        yield harness
    finally:
        harness.server.stop(grace=1)


def directory(harness: Harness, name: str = "relying") -> directory_pb2_grpc.DirectoryServiceStub:
    reply, key = create_service(harness, name)
    channel = harness.api_channel(key_pem(key), reply.certificate_pem.encode())
    return directory_pb2_grpc.DirectoryServiceStub(channel)


def check(stub: directory_pb2_grpc.DirectoryServiceStub, pem: str) -> tuple[bool, int]:
    reply = stub.CheckCertificate(
        directory_pb2.CheckCertificateRequest(certificate_pem=pem), timeout=10
    )
    return reply.valid, reply.status


def renew(
    harness: Harness, key: ec.EllipticCurvePrivateKey, certificate_pem: str
) -> tuple[str, ec.EllipticCurvePrivateKey]:
    new_key = make_key()
    reply = harness.agent(key, certificate_pem).RenewCertificate(
        agent_pb2.RenewCertificateRequest(csr_pem=make_csr(new_key)), timeout=10
    )
    return reply.certificate_pem, new_key


def heartbeat(harness: Harness, key: ec.EllipticCurvePrivateKey, certificate_pem: str) -> None:
    harness.agent(key, certificate_pem).Heartbeat(agent_pb2.HeartbeatRequest(), timeout=10)


def test_check_certificate_follows_the_device_gate(on_both: Harness) -> None:
    """CURRENT, then the previous certificate CURRENT until the new one is used, then
    SUPERSEDED; REVOKED after a revoke; UNKNOWN for anything not a device of this CA."""
    harness = on_both
    stub = directory(harness)
    secret = harness.create_token().secret
    enrolled, key = harness.enroll(secret)
    first = enrolled.certificate_pem
    reply = stub.CheckCertificate(
        directory_pb2.CheckCertificateRequest(certificate_pem=first), timeout=10
    )
    assert (reply.valid, reply.status) == (True, Status.CERTIFICATE_STATUS_CURRENT)
    assert (reply.device.id, reply.device.hostname) == (enrolled.device_id, "host-1")
    assert reply.device.serial == format(
        x509.load_pem_x509_certificate(first.encode()).serial_number, "x"
    )
    assert not reply.device.HasField("revoked_at")

    second, new_key = renew(harness, key, first)
    # The renewal's answer may have been lost: the previous certificate still works.
    assert check(stub, first) == (True, Status.CERTIFICATE_STATUS_CURRENT)
    assert check(stub, second) == (True, Status.CERTIFICATE_STATUS_CURRENT)
    heartbeat(harness, new_key, second)  # first use of the new one retires the previous
    assert check(stub, first) == (False, Status.CERTIFICATE_STATUS_SUPERSEDED)
    code, _ = status_of(lambda: heartbeat(harness, key, first))
    assert code == grpc.StatusCode.PERMISSION_DENIED  # Sielum refuses it too

    harness.admin().RevokeDevice(admin_pb2.RevokeDeviceRequest(id=enrolled.device_id), timeout=10)
    reply = stub.CheckCertificate(
        directory_pb2.CheckCertificateRequest(certificate_pem=second), timeout=10
    )
    assert (reply.valid, reply.status) == (False, Status.CERTIFICATE_STATUS_REVOKED)
    assert reply.device.HasField("revoked_at")
    assert check(stub, first) == (False, Status.CERTIFICATE_STATUS_REVOKED)

    # Not a device certificate of this CA: the server's own, an admin's, garbage.
    server_pem = (harness.data_dir / "server.pem").read_text()
    admin_pem = (harness.data_dir / "admin" / "admin.pem").read_text()
    for pem in (
        server_pem,
        admin_pem,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ):
        reply = stub.CheckCertificate(
            directory_pb2.CheckCertificateRequest(certificate_pem=pem), timeout=10
        )
        assert (reply.valid, reply.status, reply.HasField("device")) == (
            False,
            Status.CERTIFICATE_STATUS_UNKNOWN,
            False,
        )


def test_fail_check_certificate_of_another_ca_and_expired(tmp_path: Path) -> None:
    """A device certificate of another CA with the same device id is UNKNOWN; one past its
    not_after is EXPIRED."""
    one = start_harness(tmp_path / "one")
    other = start_harness(tmp_path / "two")
    try:
        stub = directory(one)
        enrolled, _ = one.enroll(one.create_token().secret)
        foreign, _ = other.enroll(other.create_token().secret)
        assert check(stub, foreign.certificate_pem) == (False, Status.CERTIFICATE_STATUS_UNKNOWN)
        one.clock.advance(timedelta(days=91))
        assert check(stub, enrolled.certificate_pem) == (False, Status.CERTIFICATE_STATUS_EXPIRED)
    finally:
        one.server.stop(grace=1)
        other.server.stop(grace=1)


def test_fail_check_certificate_bad_input(harness: Harness) -> None:
    stub = directory(harness)
    for pem, message in (
        ("", "certificate_pem is required"),
        ("x" * 20000, "certificate_pem is longer than 16384 characters"),
    ):
        code, details = status_of(
            lambda pem=pem: stub.CheckCertificate(
                directory_pb2.CheckCertificateRequest(certificate_pem=pem), timeout=10
            )
        )
        assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_trust_bundle_is_the_ca(harness: Harness) -> None:
    reply = directory(harness).GetTrustBundle(directory_pb2.GetTrustBundleRequest(), timeout=10)
    ca = x509.load_pem_x509_certificate(harness.ca_pem)
    assert [x509.load_pem_x509_certificate(p.encode()) for p in reply.ca_certificates_pem] == [ca]
    assert list(reply.fingerprints) == ["sha256:" + ca.fingerprint(hashes.SHA256()).hex()]


def test_fail_the_directory_refuses_devices_and_no_certificate(harness: Harness) -> None:
    enrolled, key = harness.enroll(harness.create_token().secret)
    method = "/sielum.directory.v1.DirectoryService/GetTrustBundle"
    with harness.device_channel(key, enrolled.certificate_pem) as channel:
        code, details = status_of(lambda: channel.unary_unary(method)(b"", timeout=10))
    assert (code, details) == (
        grpc.StatusCode.PERMISSION_DENIED,
        f"{method} needs a service or an admin certificate; this one is device",
    )
    # An admin may read the directory too.
    stub = directory_pb2_grpc.DirectoryServiceStub(harness.admin_channel())
    assert (
        len(stub.GetTrustBundle(directory_pb2.GetTrustBundleRequest(), timeout=10).fingerprints)
        == 1
    )


class Follower:
    """A WatchDevices stream read on a thread into a queue."""

    def __init__(
        self, stub: directory_pb2_grpc.DirectoryServiceStub, after: int | None = None
    ) -> None:
        request = (
            directory_pb2.WatchDevicesRequest()
            if after is None
            else directory_pb2.WatchDevicesRequest(after_sequence=after)
        )
        self.call = stub.WatchDevices(request, timeout=60)
        self.events: queue.Queue[directory_pb2.WatchDevicesResponse | BaseException] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.call:
                self.events.put(event)
        except BaseException as error:
            self.events.put(error)

    def next(self, timeout: float = 10) -> directory_pb2.WatchDevicesResponse:
        item = self.events.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def next_change(self, timeout: float = 10) -> directory_pb2.WatchDevicesResponse:
        """The next event that is not a keepalive."""
        while True:
            event = self.next(timeout)
            if event.kind != Kind.DEVICE_EVENT_KIND_SYNCED:
                return event

    def close(self) -> None:
        self.call.cancel()


def test_watch_devices_snapshot_then_live_then_resume(on_both: Harness) -> None:
    harness = on_both
    stub = directory(harness)
    secret = harness.create_token().secret
    a, _ = harness.enroll(secret, hostname="a")
    b, _ = harness.enroll(secret, hostname="b")
    harness.admin().RevokeDevice(admin_pb2.RevokeDeviceRequest(id=b.device_id), timeout=10)

    follower = Follower(stub)
    try:
        entry = follower.next()
        assert (entry.kind, entry.device_id, entry.hostname) == (
            Kind.DEVICE_EVENT_KIND_CURRENT,
            a.device_id,
            "a",
        )
        assert entry.serial == format(
            x509.load_pem_x509_certificate(a.certificate_pem.encode()).serial_number, "x"
        )
        synced = follower.next()
        assert (synced.kind, synced.sequence) == (Kind.DEVICE_EVENT_KIND_SYNCED, 3)

        c, _ = harness.enroll(secret, hostname="c")
        event = follower.next_change()
        assert (event.kind, event.sequence, event.device_id) == (
            Kind.DEVICE_EVENT_KIND_ENROLLED,
            4,
            c.device_id,
        )
        harness.admin().RevokeDevice(admin_pb2.RevokeDeviceRequest(id=a.device_id), timeout=10)
        event = follower.next_change()
        assert (event.kind, event.sequence, event.device_id, event.serial) == (
            Kind.DEVICE_EVENT_KIND_REVOKED,
            5,
            a.device_id,
            "",
        )
    finally:
        follower.close()

    # Resuming after 2 replays 3, 4, 5, then SYNCED at 5.
    resumed = Follower(stub, after=2)
    try:
        got = [resumed.next() for _ in range(4)]
        assert [(e.sequence, e.kind) for e in got] == [
            (3, Kind.DEVICE_EVENT_KIND_REVOKED),
            (4, Kind.DEVICE_EVENT_KIND_ENROLLED),
            (5, Kind.DEVICE_EVENT_KIND_REVOKED),
            (5, Kind.DEVICE_EVENT_KIND_SYNCED),
        ]
    finally:
        resumed.close()

    # A position beyond the newest event: the database was restored, start over.
    code, details = status_of(
        lambda: list(
            stub.WatchDevices(directory_pb2.WatchDevicesRequest(after_sequence=99), timeout=10)
        )
    )
    assert code == grpc.StatusCode.OUT_OF_RANGE
    assert "after_sequence 99 is beyond the newest event (5)" in details


def test_watch_devices_sends_keepalives(harness: Harness) -> None:
    follower = Follower(directory(harness))
    try:
        assert follower.next().kind == Kind.DEVICE_EVENT_KIND_SYNCED
        # The contract: a SYNCED at least every 10 seconds on a quiet stream (margin added).
        keepalive = follower.next(timeout=12)
        assert (keepalive.kind, keepalive.sequence) == (Kind.DEVICE_EVENT_KIND_SYNCED, 0)
    finally:
        follower.close()


def test_fail_revoking_a_service_ends_its_streams(harness: Harness) -> None:
    follower = Follower(directory(harness, "leaving"))
    try:
        assert follower.next().kind == Kind.DEVICE_EVENT_KIND_SYNCED
        revoke_service(harness, "leaving")
        with pytest.raises(grpc.RpcError) as ended:
            while True:
                follower.next(timeout=5)
        assert ended.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        assert ended.value.details() == "service leaving has been revoked"  # type: ignore[attr-defined]
    finally:
        follower.close()


def test_a_stopping_server_ends_its_streams_at_once(tmp_path: Path) -> None:
    """SIGTERM's graceful stop does not wait out its grace period for WatchDevices streams,
    which never end on their own: they end with UNAVAILABLE, to resume elsewhere."""
    harness = start_harness(tmp_path)
    follower = Follower(directory(harness))
    assert follower.next().kind == Kind.DEVICE_EVENT_KIND_SYNCED
    stopping = threading.Thread(target=harness.server.stop, kwargs={"grace": 60})
    stopping.start()
    with pytest.raises(grpc.RpcError) as ended:
        follower.next(timeout=20)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert ended.value.details() == "the server is stopping: watch again after sequence 0"  # type: ignore[attr-defined]
    stopping.join(timeout=30)
    assert not stopping.is_alive()  # well within the 60 s grace


def test_tags_of_the_token_ride_in_events_and_checks(on_both: Harness) -> None:
    """A relying service can authorize by tag from the directory as from the certificate."""
    harness = on_both
    stub = directory(harness)
    secret = harness.create_token(tags=["web", "prod"]).secret
    enrolled, _ = harness.enroll(secret, hostname="tagged")
    follower = Follower(stub)
    try:
        entry = follower.next()
        assert (entry.kind, entry.device_id, list(entry.tags)) == (
            Kind.DEVICE_EVENT_KIND_CURRENT,
            enrolled.device_id,
            ["prod", "web"],
        )
    finally:
        follower.close()
    resumed = Follower(stub, after=0)
    try:
        event = resumed.next()
        assert (event.kind, list(event.tags)) == (Kind.DEVICE_EVENT_KIND_ENROLLED, ["prod", "web"])
    finally:
        resumed.close()
    reply = stub.CheckCertificate(
        directory_pb2.CheckCertificateRequest(certificate_pem=enrolled.certificate_pem), timeout=10
    )
    assert (reply.valid, list(reply.device.tags)) == (True, ["prod", "web"])
