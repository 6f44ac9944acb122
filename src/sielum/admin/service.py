"""Admin decisions: enrollment tokens and devices, reading the audit trail, the overview."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sielum import tokenpolicy, tokens
from sielum.ca.profile import validate_name
from sielum.ca.revocation import check_given_reason
from sielum.clock import Clock
from sielum.devices import policy as devices
from sielum.devices.policy import check_facts, check_hostname
from sielum.errors import InvalidArgumentError, NotFoundError
from sielum.identity import Caller
from sielum.logs import log_event
from sielum.model import (
    AuditEvent,
    AuditFilter,
    Device,
    DeviceState,
    Page,
    StateCounts,
    Token,
    TokenPolicy,
    TokenState,
)
from sielum.paging import check_page_size
from sielum.recorder import NoRecorder, Recorder
from sielum.store.store import ALREADY_REVOKED, PageBudget, Store

log = logging.getLogger("sielum.admin")

MAX_LABEL = 200
MAX_USES_LIMIT = 1_000_000_000
DEFAULT_OVERVIEW_DAYS = 30
MAX_OVERVIEW_DAYS = 366
# The largest reply the server sends (server/app.py gives grpc this send limit), and
# what a page of devices may fill: the rest is room for the page token. A page of
# devices ends early rather than exceed it, whatever its devices' facts
# (tests/e2e/test_admin_cli.py::test_fail_devices_with_maximal_facts_break_devices_list).
MAX_REPLY_BYTES = 4 * 1024 * 1024
DEVICE_PAGE_BYTES = MAX_REPLY_BYTES - 4096
_DEVICE_PAGE_BUDGET: PageBudget[Device] = PageBudget(DEVICE_PAGE_BYTES, devices.listing_bytes)
# What the audit trail's actors and resources look like (admin/alice, token/<id>,
# device/<uuid>, server/init) and its actions (token.create); a filter that cannot
# match is refused rather than answered with nothing, and nothing unchecked
# reaches the database.
# "server" alone is the server acting by itself (device.expire).
_AUDIT_SUBJECT = re.compile(r"server|[a-z][a-z0-9-]{0,31}/[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_AUDIT_ACTION = re.compile(r"[a-z][a-z0-9_-]{0,31}(\.[a-z][a-z0-9_-]{0,31}){1,3}")


@dataclass(frozen=True)
class Overview:
    """Tokens and devices by state, and enrollments on each of the last days (oldest first)."""

    counts: StateCounts
    enrollments_per_day: tuple[tuple[date, int], ...]


@dataclass(frozen=True)
class NewToken:
    token: Token
    secret: tokens.Secret


def _check_label(label: str) -> str:
    text = label.strip()
    if not text:
        raise InvalidArgumentError("label is required")
    if len(text) > MAX_LABEL:
        raise InvalidArgumentError(f"label is longer than {MAX_LABEL} characters")
    if any(not c.isprintable() for c in text):
        raise InvalidArgumentError("label contains control characters")
    return text


def _check_id(kind: str, value: str, well_formed: Callable[[str], bool]) -> str:
    """The id, stripped; an id that cannot exist is not found without asking the database.

    Asking anyway would hand the driver whatever the caller sent: PostgreSQL
    refuses a string with a NUL byte, which would surface as INTERNAL
    (tests/robust/test_hostile_input.py::test_fail_bogus_ids).
    """
    text = value.strip()
    if not text:
        raise InvalidArgumentError(f"{kind} id is required")
    if not well_formed(text):
        raise NotFoundError(f"{kind} not found")
    return text


def _is_device_id(text: str) -> bool:
    try:
        validate_name(text, what="device id")
    except InvalidArgumentError:
        return False
    return True


def _check_token_id(value: str) -> str:
    return _check_id("enrollment token", value, tokens.is_token_id)


def _check_device_id(value: str) -> str:
    return _check_id("device", value, _is_device_id)


def _revoke_outcome(revoked_at: datetime | None, now: datetime) -> str:
    # The store sets revoked_at to this call's now only when this call revoked it.
    return "ok" if revoked_at == now else ALREADY_REVOKED


def check_audit_filter(
    *, actor: str, resource: str, action: str, since: datetime | None
) -> AuditFilter:
    """The filter of ListAuditEvents, each field checked; InvalidArgumentError names the field."""
    actor, resource, action = actor.strip(), resource.strip(), action.strip()
    if actor and not _AUDIT_SUBJECT.fullmatch(actor):
        raise InvalidArgumentError("actor must be kind/name, like admin/alice or token/<id>")
    if resource and not _AUDIT_SUBJECT.fullmatch(resource):
        raise InvalidArgumentError("resource must be kind/id, like token/<id> or admin/alice")
    if action and not _AUDIT_ACTION.fullmatch(action):
        raise InvalidArgumentError("action must be like token.create or admin.revoke")
    return AuditFilter(actor=actor, resource=resource, action=action, since=since)


def _token_terms(max_uses: int | None, expires_at: datetime | None) -> str:
    """A new token's terms as the audit trail records them: 'max_uses=10 expires_at=never'."""
    uses = "unlimited" if max_uses is None else str(max_uses)
    expiry = "never" if expires_at is None else f"{expires_at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
    return f"max_uses={uses} expires_at={expiry}"


