"""What goes into a Sielum certificate: pure policy over keys, names and `now`, no I/O."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from sielum.errors import InternalError, InvalidArgumentError

DEFAULT_DEVICE_TTL = timedelta(days=90)
ADMIN_TTL = timedelta(days=365)
SERVICE_TTL = timedelta(days=365)
SERVER_TTL = timedelta(days=730)
CA_TTL = timedelta(days=3650)
# Certificates start a few minutes in the past so that a peer whose clock runs a
# little behind ours does not reject a certificate we have just issued.
BACKDATE = timedelta(minutes=5)
MAX_CSR_BYTES = 16 * 1024

CA_COMMON_NAME = "Sielum CA"
SERVER_COMMON_NAME = "sielum-server"
DEFAULT_SERVER_SANS = ("localhost", "127.0.0.1", "::1")

URI_SCHEME = "sielum"
ADMIN_ROLE = "admin"
SERVICE_ROLE = "service"
DEVICE_ROLE = "device"
# A device's tags ride beside its role URI as sielum://tag/<tag>: a relying service can
# authorize by tag from the certificate alone.
TAG_KIND = "tag"
_TAG_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
MAX_TAGS = 16

# Admin and service names and device ids land unescaped in a URI path and in the subject CN, so
# they are limited to URI-unreserved characters and to the CN's 64-character bound.
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS_NAME_PATTERN = re.compile(
    r"(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)
_NIST_CURVES = {
    "secp192r1": "P-192",
    "secp224r1": "P-224",
    "secp256r1": "P-256",
    "secp384r1": "P-384",
    "secp521r1": "P-521",
}
_CSR_LABELS = (b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST")
_FINGERPRINT_HELP = (
    "CA fingerprint must be sha256:<64 hex>, 64 hex digits, or OpenSSL's AB:CD:... form"
)


@dataclass(frozen=True)
class CheckedCsr:
    """A CSR that check_csr has passed (P-256 key, valid signature), with its key.

    Made only by load_checked_csr. CertificateAuthority.sign_device re-checks a
    plain CSR but takes this one as it is: the signature check is the most costly
    step of an enrollment after the signing itself, and once is enough.
    """

    csr: x509.CertificateSigningRequest
    public_key: ec.EllipticCurvePublicKey


def load_checked_csr(csr_pem: str | bytes) -> CheckedCsr:
    """load_csr, keeping the proof that the CSR was checked."""
    csr = _parse_csr(csr_pem)
    return CheckedCsr(csr=csr, public_key=check_csr(csr))


def load_csr(csr_pem: str | bytes) -> x509.CertificateSigningRequest:
    """Parses one PEM CSR and checks its key (ECDSA P-256) and its signature.

    The PEM framing is checked by hand, before any DER parser sees the bytes, so each
    refusal can say in plain words what is wrong with what the agent sent.
    """
    csr = _parse_csr(csr_pem)
    check_csr(csr)
    return csr


def _parse_csr(csr_pem: str | bytes) -> x509.CertificateSigningRequest:
    """The PEM framing and the DER of one CSR, each refusal in plain words; no key check."""
    if len(csr_pem) > MAX_CSR_BYTES:
        raise InvalidArgumentError(f"CSR is larger than {MAX_CSR_BYTES // 1024} KiB")
    data = csr_pem.encode("utf-8", errors="replace") if isinstance(csr_pem, str) else csr_pem
    if len(data) > MAX_CSR_BYTES:
        raise InvalidArgumentError(f"CSR is larger than {MAX_CSR_BYTES // 1024} KiB")
    text = data.strip()
    if not text:
        raise InvalidArgumentError("CSR is empty")

    begins = text.count(b"-----BEGIN ")
    if begins == 0:
        raise InvalidArgumentError(
            "CSR is not PEM: expected a -----BEGIN CERTIFICATE REQUEST----- block"
        )
    if begins > 1:
        raise InvalidArgumentError(f"CSR must be a single PEM block; found {begins}")
    if not text.startswith(b"-----BEGIN "):
        raise InvalidArgumentError("CSR has data before the -----BEGIN line")
    header = re.match(rb"-----BEGIN ([A-Z0-9 ]{1,40})-----", text)
    if header is None:
        raise InvalidArgumentError("CSR has a malformed -----BEGIN line")
    label = header.group(1)
    if label not in _CSR_LABELS:
        raise InvalidArgumentError(
            f"CSR must be a CERTIFICATE REQUEST PEM block; got {label.decode('ascii')}"
        )

    end_line = b"-----END " + label + b"-----"
    end = text.find(end_line, header.end())
    if end < 0:
        raise InvalidArgumentError(
            f"CSR PEM is truncated: no -----END {label.decode('ascii')}----- line"
        )
    if text[end + len(end_line) :]:
        raise InvalidArgumentError(
            f"CSR has data after the -----END {label.decode('ascii')}----- line"
        )

    body = b"".join(text[header.end() : end].split())
    if not body:
        raise InvalidArgumentError("CSR PEM block is empty")
    try:
        der = base64.b64decode(body, validate=True)
    except binascii.Error:
        raise InvalidArgumentError("CSR PEM body is not valid base64") from None
    try:
        csr = x509.load_der_x509_csr(der)
    except (ValueError, x509.InvalidVersion):
        # The parser's own text is not shown: it is an internal detail, and a
        # truncated or corrupted body is all the sender needs to know.
        # InvalidVersion is no ValueError: a corrupted version byte raised it past
        # this handler, as INTERNAL (tests/robust/test_hostile_input.py::test_fail_broken_csr).
        raise InvalidArgumentError(
            "CSR is not a valid PKCS#10 certificate request (truncated or corrupted?)"
        ) from None
    return csr


def check_csr(csr: x509.CertificateSigningRequest) -> ec.EllipticCurvePublicKey:
    """Refuses a CSR whose key is not ECDSA P-256 or whose signature does not verify."""
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidArgumentError(
            "CSR key must be ECDSA P-256; got a key type this server cannot read"
        ) from None
    p256_key = require_p256(key, what="CSR key")
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm, InvalidSignature):
        valid = False
    if not valid:
        raise InvalidArgumentError("CSR signature does not verify")
    return p256_key


def describe_key(key: PublicKeyTypes) -> str:
    """Names a public key the way a person would: "RSA 2048", "ECDSA P-384 (secp384r1)"."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        nist = _NIST_CURVES.get(key.curve.name)
        return f"ECDSA {nist} ({key.curve.name})" if nist else f"ECDSA {key.curve.name}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA {key.key_size}"
    return type(key).__name__


