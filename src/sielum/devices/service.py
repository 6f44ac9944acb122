"""What an enrolled device may do: report that it is alive, renew its certificate, unenroll."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sielum.ca.authority import CertificateAuthority, IssuedCertificate
from sielum.ca.profile import load_csr, public_key_sha256
from sielum.clock import Clock
from sielum.devices import policy as devices
from sielum.errors import NotFoundError, PermissionDeniedError, SielumError
from sielum.logs import log_event
from sielum.model import AuditEvent, Device
from sielum.store.store import Store

log = logging.getLogger("sielum.agent")


@dataclass(frozen=True)
class Heartbeat:
    device_id: str
    server_time: datetime
    not_after: datetime
    renew_after: datetime


class DeviceService:
    """Heartbeat and renewal for the device whose certificate made the call."""

    def __init__(self, store: Store, ca: CertificateAuthority, clock: Clock) -> None:
        self._store = store
        self._ca = ca
        self._clock = clock

    def check_may_call(self, device_id: str) -> None:
        """The interceptor's gate for device calls: refuses revoked devices at once."""
        try:
            device = self._store.get_device(device_id)
        except NotFoundError:
            raise PermissionDeniedError("device is not enrolled") from None
        devices.check_may_call(device)

    def heartbeat(self, device_id: str, not_before: datetime, not_after: datetime) -> Heartbeat:
        now = self._clock.now()
        self._store.touch_device(device_id, now)
        return Heartbeat(
            device_id=device_id,
            server_time=now,
            not_after=not_after,
            renew_after=devices.renew_after(not_before, not_after),
        )

    def renew(self, device_id: str, csr_pem: str, peer: str) -> IssuedCertificate:
        try:
            csr = load_csr(csr_pem)
            now = self._clock.now()
            issued = self._ca.sign_device(csr, device_id, now)
            self._store.renew_device(
                device_id,
                public_key_sha256=public_key_sha256(csr.public_key()),
                serial=issued.serial,
                certificate_pem=issued.certificate_pem,
                not_after=issued.not_after,
                now=now,
                audit=AuditEvent(
                    at=now,
                    actor=f"device/{device_id}",
                    action="device.renew",
                    resource=f"device/{device_id}",
                    peer=peer,
                    detail=f"serial={issued.serial}",
                ),
            )
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
        log_event(log, "renew", outcome="ok", device=device_id, serial=issued.serial, peer=peer)
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
        )
        log_event(log, "unenroll", outcome="ok", device=device_id, peer=peer)
        return device

    @property
    def ca_certificate_pem(self) -> str:
        return self._ca.certificate_pem
