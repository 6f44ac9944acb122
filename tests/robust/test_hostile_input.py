"""Hostile input, property-based: each gets its documented status and a clear message, never
INTERNAL, and changes nothing."""

from __future__ import annotations

import base64
import ipaddress
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from sielum.admin.v1 import admin_pb2, admin_pb2_grpc
from sielum.agent.v1 import agent_pb2, agent_pb2_grpc
from sielum.enroll.ratelimit import FailureLimit
from sielum.enroll.v1 import enroll_pb2, enroll_pb2_grpc
from sielum.server.app import MAX_MESSAGE_BYTES
from sielum.tokens import make_secret, new_token_id
from tests.rpc.conftest import Harness, make_csr, make_key, start_harness

from .conftest import temporary_postgres_database

# Bounded, so the whole robust suite stays within minutes; derandomized runs would
# only ever try the same inputs, so each run explores new ones (failures are
# replayed from .hypothesis/ and printed with a reproduction blob).
FAST = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
FEW = settings(FAST, max_examples=30)

MALFORMED_TOKEN = (
    "enrollment token is malformed: expected slm_<16 chars>_<39 chars> in lowercase base32"
)
MISTYPED_TOKEN = "enrollment token checksum does not match: it was mistyped"
INVALID_TOKEN = "enrollment token is invalid"
TOKEN_FORMAT_MESSAGES = {MALFORMED_TOKEN, MISTYPED_TOKEN}
TOO_LARGE = "Received message larger than max"


@dataclass
class Target:
    """A running server with a known state to compare against after every hostile call."""

    harness: Harness
    secret: str  # max_uses 3, one use taken
    token_id: str
    open_secret: str  # unlimited, for inputs that must succeed
    device_id: str
    device_key: ec.EllipticCurvePrivateKey
    device_certificate_pem: str
    enroll: enroll_pb2_grpc.EnrollServiceStub
    admin: admin_pb2_grpc.AdminServiceStub
    agent: agent_pb2_grpc.AgentServiceStub
    enroll_channel: grpc.Channel
    admin_channel: grpc.Channel

    def state(self) -> tuple[Any, ...]:
        """Everything a refused call must leave as it was: tokens, uses, devices, keys,
        admins and services."""
        store = self.harness.server.store
        now = datetime.now(UTC)
        tokens = store.list_tokens(now=now, page_size=1000).items
        devices = store.list_devices(page_size=1000).items
        admins = store.list_admins(page_size=1000).items
        services = store.list_services(page_size=1000).items
        return (
            sorted((t.id, t.uses, t.revoked_at, t.last_used_at) for t in tokens),
            sorted((d.id, d.serial, d.public_key_sha256, d.revoked_at) for d in devices),
            sorted((a.name, a.revoked_at) for a in admins),
            sorted((s.name, s.revoked_at) for s in services),
        )


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    with _database(request.param, tmp_path_factory.mktemp("hostile")) as (url, tmp):
        # The failure limit is off here: every example is a failure from one address.
        h = start_harness(tmp, database_url=url, failure_limit=FailureLimit(burst=0))
        try:
            created = h.create_token(max_uses=3)
            response, key = h.enroll(created.secret)
            enroll_channel, admin_channel = h.enroll_channel(), h.admin_channel()
            yield Target(
                harness=h,
                secret=created.secret,
                token_id=created.token.id,
                open_secret=h.create_token(label="open").secret,
                device_id=response.device_id,
                device_key=key,
                device_certificate_pem=response.certificate_pem,
                enroll=enroll_pb2_grpc.EnrollServiceStub(enroll_channel),
                admin=admin_pb2_grpc.AdminServiceStub(admin_channel),
                agent=h.agent(key, response.certificate_pem),
                enroll_channel=enroll_channel,
                admin_channel=admin_channel,
            )
        finally:
            h.server.stop(grace=1)


class _database:
    """(database URL, temp dir) for one backend; PostgreSQL gets a database of its own."""

    def __init__(self, backend: str, tmp: Path) -> None:
        self._backend = backend
        self._tmp = tmp
        self._pg: Any = None

    def __enter__(self) -> tuple[str, Path]:
        if self._backend == "sqlite":
            return "", self._tmp
        self._pg = temporary_postgres_database()
        return self._pg.__enter__(), self._tmp

    def __exit__(self, *exc: object) -> None:
        if self._pg is not None:
            self._pg.__exit__(*exc)