def require_p256(key: PublicKeyTypes, *, what: str) -> ec.EllipticCurvePublicKey:
    """Returns the key as a P-256 key, or raises InvalidArgumentError naming what it is."""
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise InvalidArgumentError(f"{what} must be ECDSA P-256; got {describe_key(key)}")


def public_key_sha256(public_key: PublicKeyTypes) -> str:
    """Lowercase hex SHA-256 of the key's SubjectPublicKeyInfo DER: the key's identity."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def issuer_key_id(certificate: x509.Certificate) -> str:
    """Lowercase hex of the key identifier of the CA that signed certificate ('' without one).

    Every certificate Sielum signs carries the CA's key identifier (AKI); a CA certificate
    is its own issuer, named by its SKI, so a leaf's issuer_key_id equals its CA's.
    """
    try:
        aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        if aki.key_identifier is not None:
            return aki.key_identifier.hex()
    except x509.ExtensionNotFound:
        pass
    try:
        ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return ""
    return ski.digest.hex()


def validate_name(name: str, *, what: str) -> str:
    """Returns name if it may be an admin or service name or a device id, else raises
    InvalidArgumentError."""
    # fullmatch, not match with "$": "$" would let a trailing newline through.
    if not isinstance(name, str) or _NAME_PATTERN.fullmatch(name) is None:
        raise InvalidArgumentError(
            f"{what} must be 1 to 64 characters of A-Z a-z 0-9 . _ - starting with a letter "
            "or digit"
        )
    return name


def random_serial() -> int:
    """A positive serial of 159 random bits, as RFC 5280 and the CA/B baseline ask."""
    return x509.random_serial_number()


def device_certificate(
    *,
    public_key: ec.EllipticCurvePublicKey,
    device_id: str,
    ca_certificate: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    serial: int,
    now: datetime,
    ttl: timedelta,
    crl_url: str = "",
    ocsp_url: str = "",
    tags: Sequence[str] = (),
) -> x509.Certificate:
    """The device certificate: every field decided here; only the key comes from the agent.

    crl_url and ocsp_url (serve --crl-url, --ocsp-url) go into CRL Distribution Points
    and Authority Information Access; without them, no such extension. Each tag (its
    token's) becomes a URI SAN sielum://tag/<tag> after the role URI.
    """
    validate_name(device_id, what="device id")
    return _client_certificate(
        role=DEVICE_ROLE,
        name=device_id,
        public_key=require_p256(public_key, what="device key"),
        ca_certificate=ca_certificate,
        ca_key=ca_key,
        serial=serial,
        now=now,
        ttl=ttl,
        extensions=revocation_extensions(crl_url, ocsp_url),
        extra_uris=tuple(tag_uri(t) for t in validate_tags(tags)),
    )


def validate_tags(tags: Sequence[str]) -> tuple[str, ...]:
    """tags, if each may stand in a tag URI and they are few and distinct; else
    InvalidArgumentError."""
    if len(tags) > MAX_TAGS or len(set(tags)) != len(tags):
        raise InvalidArgumentError(f"a certificate carries at most {MAX_TAGS} distinct tags")
    for tag in tags:
        if not isinstance(tag, str) or _TAG_PATTERN.fullmatch(tag) is None:
            raise InvalidArgumentError(
                f"tag {tag!r} is invalid: 1 to 63 characters of a-z 0-9 . _ - starting with "
                "a letter or digit"
            )
    return tuple(tags)


def tag_uri(tag: str) -> str:
    return f"{URI_SCHEME}://{TAG_KIND}/{tag}"


def tags_of(certificate: x509.Certificate) -> tuple[str, ...]:
    """The tags in the certificate's sielum://tag/<tag> URI SANs, in their order."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    prefix = f"{URI_SCHEME}://{TAG_KIND}/"
    return tuple(
        uri[len(prefix) :]
        for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(prefix)
    )


def revocation_extensions(crl_url: str, ocsp_url: str) -> tuple[x509.ExtensionType, ...]:
    """Where relying parties check revocation: CRL Distribution Points, AIA's OCSP."""
    extensions: list[x509.ExtensionType] = []
    if crl_url:
        point = x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(crl_url)],
            relative_name=None,
            reasons=None,
            crl_issuer=None,
        )
        extensions.append(x509.CRLDistributionPoints([point]))
    if ocsp_url:
        extensions.append(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
                    )
                ]
            )
        )
    return tuple(extensions)


