"""Revocation documents signed by the CA: the CRL and OCSP responses, from plain values.

What is revoked is decided elsewhere (the store knows revoked devices and superseded
certificates); this module only turns a list of them into DER that nginx, OpenSSL or a
Java TLS stack reads: a CRL (RFC 5280) and OCSP responses (RFC 6960, with RFC 5019's
profile for GET). Nothing here reads a clock: `now` is a parameter.
"""

from __future__ import annotations

import enum
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

# A relying party refetches the CRL within this; DESIGN: nextUpdate at most one hour ahead.
CRL_VALIDITY = timedelta(hours=1)
# OCSP answers are fresh for less: a cache in front of the responder (RFC 5019) keeps
# an answer at most this long, so a revocation reaches every cached relying party soon.
OCSP_VALIDITY = timedelta(minutes=5)
# thisUpdate lies this far back, for relying parties whose clocks run a little behind.
BACKDATE = timedelta(minutes=1)
# Largest OCSP request accepted (a request for one certificate is about 100 bytes;
# the extensions of a real client stay well below this).
MAX_OCSP_REQUEST = 4096

REASONS: dict[str, x509.ReasonFlags] = {
    flag.value: flag
    for flag in x509.ReasonFlags
    if flag not in (x509.ReasonFlags.unspecified, x509.ReasonFlags.remove_from_crl)
}
"""The reason names an admin may give (RFC 5280 section 5.3.1 spelled as cryptography does)."""


GIVEN_REASONS: tuple[x509.ReasonFlags, ...] = (
    x509.ReasonFlags.unspecified,
    x509.ReasonFlags.key_compromise,
    x509.ReasonFlags.ca_compromise,
    x509.ReasonFlags.affiliation_changed,
    x509.ReasonFlags.cessation_of_operation,
    x509.ReasonFlags.privilege_withdrawn,
)
"""The reasons an admin may give for revoking a device. Not superseded: Sielum gives it
itself, to the certificate a renewal replaced; not certificateHold: a revocation is final;
not removeFromCRL (delta CRLs only) nor aACompromise (attribute certificates)."""


class CertificateStatus(enum.Enum):
    """What OCSP says of one serial: good, revoked, or not one of this CA's."""

    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Revocation:
    """One certificate no relying party may accept any more, until its own not_after."""

    serial: int
    revoked_at: datetime
    not_after: datetime
    reason: x509.ReasonFlags | None = None  # None: unspecified (no reasonCode extension)


@dataclass(frozen=True)
class Standing:
    """A serial's status as OCSP reports it; revocation set only for REVOKED."""

    status: CertificateStatus
    revocation: Revocation | None = None


def reason_from_name(name: str) -> x509.ReasonFlags | None:
    """An admin's reason name as a flag; '' and 'unspecified' carry no reasonCode.

    Raises ValueError naming the accepted reasons for anything else.
    """
    if name in ("", "unspecified"):
        return None
    try:
        return REASONS[name]
    except KeyError:
        accepted = ", ".join(["unspecified", *sorted(REASONS)])
        raise ValueError(f"unknown revocation reason {name!r}; one of: {accepted}") from None


def check_given_reason(name: str) -> str:
    """An admin's reason as stored (cryptography's spelling, "keyCompromise"); '' is
    "unspecified". Raises ValueError naming the accepted reasons for anything else."""
    value = name or x509.ReasonFlags.unspecified.value
    if value not in {flag.value for flag in GIVEN_REASONS}:
        accepted = ", ".join(flag.value for flag in GIVEN_REASONS)
        raise ValueError(f"revocation reason {name!r} cannot be given; one of: {accepted}")
    return value


def reason_flag(value: str | None) -> x509.ReasonFlags | None:
    """A stored reason as the flag a CRL entry or OCSP answer carries; None: no reasonCode
    (unspecified, or a reason this Sielum does not know)."""
    try:
        flag = x509.ReasonFlags(value or "unspecified")
    except ValueError:
        return None
    return None if flag is x509.ReasonFlags.unspecified else flag


def check_public_url(flag: str, url: str) -> str:
    """A --crl-url or --ocsp-url: an absolute http:// or https:// URL with a host.

    It is written into every certificate issued, so a typo would be signed in for the
    certificates' whole lifetime: refused here with a message that says what is wrong.
    """
    parsed = urllib.parse.urlsplit(url)
    try:
        port = parsed.port
    except ValueError:
        port = -1
    problem = ""
    if parsed.scheme not in ("http", "https"):
        problem = "must start with http:// or https://"
    elif not parsed.hostname:
        problem = "has no host"
    elif port == -1:
        problem = "has a port that is not a number from 0 to 65535"
    elif parsed.username is not None or parsed.password is not None:
        problem = "must not carry a user name or password"
    elif parsed.fragment or "#" in url:
        problem = "must not have a #fragment"
    elif any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in url):
        problem = "must be printable ASCII without spaces (percent-encode the rest)"
    if problem:
        raise ValueError(f"{flag} {url!r} {problem}")
    return url