def refused(target: Target, call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    """Run a call that must fail, and check that it changed nothing; returns code and details."""
    before = target.state()
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert target.state() == before, "a refused call changed the database"
    code: grpc.StatusCode = caught.value.code()  # type: ignore[attr-defined]
    details: str = caught.value.details()  # type: ignore[attr-defined]
    assert code is not grpc.StatusCode.INTERNAL, details
    assert code is not grpc.StatusCode.UNKNOWN, details
    return code, details


def enroll_request(**fields: Any) -> enroll_pb2.EnrollRequest:
    fields.setdefault("hostname", "host")
    return enroll_pb2.EnrollRequest(**fields)


# The token


@FAST
@given(text=st.text(max_size=200))
@example(text="")
@example(text="' OR '1'='1")
@example(text="slm_'; DROP TABLE token; --")
@example(text="slm_aaaaaaaaaaaaaaaa_%")
@example(text="\x00")
@example(text="slm_" + "a" * 16 + "_" + "a" * 39 + "\x00")
def test_fail_random_text_as_token(target: Target, text: str) -> None:
    code, details = refused(
        target,
        lambda: target.enroll.Enroll(
            enroll_request(token=text, csr_pem=make_csr(make_key())), timeout=10
        ),
    )
    assert (code, details) in {
        (grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_TOKEN),
        (grpc.StatusCode.INVALID_ARGUMENT, MISTYPED_TOKEN),
        (grpc.StatusCode.UNAUTHENTICATED, INVALID_TOKEN),
    }


# Look-alikes (Cyrillic a, fullwidth s), invisible and non-breaking spaces, SQL, NUL.
_CONFUSABLES = [
    "\u0430", "\uff53", "\u200b", "\u00a0", " ", "\t", "'", ";", "--", "\u00e9", "\x00", "%", "_",
]  # fmt: skip


@FAST
@given(
    position=st.integers(min_value=0, max_value=60),
    insert=st.sampled_from(_CONFUSABLES) | st.text(min_size=1, max_size=3),
    replace=st.booleans(),
    upper=st.booleans(),
)
def test_fail_mutated_secret(
    target: Target, position: int, insert: str, replace: bool, upper: bool
) -> None:
    """The real secret with whitespace, unicode or SQL inside it, or in upper case."""
    secret = target.secret
    position = min(position, len(secret))
    mutated = secret[:position] + insert + secret[position + (1 if replace else 0) :]
    if upper:
        mutated = mutated.upper()
    if mutated.strip() == secret:
        return  # only surrounding whitespace: forgiven by design (test_enroll.py)
    code, details = refused(
        target,
        lambda: target.enroll.Enroll(
            enroll_request(token=mutated, csr_pem=make_csr(make_key())), timeout=10
        ),
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details in TOKEN_FORMAT_MESSAGES


def test_fail_well_formed_forgeries_are_one_generic_refusal(target: Target) -> None:
    for forged in (make_secret(target.token_id).reveal(), make_secret(new_token_id()).reveal()):
        code, details = refused(
            target,
            lambda forged=forged: target.enroll.Enroll(
                enroll_request(token=forged, csr_pem=make_csr(make_key())), timeout=10
            ),
        )
        assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, INVALID_TOKEN)


# Bytes that are not the request message at all


ENROLL_REFUSALS = (
    "request is not a valid sielum.enroll.v1.EnrollRequest message",
    MALFORMED_TOKEN,
    MISTYPED_TOKEN,
    "hostname is longer than",
    "hostname contains control characters",
    "too many facts",
    "fact ",
)


@FAST
@given(raw=st.binary(max_size=2048))
@example(raw=b"\x0a\x02\xc3\x28")  # field 1 (token) holding bytes that are not UTF-8
@example(raw=b"\xff\xff\xff\xff\xff")
@example(raw=b"\x0a\xff\xff\xff\xff\x0f")  # a length beyond the message
def test_fail_random_bytes_on_the_wire(target: Target, raw: bytes) -> None:
    call = target.enroll_channel.unary_unary("/sielum.enroll.v1.EnrollService/Enroll")
    code, details = refused(target, lambda: call(raw, timeout=10))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(ENROLL_REFUSALS), details


ADMIN_METHODS_READ_OR_REVOKE = [
    "GetEnrollmentToken",
    "ListEnrollmentTokens",
    "RevokeEnrollmentToken",
    "ListDevices",
    "GetDevice",
    "RevokeDevice",
]


@FAST
@given(method=st.sampled_from(ADMIN_METHODS_READ_OR_REVOKE), raw=st.binary(max_size=512))
@example(method="GetEnrollmentToken", raw=b"\x0a\x02\xc3\x28")
def test_fail_random_bytes_to_admin_methods(target: Target, method: str, raw: bytes) -> None:
    call = target.admin_channel.unary_unary(f"/sielum.admin.v1.AdminService/{method}")
    before = target.state()
    try:
        call(raw, timeout=10)
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        assert code in {
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
        }, error.details()  # type: ignore[attr-defined]
    # Random bytes never name a real token or device, so nothing was revoked.
    assert target.state() == before


# The CSR


def _valid_csr_pem() -> str:
    return make_csr(make_key())


# One CSR for the whole run: a strategy must draw the same way each time it replays.
_BASE_CSR = _valid_csr_pem()


@st.composite
def broken_csrs(draw: st.DrawFn) -> str:
    pem = _BASE_CSR
    kind = draw(st.sampled_from(["truncated", "junk-after", "junk-before", "flipped", "random"]))
    if kind == "truncated":
        return pem[: draw(st.integers(min_value=0, max_value=len(pem) - 2))]
    if kind == "junk-after":
        return pem + draw(st.text(min_size=1, max_size=50).filter(lambda s: s.strip() != ""))
    if kind == "junk-before":
        return draw(st.text(min_size=1, max_size=50).filter(lambda s: s.strip() != "")) + pem
    if kind == "flipped":
        lines = pem.splitlines()
        body = "".join(lines[1:-1])
        der = bytearray(base64.b64decode(body))
        index = draw(st.integers(min_value=0, max_value=len(der) - 1))
        der[index] ^= draw(st.integers(min_value=1, max_value=255))
        # Some flips leave a valid CSR (the signature BIT STRING's count of unused
        # bits, which are zero anyway): those are not broken, so not this test's.
        assume(not _still_a_valid_csr(bytes(der)))
        return _pem(bytes(der))
    return draw(st.text(max_size=300))


def _still_a_valid_csr(der: bytes) -> bool:
    try:
        csr = x509.load_der_x509_csr(der)
        key = csr.public_key()
        return (
            isinstance(key, ec.EllipticCurvePublicKey)
            and isinstance(key.curve, ec.SECP256R1)
            and csr.is_signature_valid
        )
    except Exception:
        return False


def _pem(der: bytes, label: str = "CERTIFICATE REQUEST") -> str:
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN {label}-----\n{body}-----END {label}-----\n"


def _with_version(pem: str, version: int) -> str:
    """The CSR with its version INTEGER (the first 02 01 00 of the DER) set to another value."""
    der = base64.b64decode("".join(pem.strip().splitlines()[1:-1]))
    at = der.index(b"\x02\x01\x00")
    return _pem(der[:at] + bytes([2, 1, version]) + der[at + 3 :])


@FAST
@given(csr_pem=broken_csrs())
@example(csr_pem="")
@example(csr_pem="-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n")
@example(csr_pem=_pem(b"\x30\x03\x02\x01\x00", "CERTIFICATE"))
@example(csr_pem=_pem(b"\x30\x03\x02\x01\x00") * 2)
@example(csr_pem="-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----")
@example(csr_pem="A" * 20_000)
@example(csr_pem=_with_version(_BASE_CSR, 7))  # not v1: cryptography raises InvalidVersion
def test_fail_broken_csr(target: Target, csr_pem: str) -> None:
    """Truncated, with junk around it, a flipped byte, or not a CSR at all: INVALID_ARGUMENT."""
    code, details = refused(
        target,
        lambda: target.enroll.Enroll(
            enroll_request(token=target.secret, csr_pem=csr_pem), timeout=10
        ),
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("CSR "), details


def _csr_with(key: Any, algorithm: Any = hashes.SHA256()) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "endpoint")]))
        .sign(key, algorithm)
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RSA 2048"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ECDSA P-384 (secp384r1)"),
        (lambda: ec.generate_private_key(ec.SECP521R1()), "ECDSA P-521 (secp521r1)"),
        (lambda: ec.generate_private_key(ec.SECP256K1()), "ECDSA secp256k1"),
        (ed25519.Ed25519PrivateKey.generate, "Ed25519"),
    ],
)
def test_fail_csr_with_another_key_type(target: Target, make: Any, named: str) -> None:
    key = make()
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr_pem = _csr_with(key, algorithm)
    code, details = refused(
        target,
        lambda: target.enroll.Enroll(
            enroll_request(token=target.secret, csr_pem=csr_pem), timeout=10
        ),
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"CSR key must be ECDSA P-256; got {named}"


def test_fail_csr_with_a_bad_signature(target: Target) -> None:
    csr = x509.load_pem_x509_csr(_valid_csr_pem().encode())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the signature's s
    code, details = refused(
        target,
        lambda: target.enroll.Enroll(
            enroll_request(token=target.secret, csr_pem=_pem(bytes(der))), timeout=10
        ),
    )
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "CSR signature does not verify")