class Administration:
    """The AdminService's decisions; the servicer only converts protobuf.

    The recorder counts the admin certificates CreateAdmin signs
    (CertificateKind.ADMIN), as the Enroller and DeviceService count theirs.
    """

    def __init__(self, store: Store, clock: Clock, recorder: Recorder | None = None) -> None:
        self._store = store
        self._clock = clock
        self._recorder: Recorder = recorder or NoRecorder()

    def now(self) -> datetime:
        return self._clock.now()

    def create_token(
        self,
        caller: Caller,
        *,
        label: str,
        max_uses: int | None,
        expires_at: datetime | None,
        policy: TokenPolicy | None = None,
    ) -> NewToken:
        """policy: its rules as given; checked here (InvalidArgumentError names the field)."""
        now = self._clock.now()
        label = _check_label(label)
        if max_uses is not None and not 1 <= max_uses <= MAX_USES_LIMIT:
            raise InvalidArgumentError(
                f"max_uses must be between 1 and {MAX_USES_LIMIT}, or unset for unlimited"
            )
        if expires_at is not None and expires_at <= now:
            raise InvalidArgumentError("expires_at must be in the future")
        policy = tokenpolicy.checked(policy or tokenpolicy.check_policy())
        token_id = tokens.new_token_id()
        secret = tokens.make_secret(token_id)
        token = Token(
            id=token_id,
            label=label,
            secret_hash=tokens.hash_secret(tokens.parse_secret(secret.reveal())),
            max_uses=max_uses,
            uses=0,
            expires_at=expires_at,
            created_at=now,
            created_by=caller.name,
            policy=policy,
        )
        terms = " ".join(
            filter(None, (_token_terms(max_uses, expires_at), tokenpolicy.describe(token.policy)))
        )
        stored = self._store.create_token(
            token, caller.audit("token.create", f"token/{token_id}", now, terms)
        )
        log_event(
            log, "token.create", admin=caller.name, token=token_id, peer=caller.peer, outcome="ok"
        )
        return NewToken(stored, secret)

    def get_token(self, token_id: str) -> Token:
        return self._store.get_token(_check_token_id(token_id))

    def list_tokens(self, *, state: TokenState | None, page_size: int, cursor: str) -> Page[Token]:
        return self._store.list_tokens(
            now=self._clock.now(), state=state, page_size=check_page_size(page_size), cursor=cursor
        )

    def revoke_token(self, caller: Caller, token_id: str) -> Token:
        now = self._clock.now()
        # The canonical id everywhere after this, the audit row included, so that a
        # search by resource finds the revocation however the id was sent
        # (tests/rpc/test_admin.py::test_fail_padded_id_hides_a_revocation_from_the_audit_trail).
        token_id = _check_token_id(token_id)
        token = self._store.revoke_token(
            token_id, now, caller.audit("token.revoke", f"token/{token_id}", now)
        )
        log_event(
            log,
            "token.revoke",
            admin=caller.name,
            token=token_id,
            peer=caller.peer,
            outcome=_revoke_outcome(token.revoked_at, now),
        )
        return token

    def get_device(self, device_id: str) -> Device:
        return self._store.get_device(_check_device_id(device_id))

    def list_devices(
        self,
        *,
        token_id: str,
        page_size: int,
        cursor: str,
        hostname: str = "",
        state: DeviceState | None = None,
        tag: str = "",
        hostname_prefix: str = "",
        facts: Mapping[str, str] | None = None,
    ) -> Page[Device]:
        token_filter = token_id.strip()
        if token_filter and not tokens.is_token_id(token_filter):
            raise InvalidArgumentError(
                f"token_id is not an enrollment token id ({tokens.ID_CHARS} characters of a-z, 2-7)"
            )
        tag = tag.strip()
        if tag:
            tokenpolicy.check_tag(tag)
        return self._store.list_devices(
            token_id=token_filter,
            tag=tag,
            # Stored as check_hostname left it at enrollment, so matched the same way.
            hostname=check_hostname(hostname),
            hostname_prefix=check_hostname(hostname_prefix, "hostname_prefix"),
            # Named and sized as an enrollment's facts are: any other pair matches nothing.
            facts=check_facts(facts or {}),
            state=state,
            now=self._clock.now(),
            page_size=check_page_size(page_size),
            cursor=cursor,
            budget=_DEVICE_PAGE_BUDGET,
        )

    def revoke_device(self, caller: Caller, device_id: str, reason: str = "") -> Device:
        """Revoke for reason (RFC 5280's name as cryptography spells it, '' unspecified)."""
        now = self._clock.now()
        device_id = _check_device_id(device_id)  # canonical, as in revoke_token
        try:
            reason = check_given_reason(reason)
        except ValueError as error:
            raise InvalidArgumentError(str(error)) from None
        audit = caller.audit("device.revoke", f"device/{device_id}", now)
        if reason != "unspecified":
            audit = dataclasses.replace(audit, detail=f"reason={reason}")
        device = self._store.revoke_device(device_id, now, audit, reason=reason)
        log_event(
            log,
            "device.revoke",
            admin=caller.name,
            device=device_id,
            peer=caller.peer,
            outcome=_revoke_outcome(device.revoked_at, now),
        )
        return device

    def list_audit_events(
        self, where: AuditFilter, *, page_size: int, cursor: str
    ) -> Page[AuditEvent]:
        """The audit trail newest first; where comes from check_audit_filter."""
        return self._store.list_audit_events(
            where, page_size=check_page_size(page_size), cursor=cursor
        )

    def overview(self, days: int) -> Overview:
        """Counts by state now, and enrollments per UTC day for days days ending today."""
        if not 0 <= days <= MAX_OVERVIEW_DAYS:
            raise InvalidArgumentError(
                f"days must be between 1 and {MAX_OVERVIEW_DAYS}, or unset for "
                f"{DEFAULT_OVERVIEW_DAYS}"
            )
        days = days or DEFAULT_OVERVIEW_DAYS
        now = self._clock.now()
        first = now.astimezone(UTC).date() - timedelta(days=days - 1)
        counted = self._store.enrollments_per_day(datetime.combine(first, time(), UTC))
        series = tuple(
            (first + timedelta(days=n), counted.get(first + timedelta(days=n), 0))
            for n in range(days)
        )
        return Overview(counts=self._store.state_counts(now), enrollments_per_day=series)
