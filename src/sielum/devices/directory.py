"""What the directory tells other services: where a device certificate stands, and what to trust.

DirectoryService/CheckCertificate answers with Directory.check (one certificate, now);
WatchDevices streams the device event log (devices/feed.py); GetTrustBundle lists the CA.
Every answer is the device gate's own rule (devices/policy.py), so that a relying
service refuses exactly what Sielum refuses.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from sielum.ca.profile import DEVICE_ROLE, fingerprint, role_of
from sielum.clock import Clock
from sielum.devices import policy as devices
from sielum.errors import InvalidArgumentError, NotFoundError
from sielum.model import Device, DeviceStanding
from sielum.store.store import Store

MAX_CERTIFICATE_PEM = 16 * 1024  # a device certificate is about 700 bytes


class CertificateStatus(enum.IntEnum):
    """Where a certificate stands (the values are sielum.directory.v1.CertificateStatus's)."""

    CURRENT = 1
    SUPERSEDED = 2
    REVOKED = 3
    EXPIRED = 4
    UNKNOWN = 5


@dataclass(frozen=True)
class CertificateCheck:
    status: CertificateStatus
    device: Device | None = None  # None for UNKNOWN
    standing: DeviceStanding | None = None

    @property
    def valid(self) -> bool:
        return self.status is CertificateStatus.CURRENT


@dataclass(frozen=True)
class TrustedCa:
    certificate_pem: str
    fingerprint: str


class Directory:
    """Answers for one CA: the certificates it signed for devices, judged as the gate would."""

    def __init__(self, store: Store, ca_certificate: x509.Certificate, clock: Clock) -> None:
        self._store = store
        self._ca = ca_certificate
        self._clock = clock
        self._bundle = (
            TrustedCa(
                certificate_pem=ca_certificate.public_bytes(serialization.Encoding.PEM).decode(
                    "ascii"
                ),
                fingerprint=fingerprint(ca_certificate),
            ),
        )

    def trust_bundle(self) -> tuple[TrustedCa, ...]:
        """The CA whose device certificates the directory speaks of (one: this server's)."""
        return self._bundle

    def check(self, certificate_pem: str) -> CertificateCheck:
        """Where the certificate stands now; first match wins: UNKNOWN, REVOKED, EXPIRED,
        SUPERSEDED, CURRENT (tests/rpc/test_directory.py::test_check_certificate_*).

        CURRENT exactly when the API would accept it on its next call: the device's
        current certificate, the previous one until the current one is first used, or a
        newer one the database lost (a restored backup), which the gate would adopt.
        """
        if not certificate_pem.strip():
            raise InvalidArgumentError("certificate_pem is required")
        if len(certificate_pem) > MAX_CERTIFICATE_PEM:
            raise InvalidArgumentError(
                f"certificate_pem is longer than {MAX_CERTIFICATE_PEM} characters"
            )
        certificate = self._ours(certificate_pem)
        found = None if certificate is None else role_of(certificate)
        if certificate is None or found is None or found[0] != DEVICE_ROLE:
            return CertificateCheck(CertificateStatus.UNKNOWN)
        try:
            standing = self._store.get_device_standing(found[1])
            device = self._store.get_device(found[1])
        except NotFoundError:
            return CertificateCheck(CertificateStatus.UNKNOWN)
        return CertificateCheck(
            _status(certificate, device, standing, self._clock.now()), device, standing
        )

    def _ours(self, certificate_pem: str) -> x509.Certificate | None:
        """The first certificate of the PEM if this CA signed it, else None."""
        try:
            certificate = x509.load_pem_x509_certificate(certificate_pem.encode("utf-8"))
            certificate.verify_directly_issued_by(self._ca)
        except (ValueError, TypeError, InvalidSignature, UnicodeEncodeError):
            return None
        return certificate


def _status(
    certificate: x509.Certificate, device: Device, standing: DeviceStanding, now: datetime
) -> CertificateStatus:
    serial = format(certificate.serial_number, "x")
    if standing.revoked_at is not None:
        return CertificateStatus.REVOKED
    if not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc:
        return CertificateStatus.EXPIRED
    if devices.is_honoured(standing, serial, now):
        return CertificateStatus.CURRENT
    if serial != standing.serial and _newer_than_current(certificate, device):
        return CertificateStatus.CURRENT  # the gate adopts it on its first call
    return CertificateStatus.SUPERSEDED


def _newer_than_current(certificate: x509.Certificate, device: Device) -> bool:
    try:
        current = x509.load_pem_x509_certificate(device.certificate_pem.encode("ascii"))
    except ValueError:
        return False
    return devices.is_lost_renewal(certificate.not_valid_before_utc, current.not_valid_before_utc)