def test_fail_csr_of_someone_elses_key(target: Target) -> None:
    """A CSR carrying one key but signed by another: the signature does not verify."""
    mine, theirs = make_key(), make_key()
    genuine = x509.load_pem_x509_csr(make_csr(mine).encode())
    other = x509.load_pem_x509_csr(make_csr(theirs).encode())
    spliced = _der_sequence(genuine.tbs_certrequest_bytes + _sig_alg_and_signature(other))
    code, details = refused(
        target,
        lambda: target.enroll.Enroll(
            enroll_request(token=target.secret, csr_pem=_pem(spliced)), timeout=10
        ),
    )
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "CSR signature does not verify")


def _der_sequence(content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        encoded = bytes([length])
    else:
        size = (length.bit_length() + 7) // 8
        encoded = bytes([0x80 | size]) + length.to_bytes(size, "big")
    return b"\x30" + encoded + content


def _sig_alg_and_signature(csr: x509.CertificateSigningRequest) -> bytes:
    """The DER after the TBS part of a CSR: its signature algorithm and signature."""
    der = csr.public_bytes(serialization.Encoding.DER)
    tbs = csr.tbs_certrequest_bytes
    return der[der.index(tbs) + len(tbs) :]


# What the agent asks for is ignored: the certificate is exactly the server's profile


@st.composite
def greedy_csrs(draw: st.DrawFn) -> tuple[str, ec.EllipticCurvePrivateKey]:
    key = make_key()
    names = [x509.NameAttribute(NameOID.COMMON_NAME, draw(_cn))]
    if draw(st.booleans()):
        names.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sielum CA"))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    if draw(st.booleans()):
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=draw(st.none() | st.integers(0, 5))),
            critical=True,
        )
    sans = draw(
        st.lists(
            st.sampled_from(
                [
                    x509.DNSName("enroll.example.com"),
                    x509.UniformResourceIdentifier("sielum://admin/root"),
                    x509.UniformResourceIdentifier("sielum://device/someone-else"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.RFC822Name("root@example.com"),
                ]
            ),
            unique=True,
            max_size=5,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if draw(st.booleans()):
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CODE_SIGNING]
            ),
            critical=False,
        )
    if draw(st.booleans()):
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
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
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


