"""Enrollment tokens in SQL: created, read, listed by state and revoked."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

import peewee

from sielum.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from sielum.model import NO_POLICY, AuditEvent, Page, Token, TokenPolicy, TokenState
from sielum.store.base import DEFAULT_PAGE_SIZE, StoreBase, _guarded, _keyset_page, _time
from sielum.store.database import execute, write_transaction
from sielum.store.models import from_micros
from sielum.store.statements import token_state_condition

_TOKEN_NOT_FOUND = "enrollment token not found"  # noqa: S105 - a message, not a secret


class TokenStore(StoreBase):
    """Enrollment tokens; DeviceStore.enroll_device consumes their uses."""

    @_guarded
    def create_token(self, token: Token, audit: AuditEvent) -> Token:
        if token.uses != 0:
            raise ValueError("a new enrollment token starts with uses = 0")
        if token.max_uses is not None and token.max_uses < 0:
            raise InvalidArgumentError("max_uses must not be negative")
        T = self._t.token
        try:
            with write_transaction(self.db):
                T.insert(**_token_row(token)).execute()
                self._insert_audit(audit)
                row = T.get(T.id == token.id)
        except peewee.IntegrityError as exc:
            raise AlreadyExistsError("an enrollment token with this id already exists") from exc
        return _token(row)

    @_guarded
    def get_token(self, token_id: str) -> Token:
        row = execute(self.db, self._sql.select_token, (token_id,)).fetchone()
        if row is None:
            raise NotFoundError(_TOKEN_NOT_FOUND)
        return _token_from_tuple(row)

    @_guarded
    def list_tokens(
        self,
        *,
        now: datetime,
        state: TokenState | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        cursor: str = "",
    ) -> Page[Token]:
        """Tokens newest first; with state, only those token_state() puts in that state at now."""
        T = self._t.token
        query = T.select()
        if state is not None:
            query = query.where(token_state_condition(T, state, now))
        return _keyset_page(T, query, "tokens", page_size, cursor, _token)

    @_guarded
    def revoke_token(self, token_id: str, now: datetime, audit: AuditEvent) -> Token:
        """Revoke; revoking again keeps the first revoked_at. Devices are not touched."""
        return _token(self._revoke(self._t.token, token_id, now, audit, _TOKEN_NOT_FOUND))


def _token_from_tuple(row: Sequence[Any]) -> Token:
    """A Token from a row of _TOKEN_COLUMNS."""
    return Token(
        id=row[0],
        label=row[1],
        secret_hash=bytes(row[2]),  # psycopg2 hands BYTEA back as memoryview
        max_uses=row[3],
        uses=row[4],
        expires_at=_time(row[5]),
        created_at=from_micros(int(row[6])),
        created_by=row[7],
        revoked_at=_time(row[8]),
        last_used_at=_time(row[9]),
        policy=_policy(row[10], row[11]),
    )


def _token_row(token: Token) -> dict[str, Any]:
    return {
        "id": token.id,
        "label": token.label,
        "secret_hash": bytes(token.secret_hash),
        "max_uses": token.max_uses,
        "uses": token.uses,
        "expires_at": token.expires_at,
        "created_at": token.created_at,
        "created_by": token.created_by,
        "revoked_at": token.revoked_at,
        "last_used_at": token.last_used_at,
        "policy": _policy_json(token.policy),
        "ephemeral_after": None
        if token.policy.ephemeral_after is None
        else token.policy.ephemeral_after // _MICROSECOND,
    }


def _token(row: Any) -> Token:
    return Token(
        id=row.id,
        label=row.label,
        secret_hash=bytes(row.secret_hash),  # psycopg2 hands BYTEA back as memoryview
        max_uses=row.max_uses,
        uses=row.uses,
        expires_at=row.expires_at,
        created_at=row.created_at,
        created_by=row.created_by,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        policy=_policy(row.policy, row.ephemeral_after),
    )


_MICROSECOND = timedelta(microseconds=1)


def _policy_json(policy: TokenPolicy) -> str:
    """The policy's rules but ephemeral_after (a column of its own) as compact JSON."""
    value: dict[str, Any] = {}
    if policy.tags:
        value["tags"] = list(policy.tags)
    if policy.allowed_networks:
        value["allowed_networks"] = list(policy.allowed_networks)
    if policy.hostname_pattern:
        value["hostname_pattern"] = policy.hostname_pattern
    if policy.required_facts:
        value["required_facts"] = dict(policy.required_facts)
    if policy.requires_approval:
        value["requires_approval"] = True
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _policy(text: str | None, ephemeral_micros: int | None) -> TokenPolicy:
    value = json.loads(text or "{}")
    if not value and ephemeral_micros is None:
        return NO_POLICY
    return TokenPolicy(
        tags=tuple(str(t) for t in value.get("tags", ())),
        allowed_networks=tuple(str(n) for n in value.get("allowed_networks", ())),
        hostname_pattern=str(value.get("hostname_pattern", "")),
        required_facts=MappingProxyType(
            {str(k): str(v) for k, v in value.get("required_facts", {}).items()}
        ),
        ephemeral_after=None
        if ephemeral_micros is None
        else timedelta(microseconds=int(ephemeral_micros)),
        requires_approval=bool(value.get("requires_approval", False)),
    )