def _identity_certificate(
    role: str,
    *,
    public_key: ec.EllipticCurvePublicKey,
    name: str,
    ca_certificate: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    serial: int,
    now: datetime,
    ttl: timedelta,
) -> x509.Certificate:
    """The client certificate of a named identity: CN=<name>, URI SAN sielum://<role>/<name>."""
    validate_name(name, what=f"{role} name")
    return _client_certificate(
        role=role,
        name=name,
        public_key=require_p256(public_key, what=f"{role} key"),
        ca_certificate=ca_certificate,
        ca_key=ca_key,
        serial=serial,
        now=now,
        ttl=ttl,
    )


# An admin's client certificate (sielum://admin/<name>) and a service identity's
# (sielum://service/<name>): one year unless ttl says otherwise.
admin_certificate = functools.partial(_identity_certificate, ADMIN_ROLE, ttl=ADMIN_TTL)
service_certificate = functools.partial(_identity_certificate, SERVICE_ROLE, ttl=SERVICE_TTL)


def _client_certificate(
    *,
    role: str,
    name: str,
    public_key: ec.EllipticCurvePublicKey,
    ca_certificate: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    serial: int,
    now: datetime,
    ttl: timedelta,
    extensions: tuple[x509.ExtensionType, ...] = (),
    extra_uris: Sequence[str] = (),
) -> x509.Certificate:
    builder = _leaf_builder(
        common_name=name,
        public_key=public_key,
        ca_certificate=ca_certificate,
        ca_key=ca_key,
        serial=serial,
        now=now,
        ttl=ttl,
    )
    builder = builder.add_extension(
        x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(u) for u in (role_uri(role, name), *extra_uris)]
        ),
        critical=False,
    ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def server_certificate(
    *,
    public_key: ec.EllipticCurvePublicKey,
    sans: tuple[x509.GeneralName, ...],
    ca_certificate: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    serial: int,
    now: datetime,
    ttl: timedelta = SERVER_TTL,
) -> x509.Certificate:
    """The server's TLS certificate: CN sielum-server, the given SANs, EKU serverAuth."""
    if not sans:
        raise ValueError("a server certificate needs at least one SAN")
    builder = _leaf_builder(
        common_name=SERVER_COMMON_NAME,
        public_key=require_p256(public_key, what="server key"),
        ca_certificate=ca_certificate,
        ca_key=ca_key,
        serial=serial,
        now=now,
        ttl=ttl,
    )
    builder = builder.add_extension(
        x509.SubjectAlternativeName(list(sans)), critical=False
    ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def server_sans(extra: Sequence[str] = ()) -> tuple[x509.GeneralName, ...]:
    """localhost, 127.0.0.1, ::1 and each extra name: an IP literal as an IP SAN, else DNS."""
    if isinstance(extra, str):
        raise TypeError("extra must be a sequence of names, not one string")
    names: list[x509.GeneralName] = []
    for text in (*DEFAULT_SERVER_SANS, *extra):
        name = parse_san(text)
        if name not in names:
            names.append(name)
    return tuple(names)


def parse_san(text: str) -> x509.GeneralName:
    """One --san value: an IP literal becomes an IP SAN, a host name a DNS SAN."""
    value = text.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    dns = value.lower().rstrip(".")
    if len(dns) > 253 or _DNS_NAME_PATTERN.fullmatch(dns) is None:
        raise InvalidArgumentError(
            f"--san {text!r} is neither an IP address nor a DNS name (ASCII letters, digits, "
            "hyphens and dots)"
        )
    return x509.DNSName(dns)


def self_signed_ca_certificate(
    *, key: ec.EllipticCurvePrivateKey, now: datetime, ttl: timedelta = CA_TTL
) -> x509.Certificate:
    """The Sielum CA: self-signed P-256, CA:TRUE pathlen 0, keyCertSign and cRLSign."""
    _require_aware(now)
    require_p256(key.public_key(), what="CA key")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + ttl)
        # pathlen 0: this CA signs leaves only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf_builder(
    *,
    common_name: str,
    public_key: ec.EllipticCurvePublicKey,
    ca_certificate: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    serial: int,
    now: datetime,
    ttl: timedelta,
) -> x509.CertificateBuilder:
    """The fields every leaf shares: validity, CA:FALSE, digitalSignature, SKI and AKI."""
    _require_aware(now)
    if ttl <= timedelta(0):
        raise ValueError("certificate lifetime must be positive")
    ca_not_after = ca_certificate.not_valid_after_utc
    if ca_not_after <= now:
        raise InternalError(f"the CA certificate expired at {ca_not_after.isoformat()}")
    # A leaf never outlives its CA: past the CA's not_after it could not verify anyway,
    # and a not_after that says otherwise would only mislead the renewal schedule.
    not_after = min(now + ttl, ca_not_after)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_identifier(ca_certificate, ca_key), critical=False)
    )