# A CN is at most 64 bytes of UTF-8 (cryptography refuses to build a longer one): 64
# characters of which one is not ASCII are too many.
_cn = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], max_codepoint=0xFFFF),
    min_size=1,
    max_size=64,
).filter(lambda cn: len(cn.encode()) <= 64) | st.just("admin")


@FEW
@given(request=greedy_csrs())
def test_ok_csr_asking_for_more_gets_exactly_the_profile(
    target: Target, request: tuple[str, ec.EllipticCurvePrivateKey]
) -> None:
    csr_pem, key = request
    reply = target.enroll.Enroll(
        enroll_request(token=target.open_secret, csr_pem=csr_pem), timeout=10
    )
    certificate = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
    ca = x509.load_pem_x509_certificate(target.harness.ca_pem)
    assert certificate.subject == x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, reply.device_id)]
    )
    assert certificate.issuer == ca.subject
    assert certificate.public_key() == key.public_key()
    extensions = {e.oid: e for e in certificate.extensions}
    assert set(extensions) == {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.EXTENDED_KEY_USAGE,
    }
    constraints = extensions[ExtensionOID.BASIC_CONSTRAINTS]
    assert constraints.critical and constraints.value == x509.BasicConstraints(
        ca=False, path_length=None
    )
    usage = extensions[ExtensionOID.KEY_USAGE].value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign
    assert not usage.content_commitment and not usage.key_encipherment
    assert list(extensions[ExtensionOID.SUBJECT_ALTERNATIVE_NAME].value) == [
        x509.UniformResourceIdentifier(f"sielum://device/{reply.device_id}")
    ]
    assert list(extensions[ExtensionOID.EXTENDED_KEY_USAGE].value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime == timedelta(days=90, minutes=5)


# Hostname and facts: checked before the token, so a wrong secret shows whether they passed


def _enroll_with_wrong_secret(target: Target, **fields: Any) -> tuple[grpc.StatusCode, str]:
    wrong = make_secret(target.token_id).reveal()
    return refused(
        target,
        lambda: target.enroll.Enroll(
            enroll_pb2.EnrollRequest(token=wrong, csr_pem=_valid_csr_pem(), **fields), timeout=10
        ),
    )


@FAST
@given(hostname=st.text(max_size=400))
@example(hostname="h" * 254)
@example(hostname="bad\x1b[2Jname")
@example(hostname="'; DELETE FROM device; --")
def test_hostile_hostname(target: Target, hostname: str) -> None:
    code, details = _enroll_with_wrong_secret(target, hostname=hostname)
    name = hostname.strip()
    if len(name) > 253:
        assert (code, details) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "hostname is longer than 253 characters",
        )
    elif not all(c.isprintable() for c in name):
        assert (code, details) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "hostname contains control characters",
        )
    else:
        assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, INVALID_TOKEN)


