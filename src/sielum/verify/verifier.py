"""DeviceVerifier: follows WatchDevices into an index; checks device certificates in µs."""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from sielum.directory.v1 import directory_pb2_grpc
from sielum.verify.certificates import (
    Certificate,
    DeviceCertificate,
    load_credentials,
    read_device_certificate,
)
from sielum.verify.errors import (
    CertificateExpiredError,
    CertificateSupersededError,
    DeviceRevokedError,
    DirectoryUnavailableError,
    NoCertificateError,
    NotADeviceCertificateError,
    VerifyError,
)
from sielum.verify.index import DeviceRecord, Index, Stream

log = logging.getLogger("sielum.verify")

REVOKED = "device has been revoked"  # Sielum's own words (sielum.devices.policy)
SUPERSEDED = "this certificate has been superseded by a renewal; use the device's current one"
EXPIRED = "device certificate has expired or is not yet valid"
NO_CERTIFICATE = "a client certificate from the Sielum CA is required"


@dataclass(frozen=True)
class Backoff:
    """Reconnection delays: exponential, capped, with full jitter.

    Full jitter spreads a fleet of services that lost the directory at the same
    moment, so they do not all come back in the same second.
    """

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before reconnection attempt `attempt` (0 for the first)."""
        ceiling = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        return rng.uniform(0, ceiling)


@dataclass(frozen=True)
class VerifierStatus:
    """The verifier's health, for logs, a health check or a metrics exporter."""

    healthy: bool  # synced, and heard from within max_staleness: check() can admit
    staleness_seconds: float  # since the directory last confirmed the index; inf before that
    sequence: int | None  # the last sequence applied; None before the first snapshot
    devices: int
    events_applied: int
    events_ignored: int  # seen twice (a replay overlapping what was applied), not applied
    reconnects: int
    connected: bool  # a WatchDevices stream is open
    last_error: str  # why the last stream ended, empty before any did


class GrpcContext(Protocol):
    """What the verifier reads of a call's context (grpc and grpc.aio alike)."""

    def auth_context(self) -> Mapping[str, Any]: ...


