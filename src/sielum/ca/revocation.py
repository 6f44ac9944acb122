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
from datetime import UTC, datetime, timedelta

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
) -> bytes:
    """The CA-signed CRL, DER: every revocation whose certificate has not yet expired.

    An expired certificate is refused by every relying party on its own, so it leaves
    the list (RFC 5280 allows it; it keeps the CRL from growing without bound). number
    must grow with every CRL built: relying parties keep the highest they saw.
    """
    entries = [_revoked_entry(r) for r in revocations if r.not_after > now]
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


# RFC 5280's CRLReason codes, for entries encoded here.
_REASON_CODES: dict[x509.ReasonFlags, int] = {
    x509.ReasonFlags.unspecified: 0,
    x509.ReasonFlags.key_compromise: 1,
    x509.ReasonFlags.ca_compromise: 2,
    x509.ReasonFlags.affiliation_changed: 3,
    x509.ReasonFlags.superseded: 4,
    x509.ReasonFlags.cessation_of_operation: 5,
    x509.ReasonFlags.certificate_hold: 6,
    x509.ReasonFlags.remove_from_crl: 8,
    x509.ReasonFlags.privilege_withdrawn: 9,
    x509.ReasonFlags.aa_compromise: 10,
}
# The reasonCode extension, up to its ENUMERATED value: id-ce-cRLReasons (2.5.29.21),
# non-critical (the default, so not encoded), an OCTET STRING holding ENUMERATED.
_REASON_EXTENSION_HEAD = bytes.fromhex("0603551d1504030a01")


def crl_entry_der(serial: int, revoked_at: datetime, reason: x509.ReasonFlags | None) -> bytes:
    """One revokedCertificates entry, DER, exactly as cryptography's CRL builder writes it
    (tests/unit/test_revocation_policy.py compares the two byte for byte).

    Building entries with cryptography costs more than signing the list; encoded here,
    an entry is bytes a CrlPublisher keeps from one CRL to the next.
    """
    body = _der(0x02, _unsigned(serial)) + _der_time(revoked_at)
    if reason is not None:
        extension = _der(0x30, _REASON_EXTENSION_HEAD + bytes([_REASON_CODES[reason]]))
        body += _der(0x30, extension)
    return _der(0x30, body)


def sign_crl_entries(
    ca_certificate: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    entries: list[bytes],
    *,
    number: int,
    now: datetime,
    validity: timedelta = CRL_VALIDITY,
) -> bytes:
    """The CA-signed CRL, DER, listing entries (crl_entry_der's), as build_crl would.

    cryptography builds the CRL without entries (issuer, times, number, key identifier);
    the entries go into its TBSCertList before the extensions, and the CA signs that. The
    caller leaves out the certificates that have expired.
    """
    empty = build_crl(ca_certificate, ca_key, [], number=number, now=now, validity=validity)
    template = x509.load_der_x509_crl(empty)
    fields = _der_children(template.tbs_certlist_bytes)
    if entries:
        listed = _der(0x30, b"".join(entries))
        # The extensions are [0] EXPLICIT, the last field: the entries go just before.
        at = next(i for i, field in enumerate(fields) if field[0] == 0xA0)
        fields.insert(at, listed)
    tbs = _der(0x30, b"".join(fields))
    algorithm = _der_children(empty)[1]
    signature = ca_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return _der(0x30, tbs + algorithm + _der(0x03, b"\x00" + signature))


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + body


def _unsigned(value: int) -> bytes:
    """A non-negative INTEGER's minimal two's-complement content octets."""
    return value.to_bytes(value.bit_length() // 8 + 1, "big")


def _der_time(at: datetime) -> bytes:
    """UTCTime through 2049, GeneralizedTime after (RFC 5280 section 4.1.2.5), to the second."""
    at = at.astimezone(UTC)
    if at.year < 2050:
        return _der(0x17, at.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    return _der(0x18, at.strftime("%Y%m%d%H%M%SZ").encode("ascii"))


def _der_children(der: bytes) -> list[bytes]:
    """The encoded elements inside one DER SEQUENCE, each whole (tag, length, content)."""
    content, _ = _der_content(der, 0)
    children, at = [], 0
    while at < len(content):
        _, end = _der_content(content, at)
        children.append(content[at:end])
        at = end
    return children


def _der_content(der: bytes, at: int) -> tuple[bytes, int]:
    """The content of the element starting at `at`, and where the next one starts."""
    first = der[at + 1]
    if first < 0x80:
        start, size = at + 2, first
    else:
        count = first & 0x7F
        start = at + 2 + count
        size = int.from_bytes(der[at + 2 : start], "big")
    return der[start : start + size], start + size


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