def _facts_acceptable(facts: dict[str, str]) -> bool:
    """The documented limits: at most 64 facts, names 1-64 of [A-Za-z0-9._/-] starting with
    a letter or digit, values at most 1024 printable characters, 16 KiB of UTF-8 in all."""
    import re

    name = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}")
    return (
        len(facts) <= 64
        and all(name.fullmatch(k) and len(v) <= 1024 and v.isprintable() for k, v in facts.items())
        and sum(len(k.encode()) + len(v.encode()) for k, v in facts.items()) <= 16384
    )


@FAST
@given(
    facts=st.dictionaries(
        st.text(max_size=70) | st.from_regex(r"[a-z][a-z0-9.]{0,10}", fullmatch=True),
        st.text(max_size=40) | st.text(min_size=1020, max_size=1030),
        max_size=70,
    )
)
@example(facts={f"k{i}": "v" for i in range(10_000)})
@example(facts={"os": "linux\x1b]0;pwned\x07"})
@example(facts={"": "x"})
@example(facts={f"k{i}": "\U0001f512" * 1000 for i in range(5)})
def test_hostile_facts(target: Target, facts: dict[str, str]) -> None:
    code, details = _enroll_with_wrong_secret(target, hostname="h", facts=facts)
    if _facts_acceptable(facts):
        assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, INVALID_TOKEN)
    else:
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith(
            ("too many facts: ", "fact names are ", "fact '", "facts are too large: ")
        ), details
        if len(facts) > 64:
            assert details == f"too many facts: {len(facts)} (at most 64)"


@FEW
@given(
    facts=st.dictionaries(
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,20}", fullmatch=True),
        st.text(
            alphabet=st.characters(
                blacklist_categories=["Cs", "Cc", "Cf", "Zl", "Zp", "Co", "Cn", "Zs"]
            )
            | st.just(" "),
            max_size=50,
        ),
        max_size=8,
    )
)
def test_ok_acceptable_facts_are_stored_exactly(target: Target, facts: dict[str, str]) -> None:
    reply = target.enroll.Enroll(
        enroll_request(token=target.open_secret, csr_pem=_valid_csr_pem(), facts=facts),
        timeout=10,
    )
    device = target.admin.GetDevice(admin_pb2.GetDeviceRequest(id=reply.device_id), timeout=10)
    assert dict(device.device.facts) == facts


# Messages above the size limit, to every method


BIG = "x" * (MAX_MESSAGE_BYTES + 1024)


def _oversized_calls(target: Target) -> list[tuple[str, Callable[[], Any]]]:
    a, t = target.admin, 10
    return [
        (
            "Enroll",
            lambda: target.enroll.Enroll(enroll_request(hostname="h" * 1_000_000), timeout=t),
        ),
        (
            "Enroll",
            lambda: target.enroll.Enroll(
                enroll_request(token=target.secret, csr_pem=BIG), timeout=t
            ),
        ),
        (
            "Create",
            lambda: a.CreateEnrollmentToken(
                admin_pb2.CreateEnrollmentTokenRequest(label=BIG), timeout=t
            ),
        ),
        (
            "GetToken",
            lambda: a.GetEnrollmentToken(admin_pb2.GetEnrollmentTokenRequest(id=BIG), timeout=t),
        ),
        (
            "ListTokens",
            lambda: a.ListEnrollmentTokens(
                admin_pb2.ListEnrollmentTokensRequest(page_token=BIG), timeout=t
            ),
        ),
        (
            "RevokeToken",
            lambda: a.RevokeEnrollmentToken(
                admin_pb2.RevokeEnrollmentTokenRequest(id=BIG), timeout=t
            ),
        ),
        (
            "ListDevices",
            lambda: a.ListDevices(admin_pb2.ListDevicesRequest(token_id=BIG), timeout=t),
        ),
        ("GetDevice", lambda: a.GetDevice(admin_pb2.GetDeviceRequest(id=BIG), timeout=t)),
        ("RevokeDevice", lambda: a.RevokeDevice(admin_pb2.RevokeDeviceRequest(id=BIG), timeout=t)),
        (
            "Renew",
            lambda: target.agent.RenewCertificate(
                agent_pb2.RenewCertificateRequest(csr_pem=BIG), timeout=t
            ),
        ),
    ]


def test_fail_message_above_the_size_limit_to_every_method(target: Target) -> None:
    for name, call in _oversized_calls(target):
        code, details = refused(target, call)
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, name
        assert TOO_LARGE in details, (name, details)
        assert str(MAX_MESSAGE_BYTES) in details, (name, details)


# AdminService


MAX_USES_MESSAGE = "max_uses must be between 1 and 1000000000, or unset for unlimited"
NOW = int(time.time())