def _authority_key_identifier(
    ca_certificate: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> x509.AuthorityKeyIdentifier:
    # The AKI must equal the CA's own SKI byte for byte, or path building by key id
    # fails; only a CA certificate without an SKI falls back to hashing the key.
    try:
        ski = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def _require_aware(now: datetime) -> None:
    # A naive datetime would be read as UTC by cryptography but as local time by
    # everything else; refusing it keeps a wrong-by-hours validity from slipping in.
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")


def role_uri(role: str, name: str) -> str:
    """The URI SAN that names a role: sielum://admin/<name>, sielum://service/<name> or
    sielum://device/<id>."""
    return f"{URI_SCHEME}://{role}/{name}"


def role_of(certificate: x509.Certificate) -> tuple[str, str] | None:
    """("admin", name), ("service", name) or ("device", id) from the certificate's one URI
    SAN, else None.

    Tag URIs (sielum://tag/<tag>) may stand beside it; any other URI SAN, or a second
    role URI, makes the certificate ambiguous and it has no role: we never issue one,
    so meeting one means something is wrong.
    """
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    tag_prefix = f"{URI_SCHEME}://{TAG_KIND}/"
    uris = [
        uri
        for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier)
        if not (uri.startswith(tag_prefix) and _TAG_PATTERN.fullmatch(uri[len(tag_prefix) :]))
    ]
    if len(uris) != 1:
        return None
    roles = "|".join((ADMIN_ROLE, SERVICE_ROLE, DEVICE_ROLE))
    match = re.fullmatch(rf"{URI_SCHEME}://({roles})/(.+)", uris[0])
    if match is None or _NAME_PATTERN.fullmatch(match.group(2)) is None:
        return None
    return match.group(1), match.group(2)


