"""Enrollment decisions: check the token and the CSR, sign, and record the device atomically."""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

from sielum import tokenpolicy, tokens
from sielum.ca.authority import CertificateAuthority
from sielum.ca.profile import load_checked_csr, public_key_sha256
from sielum.clock import Clock
from sielum.devices.policy import check_facts, check_hostname
from sielum.enroll.committer import Committer
from sielum.enroll.ratelimit import FailureLimiter
from sielum.errors import (
    AlreadyExistsError,
    EnrollmentDeniedError,
    InvalidArgumentError,
    InvalidCsrError,
    MalformedTokenError,
    NotFoundError,
    PendingApprovalError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SielumError,
    TokenExhaustedError,
    TokenExpiredError,
    TokenPolicyError,
    TokenRevokedError,
    TokenUnusableError,
    UnauthenticatedError,
    UnavailableError,
)
from sielum.logs import log_event
from sielum.model import (
    ENROLL_ACTION,
    AuditEvent,
    Device,
    EnrollmentRequestState,
    Token,
)
from sielum.model import EnrollmentRequest as PendingRequest
from sielum.recorder import CertificateKind, EnrollmentResult, NoRecorder, PolicyRule, Recorder
from sielum.store.devices import NewDevice
from sielum.store.store import Store

log = logging.getLogger("sielum.enroll")

_INVALID_TOKEN = "enrollment token is invalid"  # noqa: S105 - a message, not a secret
# Compared against when the token id is unknown, so that an unknown id and a
# wrong secret take the same time and give the same answer.
_DUMMY_HASH = bytes(32)
# Requests one token may have waiting for an admin: someone holding the secret of a
# token that requires approval cannot fill the queue (or the database) without bound.
MAX_PENDING_PER_TOKEN = 1000

# Failures charged to a peer's limit while the secret has not verified: guesses and
# garbage, not outages. A caller that holds a valid secret is not guessing, so it is
# never refused by the limit, and a whole office behind one NAT address that
# outnumbers its token's max uses does not lock itself out of its next token
# (tests/robust/test_ratelimit.py::test_ok_refusals_after_a_valid_secret_are_not_counted).
_COUNTED_FAILURES = (InvalidArgumentError, UnauthenticatedError)
# Verified secrets that are charged all the same: a revoked or expired token's secret
# is one an attacker may have found in an old script; an exhausted one is not.
_COUNTED_REFUSALS = (TokenRevokedError, TokenExpiredError)

# Each refusal's result for sielum_enrollments_total, subclasses before the classes
# they refine: the first match wins.
_RESULTS: tuple[tuple[type[SielumError], EnrollmentResult], ...] = (
    (MalformedTokenError, EnrollmentResult.MALFORMED_TOKEN),
    (InvalidCsrError, EnrollmentResult.BAD_CSR),
    (InvalidArgumentError, EnrollmentResult.BAD_REQUEST),
    (UnauthenticatedError, EnrollmentResult.INVALID_TOKEN),
    (TokenRevokedError, EnrollmentResult.REVOKED),
    (TokenExpiredError, EnrollmentResult.EXPIRED),
    (TokenExhaustedError, EnrollmentResult.EXHAUSTED),
    (TokenUnusableError, EnrollmentResult.TOKEN_UNUSABLE),
    (TokenPolicyError, EnrollmentResult.POLICY),
    (EnrollmentDeniedError, EnrollmentResult.DENIED),
    (PendingApprovalError, EnrollmentResult.PENDING),
    (PermissionDeniedError, EnrollmentResult.DEVICE_REVOKED),
    (AlreadyExistsError, EnrollmentResult.KEY_IN_USE),
    (ResourceExhaustedError, EnrollmentResult.RATE_LIMITED),
    (UnavailableError, EnrollmentResult.UNAVAILABLE),
)


def enrollment_result(error: BaseException) -> EnrollmentResult:
    """The result a failed enrollment counts as (tests/unit/test_metrics.py guards the table)."""
    for kind, result in _RESULTS:
        if isinstance(error, kind):
            return result
    return EnrollmentResult.ERROR


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


@dataclass(frozen=True)
class _Draft:
    """An enrollment decided and signed, waiting for its write."""

    new: NewDevice
    token: Token


@dataclass
class _Progress:
    """How far one enrollment got: the token id once its secret has been verified."""

    token_id: str = ""


