"""What the directory tells other services: where a device certificate stands, and what to trust.

DirectoryService/CheckCertificate answers with Directory.check (one certificate, now);
WatchDevices streams the device event log (devices/feed.py); GetTrustBundle lists the CA.
Every answer is the device gate's own rule (devices/policy.py), so that a relying
service refuses exactly what Sielum refuses.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from sielum.ca.profile import DEVICE_ROLE, fingerprint, role_of
from sielum.clock import Clock
from sielum.devices import policy as devices
from sielum.errors import InvalidArgumentError, NotFoundError
from sielum.model import DeviceStanding
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
    device: DeviceStanding | None = None  # with hostname and not_after; None for UNKNOWN

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
        if certificate is None:
            return CertificateCheck(CertificateStatus.UNKNOWN)
        try:
            standing = self._store.get_directory_entry(certificate.device_id)
        except NotFoundError:
            return CertificateCheck(CertificateStatus.UNKNOWN)
        return CertificateCheck(self._status(certificate, standing, self._clock.now()), standing)

    def _ours(self, certificate_pem: str) -> _DeviceCertificate | None:
        """The device certificate of the PEM if this CA signed it, else None.

        Parsed and verified once per distinct PEM: a relying service asks about the same
        few certificates again and again, and the answer depends only on the bytes.
        """
        return _read_device_certificate(certificate_pem, self._ca)

    def _status(
        self, certificate: _DeviceCertificate, standing: DeviceStanding, now: datetime
    ) -> CertificateStatus:
        if standing.revoked_at is not None:
            return CertificateStatus.REVOKED
        if not certificate.not_before <= now < certificate.not_after:
            return CertificateStatus.EXPIRED
        if devices.is_honoured(standing, certificate.serial, now):
            return CertificateStatus.CURRENT
        if certificate.serial != standing.serial and self._newer_than_current(certificate):
            return CertificateStatus.CURRENT  # the gate adopts it on its first call
        return CertificateStatus.SUPERSEDED

    def _newer_than_current(self, certificate: _DeviceCertificate) -> bool:
        """A certificate issued after the one the database holds (a restored backup)."""
        device = self._store.get_device(certificate.device_id)
        try:
            current = x509.load_pem_x509_certificate(device.certificate_pem.encode("ascii"))
        except ValueError:
            return False
        return devices.is_lost_renewal(certificate.not_before, current.not_valid_before_utc)


@dataclass(frozen=True)
class _DeviceCertificate:
    device_id: str
    serial: str
    not_before: datetime
    not_after: datetime


@functools.lru_cache(maxsize=4096)
def _read_device_certificate(pem: str, ca: x509.Certificate) -> _DeviceCertificate | None:
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode("utf-8"))
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnicodeEncodeError):
        return None
    found = role_of(certificate)
    if found is None or found[0] != DEVICE_ROLE:
        return None
    return _DeviceCertificate(
        device_id=found[1],
        serial=format(certificate.serial_number, "x"),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
    )
