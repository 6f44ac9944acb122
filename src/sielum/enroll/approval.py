"""Approval decisions: list enrollment requests, approve one (enrolling its device) or deny it."""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from datetime import datetime

from sielum import tokens
from sielum.ca.authority import CertificateAuthority
from sielum.ca.profile import load_checked_csr
from sielum.clock import Clock
from sielum.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    TokenUnusableError,
)
from sielum.identity import Caller
from sielum.logs import log_event
from sielum.model import (
    ENROLL_ACTION,
    AuditEvent,
    Device,
    EnrollmentRequest,
    EnrollmentRequestState,
    Page,
    Token,
    TokenState,
)
from sielum.paging import check_page_size
from sielum.recorder import CertificateKind, Decision, NoRecorder, Recorder
from sielum.store.store import Store

log = logging.getLogger("sielum.enroll")

_REQUEST_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def check_request_id(value: str) -> str:
    """The id, stripped; an id that cannot exist is not found without asking the database."""
    text = value.strip()
    if not text:
        raise InvalidArgumentError("enrollment request id is required")
    if _REQUEST_ID.fullmatch(text) is None:
        raise NotFoundError("enrollment request not found")
    return text


def _check_token(token: Token, now: datetime) -> None:
    """FailedPreconditionError when the request's token can no longer enroll: the request
    expired with it."""
    state = tokens.state_of(token, now)
    if state is not TokenState.ACTIVE:
        raise FailedPreconditionError(
            f"enrollment token is {state.value}: the request can no longer be approved"
        )


class Approvals:
    """Decides enrollment requests. The approval signs the stored CSR and records the device
    with its token's use in one transaction; the agent, asking again with its key, then
    receives that device (enroll/service.py's retry path)."""

    def __init__(
        self,
        store: Store,
        ca: CertificateAuthority,
        clock: Clock,
        recorder: Recorder | None = None,
    ) -> None:
        self._store = store
        self._ca = ca
        self._clock = clock
        self._recorder: Recorder = recorder or NoRecorder()

    def list_requests(
        self, *, state: EnrollmentRequestState | None, page_size: int, cursor: str
    ) -> Page[EnrollmentRequest]:
        now = self._clock.now()
        page = self._store.list_enrollment_requests(
            now=now, state=state, page_size=check_page_size(page_size), cursor=cursor
        )
        states: dict[str, bool] = {}  # token id -> usable, read once per page

        def show(request: EnrollmentRequest) -> EnrollmentRequest:
            if request.state is not EnrollmentRequestState.PENDING:
                return request
            if request.token_id not in states:
                token = self._store.get_token(request.token_id)
                states[request.token_id] = tokens.state_of(token, now) is TokenState.ACTIVE
            if states[request.token_id]:
                return request
            return dataclasses.replace(request, state=EnrollmentRequestState.EXPIRED)

        return Page(items=tuple(show(r) for r in page.items), next_cursor=page.next_cursor)

    def approve(self, caller: Caller, request_id: str) -> tuple[EnrollmentRequest, Device]:
        now = self._clock.now()
        request_id = check_request_id(request_id)
        request = self._store.get_enrollment_request(request_id)
        if request.state is not EnrollmentRequestState.PENDING:
            raise FailedPreconditionError(f"enrollment request was {request.state.value} already")
        token = self._store.get_token(request.token_id)
        _check_token(token, now)
        csr = load_checked_csr(request.csr_pem)
        device_id = str(uuid.uuid4())
        # Signed before the transaction, as an enrollment is: the write lock is never held
        # while the CPU signs. A lost race wastes the signature, never a use.
        issued = self._ca.sign_device(csr, device_id, now, token.policy.tags)
        device = Device(
            id=device_id,
            hostname=request.hostname,
            token_id=token.id,
            public_key_sha256=request.public_key_sha256,
            serial=issued.serial,
            certificate_pem=issued.certificate_pem,
            not_after=issued.not_after,
            enrolled_at=now,
            peer=request.peer,
            facts=request.facts,
            tags=token.policy.tags,
        )
        approval = caller.audit(
            "request.approve", f"request/{request_id}", now, f"device={device_id}"
        )
        enrollment = AuditEvent(
            at=now,
            actor=f"admin/{caller.name}",
            action=ENROLL_ACTION,
            resource=f"device/{device_id}",
            peer=request.peer,
            detail=f"token={token.id} serial={issued.serial} request={request_id}",
        )
        try:
            stored = self._store.approve_enrollment_request(
                request_id, f"admin/{caller.name}", device, now, (approval, enrollment)
            )
        except TokenUnusableError:
            # Revoked, expired or spent between our read and the UPDATE: say which.
            _check_token(self._store.get_token(token.id), now)
            raise
        self._recorder.decision(Decision.APPROVED)
        self._recorder.certificate_issued(CertificateKind.DEVICE)
        log_event(
            log,
            "request.approve",
            admin=caller.name,
            request=request_id,
            device=device_id,
            token=token.id,
            peer=caller.peer,
            outcome="ok",
        )
        return self._store.get_enrollment_request(request_id), stored

    def deny(self, caller: Caller, request_id: str) -> EnrollmentRequest:
        now = self._clock.now()
        request_id = check_request_id(request_id)
        denied = self._store.deny_enrollment_request(
            request_id,
            f"admin/{caller.name}",
            now,
            caller.audit("request.deny", f"request/{request_id}", now),
        )
        self._recorder.decision(Decision.DENIED)
        log_event(
            log,
            "request.deny",
            admin=caller.name,
            request=request_id,
            token=denied.token_id,
            peer=caller.peer,
            outcome="ok",
        )
        return denied