class Enroller:
    """Decides one enrollment. Store and CA are the only I/O, both handed in.

    Every call's outcome goes to the recorder, once: its result, and a device
    certificate when one was signed. With a committer, begin() hands each write to it,
    to be committed together with those of the enrollments that arrive with it.
    """

    def __init__(
        self,
        store: Store,
        ca: CertificateAuthority,
        clock: Clock,
        limiter: FailureLimiter,
        recorder: Recorder | None = None,
        committer: Committer | None = None,
    ) -> None:
        self._store = store
        self._committer = committer
        self._ca = ca
        self._clock = clock
        self._limiter = limiter
        self._recorder: Recorder = recorder or NoRecorder()

    def enroll(self, request: EnrollmentRequest) -> Enrollment:
        """One enrollment, its write committed on its own."""
        progress = _Progress()
        try:
            step = self._prepare(request, progress)
            result = step if isinstance(step, Enrollment) else self._write_alone(step)
        except Exception as error:
            self._fail(request, progress, error)
        self._succeeded(request, result)
        return result

    def begin(self, request: EnrollmentRequest) -> Enrollment | Awaitable[Enrollment]:
        """enroll(), with the write handed to the committer: the CPU work now, then either
        the answer (nothing to write: a retry, a refusal) or, to await on the event loop,
        the enrollment once its batch committed. Without a committer, enroll()."""
        if self._committer is None:
            return self.enroll(request)
        progress = _Progress()
        try:
            step = self._prepare(request, progress)
        except Exception as error:
            self._fail(request, progress, error)
        if isinstance(step, Enrollment):
            self._succeeded(request, step)
            return step
        return self._write_together(self._committer, request, progress, step)

    async def _write_together(
        self, committer: Committer, request: EnrollmentRequest, progress: _Progress, draft: _Draft
    ) -> Enrollment:
        try:
            try:
                stored = await committer.commit(draft.new)
            except (TokenUnusableError, AlreadyExistsError) as error:
                result = await committer.run(functools.partial(self._after_refusal, draft, error))
            else:
                result = Enrollment(stored, self._ca.certificate_pem, retried=False)
        except Exception as error:
            self._fail(request, progress, error)
        self._succeeded(request, result)
        return result

    def _fail(self, request: EnrollmentRequest, progress: _Progress, error: Exception) -> NoReturn:
        """Counts and logs a failed enrollment, then raises the error to answer with: error
        itself, or what the failure limiter makes of it. Called in an except block."""
        if not isinstance(error, SielumError):
            self._recorder.enrollment(EnrollmentResult.ERROR)
            raise error
        answer = self._limit(request.peer, progress, error)
        self._recorder.enrollment(enrollment_result(answer))
        if isinstance(answer, TokenPolicyError):
            self._recorder.policy_refusal(PolicyRule(answer.rule))
        log_event(
            log,
            "enroll",
            level=logging.WARNING,
            outcome=answer.code.name.lower(),
            reason=answer.message,
            token=progress.token_id,
            peer=request.peer,
        )
        if answer is error:
            raise error
        raise answer from None

    def _succeeded(self, request: EnrollmentRequest, result: Enrollment) -> None:
        if result.retried:
            self._recorder.enrollment(EnrollmentResult.RETRIED)
        else:
            self._recorder.enrollment(EnrollmentResult.OK)
            self._recorder.certificate_issued(CertificateKind.DEVICE)
        log_event(
            log,
            "enroll",
            outcome="retried" if result.retried else "ok",
            device=result.device.id,
            token=result.device.token_id,
            peer=request.peer,
            hostname=result.device.hostname,
        )

    def _limit(self, peer: str, progress: _Progress, error: SielumError) -> SielumError:
        """The answer to a failed enrollment, after the failure limit had its say.

        The limit runs after the secret is judged, never before: a request whose
        secret verifies is answered for what it is; only an unverified one from an
        address that has spent its failures gets RESOURCE_EXHAUSTED instead
        (tests/robust/test_ratelimit.py::test_fail_garbage_from_a_shared_address_locks_out_nobody).
        """
        if progress.token_id:
            if isinstance(error, _COUNTED_REFUSALS):
                self._limiter.record_failure(peer)
            return error
        if isinstance(error, _COUNTED_FAILURES):
            try:
                self._limiter.charge(peer)
            except ResourceExhaustedError as exhausted:
                return exhausted
        return error

    def _authenticate(self, text: str) -> Token:
        try:
            parsed = tokens.parse_secret(text)
        except InvalidArgumentError as error:
            raise MalformedTokenError(error.message) from None
        try:
            token = self._store.get_token(parsed.id)
        except NotFoundError:
            tokens.secret_matches(parsed, _DUMMY_HASH)
            raise UnauthenticatedError(_INVALID_TOKEN) from None
        if not tokens.secret_matches(parsed, token.secret_hash):
            raise UnauthenticatedError(_INVALID_TOKEN)
        return token

    def _prepare(self, request: EnrollmentRequest, progress: _Progress) -> Enrollment | _Draft:
        """Everything but the write: the answer, when there is nothing to write, or the write."""
        try:
            hostname = check_hostname(request.hostname)
            facts = check_facts(request.facts)
        except InvalidArgumentError:
            # The answer is about the hostname or the facts (checked before the token,
            # so a wrong secret does not hide them); whether the secret verifies still
            # decides whether the failure limit may charge or refuse this request.
            with contextlib.suppress(SielumError):
                progress.token_id = self._authenticate(request.token).id
            raise
        token = self._authenticate(request.token)
        progress.token_id = token.id
        # Checked once here; sign_device takes the CheckedCsr without verifying again.
        try:
            csr = load_checked_csr(request.csr_pem)
        except InvalidArgumentError as error:
            raise InvalidCsrError(error.message) from None
        key_hash = public_key_sha256(csr.public_key)

        existing = self._store.find_device_by_key(key_hash)
        if existing is not None:
            return self._retry(existing, token)

        now = self._clock.now()
        tokens.check_usable(token, now)
        # The policy is judged only now that the secret has verified, and before any
        # use is consumed (tests/e2e/test_token_policy.py).
        tokenpolicy.judge(token.policy, hostname=hostname, facts=facts, peer=request.peer)
        if token.policy.requires_approval:
            return self._await_approval(token, request, hostname, facts, key_hash, now)
        device_id = str(uuid.uuid4())
        # Signing happens before the transaction, so the database write lock is
        # never held while the CPU does elliptic-curve work.
        issued = self._ca.sign_device(csr, device_id, now, token.policy.tags)
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
            tags=token.policy.tags,
        )
        audit = AuditEvent(
            at=now,
            actor=f"token/{token.id}",
            action=ENROLL_ACTION,
            resource=f"device/{device_id}",
            peer=request.peer,
            detail=f"token={token.id} serial={issued.serial}",
        )
        return _Draft(NewDevice(device, now, audit), token)

    def _write_alone(self, draft: _Draft) -> Enrollment:
        new = draft.new
        try:
            stored = self._store.enroll_device(new.device, new.now, new.audit)
        except (TokenUnusableError, AlreadyExistsError) as error:
            return self._after_refusal(draft, error)
        return Enrollment(stored, self._ca.certificate_pem, retried=False)

    def _after_refusal(
        self, draft: _Draft, error: TokenUnusableError | AlreadyExistsError
    ) -> Enrollment:
        """The answer to a write the store refused: the token had no use left, or the key
        was enrolled meanwhile."""
        key_hash, token = draft.new.device.public_key_sha256, draft.token
        # The same agent may have won with this very key in a parallel call (that took
        # the token's last use, or enrolled the key): that is its device, not a refusal
        # (tests/robust/test_concurrency.py::test_ok_same_agent_retrying_in_parallel).
        winner = self._store.find_device_by_key(key_hash)
        if winner is not None:
            return self._retry(winner, token)
        if isinstance(error, TokenUnusableError):
            # Another enrollment took the last use (or an admin revoked) between our
            # check and the UPDATE: say which, from the token as it is now.
            tokens.check_usable(self._store.get_token(token.id), draft.new.now)
        raise error

    def _await_approval(
        self,
        token: Token,
        request: EnrollmentRequest,
        hostname: str,
        facts: Mapping[str, str],
        key_hash: str,
        now: datetime,
    ) -> Enrollment:
        """The enrollment of a token that requires approval: record the request once, then
        answer each try with where it stands.

        The agent asks again with the same key: a pending request answers
        PendingApprovalError (no use consumed), a denied one EnrollmentDeniedError;
        an approved one has its device, which the caller's lookup by key found, unless
        the approval committed between that lookup and this one.
        """
        pending = self._store.find_enrollment_request_by_key(key_hash)
        if pending is None:
            new = PendingRequest(
                id=str(uuid.uuid4()),
                token_id=token.id,
                hostname=hostname,
                facts=facts,
                peer=request.peer,
                public_key_sha256=key_hash,
                csr_pem=request.csr_pem,
                requested_at=now,
            )
            audit = AuditEvent(
                at=now,
                actor=f"token/{token.id}",
                action="request.create",
                resource=f"request/{new.id}",
                peer=request.peer,
                detail=f"token={token.id} hostname={hostname}",
            )
            try:
                pending = self._store.create_enrollment_request(
                    new, audit, max_pending=MAX_PENDING_PER_TOKEN
                )
            except AlreadyExistsError:
                # The same agent asked twice at once: the other call recorded it.
                pending = self._store.find_enrollment_request_by_key(key_hash)
                if pending is None:
                    raise
        if pending.token_id != token.id:
            raise AlreadyExistsError("this public key has asked to enroll with another token")
        if pending.state is EnrollmentRequestState.DENIED:
            raise EnrollmentDeniedError()
        if pending.state is EnrollmentRequestState.APPROVED:
            device = self._store.find_device_by_key(key_hash)
            if device is None:
                raise EnrollmentDeniedError()  # approved, then its device removed: not ours
            return self._retry(device, token)
        raise PendingApprovalError(pending.id)

    def _retry(self, existing: Device, token: Token) -> Enrollment:
        """The agent lost our answer and asks again with the same key: same device, no new use."""
        if existing.token_id != token.id:
            raise AlreadyExistsError("this public key is already enrolled as another device")
        if existing.revoked_at is not None:
            raise PermissionDeniedError("the device for this key has been revoked")
        return Enrollment(existing, self._ca.certificate_pem, retried=True)
