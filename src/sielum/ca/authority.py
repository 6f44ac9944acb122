"""The signer: holds the CA certificate and key in memory, issues device and admin certificates."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sielum.ca import profile, revocation
from sielum.errors import InvalidArgumentError

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
PASSPHRASE_ENV = "SIELUM_CA_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate just signed, with the values the store records about it."""

    certificate_pem: str
    serial: str
    not_after: datetime


class CertificateAuthority:
    """Signs device and admin certificates with the CA key.

    Safe to call from many threads at once without a lock: each signature builds its
    own certificate builder, and cryptography's private keys are immutable and make a
    fresh OpenSSL signing context per call (guarded by test_sign_device_concurrently).
    """

    def __init__(
        self,
        certificate: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        *,
        device_ttl: timedelta = profile.DEFAULT_DEVICE_TTL,
        crl_url: str = "",
        ocsp_url: str = "",
    ) -> None:
        if device_ttl <= timedelta(0):
            raise InvalidArgumentError("device certificate lifetime must be positive")
        profile.require_p256(key.public_key(), what="CA key")
        if key.public_key() != certificate.public_key():
            raise InvalidArgumentError("CA key does not belong to the CA certificate")
        self.certificate = certificate
        self.certificate_pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
        self.fingerprint = profile.fingerprint(certificate)
        self.device_ttl = device_ttl
        # Written into device certificates (serve --crl-url, --ocsp-url); "" for none.
        self.crl_url = _public_url("--crl-url", crl_url)
        self.ocsp_url = _public_url("--ocsp-url", ocsp_url)
        self._key = key

    def __repr__(self) -> str:
        return f"CertificateAuthority(fingerprint={self.fingerprint!r})"

    def sign_device(
        self,
        csr: x509.CertificateSigningRequest | profile.CheckedCsr,
        device_id: str,
        now: datetime,
        tags: Sequence[str] = (),
    ) -> IssuedCertificate:
        """A device certificate for the CSR's key, carrying tags as sielum://tag/<tag> URIs.

        A plain CSR is checked again, whoever parsed it; a CheckedCsr from
        profile.load_checked_csr already was.
        """
        if isinstance(csr, profile.CheckedCsr):
            public_key = csr.public_key
        else:
            public_key = profile.check_csr(csr)
        certificate = profile.device_certificate(
            public_key=public_key,
            device_id=device_id,
            ca_certificate=self.certificate,
            ca_key=self._key,
            serial=profile.random_serial(),
            now=now,
            ttl=self.device_ttl,
            crl_url=self.crl_url,
            ocsp_url=self.ocsp_url,
            tags=tags,
        )
        return _issued(certificate)

    def sign_crl(
        self, revocations: Iterable[revocation.Revocation], number: int, now: datetime
    ) -> bytes:
        """The CRL, DER, listing revocations (those not yet expired at now)."""
        return revocation.build_crl(
            self.certificate, self._key, revocations, number=number, now=now
        )

    def sign_crl_entries(self, entries: list[bytes], number: int, now: datetime) -> bytes:
        """The CRL, DER, listing entries made by revocation.crl_entry_der."""
        return revocation.sign_crl_entries(
            self.certificate, self._key, entries, number=number, now=now
        )

    def answer_ocsp(
        self, request_der: bytes, look_up: Callable[[int], revocation.Standing], now: datetime
    ) -> bytes:
        """The signed OCSP response to one DER request (ca/revocation.py::answer_ocsp)."""
        return revocation.answer_ocsp(request_der, self.certificate, self._key, look_up, now=now)

    def sign_admin(
        self, public_key: ec.EllipticCurvePublicKey, name: str, now: datetime
    ) -> IssuedCertificate:
        """An admin client certificate for the given key."""
        return self._sign_identity(profile.admin_certificate, public_key, name, now)

    def sign_service(
        self, public_key: ec.EllipticCurvePublicKey, name: str, now: datetime
    ) -> IssuedCertificate:
        """A service identity's client certificate for the given key."""
        return self._sign_identity(profile.service_certificate, public_key, name, now)

    def _sign_identity(
        self,
        make: Callable[..., x509.Certificate],
        public_key: ec.EllipticCurvePublicKey,
        name: str,
        now: datetime,
    ) -> IssuedCertificate:
        certificate = make(
            public_key=public_key,
            name=name,
            ca_certificate=self.certificate,
            ca_key=self._key,
            serial=profile.random_serial(),
            now=now,
        )
        return _issued(certificate)

    def sign_server(
        self,
        public_key: ec.EllipticCurvePublicKey,
        sans: tuple[x509.GeneralName, ...],
        now: datetime,
        ttl: timedelta = profile.SERVER_TTL,
    ) -> x509.Certificate:
        """A server TLS certificate for the given key and names (renew-server-cert)."""
        return profile.server_certificate(
            public_key=public_key,
            sans=sans,
            ca_certificate=self.certificate,
            ca_key=self._key,
            serial=profile.random_serial(),
            now=now,
            ttl=ttl,
        )

    @classmethod
    def load(
        cls,
        data_dir: Path,
        *,
        passphrase: bytes | None,
        device_ttl: timedelta = profile.DEFAULT_DEVICE_TTL,
        crl_url: str = "",
        ocsp_url: str = "",
    ) -> CertificateAuthority:
        """Reads <data_dir>/ca.pem and ca.key; each failure says what to do about it."""
        certificate = load_ca_certificate(data_dir)
        key_path = data_dir / CA_KEY_FILE
        key_pem = _read_data_file(data_dir, key_path)
        encrypted = b"ENCRYPTED" in key_pem
        if encrypted and passphrase is None:
            raise InvalidArgumentError(f"CA key is encrypted: set {PASSPHRASE_ENV}")
        if not encrypted and passphrase is not None:
            # Refused rather than ignored: the operator believes the key is protected.
            raise InvalidArgumentError(
                f"{PASSPHRASE_ENV} is set but the CA key {key_path} is not encrypted; unset it"
            )
        try:
            key = serialization.load_pem_private_key(key_pem, password=passphrase)
        except ValueError:
            if encrypted:
                raise InvalidArgumentError(
                    f"CA key passphrase is wrong ({PASSPHRASE_ENV})"
                ) from None
            raise InvalidArgumentError(f"{key_path} is not a PEM private key") from None
        except TypeError:
            raise InvalidArgumentError(f"{key_path} is not a PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidArgumentError(f"CA key {key_path} must be ECDSA P-256")
        return cls(certificate, key, device_ttl=device_ttl, crl_url=crl_url, ocsp_url=ocsp_url)


def _public_url(flag: str, url: str) -> str:
    if not url:
        return ""
    try:
        return revocation.check_public_url(flag, url)
    except ValueError as error:
        raise InvalidArgumentError(str(error)) from None


def load_ca_certificate(data_dir: Path) -> x509.Certificate:
    """Reads <data_dir>/ca.pem alone: enough for `sielum-server fingerprint`, no passphrase."""
    path = data_dir / CA_CERT_FILE
    try:
        return x509.load_pem_x509_certificate(_read_data_file(data_dir, path))
    except ValueError:
        raise InvalidArgumentError(f"{path} is not a PEM certificate") from None


def _read_data_file(data_dir: Path, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InvalidArgumentError(
            f"{path} not found: run `sielum-server init --data-dir {data_dir}` first"
        ) from None


def _issued(certificate: x509.Certificate) -> IssuedCertificate:
    return IssuedCertificate(
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        serial=format(certificate.serial_number, "x"),
        not_after=certificate.not_valid_after_utc,
    )
