"""Enrollment requests in SQL: recorded, listed, decided once; and the ephemeral devices sweep."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import peewee

from sielum.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    NotFoundError,
    ResourceExhaustedError,
)
from sielum.model import (
    AuditEvent,
    Device,
    DeviceEventKind,
    EnrollmentRequest,
    EnrollmentRequestState,
    Page,
    TokenState,
)
from sielum.store.base import DEFAULT_PAGE_SIZE, _guarded, _keyset_page, _micros
from sielum.store.certificates import CertificateStore
from sielum.store.database import execute, write_transaction
from sielum.store.models import to_micros
from sielum.store.statements import token_state_condition

_REQUEST_NOT_FOUND = "enrollment request not found"
_PENDING = EnrollmentRequestState.PENDING.value


class RequestDecidedError(FailedPreconditionError):
    """The request was approved or denied already (by another admin, or a moment ago)."""


class EnrollmentRequestStore(CertificateStore):
    """Enrollment requests (tokens with requires_approval) and the sweep of ephemeral devices."""

    @_guarded
    def find_enrollment_request_by_key(self, public_key_sha256: str) -> EnrollmentRequest | None:
        R = self._t.enrollment_request
        row = R.get_or_none(R.public_key_sha256 == public_key_sha256)
        return None if row is None else _request(row)

    @_guarded
    def get_enrollment_request(self, request_id: str) -> EnrollmentRequest:
        R = self._t.enrollment_request
        row = R.get_or_none(R.id == request_id)
        if row is None:
            raise NotFoundError(_REQUEST_NOT_FOUND)
        return _request(row)

    @_guarded
    def create_enrollment_request(
        self, request: EnrollmentRequest, audit: AuditEvent, *, max_pending: int
    ) -> EnrollmentRequest:
        """Record a pending request, unless its token has max_pending waiting already.

        AlreadyExistsError when the key has a request already (the caller re-reads it:
        the same agent asking twice at once).
        """
        R = self._t.enrollment_request
        try:
            with write_transaction(self.db):
                waiting = (
                    R.select()
                    .where((R.token_id == request.token_id) & (R.state == _PENDING))
                    .limit(max_pending)
                    .count()
                )
                if waiting >= max_pending:
                    raise ResourceExhaustedError(
                        f"{max_pending} enrollments with this token are waiting for approval "
                        "already: an admin must decide some first"
                    )
                R.insert(**_request_row(request)).execute()
                self._insert_audit(audit)
        except peewee.IntegrityError as exc:
            raise AlreadyExistsError("this public key has asked to enroll already") from exc
        return request

    @_guarded
    def list_enrollment_requests(
        self,
        *,
        now: datetime,
        state: EnrollmentRequestState | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        cursor: str = "",
    ) -> Page[EnrollmentRequest]:
        """Requests newest first; PENDING are those whose token is usable at now, EXPIRED
        the undecided others (the state each request is shown in, enroll/approval.py)."""
        R, T = self._t.enrollment_request, self._t.token
        query = R.select()
        if state is not None:
            stored = _PENDING if state is EnrollmentRequestState.EXPIRED else state.value
            query = query.where(R.state == stored)
            usable = T.select(T.id).where(token_state_condition(T, TokenState.ACTIVE, now))
            if state is EnrollmentRequestState.PENDING:
                query = query.where(R.token_id.in_(usable))
            elif state is EnrollmentRequestState.EXPIRED:
                query = query.where(R.token_id.not_in(usable))
        return _keyset_page(R, query, "requests", page_size, cursor, _request)

    @_guarded
    def count_pending_requests(self, now: datetime) -> int:
        """Requests waiting for an admin whose token can still be used."""
        R, T = self._t.enrollment_request, self._t.token
        usable = T.select(T.id).where(token_state_condition(T, TokenState.ACTIVE, now))
        return int(R.select().where((R.state == _PENDING) & R.token_id.in_(usable)).count())

    @_guarded
    def deny_enrollment_request(
        self, request_id: str, decided_by: str, now: datetime, audit: AuditEvent
    ) -> EnrollmentRequest:
        """Deny a pending request: one conditional UPDATE, so a decision is taken once."""
        with write_transaction(self.db):
            self._decide(request_id, EnrollmentRequestState.DENIED, decided_by, now, "")
            self._insert_audit(audit)
        return self._read_request(request_id)

    def approve_enrollment_request(
        self,
        request_id: str,
        decided_by: str,
        device: Device,
        now: datetime,
        audits: tuple[AuditEvent, AuditEvent],
    ) -> Device:
        """Approve a pending request and enroll its device, in one transaction.

        The request's conditional UPDATE (still pending) and the token's (a use left,
        not revoked, not expired: the very UPDATE of an enrollment) both hold or
        nothing happens. So however approvals, denials and revocations race, on any
        number of replicas, a request is decided once and a token with max_uses N
        yields at most N devices (tests/store/test_requests.py). audits: the
        approval's event, then the enrollment's.
        """

        def decide() -> None:
            self._decide(request_id, EnrollmentRequestState.APPROVED, decided_by, now, device.id)
            self._insert_audit(audits[0])

        enroll: Callable[..., Device] = self.enroll_device  # type: ignore[attr-defined]
        return enroll(device, now, audits[1], before=decide)

    def _decide(
        self,
        request_id: str,
        state: EnrollmentRequestState,
        decided_by: str,
        now: datetime,
        device_id: str,
    ) -> None:
        R = self._t.enrollment_request
        changed = (
            R.update(state=state.value, decided_by=decided_by, decided_at=now, device_id=device_id)
            .where((R.id == request_id) & (R.state == _PENDING))
            .execute()
        )
        if changed:
            return
        row = R.get_or_none(R.id == request_id)
        if row is None:
            raise NotFoundError(_REQUEST_NOT_FOUND)
        raise RequestDecidedError(f"enrollment request was {row.state} already")

    def _read_request(self, request_id: str) -> EnrollmentRequest:
        R = self._t.enrollment_request
        return _request(R.get(R.id == request_id))

    # Ephemeral devices

    @_guarded
    def find_ephemeral_devices_due(self, now: datetime, limit: int) -> list[str]:
        """Ids of devices not revoked whose token's ephemeral_after has passed since their
        last call (or their enrollment, if they never called), oldest first."""
        cursor = execute(
            self.db,
            _sql(
                self.db,
                "SELECT d.id FROM device d JOIN token t ON t.id = d.token_id"
                " WHERE t.ephemeral_after IS NOT NULL AND d.revoked_at IS NULL"
                " AND COALESCE(d.last_seen_at, d.enrolled_at) + t.ephemeral_after <= ?"
                " ORDER BY d.seq LIMIT ?",
            ),
            (to_micros(now), limit),
        )
        return [row[0] for row in cursor.fetchall()]

    @_guarded
    def expire_device(
        self, device_id: str, now: datetime, audit: AuditEvent, *, cutoff: datetime | None = None
    ) -> bool:
        """Revoke an ephemeral device if it is still due at cutoff (default now), revoked at
        now; True when this call did.

        One conditional UPDATE re-checks what find_ephemeral_devices_due read, so a
        device that called in between, or that another replica's sweep (or an admin)
        revoked first, is left alone, and its device.expire is audited once
        (tests/store/test_requests.py::test_two_sweeps_expire_a_device_once).
        """
        with write_transaction(self.db):
            cursor = execute(
                self.db,
                _sql(
                    self.db,
                    # The device ended its use of its certificates (RFC 5280 5.3.1), as
                    # when it unenrolls itself.
                    "UPDATE device SET revoked_at = ?,"
                    " revocation_reason = 'cessationOfOperation'"
                    " WHERE id = ? AND revoked_at IS NULL"
                    " AND EXISTS (SELECT 1 FROM token t WHERE t.id = device.token_id"
                    " AND t.ephemeral_after IS NOT NULL"
                    " AND COALESCE(device.last_seen_at, device.enrolled_at) + t.ephemeral_after"
                    " <= ?)",
                ),
                (to_micros(now), device_id, to_micros(now if cutoff is None else cutoff)),
            )
            if cursor.rowcount == 0:
                return False
            self._insert_audit(audit)
            # The CRL and OCSP list its certificates from now on, and the directory says so.
            self._refuse_device_certificates(device_id)
            self._record_device_event(DeviceEventKind.REVOKED, device_id, now)
        return True


def _sql(db: peewee.Database, sql: str) -> str:
    return sql.replace("?", db.param)


def _request_row(request: EnrollmentRequest) -> dict[str, Any]:
    return {
        "id": request.id,
        "token_id": request.token_id,
        "hostname": request.hostname,
        "facts": json.dumps(dict(request.facts), sort_keys=True, separators=(",", ":")),
        "peer": request.peer,
        "public_key_sha256": request.public_key_sha256,
        "csr_pem": request.csr_pem,
        "requested_at": request.requested_at,
        "state": request.state.value,
        "decided_by": request.decided_by,
        "decided_at": _micros(request.decided_at),
        "device_id": request.device_id,
    }


def _request(row: Any) -> EnrollmentRequest:
    facts = json.loads(row.facts or "{}")
    return EnrollmentRequest(
        id=row.id,
        token_id=row.token_id,
        hostname=row.hostname,
        facts={str(k): str(v) for k, v in facts.items()},
        peer=row.peer,
        public_key_sha256=row.public_key_sha256,
        csr_pem=row.csr_pem,
        requested_at=row.requested_at,
        state=EnrollmentRequestState(row.state),
        decided_by=row.decided_by,
        decided_at=row.decided_at,
        device_id=row.device_id,
    )
