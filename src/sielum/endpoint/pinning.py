"""CA pinning: find the pinned CA in the server's TLS chain before any secret is sent."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from sielum.endpoint import reach
from sielum.endpoint.address import ServerAddress
from sielum.endpoint.errors import NameMismatchError, PinMismatchError
from sielum.endpoint.reach import names_host

# How far our clock may run behind or ahead of the server's before a freshly issued
# certificate looks not-yet-valid or expired; the CA backdates by five minutes too.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class PinnedServer:
    """What the probe proved: the server's leaf is issued by the pinned CA and names the host."""

    ca: x509.Certificate
    leaf: x509.Certificate


def sha256_der(certificate: x509.Certificate) -> bytes:
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()


def find_pinned(chain: Sequence[x509.Certificate], pin: bytes) -> x509.Certificate:
    """The certificate of the chain whose SHA-256 equals the pin, else PinMismatchError."""
    if len(pin) != hashlib.sha256().digest_size:
        raise ValueError("a pin is the 32 bytes of a SHA-256 digest")
    found: x509.Certificate | None = None
    for certificate in chain:
        # Every candidate is compared, match or not, so timing says nothing about
        # which position in the chain (if any) matched.
        if hmac.compare_digest(sha256_der(certificate), pin) and found is None:
            found = certificate
    if found is None:
        raise PinMismatchError(
            "CA fingerprint mismatch: no certificate the server presented has the "
            "fingerprint given with --ca-fingerprint; the token was not sent"
        )
    return found


def check_chain(
    chain: Sequence[x509.Certificate], pin: bytes, host: str, now: datetime | None = None
) -> PinnedServer:
    """Checks an unverified chain against the pin and the host; raises PinMismatchError.

    Pure: no I/O, so the rules are tested without a network (tests/unit/test_agent_pinning.py).
    """
    now = now if now is not None else datetime.now(UTC)
    if not chain:
        raise PinMismatchError("the server presented no certificate; the token was not sent")
    ca = find_pinned(chain, pin)
    leaf = chain[0]
    if not _is_ca(ca):
        raise PinMismatchError(
            "the certificate matching --ca-fingerprint is not a CA certificate; "
            "pin the Sielum CA (sielum-server fingerprint); the token was not sent"
        )
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise PinMismatchError(
            "the server's certificate is not issued by the pinned CA (another CA signed "
            "it); refusing to send the token"
        ) from None
    if now + CLOCK_SKEW < leaf.not_valid_before_utc or leaf.not_valid_after_utc <= now - CLOCK_SKEW:
        raise PinMismatchError(
            "the server's certificate is outside its validity period "
            f"({leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
            f"{leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}); check this machine's clock"
        )
    _check_server_use(leaf)
    if not names_host(leaf, host):
        raise NameMismatchError(f"{reach.name_mismatch_message(host)}; the token was not sent")
    return PinnedServer(ca=ca, leaf=leaf)


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def _check_server_use(leaf: x509.Certificate) -> None:
    # A device or admin certificate is issued by the same CA; only a certificate
    # meant for a TLS server may stand for the server, or any enrolled device
    # could impersonate it.
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.SERVER_AUTH not in usages:
        raise PinMismatchError(
            "the server's certificate is not a TLS server certificate (no serverAuth); "
            "refusing to send the token"
        )
    if _is_ca(leaf):
        raise PinMismatchError("the server presented a CA certificate as its own")


def fetch_chain(server: ServerAddress, timeout: float) -> list[x509.Certificate]:
    """Completes a TLS handshake that trusts nothing and returns the chain as sent.

    Nothing but the handshake happens on this connection: no application byte is
    written, so a server that fails the checks has learnt nothing but our address.
    Verification is ours to do, against the pin, once the chain is in hand.
    """
    with reach.tls_connection(server, timeout, reach.unverified_context()) as tls:
        ders = reach.unverified_chain(tls)
    try:
        return [x509.load_der_x509_certificate(der) for der in ders]
    except ValueError:
        raise PinMismatchError(
            f"{server.target} sent a certificate that cannot be parsed; the token was not sent"
        ) from None


def probe(server: ServerAddress, pin: bytes, timeout: float = 10.0) -> PinnedServer:
    """Connects, reads the chain and checks it against the pin and the host."""
    return check_chain(fetch_chain(server, timeout), pin, server.host)
