"""The crypto floor: CSR parse + signature verify + device certificate sign, in a bare loop."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def bare_cryptography(csrs: list[str]) -> float:
    """Microseconds per CSR with cryptography alone: the least any Python server can spend."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "floor CA")])
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    now = datetime.now(UTC)
    started = time.perf_counter()
    for i, pem in enumerate(csrs):
        csr = x509.load_pem_x509_csr(pem.encode())
        if not csr.is_signature_valid:
            raise AssertionError("bad CSR in the pool")
        key = csr.public_key()
        name = f"device-{i}"
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"x://d/{name}")]),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)  # type: ignore[arg-type]
            .add_extension(aki, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert.public_bytes(serialization.Encoding.PEM)
    return (time.perf_counter() - started) / len(csrs) * 1e6


def sielum_ca(csrs: list[str]) -> float:
    """Microseconds per CSR through Sielum's load_checked_csr + CertificateAuthority.sign_device."""
    from sielum.ca.authority import CertificateAuthority
    from sielum.ca.profile import load_checked_csr, self_signed_ca_certificate

    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    ca = CertificateAuthority(self_signed_ca_certificate(key=ca_key, now=now), ca_key)
    started = time.perf_counter()
    for i, pem in enumerate(csrs):
        ca.sign_device(load_checked_csr(pem), f"device-{i}", now)
    return (time.perf_counter() - started) / len(csrs) * 1e6