@st.composite
def hostile_token_requests(
    draw: st.DrawFn,
) -> tuple[admin_pb2.CreateEnrollmentTokenRequest, set[str]]:
    """A create request with at least one bad field, and the messages its faults may give."""
    request = admin_pb2.CreateEnrollmentTokenRequest(label="fine")
    messages: set[str] = set()
    faults = draw(st.sets(st.sampled_from(["label", "max_uses", "expires_at"]), min_size=1))
    if "label" in faults:
        label, message = draw(
            st.one_of(
                st.sampled_from(["", " ", "\t\n", "\u3000"]).map(
                    lambda s: (s, "label is required")
                ),
                st.text(min_size=201, max_size=3000)
                .filter(lambda s: len(s.strip()) > 200)
                .map(lambda s: (s, "label is longer than 200 characters")),
                st.tuples(
                    st.text(max_size=20), st.sampled_from(["\x00", "\x1b", "\x7f", "\u202e"])
                ).map(lambda p: ("ok" + p[1] + p[0] + "ok", "label contains control characters")),
            )
        )
        request.label = label
        messages.add(message)
    if "max_uses" in faults:
        request.max_uses = draw(
            st.integers(min_value=-(2**63), max_value=0)
            | st.integers(min_value=1_000_000_001, max_value=2**63 - 1)
        )
        messages.add(MAX_USES_MESSAGE)
    if "expires_at" in faults:
        past = draw(st.booleans())
        if past:
            request.expires_at.CopyFrom(
                Timestamp(seconds=draw(st.integers(min_value=-62_135_596_800, max_value=NOW)))
            )
            messages.add("expires_at must be in the future")
        else:
            request.expires_at.CopyFrom(
                Timestamp(
                    seconds=draw(
                        st.integers(min_value=253_402_300_800, max_value=2**63 - 1)
                        | st.integers(min_value=-(2**63), max_value=-62_135_596_801)
                    )
                )
            )
            messages.add("expires_at is out of range")
    return request, messages


@FAST
@given(case=hostile_token_requests())
def test_fail_create_token_with_bad_fields(
    target: Target, case: tuple[admin_pb2.CreateEnrollmentTokenRequest, set[str]]
) -> None:
    request, messages = case
    code, details = refused(target, lambda: target.admin.CreateEnrollmentToken(request, timeout=10))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details in messages


_bogus_ids = st.text(max_size=100) | st.sampled_from(
    ["\x00", "abc\x00def", "' OR 1=1 --", "../../etc/passwd", "%", "*", "a" * 16, "é" * 16]
)


@FAST
@given(
    method=st.sampled_from(
        ["GetEnrollmentToken", "RevokeEnrollmentToken", "GetDevice", "RevokeDevice"]
    ),
    bogus=_bogus_ids,
)
@example(method="GetEnrollmentToken", bogus="abc\x00def")
@example(method="RevokeDevice", bogus="\x00")
def test_fail_bogus_ids(target: Target, method: str, bogus: str) -> None:
    request_class = getattr(admin_pb2, f"{method}Request")
    code, details = refused(
        target, lambda: getattr(target.admin, method)(request_class(id=bogus), timeout=10)
    )
    kind = "enrollment token" if "Token" in method else "device"
    if not bogus.strip():
        assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, f"{kind} id is required")
    else:
        assert (code, details) == (grpc.StatusCode.NOT_FOUND, f"{kind} not found")


