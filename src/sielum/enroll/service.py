"""Enrollment decisions: check the token and the CSR, sign, and record the device atomically."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from sielum import tokens
from sielum.ca.authority import CertificateAuthority
from sielum.ca.profile import load_checked_csr, public_key_sha256
from sielum.clock import Clock
from sielum.devices.policy import check_hostname
from sielum.enroll.ratelimit import FailureLimiter
from sielum.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    SielumError,
    TokenUnusableError,
    UnauthenticatedError,
)
from sielum.logs import log_event
from sielum.model import AuditEvent, Device, Token
from sielum.store.store import Store

log = logging.getLogger("sielum.enroll")

MAX_FACTS = 64
MAX_FACT_KEY = 64
MAX_FACT_VALUE = 1024
_FACT_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_INVALID_TOKEN = "enrollment token is invalid"  # noqa: S105 - a message, not a secret
# Compared against when the token id is unknown, so that an unknown id and a
# wrong secret take the same time and give the same answer.
_DUMMY_HASH = bytes(32)

# Failures that count against a peer's limit: guesses and garbage, not outages.
# Only failures before the secret has been verified count: a caller that holds a
# valid secret is not guessing, and a whole office behind one NAT address that
# outnumbers its token's max uses must not lock itself out of its next token
# (tests/robust/test_ratelimit.py::test_ok_refusals_after_a_valid_secret_are_not_counted).
_COUNTED_FAILURES = (InvalidArgumentError, UnauthenticatedError)


@dataclass(frozen=True)
class EnrollmentRequest:
    token: str
    csr_pem: str
    hostname: str
    facts: Mapping[str, str]
    peer: str


@dataclass(frozen=True)
class Enrollment:
    device: Device
    ca_certificate_pem: str
    retried: bool


@dataclass
class _Progress:
    """How far one enrollment got: the token id once its secret has been verified."""

    token_id: str = ""


def _check_facts(facts: Mapping[str, str]) -> Mapping[str, str]:
    if len(facts) > MAX_FACTS:
        raise InvalidArgumentError(f"too many facts: {len(facts)} (at most {MAX_FACTS})")
    for key, value in facts.items():
        if len(key) > MAX_FACT_KEY or not _FACT_KEY.match(key):
            raise InvalidArgumentError(
                f"fact names are 1-{MAX_FACT_KEY} characters of letters, digits, '._/-'"
            )
        if len(value) > MAX_FACT_VALUE:
            raise InvalidArgumentError(f"fact {key!r} is longer than {MAX_FACT_VALUE} characters")
        # As for the hostname: an admin reads facts in a terminal, where control
        # characters could rewrite what is shown.
        if any(not c.isprintable() for c in value):
            raise InvalidArgumentError(f"fact {key!r} contains control characters")
    return MappingProxyType(dict(sorted(facts.items())))


class Enroller:
    """Decides one enrollment. Store and CA are the only I/O, both handed in."""

    def __init__(
        self, store: Store, ca: CertificateAuthority, clock: Clock, limiter: FailureLimiter
    ) -> None:
        self._store = store
        self._ca = ca
        self._clock = clock
        self._limiter = limiter

    def enroll(self, request: EnrollmentRequest) -> Enrollment:
        self._limiter.check(request.peer)
        progress = _Progress()
        try:
            result = self._enroll(request, progress)
        except SielumError as error:
            if not progress.token_id and isinstance(error, _COUNTED_FAILURES):
                self._limiter.record_failure(request.peer)
            log_event(
                log,
                "enroll",
                level=logging.WARNING,
                outcome=error.code.name.lower(),
                reason=error.message,
                token=progress.token_id,
                peer=request.peer,
            )
            raise
        log_event(
            log,
            "enroll",
            outcome="retried" if result.retried else "ok",
            device=result.device.id,
            token=result.device.token_id,
            peer=request.peer,
            hostname=result.device.hostname,
        )
        return result

    def _authenticate(self, text: str) -> Token:
        try:
            parsed = tokens.parse_secret(text)
        except InvalidArgumentError as error:
            raise InvalidArgumentError(error.message) from None
        try:
            token = self._store.get_token(parsed.id)
        except NotFoundError:
            tokens.secret_matches(parsed, _DUMMY_HASH)
            raise UnauthenticatedError(_INVALID_TOKEN) from None
        if not tokens.secret_matches(parsed, token.secret_hash):
            raise UnauthenticatedError(_INVALID_TOKEN)
        return token

    def _enroll(self, request: EnrollmentRequest, progress: _Progress) -> Enrollment:
        hostname = check_hostname(request.hostname)
        facts = _check_facts(request.facts)
        token = self._authenticate(request.token)
        progress.token_id = token.id
        # Checked once here; sign_device takes the CheckedCsr without verifying again.
        csr = load_checked_csr(request.csr_pem)
        key_hash = public_key_sha256(csr.public_key)

        existing = self._store.find_device_by_key(key_hash)
        if existing is not None:
            return self._retry(existing, token)

        now = self._clock.now()
        tokens.check_usable(token, now)
        device_id = str(uuid.uuid4())
        # Signing happens before the transaction, so the database write lock is
        # never held while the CPU does elliptic-curve work.
        issued = self._ca.sign_device(csr, device_id, now)
        device = Device(
            id=device_id,
            hostname=hostname,
            token_id=token.id,
            public_key_sha256=key_hash,
            serial=issued.serial,
            certificate_pem=issued.certificate_pem,
            not_after=issued.not_after,
            enrolled_at=now,
            peer=request.peer,
            facts=facts,
        )
        audit = AuditEvent(
            at=now,
            actor=f"token/{token.id}",
            action="device.enroll",
            resource=f"device/{device_id}",
            peer=request.peer,
            detail=f"token={token.id} serial={issued.serial}",
        )
        try:
            stored = self._store.enroll_device(device, now, audit)
        except TokenUnusableError:
            # The same agent may have won with this very key in a parallel call
            # that took the token's last use: that is its device, not a refusal
            # (tests/robust/test_concurrency.py::test_ok_same_agent_retrying_in_parallel).
            winner = self._store.find_device_by_key(key_hash)
            if winner is not None:
                return self._retry(winner, token)
            # Otherwise another enrollment took the last use (or an admin revoked)
            # between our check and the UPDATE: say which, from the token as it is now.
            tokens.check_usable(self._store.get_token(token.id), now)
            raise
        except AlreadyExistsError:
            # The same key enrolled concurrently (an agent retrying in parallel).
            winner = self._store.find_device_by_key(key_hash)
            if winner is None:
                raise
            return self._retry(winner, token)
        return Enrollment(stored, self._ca.certificate_pem, retried=False)

    def _retry(self, existing: Device, token: Token) -> Enrollment:
        """The agent lost our answer and asks again with the same key: same device, no new use."""
        if existing.token_id != token.id:
            raise AlreadyExistsError("this public key is already enrolled as another device")
        if existing.revoked_at is not None:
            raise PermissionDeniedError("the device for this key has been revoked")
        return Enrollment(existing, self._ca.certificate_pem, retried=True)