def fingerprint(certificate: x509.Certificate) -> str:
    """The certificate's SHA-256 fingerprint as "sha256:<64 lowercase hex>"."""
    return "sha256:" + certificate.fingerprint(hashes.SHA256()).hex()


def parse_fingerprint(text: str) -> bytes:
    """The 32 bytes of a SHA-256 fingerprint written as sha256:<hex>, bare hex or AB:CD:...

    Also takes the whole line `openssl x509 -noout -fingerprint -sha256` prints, so an
    operator can paste it as is.
    """
    value = text.strip()
    openssl_line = re.fullmatch(r"(?i)(sha-?\d+)\s+fingerprint\s*=\s*(.*)", value)
    if openssl_line is not None:
        algorithm, value = openssl_line.group(1).lower().replace("-", ""), openssl_line.group(2)
        if algorithm != "sha256":
            raise InvalidArgumentError(
                f"{_FINGERPRINT_HELP}; got a {algorithm.upper()} fingerprint "
                "(use openssl x509 -noout -fingerprint -sha256)"
            )
    else:
        prefixed = re.fullmatch(r"(?i)sha256:(.*)", value)
        if prefixed is not None:
            value = prefixed.group(1)
    if re.fullmatch(r"[0-9A-Fa-f]{64}", value) or re.fullmatch(
        r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){31}", value
    ):
        return bytes.fromhex(value.replace(":", ""))
    digits = re.sub(r"[^0-9A-Fa-f]", "", value)
    if len(digits) == 40 and re.fullmatch(r"[0-9A-Fa-f:]+", value):
        # `openssl x509 -fingerprint` without -sha256 prints SHA-1: the usual slip.
        raise InvalidArgumentError(
            f"{_FINGERPRINT_HELP}; got 40 hex digits, a SHA-1 fingerprint "
            "(use openssl x509 -noout -fingerprint -sha256)"
        )
    raise InvalidArgumentError(_FINGERPRINT_HELP)