def _cursor(kind: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{seq}".encode()).decode().rstrip("=")


@st.composite
def page_tokens(draw: st.DrawFn, kind: str) -> tuple[str, bool | None]:
    """(page_token, whether it is valid; None when the test cannot tell)."""
    choice = draw(st.sampled_from(["ours", "other-kind", "text", "empty"]))
    if choice == "empty":
        return "", True
    if choice == "text":
        return draw(st.text(max_size=60)), None
    seq = draw(st.integers(min_value=-(2**70), max_value=2**70))
    if choice == "other-kind":
        return _cursor("devices" if kind == "tokens" else "tokens", seq), False
    return _cursor(kind, seq), 1 <= seq <= 2**63 - 1


@FAST
@given(
    page_size=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    page=page_tokens("tokens"),
    state=st.integers(min_value=-(2**31), max_value=2**31 - 1) | st.integers(0, 4),
)
@example(page_size=0, page=(_cursor("tokens", 9_999_999_999_999_999_999), False), state=0)
@example(page_size=10, page=("", True), state=99)
def test_admin_list_calls_with_hostile_paging(
    target: Target, page_size: int, page: tuple[str, bool | None], state: int
) -> None:
    page_token, valid = page
    faults = set()
    if page_size < 0:
        faults.add("page_size must not be negative")
    if not 0 <= state <= 4:
        faults.add(f"state {state} is not a token state")
    if valid is False:
        faults.add("page_token is invalid")
    request = admin_pb2.ListEnrollmentTokensRequest(
        page_size=page_size,
        page_token=page_token,
        state=state,  # type: ignore[arg-type]
    )
    before = target.state()
    try:
        reply = target.admin.ListEnrollmentTokens(request, timeout=10)
    except grpc.RpcError as error:
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()  # type: ignore[attr-defined]
        possible = faults | ({"page_token is invalid"} if valid is None else set())
        assert error.details() in possible  # type: ignore[attr-defined]
    else:
        assert not faults, f"accepted a request with {faults}"
        assert len(reply.tokens) <= max(1, min(page_size or 100, 1000))
    assert target.state() == before


@FAST
@given(
    page_size=st.integers(min_value=-5, max_value=2**31 - 1),
    page=page_tokens("devices"),
    token_id=_bogus_ids,
    state=st.integers(min_value=-3, max_value=6),
    hostname=_bogus_ids | st.text(min_size=250, max_size=300),
)
@example(page_size=0, page=("", True), token_id="", state=0, hostname="web\x00")
def test_admin_list_devices_with_hostile_filters(
    target: Target,
    page_size: int,
    page: tuple[str, bool | None],
    token_id: str,
    state: int,
    hostname: str,
) -> None:
    import re

    page_token, valid = page
    faults = set()
    if page_size < 0:
        faults.add("page_size must not be negative")
    if valid is False:
        faults.add("page_token is invalid")
    if token_id.strip() and not re.fullmatch(r"[a-z2-7]{16}", token_id.strip()):
        faults.add("token_id is not an enrollment token id (16 characters of a-z, 2-7)")
    if not 0 <= state <= 3:
        faults.add(f"state {state} is not a device state")
    if len(hostname.strip()) > 253:
        faults.add("hostname is longer than 253 characters")
    elif any(not c.isprintable() for c in hostname.strip()):
        faults.add("hostname contains control characters")
    request = admin_pb2.ListDevicesRequest(
        page_size=page_size,
        page_token=page_token,
        token_id=token_id,
        state=state,  # type: ignore[arg-type]
        hostname=hostname,
    )
    before = target.state()
    try:
        target.admin.ListDevices(request, timeout=10)
    except grpc.RpcError as error:
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()  # type: ignore[attr-defined]
        possible = faults | ({"page_token is invalid"} if valid is None else set())
        assert error.details() in possible  # type: ignore[attr-defined]
    else:
        assert not faults, f"accepted a request with {faults}"
    assert target.state() == before


# Admins and the audit trail

_ADMIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_AUDIT_SUBJECT = re.compile(r"[a-z][a-z0-9-]{0,31}/[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_AUDIT_ACTION = re.compile(r"[a-z][a-z0-9_-]{0,31}(\.[a-z][a-z0-9_-]{0,31}){1,3}")
_filters = st.text(max_size=80) | st.sampled_from(
    ["", "admin/admin", "token/aaaaaaaaaaaaaaaa", "token.create", "admin/x\x00", "a/b/c", " x/y "]
)


@st.composite
def audit_page_tokens(draw: st.DrawFn) -> tuple[str, bool | None]:
    """(page_token, whether it is valid; None when the test cannot tell)."""
    choice = draw(st.sampled_from(["ours", "other-kind", "text", "empty"]))
    if choice == "empty":
        return "", True
    if choice == "text":
        return draw(st.text(max_size=60)), None
    at = draw(st.integers(min_value=-(2**64), max_value=2**64))
    seq = draw(st.integers(min_value=-(2**64), max_value=2**64))
    if choice == "other-kind":
        return _cursor("tokens", seq), False
    valid = -(2**63) <= at <= 2**63 - 1 and 1 <= seq <= 2**63 - 1
    return _cursor(f"audit:{at}", seq), valid


@FAST
@given(
    actor=_filters,
    resource=_filters,
    action=_filters,
    page=audit_page_tokens(),
    page_size=st.integers(min_value=-5, max_value=2**31 - 1),
    since=st.none() | st.integers(min_value=-(2**40), max_value=2**40),
)
@example(actor="", resource="", action="", page=("", True), page_size=0, since=253402300800)
def test_list_audit_events_with_hostile_filters(
    target: Target,
    actor: str,
    resource: str,
    action: str,
    page: tuple[str, bool | None],
    page_size: int,
    since: int | None,
) -> None:
    page_token, valid = page
    faults = set()
    if actor.strip() and not _AUDIT_SUBJECT.fullmatch(actor.strip()):
        faults.add("actor must be kind/name, like admin/alice or token/<id>")
    if resource.strip() and not _AUDIT_SUBJECT.fullmatch(resource.strip()):
        faults.add("resource must be kind/id, like token/<id> or admin/alice")
    if action.strip() and not _AUDIT_ACTION.fullmatch(action.strip()):
        faults.add("action must be like token.create or admin.revoke")
    if since is not None and not -62135596800 <= since <= 253402300799:
        faults.add("since is out of range")
    if page_size < 0:
        faults.add("page_size must not be negative")
    if valid is False:
        faults.add("page_token is invalid")
    request = admin_pb2.ListAuditEventsRequest(
        actor=actor, resource=resource, action=action, page_size=page_size, page_token=page_token
    )
    if since is not None:
        request.since.seconds = since
    before = target.state()
    try:
        reply = target.admin.ListAuditEvents(request, timeout=10)
    except grpc.RpcError as error:
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()  # type: ignore[attr-defined]
        possible = faults | ({"page_token is invalid"} if valid is None else set())
        assert error.details() in possible  # type: ignore[attr-defined]
    else:
        assert not faults, f"accepted a request with {faults}"
        assert len(reply.events) <= max(1, min(page_size or 100, 1000))
    assert target.state() == before


@FAST
@given(name=_bogus_ids, csr=st.booleans())
@example(name="admin", csr=True)
@example(name="x\x00", csr=True)
def test_create_and_revoke_admin_with_hostile_names(target: Target, name: str, csr: bool) -> None:
    """A bad name is refused and changes nothing; a good one is created or recorded revoked."""
    csr_pem = _valid_csr_pem() if csr else "not a CSR"
    before = target.state()
    try:
        target.admin.CreateAdmin(admin_pb2.CreateAdminRequest(name=name, csr_pem=csr_pem))
    except grpc.RpcError as error:
        code, details = error.code(), error.details()  # type: ignore[attr-defined]
        assert target.state() == before
        if not _ADMIN_NAME.fullmatch(name):
            assert (code, details.split(" must ")[0]) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "admin name",
            )
        elif not csr:
            assert code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("CSR ")
        else:
            assert code is grpc.StatusCode.ALREADY_EXISTS, details  # made by an earlier example
    else:
        assert _ADMIN_NAME.fullmatch(name) and csr
    try:
        target.admin.RevokeAdmin(admin_pb2.RevokeAdminRequest(name=name))
    except grpc.RpcError as error:
        code, details = error.code(), error.details()  # type: ignore[attr-defined]
        if not name:
            assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "admin name is required")
        elif name == "admin":
            assert code is grpc.StatusCode.FAILED_PRECONDITION, details
        else:
            assert not _ADMIN_NAME.fullmatch(name)
            assert (code, details) == (grpc.StatusCode.NOT_FOUND, "admin not found")
    else:
        # Known or not, a name that may be an admin's is revoked from now on.
        assert _ADMIN_NAME.fullmatch(name) and name != "admin"
        revoked = target.harness.server.store.find_admin(name)
        assert revoked is not None and revoked.revoked_at is not None