def build_crl(
    ca_certificate: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    revocations: Iterable[Revocation],
    *,
    number: int,
    now: datetime,
    validity: timedelta = CRL_VALIDITY,
    entries_built: dict[Revocation, x509.RevokedCertificate] | None = None,
) -> bytes:
    """The CA-signed CRL, DER: every revocation whose certificate has not yet expired.

    An expired certificate is refused by every relying party on its own, so it leaves
    the list (RFC 5280 allows it; it keeps the CRL from growing without bound). number
    must grow with every CRL built: relying parties keep the highest they saw.

    entries_built, when given, holds the entries of the previous CRL, and is left
    holding this one's: building an entry costs more than signing it into the list
    (bench/crl_store.py), and from one CRL to the next nearly all stay the same.
    """
    cache = {} if entries_built is None else entries_built
    kept: dict[Revocation, x509.RevokedCertificate] = {}
    for revocation in revocations:
        if revocation.not_after > now:
            entry = cache.get(revocation)
            kept[revocation] = entry if entry is not None else _revoked_entry(revocation)
    if entries_built is not None:
        entries_built.clear()
        entries_built.update(kept)
    entries = list(kept.values())
    # The whole list goes to the builder's constructor at once: adding entries one by
    # one copies the list each time, and 100,000 entries took 10 s instead of half a second
    # (bench/crl_build.py).
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=ca_certificate.subject,
        last_update=now - BACKDATE,
        next_update=now + validity,
        extensions=[],
        revoked_certificates=entries,
    )
    builder = builder.add_extension(x509.CRLNumber(number), critical=False).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
    )
    crl = builder.sign(ca_key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.DER)


def _revoked_entry(revocation: Revocation) -> x509.RevokedCertificate:
    entry = (
        x509.RevokedCertificateBuilder()
        .serial_number(revocation.serial)
        .revocation_date(revocation.revoked_at)
    )
    if revocation.reason is not None:
        entry = entry.add_extension(x509.CRLReason(revocation.reason), critical=False)
    return entry.build()


def malformed_ocsp_response() -> bytes:
    """The unsigned answer to a request that cannot be read (RFC 6960 section 2.3)."""
    return ocsp.OCSPResponseBuilder.build_unsuccessful(
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    ).public_bytes(serialization.Encoding.DER)


def unauthorized_ocsp_response() -> bytes:
    """The unsigned answer for a certificate of another issuer: not ours to answer."""
    return ocsp.OCSPResponseBuilder.build_unsuccessful(
        ocsp.OCSPResponseStatus.UNAUTHORIZED
    ).public_bytes(serialization.Encoding.DER)


def answer_ocsp(
    request_der: bytes,
    ca_certificate: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    look_up: Callable[[int], Standing],
    *,
    now: datetime,
    validity: timedelta = OCSP_VALIDITY,
) -> bytes:
    """The DER OCSP response to one request, signed by the CA itself.

    A request that does not parse is MALFORMED_REQUEST; one that names another
    issuer (its issuer name and key hashes are not this CA's) is UNAUTHORIZED; else
    look_up(serial) decides good, revoked or unknown. A nonce in the request is
    echoed (RFC 8954), so a client that sent one can tell the answer is fresh.
    """
    if len(request_der) > MAX_OCSP_REQUEST:
        return malformed_ocsp_response()
    try:
        request = ocsp.load_der_ocsp_request(request_der)
        serial = request.serial_number
        algorithm = request.hash_algorithm
        issuer_name_hash = request.issuer_name_hash
        issuer_key_hash = request.issuer_key_hash
        nonce = _nonce(request)
    except (ValueError, TypeError, x509.UnsupportedGeneralNameType):
        return malformed_ocsp_response()
    if not _is_issuer(ca_certificate, algorithm, issuer_name_hash, issuer_key_hash):
        return unauthorized_ocsp_response()
    standing = look_up(serial)
    revocation = standing.revocation
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        issuer_name_hash=issuer_name_hash,
        issuer_key_hash=issuer_key_hash,
        serial_number=serial,
        algorithm=algorithm,
        cert_status=_ocsp_status(standing.status),
        this_update=now - BACKDATE,
        next_update=now + validity,
        revocation_time=revocation.revoked_at if revocation else None,
        revocation_reason=revocation.reason if revocation else None,
    )
    # The CA signs, and sends its certificate along: a client that looks for the
    # signer among the response's certificates (OpenSSL does) finds it there.
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, ca_certificate)
    builder = builder.certificates([ca_certificate])
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _nonce(request: ocsp.OCSPRequest) -> bytes | None:
    try:
        return request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return None


def _is_issuer(
    ca_certificate: x509.Certificate,
    algorithm: hashes.HashAlgorithm,
    issuer_name_hash: bytes,
    issuer_key_hash: bytes,
) -> bool:
    """Whether the request's issuer hashes name this CA (RFC 6960 section 4.1.1)."""
    if not isinstance(algorithm, hashes.SHA1 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512):
        return False
    name_digest = hashes.Hash(algorithm)
    name_digest.update(ca_certificate.subject.public_bytes())
    key_digest = hashes.Hash(algorithm)
    key_digest.update(
        ca_certificate.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
    return name_digest.finalize() == issuer_name_hash and key_digest.finalize() == issuer_key_hash


def _ocsp_status(status: CertificateStatus) -> ocsp.OCSPCertStatus:
    return {
        CertificateStatus.GOOD: ocsp.OCSPCertStatus.GOOD,
        CertificateStatus.REVOKED: ocsp.OCSPCertStatus.REVOKED,
        CertificateStatus.UNKNOWN: ocsp.OCSPCertStatus.UNKNOWN,
    }[status]
