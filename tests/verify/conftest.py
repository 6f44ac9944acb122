"""A throwaway CA, and a real DirectoryService on loopback playing a scripted event log."""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf.timestamp_pb2 import Timestamp

from sielum.ca import profile
from sielum.directory.v1 import directory_pb2, directory_pb2_grpc
from sielum.verify import Backoff, DeviceVerifier

Kind = directory_pb2.DeviceEventKind
NOW = datetime.now(UTC).replace(microsecond=0)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@dataclass
class Issued:
    """A key and the certificate a CA made for it."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def pem(self) -> bytes:
        return pem(self.certificate)

    @property
    def serial(self) -> str:
        return format(self.certificate.serial_number, "x")


class TestCA:
    """A CA as Sielum makes one (sielum.ca.profile), issuing real device certificates."""

    __test__ = False

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = profile.self_signed_ca_certificate(key=self.key, now=NOW)

    @property
    def pem(self) -> bytes:
        return pem(self.certificate)

    def device(
        self, device_id: str, ttl: timedelta = timedelta(days=90), now: datetime = NOW
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = profile.device_certificate(
            public_key=key.public_key(),
            device_id=device_id,
            ca_certificate=self.certificate,
            ca_key=self.key,
            serial=x509.random_serial_number(),
            now=now,
            ttl=ttl,
        )
        return Issued(key, certificate)

    def server(self) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = profile.server_certificate(
            public_key=key.public_key(),
            sans=profile.server_sans(),
            ca_certificate=self.certificate,
            ca_key=self.key,
            serial=x509.random_serial_number(),
            now=NOW,
        )
        return Issued(key, certificate)

    def service(self, name: str) -> Issued:
        """A service certificate as `sielum-admin services create` would make it."""
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(minutes=5))
            .not_valid_after(NOW + timedelta(days=365))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"sielum://service/{name}")]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Issued(key, certificate)

    def service_dir(self, directory: Path, name: str = "billing") -> Path:
        issued = self.service(name)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca.pem").write_bytes(self.pem)
        (directory / "service.pem").write_bytes(issued.pem)
        (directory / "service.key").write_bytes(key_pem(issued.key))
        return directory


def timestamp(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


_DISCONNECT = object()


@dataclass
class FakeDirectory(directory_pb2_grpc.DirectoryServiceServicer):
    """DirectoryService as the contract in directory.proto states it, over a log the test writes.

    Knobs for faults: `refuse` fails every WatchDevices with that code; `pruned_before`
    answers OUT_OF_RANGE to an after_sequence below it; `overlap` replays that many
    events the subscriber already holds, which it must ignore.
    """

    log: list[directory_pb2.WatchDevicesResponse] = field(default_factory=list)
    devices: dict[str, directory_pb2.WatchDevicesResponse] = field(default_factory=dict)
    requests: list[directory_pb2.WatchDevicesRequest] = field(default_factory=list)
    refuse: grpc.StatusCode | None = None
    pruned_before: int = 0
    overlap: int = 0
    _streams: list[queue.Queue[object]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sequence: int = 0

    # The script

    def publish(self, kind: int, device_id: str, serial: str = "", **fields: object) -> int:
        """Appends an event (sequences step by 3: not consecutive) and sends it live."""
        with self._lock:
            self._sequence += 3
            event = directory_pb2.WatchDevicesResponse(
                sequence=self._sequence,
                at=timestamp(datetime.now(UTC)),
                kind=kind,  # type: ignore[arg-type]
                device_id=device_id,
                serial=serial,
                **fields,  # type: ignore[arg-type]
            )
            self.log.append(event)
            if kind in (Kind.DEVICE_EVENT_KIND_REVOKED, Kind.DEVICE_EVENT_KIND_UNENROLLED):
                self.devices.pop(device_id, None)
            else:
                self.devices[device_id] = event
            for stream in self._streams:
                stream.put(event)
            return self._sequence

    def enroll(self, device_id: str, issued: Issued, tags: tuple[str, ...] = ()) -> int:
        return self.publish(
            Kind.DEVICE_EVENT_KIND_ENROLLED,
            device_id,
            issued.serial,
            hostname=f"{device_id}.lan",
            tags=tags,
        )

    def renew(
        self, device_id: str, new: Issued, previous: Issued | None, until: datetime | None = None
    ) -> int:
        fields: dict[str, object] = {"hostname": f"{device_id}.lan"}
        if previous is not None:
            fields["previous_serial"] = previous.serial
        if until is not None:
            fields["previous_until"] = timestamp(until)
        return self.publish(Kind.DEVICE_EVENT_KIND_RENEWED, device_id, new.serial, **fields)

    def revoke(self, device_id: str) -> int:
        return self.publish(Kind.DEVICE_EVENT_KIND_REVOKED, device_id)

    def keepalive(self) -> None:
        with self._lock:
            for stream in self._streams:
                stream.put(self._synced())

    def disconnect(self) -> None:
        """Ends every open stream with UNAVAILABLE, as a server restart would."""
        with self._lock:
            for stream in self._streams:
                stream.put(_DISCONNECT)

    @property
    def open_streams(self) -> int:
        with self._lock:
            return len(self._streams)

    def _synced(self) -> directory_pb2.WatchDevicesResponse:
        return directory_pb2.WatchDevicesResponse(
            sequence=self._sequence,
            at=timestamp(datetime.now(UTC)),
            kind=Kind.DEVICE_EVENT_KIND_SYNCED,
        )

    # The service

    def WatchDevices(
        self, request: directory_pb2.WatchDevicesRequest, context: grpc.ServicerContext
    ) -> Iterator[directory_pb2.WatchDevicesResponse]:
        self.requests.append(request)
        if self.refuse is not None:
            context.abort(self.refuse, "directory refuses")
        stream: queue.Queue[object] = queue.Queue()
        with self._lock:
            if not request.HasField("after_sequence"):
                first = [
                    directory_pb2.WatchDevicesResponse(
                        sequence=event.sequence,
                        at=event.at,
                        kind=Kind.DEVICE_EVENT_KIND_CURRENT,
                        device_id=event.device_id,
                        serial=event.serial,
                        previous_serial=event.previous_serial,
                        previous_until=event.previous_until
                        if event.HasField("previous_until")
                        else None,
                        hostname=event.hostname,
                        tags=event.tags,
                    )
                    for event in self.devices.values()
                ]
            else:
                after = request.after_sequence
                if after < self.pruned_before or after > self._sequence:
                    context.abort(grpc.StatusCode.OUT_OF_RANGE, f"no events after {after} here")
                start = next(
                    (i for i, e in enumerate(self.log) if e.sequence > after), len(self.log)
                )
                first = list(self.log[max(0, start - self.overlap) :])
            first.append(self._synced())
            self._streams.append(stream)
        try:
            yield from first
            while context.is_active():
                try:
                    item = stream.get(timeout=0.05)
                except queue.Empty:
                    continue
                if item is _DISCONNECT:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "forced disconnect")
                yield item  # type: ignore[misc]
        finally:
            with self._lock:
                self._streams.remove(stream)


@dataclass
class Directory:
    """The fake directory serving on loopback, and what a verifier needs to reach it."""

    fake: FakeDirectory
    server: grpc.Server
    target: str
    ca: TestCA
    cert_dir: Path

    def verifier(self, **options: object) -> DeviceVerifier:
        options.setdefault("backoff", Backoff(initial=0.01, maximum=0.05))
        return DeviceVerifier(self.target, self.cert_dir, **options)  # type: ignore[arg-type]


def serve_directory(ca: TestCA, cert_dir: Path) -> Directory:
    fake = FakeDirectory()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    directory_pb2_grpc.add_DirectoryServiceServicer_to_server(fake, server)
    issued = ca.server()
    credentials = grpc.ssl_server_credentials(
        [(key_pem(issued.key), issued.pem)], root_certificates=ca.pem, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return Directory(fake, server, f"127.0.0.1:{port}", ca, cert_dir)


@pytest.fixture
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def directory(ca: TestCA, tmp_path: Path) -> Iterator[Directory]:
    served = serve_directory(ca, ca.service_dir(tmp_path / "service"))
    try:
        yield served
    finally:
        served.server.stop(grace=None)


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Waits for predicate to hold; fails if it never does within timeout (no timing asserted)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.01)


class FakeMonotonic:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def new_id() -> str:
    return "dev-" + secrets.token_hex(4)