class DeviceVerifier:
    """Accepts exactly the device certificates Sielum accepts, from an index kept current.

    check() is a dict lookup on a certificate parsed once (cached by its bytes), the
    validity period, and the device's honoured serials. The index follows
    WatchDevices in a background thread, resuming from the last sequence applied.
    It fails closed: before the first snapshot, or when the directory has not
    confirmed the index for max_staleness seconds, every certificate is refused.
    """

    def __init__(
        self,
        server: str,
        cert_dir: str | Path,
        *,
        max_staleness: float = 30.0,
        cache_size: int = 100_000,
        backoff: Backoff | None = None,
        on_status_change: Callable[[VerifierStatus], None] | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        """server is HOST:PORT of Sielum's API port; cert_dir holds ca.pem and service.pem/.key.

        clock (seconds since the epoch) judges certificate validity; monotonic measures
        staleness. Both are injectable, for tests.
        """
        if max_staleness <= 0:
            raise ValueError("max_staleness must be positive")
        self._server = server
        self._credentials = load_credentials(cert_dir)
        self._anchors = self._credentials.anchors()
        if not self._anchors:
            raise ValueError(f"{cert_dir}: ca.pem holds no certificate")
        self._max_staleness = max_staleness
        self._cache_size = cache_size
        self._backoff = backoff or Backoff()
        self._on_status_change = on_status_change
        self._channel_options = tuple(channel_options)
        self._clock = clock
        self._monotonic = monotonic
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret

        self._index = Index()
        # Parsed certificates and cached refusals (their message), oldest first. Bounded:
        # a peer presenting ever new certificates must not grow it without end.
        self._cache: OrderedDict[Certificate, DeviceCertificate | str] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._fresh_at: float | None = None  # monotonic; when the index was last confirmed
        self._heard_at = 0.0  # monotonic; the last message on the open stream
        self._changed = threading.Condition()
        self._lock = threading.Lock()
        self._call: Any = None
        self._reconnects = 0
        self._last_error = ""
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._channel: grpc.Channel | None = None

    # Lifecycle

    def start(self) -> DeviceVerifier:
        """Opens the channel and starts following the directory in the background."""
        if self._threads:
            raise RuntimeError("DeviceVerifier already started")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self._credentials.ca_pem,
            private_key=self._credentials.key_pem,
            certificate_chain=self._credentials.certificate_pem,
        )
        self._channel = grpc.secure_channel(self._server, credentials, self._channel_options)
        self._stub = directory_pb2_grpc.DirectoryServiceStub(self._channel)
        self._threads = [
            threading.Thread(target=self._follow, name="sielum-verify-follow", daemon=True),
            threading.Thread(target=self._watch, name="sielum-verify-watch", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ends the stream and the background threads; check() refuses everything afterwards."""
        self._stopping.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()
        for thread in self._threads:
            thread.join(timeout)
        if self._channel is not None:
            self._channel.close()
        self._fresh_at = None

    def __enter__(self) -> DeviceVerifier:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Waits until the index is synced and fresh; False if timeout passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: self.healthy, timeout)

    # Checking

    def check(self, certificate: Certificate) -> bool:
        """True exactly when verify() accepts the certificate."""
        try:
            self.verify(certificate)
        except VerifyError:
            return False
        return True

    def verify(self, certificate: Certificate) -> DeviceRecord:
        """The device whose certificate this is, if Sielum would accept it now.

        Raises a VerifyError saying why not. In Sielum's order: not a device
        certificate of the pinned CA; the directory stale (UNAVAILABLE); the device
        revoked; the certificate expired; superseded by a renewal.
        """
        facts = self._cache.get(certificate)
        if facts is None:
            facts = self._read(certificate)
        if isinstance(facts, str):
            raise NotADeviceCertificateError(facts)
        fresh_at = self._fresh_at
        if fresh_at is None or self._monotonic() - fresh_at > self._max_staleness:
            raise DirectoryUnavailableError(self._unavailable())
        record = self._index.devices.get(facts.device_id)
        if record is None:
            raise DeviceRevokedError(REVOKED)
        now = self._clock()
        if not facts.not_before <= now <= facts.not_after:
            raise CertificateExpiredError(EXPIRED)
        if not record.honours(facts.serial, now):
            raise CertificateSupersededError(SUPERSEDED)
        return record

    def caller(self, context: GrpcContext) -> DeviceRecord:
        """The device calling on this gRPC call, from the client certificate TLS verified.

        Raises NoCertificateError without one, or what verify() raises.
        """
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            raise NoCertificateError(NO_CERTIFICATE)
        return self.verify(pems[0])

    def _read(self, certificate: Certificate) -> DeviceCertificate | str:
        facts: DeviceCertificate | str
        try:
            facts = read_device_certificate(certificate, self._anchors)
        except NotADeviceCertificateError as error:
            facts = error.message
        with self._cache_lock:
            self._cache[certificate] = facts
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return facts

    def _unavailable(self) -> str:
        if self._fresh_at is None:
            return "the device directory is not synced yet; try again shortly"
        return (
            f"the device directory has not confirmed its index for over "
            f"{self._max_staleness:g} s; device certificates are refused until it does"
        )

    # Health

    @property
    def healthy(self) -> bool:
        """Synced, and confirmed by the directory within max_staleness: check() can admit."""
        fresh_at = self._fresh_at
        return fresh_at is not None and self._monotonic() - fresh_at <= self._max_staleness

    def status(self) -> VerifierStatus:
        """A snapshot of the verifier's health; staleness_seconds is the figure to export."""
        fresh_at = self._fresh_at
        staleness = math.inf if fresh_at is None else max(0.0, self._monotonic() - fresh_at)
        return VerifierStatus(
            healthy=staleness <= self._max_staleness,
            staleness_seconds=staleness,
            sequence=self._index.sequence,
            devices=len(self._index.devices),
            events_applied=self._index.applied,
            events_ignored=self._index.ignored,
            reconnects=self._reconnects,
            connected=self._call is not None,
            last_error=self._last_error,
        )

    # The background threads

    def _follow(self) -> None:
        """Reads WatchDevices into the index; after a failure, reconnects with backoff."""
        attempt = 0
        while not self._stopping.is_set():
            request = self._index.request()
            stream = Stream(self._index)
            ended = "the directory ended the stream"
            try:
                call = self._stub.WatchDevices(request)
                with self._lock:
                    self._call, self._heard_at = call, self._monotonic()
                if self._stopping.is_set():
                    call.cancel()
                for event in call:
                    self._heard_at = self._monotonic()
                    if stream.receive(event):
                        self._confirm()
                        attempt = 0
            except grpc.RpcError as error:
                code = error.code()
                if code == grpc.StatusCode.OUT_OF_RANGE:
                    # The server no longer holds our position: start over from a snapshot.
                    self._index.forget_position()
                ended = f"{code.name}: {error.details()}"
            except Exception as error:
                # A bug must not end the thread silently: the index would go stale for good.
                log.exception("following the device directory failed")
                ended = f"{type(error).__name__}"
            finally:
                with self._lock:
                    self._call = None
            if self._stopping.is_set():
                return
            delay = self._backoff.delay(attempt, self._rng)
            attempt += 1
            self._reconnects += 1
            self._last_error = ended
            log.warning(
                "device directory stream to %s ended (%s); reconnecting in %.1f s from %s",
                self._server,
                ended,
                delay,
                "a snapshot" if self._index.sequence is None else f"after {self._index.sequence}",
            )
            self._stopping.wait(delay)

    def _confirm(self) -> None:
        with self._changed:
            self._fresh_at = self._monotonic()
            self._changed.notify_all()

    def _watch(self) -> None:
        """Logs and reports when the index goes stale or recovers; cancels a silent stream.

        A stream that has said nothing (not even the server's keepalive, a SYNCED every
        10 s at most) for half of max_staleness is likely a dead connection: it is
        cancelled, and the follower reconnects before the index goes stale.
        """
        tick = min(1.0, self._max_staleness / 4)
        started = self._monotonic()
        was_healthy, warned = False, False
        while not self._stopping.wait(tick):
            status = self.status()
            if status.healthy != was_healthy:
                was_healthy = status.healthy
                if was_healthy:
                    log.info("device directory synced: %d devices", status.devices)
                else:
                    warned = True
                    log.warning(
                        "device directory stale for %.0f s (max %g s): refusing every device "
                        "certificate until it recovers (%s)",
                        status.staleness_seconds,
                        self._max_staleness,
                        status.last_error or "no error",
                    )
                self._report(status)
            elif not warned and self._monotonic() - started > self._max_staleness:
                warned = True
                log.warning(
                    "device directory not synced after %g s: refusing every device "
                    "certificate until it is (%s)",
                    self._max_staleness,
                    status.last_error or "no answer yet",
                )
            with self._lock:
                call, heard_at = self._call, self._heard_at
            if call is not None and self._monotonic() - heard_at > self._max_staleness / 2:
                log.warning("device directory stream silent; reconnecting")
                call.cancel()

    def _report(self, status: VerifierStatus) -> None:
        if self._on_status_change is None:
            return
        try:
            self._on_status_change(status)
        except Exception:
            log.exception("on_status_change failed")