@FAST
@given(name=_bogus_ids, csr=st.booleans())
@example(name="admin", csr=True)
@example(name="x\x00", csr=True)
def test_create_and_revoke_service_with_hostile_names(target: Target, name: str, csr: bool) -> None:
    """A bad name is refused and changes nothing; a good one is created, then revoked."""
    csr_pem = _valid_csr_pem() if csr else "not a CSR"
    before = target.state()
    try:
        target.admin.CreateService(admin_pb2.CreateServiceRequest(name=name, csr_pem=csr_pem))
    except grpc.RpcError as error:
        code, details = error.code(), error.details()  # type: ignore[attr-defined]
        assert target.state() == before
        if not _ADMIN_NAME.fullmatch(name):
            assert (code, details.split(" must ")[0]) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "service name",
            )
        elif not csr:
            assert code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("CSR ")
        else:
            assert code is grpc.StatusCode.ALREADY_EXISTS, details  # made by an earlier example
    else:
        assert _ADMIN_NAME.fullmatch(name) and csr
    known = target.harness.server.store.find_service(name) if _ADMIN_NAME.fullmatch(name) else None
    try:
        target.admin.RevokeService(admin_pb2.RevokeServiceRequest(name=name))
    except grpc.RpcError as error:
        code, details = error.code(), error.details()  # type: ignore[attr-defined]
        if not name:
            assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "service name is required")
        else:
            assert known is None
            assert (code, details) == (grpc.StatusCode.NOT_FOUND, "service not found")
    else:
        assert known is not None
        revoked = target.harness.server.store.find_service(name)
        assert revoked is not None and revoked.revoked_at is not None


# AgentService


@FEW
@given(csr_pem=broken_csrs())
@example(csr_pem=_with_version(_BASE_CSR, 7))
def test_fail_renew_with_a_broken_csr(target: Target, csr_pem: str) -> None:
    code, details = refused(
        target,
        lambda: target.agent.RenewCertificate(
            agent_pb2.RenewCertificateRequest(csr_pem=csr_pem), timeout=10
        ),
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("CSR "), details
