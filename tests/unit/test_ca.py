"""Unit tests of sielum.ca: CSR checks, certificate profiles, the signer and the data directory."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import stat
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from sielum.ca import profile
from sielum.ca.authority import CertificateAuthority, load_ca_certificate
from sielum.ca.datadir import (
    DataDirPaths,
    init_data_dir,
    load_server_credentials,
    write_admin_bundle,
    write_private_file,
)
from sielum.errors import InternalError, InvalidArgumentError

E = TypeVar("E", bound=x509.ExtensionType)

# Real time, not a fixed date: `openssl verify` checks validity against its own clock.
NOW = datetime.now(UTC).replace(microsecond=0)


# --- helpers -----------------------------------------------------------------------


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def csr_pem(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
    builder: x509.CertificateSigningRequestBuilder | None = None,
) -> bytes:
    builder = builder or x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "my-laptop")])
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def pem_of_der(der: bytes, label: str = "CERTIFICATE REQUEST") -> bytes:
    return (
        f"-----BEGIN {label}-----\n".encode()
        + base64.encodebytes(der)
        + f"-----END {label}-----\n".encode()
    )


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def openssl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)


def openssl_verify(ca_pem: Path, cert_pem: Path, purpose: str) -> subprocess.CompletedProcess[str]:
    """`openssl verify` with the purpose (sslclient / sslserver) the certificate must serve."""
    return subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-purpose",
            purpose,
            "-CAfile",
            str(ca_pem),
            str(cert_pem),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def extension(certificate: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return certificate.extensions.get_extension_for_class(kind)


class ThrowawayCA:
    """A throwaway CA in memory, with its files written where openssl can read them."""

    def __init__(self, tmp_path: Path, ttl: timedelta = profile.CA_TTL) -> None:
        self.key = p256()
        self.certificate = profile.self_signed_ca_certificate(key=self.key, now=NOW, ttl=ttl)
        self.pem_path = tmp_path / "ca.pem"
        self.pem_path.write_bytes(pem(self.certificate))
        self.authority = CertificateAuthority(self.certificate, self.key)

    def device(
        self,
        public_key: ec.EllipticCurvePublicKey,
        device_id: str = "dev-01",
        now: datetime = NOW,
        ttl: timedelta = profile.DEFAULT_DEVICE_TTL,
        serial: int = 0x1234ABCD,
    ) -> x509.Certificate:
        return profile.device_certificate(
            public_key=public_key,
            device_id=device_id,
            ca_certificate=self.certificate,
            ca_key=self.key,
            serial=serial,
            now=now,
            ttl=ttl,
        )


@pytest.fixture
def ca(tmp_path: Path) -> ThrowawayCA:
    return ThrowawayCA(tmp_path)


# --- load_csr ------------------------------------------------------------------------


def test_load_csr_accepts_p256_as_bytes_and_str() -> None:
    key = p256()
    data = csr_pem(key)
    for given in (data, data.decode("ascii"), b"\n  " + data + b"\n\n \t\n"):
        csr = profile.load_csr(given)
        assert csr.public_key() == key.public_key()


def test_load_csr_fail_rsa_key() -> None:
    with pytest.raises(InvalidArgumentError) as error:
        profile.load_csr(csr_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    assert error.value.message == "CSR key must be ECDSA P-256; got RSA 2048"


def test_load_csr_fail_p384_key() -> None:
    with pytest.raises(InvalidArgumentError) as error:
        profile.load_csr(csr_pem(ec.generate_private_key(ec.SECP384R1())))
    assert error.value.message == "CSR key must be ECDSA P-256; got ECDSA P-384 (secp384r1)"


def test_load_csr_fail_ed25519_key() -> None:
    with pytest.raises(InvalidArgumentError) as error:
        profile.load_csr(csr_pem(ed25519.Ed25519PrivateKey.generate()))
    assert error.value.message == "CSR key must be ECDSA P-256; got Ed25519"


def test_load_csr_fail_bad_signature() -> None:
    der = bytearray(
        x509.load_pem_x509_csr(csr_pem(p256())).public_bytes(serialization.Encoding.DER)
    )
    # The last byte belongs to the signature's s value: flipping it keeps the DER
    # well formed but the signature no longer matches.
    der[-1] ^= 0x01
    tampered = pem_of_der(bytes(der))
    x509.load_pem_x509_csr(tampered)  # still parses: only the signature is wrong
    with pytest.raises(InvalidArgumentError) as error:
        profile.load_csr(tampered)
    assert error.value.message == "CSR signature does not verify"


@pytest.mark.parametrize("given", [b"", "", b"  \n\t\n", "\n"])
def test_load_csr_fail_empty(given: str | bytes) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        profile.load_csr(given)
    assert error.value.message == "CSR is empty"


@pytest.mark.parametrize("given", [b"\x00\xff\xfe garbage \x01", os.urandom(512), "hello"])
def test_load_csr_fail_garbage_bytes(given: str | bytes) -> None:
    given = given.replace(b"-----BEGIN ", b"") if isinstance(given, bytes) else given
    with pytest.raises(InvalidArgumentError) as error:
        profile.load_csr(given)
    assert error.value.message == (
        "CSR is not PEM: expected a -----BEGIN CERTIFICATE REQUEST----- block"
    )


def test_load_csr_fail_der_instead_of_pem() -> None:
    der = x509.load_pem_x509_csr(csr_pem(p256())).public_bytes(serialization.Encoding.DER)
    with pytest.raises(InvalidArgumentError) as error:
        profile.load_csr(der)
    assert error.value.message.startswith("CSR is not PEM")


def test_load_csr_fail_truncated_pem() -> None:
    data = csr_pem(p256())
    with pytest.raises(InvalidArgumentError) as error:
        profile.load_csr(data[: len(data) // 2])
    assert error.value.message == (
        "CSR PEM is truncated: no -----END CERTIFICATE REQUEST----- line"
    )


def test_load_csr_fail_truncated_body() -> None:
    der = x509.load_pem_x509_csr(csr_pem(p256())).public_bytes(serialization.Encoding.DER)
    with pytest.raises(InvalidArgumentError) as error:
        profile.load_csr(pem_of_der(der[: len(der) - 20]))
    assert error.value.message == (
        "CSR is not a valid PKCS#10 certificate request (truncated or corrupted?)"
    )


@pytest.mark.parametrize("junk", [b"junk", b"\n\nextra text\n", b"\x00"])
def test_load_csr_fail_trailing_junk(junk: bytes) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        profile.load_csr(csr_pem(p256()) + junk)
    assert error.value.message == ("CSR has data after the -----END CERTIFICATE REQUEST----- line")


def test_load_csr_fail_leading_junk() -> None:
    with pytest.raises(InvalidArgumentError) as error:
        profile.load_csr(b"Certificate Request:\n" + csr_pem(p256()))
    assert error.value.message == "CSR has data before the -----BEGIN line"


def test_load_csr_fail_two_pem_blocks() -> None:
    with pytest.raises(InvalidArgumentError) as error:
        profile.load_csr(csr_pem(p256()) + csr_pem(p256()))
    assert error.value.message == "CSR must be a single PEM block; found 2"


def test_load_csr_fail_private_key_instead_of_csr() -> None:
    key_pem = p256().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(InvalidArgumentError) as error:
        profile.load_csr(key_pem)
    # The message names the block's label, never its contents.
    assert error.value.message == "CSR must be a CERTIFICATE REQUEST PEM block; got PRIVATE KEY"


def test_load_csr_fail_bad_base64() -> None:
    data = csr_pem(p256()).replace(b"-----\nM", b"-----\n!M", 1)
    with pytest.raises(InvalidArgumentError) as error:
        profile.load_csr(data)
    assert error.value.message == "CSR PEM body is not valid base64"


@pytest.mark.parametrize("as_text", [False, True])
def test_load_csr_fail_too_large(as_text: bool) -> None:
    # Whitespace inside the body is legal PEM, so only the size limit refuses this.
    padded = csr_pem(p256()).replace(b"-----\n", b"-----\n" + b" \n" * 8200, 1)
    assert len(padded) > 16 * 1024
    # Just under the limit, the same padding is accepted.
    assert profile.load_csr(csr_pem(p256()).replace(b"-----\n", b"-----\n" + b" \n" * 7000, 1))
    with pytest.raises(InvalidArgumentError) as error:
        profile.load_csr(padded.decode("ascii") if as_text else padded)
    assert error.value.message == "CSR is larger than 16 KiB"


# --- device and admin certificates ---------------------------------------------------


def test_device_certificate_profile(ca: ThrowawayCA) -> None:
    key = p256()
    cert = ca.device(key.public_key(), device_id="dev-01")

    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-01")])
    assert cert.issuer == ca.certificate.subject
    assert cert.public_key() == key.public_key()
    assert cert.serial_number == 0x1234ABCD
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    cert.verify_directly_issued_by(ca.certificate)

    san = extension(cert, x509.SubjectAlternativeName)
    assert list(san.value) == [x509.UniformResourceIdentifier("sielum://device/dev-01")]
    eku = extension(cert, x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    key_usage = extension(cert, x509.KeyUsage)
    assert key_usage.critical
    assert key_usage.value.digital_signature
    assert not any(
        getattr(key_usage.value, name)
        for name in (
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
        )
    )
    basic = extension(cert, x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    ski = extension(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = extension(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == extension(ca.certificate, x509.SubjectKeyIdentifier).value.digest
    assert {e.oid for e in cert.extensions} == {
        x509.SubjectAlternativeName.oid,
        x509.ExtendedKeyUsage.oid,
        x509.KeyUsage.oid,
        x509.BasicConstraints.oid,
        x509.SubjectKeyIdentifier.oid,
        x509.AuthorityKeyIdentifier.oid,
    }

    assert cert.not_valid_before_utc == NOW - profile.BACKDATE
    assert cert.not_valid_after_utc == NOW + profile.DEFAULT_DEVICE_TTL
    assert profile.role_of(cert) == ("device", "dev-01")


def test_device_certificate_ignores_csr_fields(ca: ThrowawayCA) -> None:
    key = p256()
    greedy = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "admin:root"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil Corp"),
                ]
            )
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("evil.example"),
                    x509.DNSName("localhost"),
                    x509.UniformResourceIdentifier("sielum://admin/root"),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
    )
    csr = profile.load_csr(csr_pem(key, greedy))
    issued = ca.authority.sign_device(csr, "dev-02", NOW)
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())

    assert cert.public_key() == key.public_key()
    assert cert.subject.rfc4514_string() == "CN=dev-02"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    san = extension(cert, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("sielum://device/dev-02")]
    assert list(extension(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert b"evil" not in cert.public_bytes(serialization.Encoding.DER).lower()
    assert profile.role_of(cert) == ("device", "dev-02")


def test_device_certificate_clamped_to_ca_expiry(tmp_path: Path) -> None:
    short = ThrowawayCA(tmp_path, ttl=timedelta(days=30))
    cert = short.device(p256().public_key(), ttl=timedelta(days=90))
    assert (
        cert.not_valid_after_utc
        == short.certificate.not_valid_after_utc
        == NOW + timedelta(days=30)
    )
    # Inside the CA's lifetime the requested TTL stands.
    cert = short.device(p256().public_key(), ttl=timedelta(days=7))
    assert cert.not_valid_after_utc == NOW + timedelta(days=7)


def test_device_certificate_fail_ca_expired(tmp_path: Path) -> None:
    short = ThrowawayCA(tmp_path, ttl=timedelta(days=1))
    with pytest.raises(InternalError) as error:
        short.device(p256().public_key(), now=NOW + timedelta(days=2))
    assert "CA certificate expired" in error.value.message


@pytest.mark.parametrize("device_id", ["", "dev-01\n", "../admin", "a/b", "-lead", "x" * 65, "é"])
def test_device_certificate_fail_bad_device_id(ca: ThrowawayCA, device_id: str) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        ca.device(p256().public_key(), device_id=device_id)
    assert error.value.message.startswith("device id must be 1 to 64 characters")


def test_device_certificate_fail_non_p256_key(ca: ThrowawayCA) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        ca.device(ec.generate_private_key(ec.SECP384R1()).public_key())
    assert error.value.message == "device key must be ECDSA P-256; got ECDSA P-384 (secp384r1)"


def test_device_certificate_fail_naive_now(ca: ThrowawayCA) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ca.device(p256().public_key(), now=NOW.replace(tzinfo=None))


def test_device_certificate_passes_openssl_verify(ca: ThrowawayCA, tmp_path: Path) -> None:
    issued = ca.authority.sign_device(profile.load_csr(csr_pem(p256())), "dev-03", NOW)
    device_pem = tmp_path / "device.pem"
    device_pem.write_text(issued.certificate_pem)
    result = openssl_verify(ca.pem_path, device_pem, "sslclient")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{device_pem}: OK"
    # A device certificate must not pass as a server certificate.
    assert openssl_verify(ca.pem_path, device_pem, "sslserver").returncode != 0


def test_sign_device_issued_fields(ca: ThrowawayCA, tmp_path: Path) -> None:
    key = p256()
    issued = ca.authority.sign_device(profile.load_csr(csr_pem(key)), "dev-04", NOW)
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    assert issued.serial == format(cert.serial_number, "x")
    assert issued.serial == issued.serial.lower() and not issued.serial.startswith("0x")
    assert issued.not_after == NOW + profile.DEFAULT_DEVICE_TTL
    assert issued.not_after.tzinfo is not None and issued.not_after.utcoffset() == timedelta(0)
    # public_key_sha256 agrees with OpenSSL's own SubjectPublicKeyInfo encoding.
    cert_path = tmp_path / "device.pem"
    cert_path.write_text(issued.certificate_pem)
    spki_pem = openssl("x509", "-noout", "-pubkey", "-in", str(cert_path)).stdout
    spki_der = openssl("pkey", "-pubin", "-outform", "DER", stdin=spki_pem).stdout
    assert profile.public_key_sha256(cert.public_key()) == hashlib.sha256(spki_der).hexdigest()
    assert profile.public_key_sha256(key.public_key()) == hashlib.sha256(spki_der).hexdigest()


def test_sign_device_uses_configured_ttl(ca: ThrowawayCA) -> None:
    authority = CertificateAuthority(ca.certificate, ca.key, device_ttl=timedelta(hours=12))
    issued = authority.sign_device(profile.load_csr(csr_pem(p256())), "dev-05", NOW)
    assert issued.not_after == NOW + timedelta(hours=12)


def test_sign_device_fail_unchecked_rsa_csr(ca: ThrowawayCA) -> None:
    # A CSR that never went through load_csr is checked again by the signer.
    rsa_csr = x509.load_pem_x509_csr(csr_pem(rsa.generate_private_key(65537, 2048)))
    with pytest.raises(InvalidArgumentError) as error:
        ca.authority.sign_device(rsa_csr, "dev-06", NOW)
    assert error.value.message == "CSR key must be ECDSA P-256; got RSA 2048"


def test_sign_device_concurrently(ca: ThrowawayCA) -> None:
    csrs = [profile.load_csr(csr_pem(p256())) for _ in range(16)]
    results: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(csrs))

    def sign(index: int) -> None:
        try:
            start.wait()
            for _ in range(10):
                results.append(ca.authority.sign_device(csrs[index], f"dev-{index}", NOW).serial)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sign, args=(i,)) for i in range(len(csrs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == len(set(results)) == 160


def test_authority_fail_key_does_not_match_certificate(ca: ThrowawayCA) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        CertificateAuthority(ca.certificate, p256())
    assert error.value.message == "CA key does not belong to the CA certificate"


def test_authority_repr_hides_key(ca: ThrowawayCA) -> None:
    assert repr(ca.authority) == f"CertificateAuthority(fingerprint={ca.authority.fingerprint!r})"


def test_admin_certificate_profile(ca: ThrowawayCA, tmp_path: Path) -> None:
    key = p256()
    cert = profile.admin_certificate(
        public_key=key.public_key(),
        name="alice.ops",
        ca_certificate=ca.certificate,
        ca_key=ca.key,
        serial=7,
        now=NOW,
    )
    assert cert.subject.rfc4514_string() == "CN=alice.ops"
    assert list(extension(cert, x509.SubjectAlternativeName).value) == [
        x509.UniformResourceIdentifier("sielum://admin/alice.ops")
    ]
    assert list(extension(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert extension(cert, x509.BasicConstraints).value.ca is False
    assert extension(cert, x509.KeyUsage).value.digital_signature
    assert cert.not_valid_before_utc == NOW - profile.BACKDATE
    assert cert.not_valid_after_utc == NOW + timedelta(days=365)
    assert profile.role_of(cert) == ("admin", "alice.ops")
    admin_pem = tmp_path / "admin.pem"
    admin_pem.write_bytes(pem(cert))
    result = openssl_verify(ca.pem_path, admin_pem, "sslclient")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["", "admin\n", "_admin", "a b", "a/b", "x" * 65, "admin:root"])
def test_admin_certificate_fail_bad_name(ca: ThrowawayCA, name: str) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        ca.authority.sign_admin(p256().public_key(), name, NOW)
    assert error.value.message.startswith("admin name must be 1 to 64 characters")


def test_service_certificate_profile(ca: ThrowawayCA, tmp_path: Path) -> None:
    key = p256()
    issued = ca.authority.sign_service(key.public_key(), "billing-api", NOW)
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    assert cert.public_key() == key.public_key()
    assert cert.subject.rfc4514_string() == "CN=billing-api"
    assert list(extension(cert, x509.SubjectAlternativeName).value) == [
        x509.UniformResourceIdentifier("sielum://service/billing-api")
    ]
    assert list(extension(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert extension(cert, x509.BasicConstraints).value.ca is False
    assert cert.not_valid_before_utc == NOW - profile.BACKDATE
    assert cert.not_valid_after_utc == NOW + timedelta(days=365)
    assert issued.serial == format(cert.serial_number, "x")
    assert profile.role_of(cert) == ("service", "billing-api")
    service_pem = tmp_path / "service.pem"
    service_pem.write_bytes(pem(cert))
    result = openssl_verify(ca.pem_path, service_pem, "sslclient")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["", "svc\n", "_svc", "a b", "a/b", "x" * 65])
def test_service_certificate_fail_bad_name_or_key(ca: ThrowawayCA, name: str) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        ca.authority.sign_service(p256().public_key(), name, NOW)
    assert error.value.message.startswith("service name must be 1 to 64 characters")
    with pytest.raises(InvalidArgumentError) as error:
        ca.authority.sign_service(ec.generate_private_key(ec.SECP384R1()).public_key(), "ok", NOW)
    assert error.value.message.startswith("service key must be ECDSA P-256")


def test_random_serial_positive_and_distinct() -> None:
    serials = {profile.random_serial() for _ in range(100)}
    assert len(serials) == 100
    assert all(0 < serial < 2**159 for serial in serials)


# --- role_of -------------------------------------------------------------------------


def cert_with_sans(ca: ThrowawayCA, names: list[x509.GeneralName] | None) -> x509.Certificate:
    key = p256()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


@pytest.mark.parametrize(
    ("uris", "role"),
    [
        (["sielum://admin/alice"], ("admin", "alice")),
        (["sielum://device/dev_01HZX"], ("device", "dev_01HZX")),
        (["sielum://service/billing-api"], ("service", "billing-api")),
        (["sielum://service/a/b"], None),
        (["sielum://admin/alice", "sielum://device/d1"], None),
        (["sielum://device/d1", "spiffe://example.org/x"], None),
        (["spiffe://example.org/admin/alice"], None),
        (["sielum://root/alice"], None),
        (["sielum://admin/"], None),
        (["sielum://admin/a/b"], None),
        (["SIELUM://admin/alice"], None),
        ([], None),
    ],
)
def test_role_of(ca: ThrowawayCA, uris: list[str], role: tuple[str, str] | None) -> None:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names.append(x509.DNSName("host.example"))
    assert profile.role_of(cert_with_sans(ca, names)) == role


def test_role_of_none_without_san(ca: ThrowawayCA) -> None:
    assert profile.role_of(cert_with_sans(ca, None)) is None
    assert profile.role_of(ca.certificate) is None


# --- fingerprints ----------------------------------------------------------------------


def test_fingerprint_matches_openssl(ca: ThrowawayCA) -> None:
    fp = profile.fingerprint(ca.certificate)
    assert fp.startswith("sha256:") and len(fp) == 7 + 64 and fp == fp.lower()
    result = openssl("x509", "-noout", "-fingerprint", "-sha256", "-in", str(ca.pem_path))
    line = result.stdout.decode().strip()
    assert line.split("=", 1)[1].replace(":", "").lower() == fp[7:]
    assert profile.parse_fingerprint(line) == bytes.fromhex(fp[7:])
    assert (
        profile.parse_fingerprint(fp)
        == hashlib.sha256(ca.certificate.public_bytes(serialization.Encoding.DER)).digest()
    )


DIGEST = bytes(range(0x10, 0x30))
HEX = DIGEST.hex()
COLONS = ":".join(f"{b:02X}" for b in DIGEST)


@pytest.mark.parametrize(
    "text",
    [
        f"sha256:{HEX}",
        f"SHA256:{HEX.upper()}",
        f"Sha256:{HEX}",
        HEX,
        HEX.upper(),
        COLONS,
        COLONS.lower(),
        f"sha256 Fingerprint={COLONS}",
        f"SHA256 Fingerprint={COLONS}",
        f"  \tsha256:{HEX}\n",
        f"\n{COLONS}  ",
    ],
)
def test_parse_fingerprint_accepts(text: str) -> None:
    assert profile.parse_fingerprint(text) == DIGEST


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "sha256:",
        HEX[:-1],
        HEX + "0",
        HEX[:-1] + "g",
        "sha1:" + HEX,
        "md5:" + HEX,
        "sha256:" + HEX + "extra",
        COLONS[:-3],
        COLONS.replace(":", "-"),
        "sha256: " + HEX,
        "sha256:sha256:" + HEX,
    ],
)
def test_parse_fingerprint_fail_bad_form(text: str) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        profile.parse_fingerprint(text)
    assert error.value.message.startswith("CA fingerprint must be sha256:<64 hex>")


@pytest.mark.parametrize(
    "text", ["SHA1 Fingerprint=" + ":".join(["AB"] * 20), "ab" * 20, ":".join(["ab"] * 20)]
)
def test_parse_fingerprint_fail_sha1_says_so(text: str) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        profile.parse_fingerprint(text)
    assert error.value.message.startswith("CA fingerprint must be sha256:<64 hex>")
    assert "SHA1" in error.value.message.replace("-", "")
    assert "-sha256" in error.value.message


# --- the data directory ---------------------------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def certificates_in(data: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data)


def test_init_data_dir_layout_and_modes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = init_data_dir(data_dir, now=NOW)
    paths = result.paths
    assert paths == DataDirPaths.of(data_dir)
    assert sorted(p.name for p in data_dir.iterdir()) == [
        "admin",
        "ca.key",
        "ca.pem",
        "server.key",
        "server.pem",
    ]
    assert sorted(p.name for p in paths.admin_dir.iterdir()) == ["admin.key", "admin.pem", "ca.pem"]
    for key_path in (paths.ca_key, paths.server_key, paths.admin_dir / "admin.key"):
        assert mode_of(key_path) == 0o600, key_path
    for public in (paths.ca_cert, paths.server_cert, paths.admin_dir / "admin.pem"):
        assert mode_of(public) == 0o644, public
    assert mode_of(data_dir) == 0o700
    assert mode_of(paths.admin_dir) == 0o700

    ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    assert result.fingerprint == profile.fingerprint(ca_cert)
    assert ca_cert.subject.rfc4514_string() == "CN=Sielum CA"
    assert ca_cert.issuer == ca_cert.subject
    ca_cert.verify_directly_issued_by(ca_cert)
    public_key = ca_cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    basic = extension(ca_cert, x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = extension(ca_cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    assert extension(ca_cert, x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(public_key)
    )
    assert ca_cert.not_valid_after_utc == NOW + timedelta(days=3650)

    key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    assert paths.ca_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert key.public_key() == public_key
    # No temp files are left beside the real ones.
    assert not [p for p in data_dir.rglob(".*")]


def test_init_server_pem_is_leaf_then_ca(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    paths = init_data_dir(
        data_dir, sans=["sielum.example.com", "10.0.0.7", "fd00::1", "LOCALHOST"], now=NOW
    ).paths
    chain = certificates_in(paths.server_cert.read_bytes())
    assert len(chain) == 2
    leaf, ca_cert = chain
    assert pem(ca_cert) == paths.ca_cert.read_bytes()
    leaf.verify_directly_issued_by(ca_cert)
    assert leaf.subject.rfc4514_string() == "CN=sielum-server"
    san = extension(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "sielum.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("fd00::1"),
    ]
    assert list(extension(leaf, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert extension(leaf, x509.BasicConstraints).value.ca is False
    assert leaf.not_valid_after_utc == NOW + timedelta(days=730)
    server_key = serialization.load_pem_private_key(paths.server_key.read_bytes(), password=None)
    assert server_key.public_key() == leaf.public_key()

    leaf_path = tmp_path / "leaf.pem"
    leaf_path.write_bytes(pem(leaf))
    result = openssl_verify(paths.ca_cert, leaf_path, "sslserver")
    assert result.returncode == 0, result.stderr
    checked = openssl("x509", "-noout", "-checkhost", "sielum.example.com", "-in", str(leaf_path))
    assert b"does match" in checked.stdout
    checked = openssl("x509", "-noout", "-checkip", "10.0.0.7", "-in", str(leaf_path))
    assert b"does match" in checked.stdout


@pytest.mark.parametrize(
    "san", ["https://sielum.example", "bad name", "10.0.0.0/8", "", "é.example"]
)
def test_init_fail_bad_san_writes_nothing(tmp_path: Path, san: str) -> None:
    data_dir = tmp_path / "data"
    with pytest.raises(InvalidArgumentError) as error:
        init_data_dir(data_dir, sans=[san], now=NOW)
    assert error.value.message.startswith(f"--san {san!r} is neither an IP address nor a DNS name")
    assert not data_dir.exists()


def test_init_fail_second_init(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = init_data_dir(data_dir, now=NOW)
    before = {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()}
    with pytest.raises(InvalidArgumentError) as error:
        init_data_dir(data_dir, now=NOW)
    assert error.value.message == f"{data_dir} already holds a Sielum CA; refusing to overwrite"
    assert {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()} == before
    assert load_ca_certificate(data_dir).fingerprint(hashes.SHA256()).hex() == first.fingerprint[7:]


def test_init_fail_only_ca_key_left(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "ca.key").write_bytes(b"precious")
    with pytest.raises(InvalidArgumentError) as error:
        init_data_dir(data_dir, now=NOW)
    assert error.value.message == f"{data_dir} already holds a Sielum CA; refusing to overwrite"
    assert (data_dir / "ca.key").read_bytes() == b"precious"


def test_init_with_passphrase_encrypts_ca_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = init_data_dir(data_dir, passphrase=b"correct horse", now=NOW)
    key_pem = result.paths.ca_key.read_bytes()
    assert key_pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert mode_of(result.paths.ca_key) == 0o600
    # Only the CA key is encrypted: the server must start without a person present.
    assert result.paths.server_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")

    authority = CertificateAuthority.load(data_dir, passphrase=b"correct horse")
    assert authority.fingerprint == result.fingerprint

    with pytest.raises(InvalidArgumentError) as error:
        CertificateAuthority.load(data_dir, passphrase=None)
    assert error.value.message == "CA key is encrypted: set SIELUM_CA_PASSPHRASE"
    with pytest.raises(InvalidArgumentError) as error:
        CertificateAuthority.load(data_dir, passphrase=b"wrong horse")
    assert error.value.message == "CA key passphrase is wrong (SIELUM_CA_PASSPHRASE)"
    # OpenSSL reads the encrypted key with the same passphrase.
    decoded = openssl(
        "pkey", "-noout", "-passin", "pass:correct horse", "-in", str(result.paths.ca_key)
    )
    assert decoded.returncode == 0, decoded.stderr


def test_init_fail_empty_passphrase(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        init_data_dir(tmp_path / "data", passphrase=b"", now=NOW)
    assert error.value.message == "CA passphrase must not be empty"
    assert not (tmp_path / "data").exists()


PASSPHRASE = b"four random words here"


def _openssl_text(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False, env=env)


def test_fail_cheap_kdf_on_the_encrypted_ca_key(tmp_path: Path) -> None:
    """A copied ca.key must be expensive to attack offline: PBES2 with PBKDF2-HMAC-SHA256 at
    600,000 iterations and AES-256-CBC, as `openssl asn1parse` shows, and OpenSSL decrypts it."""
    data_dir = tmp_path / "data"
    result = init_data_dir(data_dir, passphrase=PASSPHRASE, now=NOW)
    parsed = _openssl_text("asn1parse", "-in", str(result.paths.ca_key))
    assert parsed.returncode == 0, parsed.stderr
    fields = [line.split(":", 3)[-1].strip() for line in parsed.stdout.splitlines()]
    objects = [f for f in fields if f in {"PBES2", "PBKDF2", "hmacWithSHA256", "aes-256-cbc"}]
    assert objects == ["PBES2", "PBKDF2", "hmacWithSHA256", "aes-256-cbc"]
    integers = [line for line in parsed.stdout.splitlines() if "prim: INTEGER" in line]
    assert len(integers) == 1  # PBKDF2's iteration count, and no key length to mislead
    iterations = int(integers[0].rsplit(":", 1)[1], 16)
    assert iterations >= 600_000

    decrypted = _openssl_text(
        "pkcs8", "-in", str(result.paths.ca_key), "-passin", "env:SIELUM_TEST_PASS",
        env={**os.environ, "SIELUM_TEST_PASS": PASSPHRASE.decode()},
    )  # fmt: skip
    assert decrypted.returncode == 0, decrypted.stderr
    assert decrypted.stdout.startswith("-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(decrypted.stdout.encode(), None)
    assert key.public_key() == load_ca_certificate(data_dir).public_key()
    wrong = openssl("pkcs8", "-in", str(result.paths.ca_key), "-passin", "pass:wrong horse")
    assert wrong.returncode != 0
    assert CertificateAuthority.load(data_dir, passphrase=PASSPHRASE).fingerprint == (
        result.fingerprint
    )


@pytest.mark.parametrize(
    "passphrase", [b"short", b"eleven char", "\u00e9".encode() * 11], ids=["5", "11", "11-utf8"]
)
def test_fail_short_passphrase_is_refused_at_init(tmp_path: Path, passphrase: bytes) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        init_data_dir(tmp_path / "data", passphrase=passphrase, now=NOW)
    characters = len(passphrase.decode())
    assert error.value.message == (
        f"SIELUM_CA_PASSPHRASE is too short ({characters} characters): use at least 12, "
        "for example four random words"
    )
    assert not (tmp_path / "data").exists()
    # Twelve characters, however many bytes, are enough.
    init_data_dir(tmp_path / "ok", passphrase="\u00e9".encode() * 12, now=NOW)


def test_ok_a_key_encrypted_by_an_older_sielum_still_loads(tmp_path: Path) -> None:
    """Earlier versions wrote ca.key with cryptography's BestAvailableEncryption (PBKDF2 at
    2,048 iterations) and took any passphrase: such a key loads, with its short passphrase."""
    data_dir = tmp_path / "data"
    init_data_dir(data_dir, now=NOW)
    key = serialization.load_pem_private_key((data_dir / "ca.key").read_bytes(), None)
    (data_dir / "ca.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"old"),
        )
    )
    authority = CertificateAuthority.load(data_dir, passphrase=b"old")
    assert authority.fingerprint == profile.fingerprint(load_ca_certificate(data_dir))


def test_load_fail_passphrase_given_for_plain_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    init_data_dir(data_dir, now=NOW)
    with pytest.raises(InvalidArgumentError) as error:
        CertificateAuthority.load(data_dir, passphrase=b"something")
    assert error.value.message == (
        f"SIELUM_CA_PASSPHRASE is set but the CA key {data_dir / 'ca.key'} is not encrypted; "
        "unset it"
    )


@pytest.mark.parametrize("missing", ["ca.pem", "ca.key"])
def test_load_fail_missing_file(tmp_path: Path, missing: str) -> None:
    data_dir = tmp_path / "data"
    init_data_dir(data_dir, now=NOW)
    (data_dir / missing).unlink()
    with pytest.raises(InvalidArgumentError) as error:
        CertificateAuthority.load(data_dir, passphrase=None)
    assert error.value.message == (
        f"{data_dir / missing} not found: run `sielum-server init --data-dir {data_dir}` first"
    )


def test_load_fail_not_a_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    init_data_dir(data_dir, now=NOW)
    (data_dir / "ca.key").write_bytes(
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    )
    with pytest.raises(InvalidArgumentError) as error:
        CertificateAuthority.load(data_dir, passphrase=None)
    assert error.value.message == f"{data_dir / 'ca.key'} is not a PEM private key"


def test_load_then_sign_device_verifies_with_openssl(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = init_data_dir(data_dir, now=NOW)
    authority = CertificateAuthority.load(data_dir, passphrase=None, device_ttl=timedelta(days=1))
    assert authority.fingerprint == result.fingerprint
    assert authority.certificate_pem.encode() == result.paths.ca_cert.read_bytes()
    issued = authority.sign_device(profile.load_csr(csr_pem(p256())), "dev-07", NOW)
    assert issued.not_after == NOW + timedelta(days=1)
    device_pem = tmp_path / "device.pem"
    device_pem.write_text(issued.certificate_pem)
    verified = openssl_verify(result.paths.ca_cert, device_pem, "sslclient")
    assert verified.returncode == 0, verified.stderr


def test_init_first_admin_bundle(tmp_path: Path) -> None:
    paths = init_data_dir(tmp_path / "data", now=NOW).paths
    admin_cert = x509.load_pem_x509_certificate((paths.admin_dir / "admin.pem").read_bytes())
    admin_key = serialization.load_pem_private_key(
        (paths.admin_dir / "admin.key").read_bytes(), password=None
    )
    assert admin_key.public_key() == admin_cert.public_key()
    assert profile.role_of(admin_cert) == ("admin", "admin")
    assert (paths.admin_dir / "ca.pem").read_bytes() == paths.ca_cert.read_bytes()
    verified = openssl_verify(
        paths.admin_dir / "ca.pem", paths.admin_dir / "admin.pem", "sslclient"
    )
    assert verified.returncode == 0, verified.stderr


def test_write_admin_bundle_new_admin(ca: ThrowawayCA, tmp_path: Path) -> None:
    out = tmp_path / "nested" / "bob"
    assert write_admin_bundle(ca.authority, "bob", out, NOW) == out
    assert mode_of(out) == 0o700
    assert mode_of(out / "admin.key") == 0o600
    cert = x509.load_pem_x509_certificate((out / "admin.pem").read_bytes())
    assert profile.role_of(cert) == ("admin", "bob")
    assert cert.not_valid_after_utc == NOW + timedelta(days=365)
    assert (out / "ca.pem").read_text() == ca.authority.certificate_pem


@pytest.mark.parametrize("existing", ["admin.pem", "admin.key"])
def test_write_admin_bundle_fail_overwrite(ca: ThrowawayCA, tmp_path: Path, existing: str) -> None:
    out = tmp_path / "bob"
    out.mkdir()
    (out / existing).write_bytes(b"keep me")
    with pytest.raises(InvalidArgumentError) as error:
        write_admin_bundle(ca.authority, "bob", out, NOW)
    assert error.value.message == f"{out / existing} already exists; refusing to overwrite"
    assert (out / existing).read_bytes() == b"keep me"
    assert sorted(p.name for p in out.iterdir()) == [existing]


def test_write_admin_bundle_fail_second_time(ca: ThrowawayCA, tmp_path: Path) -> None:
    out = tmp_path / "bob"
    write_admin_bundle(ca.authority, "bob", out, NOW)
    before = (out / "admin.key").read_bytes()
    with pytest.raises(InvalidArgumentError, match="refusing to overwrite"):
        write_admin_bundle(ca.authority, "bob", out, NOW)
    assert (out / "admin.key").read_bytes() == before


def test_write_admin_bundle_fail_other_ca_pem(ca: ThrowawayCA, tmp_path: Path) -> None:
    out = tmp_path / "bob"
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = ThrowawayCA(other_dir)
    out.mkdir()
    (out / "ca.pem").write_bytes(pem(other.certificate))
    with pytest.raises(InvalidArgumentError) as error:
        write_admin_bundle(ca.authority, "bob", out, NOW)
    assert (
        error.value.message
        == f"{out / 'ca.pem'} holds a different CA certificate; refusing to overwrite"
    )
    assert not (out / "admin.key").exists()


def test_write_admin_bundle_fail_bad_name_writes_nothing(ca: ThrowawayCA, tmp_path: Path) -> None:
    out = tmp_path / "bob"
    with pytest.raises(InvalidArgumentError, match="admin name must be"):
        write_admin_bundle(ca.authority, "bob/../../x", out, NOW)
    assert not out.exists()


def test_load_server_credentials(tmp_path: Path) -> None:
    paths = init_data_dir(tmp_path / "data", now=NOW).paths
    key, chain, ca_pem = load_server_credentials(paths.root)
    assert key == paths.server_key.read_bytes()
    assert chain == paths.server_cert.read_bytes()
    assert ca_pem == paths.ca_cert.read_bytes()
    paths.server_key.unlink()
    with pytest.raises(InvalidArgumentError) as error:
        load_server_credentials(paths.root)
    assert error.value.message == (
        f"{paths.server_key} not found: run `sielum-server init --data-dir {paths.root}` first"
    )


def test_write_private_file_modes_despite_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_private_file(tmp_path / "secret", b"s3cret")
        write_private_file(tmp_path / "public", b"hello", 0o644)
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "secret") == 0o600
    assert mode_of(tmp_path / "public") == 0o644
    assert (tmp_path / "secret").read_bytes() == b"s3cret"


def test_write_private_file_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"old")
    inode = target.stat().st_ino
    write_private_file(target, b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_ino != inode  # a rename, not a rewrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_write_private_file_exclusive_refuses_existing(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        write_private_file(target, b"new", exclusive=True)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
