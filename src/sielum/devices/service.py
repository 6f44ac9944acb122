"""What an enrolled device may do: report that it is alive, renew its certificate, unenroll."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from sielum.ca.authority import CertificateAuthority, IssuedCertificate
from sielum.ca.profile import load_checked_csr, public_key_sha256
from sielum.clock import Clock
from sielum.devices import policy as devices
from sielum.devices.lastseen import LastSeen
from sielum.devices.ratelimit import HeartbeatLimit, HeartbeatLimiter
from sielum.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RenewalRefusedError,
    SielumError,
)
from sielum.identity import Identity
from sielum.logs import log_event
from sielum.model import AuditEvent, Device, DeviceEventKind, DeviceStanding
from sielum.recorder import CertificateKind, NoRecorder, Recorder
from sielum.store.store import Store

log = logging.getLogger("sielum.agent")

KEY_ALREADY_CERTIFIED = "the CSR's key is already certified: a renewal must certify a new key"


@dataclass(frozen=True)
class Heartbeat:
    device_id: str
    server_time: datetime
    not_after: datetime
    renew_after: datetime
    heartbeat_interval: timedelta


class DeviceService:
    """Heartbeat and renewal for the device whose certificate made the call."""

    def __init__(
        self,
        store: Store,
        ca: CertificateAuthority,
        clock: Clock,
        recorder: Recorder | None = None,
        *,
        heartbeat_interval: timedelta = devices.DEFAULT_HEARTBEAT_INTERVAL,
        last_seen: LastSeen | None = None,
        heartbeat_limit: HeartbeatLimit | None = None,
    ) -> None:
        self._store = store
        # Written in batches by whoever wires the service (server/app.py flushes it).
        self.last_seen = last_seen if last_seen is not None else LastSeen(store)
        self._heartbeats = HeartbeatLimiter(heartbeat_limit or HeartbeatLimit())
        self._ca = ca
        self._clock = clock
        self._recorder: Recorder = recorder or NoRecorder()
        self._pace = devices.renewal_pace(ca.device_ttl)
        self._heartbeat_interval = devices.check_heartbeat_interval(heartbeat_interval)

    @property
    def heartbeat_interval(self) -> timedelta:
        """The interval every heartbeat's answer advises."""
        return self._heartbeat_interval

    def _standing(self, device_id: str) -> DeviceStanding:
        try:
            return self._store.get_device_standing(device_id)
        except NotFoundError:
            raise PermissionDeniedError("device is not enrolled") from None

    def check_may_call(self, caller: Identity) -> None:
        """The authorizer's gate for device calls: one indexed lookup per call.

        Refuses a revoked device, and a certificate that a renewal superseded once
        the new one has been used (devices/policy.py). The first call with a new
        certificate retires the previous one: the only call of the gate that writes.
        A certificate issued after the one the database names as current (a
        database restored from a backup) becomes current instead of being refused.
        """
        now = self._clock.now()
        standing = self._standing(caller.name)
        if standing.revoked_at is None and not devices.is_honoured(standing, caller.serial, now):
            if self._adopt_lost_renewal(caller):
                return
            standing = self._standing(caller.name)  # another worker may have adopted it
        devices.check_may_call(standing, caller.serial, now)
        if devices.retires_previous(standing, caller.serial, now):
            if self._store.retire_previous_certificate(caller.name, caller.serial, now):
                log_event(
                    log,
                    "retire",
                    outcome="ok",
                    device=caller.name,
                    serial=caller.serial,
                    previous=standing.previous_serial or "",
                )
            else:
                # Another worker retired it first, or a renewal from the previous
                # certificate replaced this one in between: judge the row as it is now.
                devices.check_may_call(self._standing(caller.name), caller.serial, now)

    def _adopt_lost_renewal(self, caller: Identity) -> bool:
        """Take caller's certificate as current if the database lost the renewal that made it.

        Only on a call the gate would refuse, so the common path never reads the
        certificate. The adopted certificate is the newest this CA made for the
        device that anyone has used since; one made earlier stays refused.
        """
        if caller.not_before is None or caller.not_after is None or not caller.certificate_pem:
            return False
        device = self._store.get_device(caller.name)
        try:
            current = x509.load_pem_x509_certificate(device.certificate_pem.encode())
        except ValueError:
            return False
        if not devices.is_lost_renewal(caller.not_before, current.not_valid_before_utc):
            return False
        now = self._clock.now()
        try:
            adopted = self._store.adopt_certificate(
                caller.name,
                current_serial=device.serial,
                serial=caller.serial,
                public_key_sha256=caller.public_key_sha256,
                certificate_pem=caller.certificate_pem,
                not_after=caller.not_after,
                audit=AuditEvent(
                    at=now,
                    actor=f"device/{caller.name}",
                    action="device.adopt",
                    resource=f"device/{caller.name}",
                    detail=f"serial={caller.serial} previous={device.serial}: issued after "
                    "the certificate the database held (a restored backup)",
                ),
            )
        except AlreadyExistsError:
            return False
        if adopted:
            log_event(
                log,
                "adopt",
                level=logging.WARNING,
                outcome="ok",
                device=caller.name,
                serial=caller.serial,
                previous=device.serial,
            )
        return adopted

    def heartbeat(self, device_id: str, not_before: datetime, not_after: datetime) -> Heartbeat:
        """Only reads: the gate read the device's standing; last_seen_at is noted in memory."""
        self._heartbeats.check(device_id)
        now = self._clock.now()
        self.last_seen.seen(device_id, now)
        return Heartbeat(
            device_id=device_id,
            server_time=now,
            not_after=not_after,
            renew_after=devices.renew_after(not_before, not_after),
            heartbeat_interval=self._heartbeat_interval,
        )

    def renew(self, caller: Identity, csr_pem: str, peer: str) -> IssuedCertificate:
        device_id = caller.name
        try:
            issued = self._renew(caller, csr_pem, peer)
        except SielumError as error:
            log_event(
                log,
                "renew",
                level=logging.WARNING,
                outcome=error.code.name.lower(),
                reason=error.message,
                device=device_id,
                peer=peer,
            )
            raise
        self._recorder.certificate_issued(CertificateKind.RENEWAL)
        log_event(
            log,
            "renew",
            outcome="ok",
            device=device_id,
            serial=issued.serial,
            previous=caller.serial,
            peer=peer,
        )
        return issued

    def _renew(self, caller: Identity, csr_pem: str, peer: str) -> IssuedCertificate:
        device_id = caller.name
        # Checked once here; sign_device takes the CheckedCsr without verifying again.
        csr = load_checked_csr(csr_pem)
        key_hash = public_key_sha256(csr.public_key)
        # A renewal rotates the key: the caller's own key (current or previous
        # certificate) and any key enrolled as a device are refused.
        if (
            key_hash == caller.public_key_sha256
            or self._store.find_device_by_key(key_hash) is not None
        ):
            raise InvalidArgumentError(KEY_ALREADY_CERTIFIED)
        now = self._clock.now()
        # Judged before signing, so a paced device cannot make the CA sign in a loop;
        # the UPDATE judges again, atomically.
        standing = self._standing(device_id)
        devices.check_may_call(standing, caller.serial, now)
        devices.check_renewal_pace(standing, self._pace, now)
        # A renewed certificate carries the tags the device enrolled with, as the first did.
        tags = self._store.get_device(device_id).tags
        issued = self._ca.sign_device(csr, device_id, now, tags)
        try:
            self._store.renew_device(
                device_id,
                caller_serial=caller.serial,
                public_key_sha256=key_hash,
                serial=issued.serial,
                certificate_pem=issued.certificate_pem,
                not_after=issued.not_after,
                now=now,
                pace=self._pace,
                audit=AuditEvent(
                    at=now,
                    actor=f"device/{device_id}",
                    action="device.renew",
                    resource=f"device/{device_id}",
                    peer=peer,
                    detail=f"serial={issued.serial} previous={caller.serial}",
                ),
            )
        except AlreadyExistsError:
            # The same key enrolled or renewed elsewhere since the check above.
            raise InvalidArgumentError(KEY_ALREADY_CERTIFIED) from None
        except RenewalRefusedError:
            # Another call revoked, renewed or spent the pace since the check above:
            # say which, from the device as it is now.
            standing = self._standing(device_id)
            devices.check_may_call(standing, caller.serial, now)
            devices.check_renewal_pace(standing, self._pace, now)
            raise
        return issued

    def unenroll(self, device_id: str, peer: str) -> Device:
        """The device ends its own enrollment: revoked from its next call, like an admin's revoke.

        `sielum-agent enroll --force` calls it with the certificate it replaces, so a
        re-enrolled machine does not stay listed as a second active device.
        """
        now = self._clock.now()
        device = self._store.revoke_device(
            device_id,
            now,
            AuditEvent(
                at=now,
                actor=f"device/{device_id}",
                action="device.unenroll",
                resource=f"device/{device_id}",
                peer=peer,
            ),
            kind=DeviceEventKind.UNENROLLED,
            # The device ended its own use of its certificates (RFC 5280 section 5.3.1).
            reason=x509.ReasonFlags.cessation_of_operation.value,
        )
        log_event(log, "unenroll", outcome="ok", device=device_id, peer=peer)
        return device

    @property
    def ca_certificate_pem(self) -> str:
        return self._ca.certificate_pem
