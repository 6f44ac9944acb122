"""A device certificate read once: device id, serial and validity, if the pinned CA signed it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from sielum.verify.errors import NotADeviceCertificateError

# Sielum's own rule (sielum.ca.profile.role_of), restated here because this package
# imports nothing of the server: one role URI, and a name of URI-unreserved characters.
_ROLE_URI = re.compile(r"sielum://(admin|service|device)/(.*)", re.DOTALL)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# File names in a certificate directory: `sielum-admin services create --out DIR` writes
# the first pair, `sielum-server issue-admin-cert` and `admins create` the second.
IDENTITY_FILES = (("service.pem", "service.key"), ("admin.pem", "admin.key"))
CA_FILE = "ca.pem"

Certificate = str | bytes | x509.Certificate
"""What check() takes: PEM text, PEM or DER bytes, or a parsed certificate."""


@dataclass(frozen=True, slots=True)
class DeviceCertificate:
    """What a verified device certificate says: kept per certificate, read on every check."""

    device_id: str
    serial: int
    not_before: float  # seconds since the epoch, compared with the clock as floats
    not_after: float


@dataclass(frozen=True)
class Credentials:
    """The service's own identity for mTLS, and the CA certificates it pins."""

    ca_pem: bytes
    certificate_pem: bytes
    key_pem: bytes

    def anchors(self) -> tuple[x509.Certificate, ...]:
        return tuple(x509.load_pem_x509_certificates(self.ca_pem))


def load_credentials(cert_dir: str | Path) -> Credentials:
    """ca.pem and service.pem/service.key (or admin.pem/admin.key) from cert_dir.

    FileNotFoundError names what is missing, so a wrong --out directory is obvious.
    """
    directory = Path(cert_dir)
    for certificate_name, key_name in IDENTITY_FILES:
        if (directory / certificate_name).is_file():
            return Credentials(
                ca_pem=(directory / CA_FILE).read_bytes(),
                certificate_pem=(directory / certificate_name).read_bytes(),
                key_pem=(directory / key_name).read_bytes(),
            )
    names = " or ".join(f"{c} and {k}" for c, k in IDENTITY_FILES)
    raise FileNotFoundError(f"{directory}: holds neither {names} (with {CA_FILE})")


def to_x509(certificate: Certificate) -> x509.Certificate:
    """The certificate parsed, or NotADeviceCertificateError if it is none."""
    if isinstance(certificate, x509.Certificate):
        return certificate
    data = certificate.encode("ascii", "replace") if isinstance(certificate, str) else certificate
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise NotADeviceCertificateError("not a readable X.509 certificate") from None


def read_device_certificate(
    certificate: Certificate, anchors: Sequence[x509.Certificate]
) -> DeviceCertificate:
    """The device certificate's facts, if one of the anchors issued it and it names one device.

    Raises NotADeviceCertificateError otherwise. Validity is not checked here: the
    result is cached per certificate and the clock moves (DeviceVerifier.verify does it).
    """
    parsed = to_x509(certificate)
    if not any(_issued_by(parsed, anchor) for anchor in anchors):
        raise NotADeviceCertificateError("certificate is not issued by the trusted Sielum CA")
    try:
        usage = parsed.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise NotADeviceCertificateError("certificate is not for client authentication")
    return DeviceCertificate(
        device_id=device_id_of(parsed),
        serial=parsed.serial_number,
        not_before=parsed.not_valid_before_utc.timestamp(),
        not_after=parsed.not_valid_after_utc.timestamp(),
    )


def device_id_of(certificate: x509.Certificate) -> str:
    """The id in the certificate's one role URI SAN, sielum://device/<id>.

    Tag URIs (sielum://tag/<tag>) may stand beside it; a second role URI makes the
    certificate ambiguous, and Sielum never issues one.
    """
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise NotADeviceCertificateError("certificate names no Sielum device") from None
    roles = [
        match
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if (match := _ROLE_URI.fullmatch(uri)) is not None
    ]
    if len(roles) != 1 or roles[0].group(1) != "device" or not _NAME.fullmatch(roles[0].group(2)):
        raise NotADeviceCertificateError("certificate names no Sielum device")
    return roles[0].group(2)


def _issued_by(certificate: x509.Certificate, anchor: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(anchor)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
