"""Token policy: secret format and checksum, hashing, and the state function on every boundary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sielum import tokens
from sielum.errors import (
    InvalidArgumentError,
    TokenExhaustedError,
    TokenExpiredError,
    TokenRevokedError,
)
from sielum.model import Token, TokenState

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def _token(**overrides: object) -> Token:
    values: dict[str, object] = dict(
        id="aaaaaaaaaaaaaaaa",
        label="l",
        secret_hash=b"",
        max_uses=None,
        uses=0,
        expires_at=None,
        created_at=NOW,
        created_by="admin",
    )
    values.update(overrides)
    return Token(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("revoked", "expires_at", "uses", "max_uses", "expected"),
    [
        (False, None, 0, None, TokenState.ACTIVE),
        (False, None, 10**9, None, TokenState.ACTIVE),  # unlimited never exhausts
        (False, NOW + timedelta(microseconds=1), 0, None, TokenState.ACTIVE),
        (False, NOW, 0, None, TokenState.EXPIRED),  # expiry exactly now: expired
        (False, NOW - timedelta(seconds=1), 0, None, TokenState.EXPIRED),
        (False, None, 1, 2, TokenState.ACTIVE),
        (False, None, 2, 2, TokenState.EXHAUSTED),  # uses == max
        (False, None, 3, 2, TokenState.EXHAUSTED),
        (True, None, 0, None, TokenState.REVOKED),
        (True, NOW - timedelta(days=1), 0, None, TokenState.REVOKED),  # revoked and expired
        (True, NOW - timedelta(days=1), 5, 5, TokenState.REVOKED),  # all three at once
        (False, NOW, 5, 5, TokenState.EXPIRED),  # expired beats exhausted
    ],
)
def test_token_state_boundaries(
    revoked: bool,
    expires_at: datetime | None,
    uses: int,
    max_uses: int | None,
    expected: TokenState,
) -> None:
    assert (
        tokens.token_state(
            revoked=revoked, expires_at=expires_at, uses=uses, max_uses=max_uses, now=NOW
        )
        is expected
    )


def test_check_usable_raises_the_reason() -> None:
    tokens.check_usable(_token(), NOW)
    with pytest.raises(TokenRevokedError, match="revoked"):
        tokens.check_usable(_token(revoked_at=NOW), NOW)
    with pytest.raises(TokenExpiredError, match="expired"):
        tokens.check_usable(_token(expires_at=NOW), NOW)
    with pytest.raises(TokenExhaustedError, match="exhausted"):
        tokens.check_usable(_token(max_uses=1, uses=1), NOW)


def test_secret_format_carries_id_and_round_trips() -> None:
    token_id = tokens.new_token_id()
    secret = tokens.make_secret(token_id).reveal()
    assert secret.startswith(f"slm_{token_id}_")
    parsed = tokens.parse_secret(secret)
    assert parsed.id == token_id
    assert tokens.is_token_id(token_id)
    # 32 base32 characters of randomness: 160 bits, above the 128 the contract asks for.
    assert len(parsed.random.reveal()) * 5 >= 128


def test_secrets_are_distinct() -> None:
    token_id = tokens.new_token_id()
    assert len({tokens.make_secret(token_id).reveal() for _ in range(200)}) == 200


def test_parse_forgives_surrounding_whitespace() -> None:
    secret = tokens.make_secret(tokens.new_token_id()).reveal()
    assert tokens.parse_secret(f"  {secret} \n").id == tokens.parse_secret(secret).id


@pytest.mark.parametrize("position", [4, 10, 21, 30, 50, 59])
def test_parse_fail_checksum_catches_one_typo(position: int) -> None:
    secret = tokens.make_secret(tokens.new_token_id()).reveal()
    typo = "a" if secret[position] != "a" else "b"
    mistyped = secret[:position] + typo + secret[position + 1 :]
    with pytest.raises(InvalidArgumentError) as caught:
        tokens.parse_secret(mistyped)
    assert "checksum" in caught.value.message or "malformed" in caught.value.message


@pytest.mark.parametrize(
    "text",
    ["", "slm_", "not a token", "SLM_" + "a" * 56, "slm_abc_def", "slm_' OR 1=1 --", "slm_ünïcode"],
)
def test_parse_fail_malformed(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="malformed"):
        tokens.parse_secret(text)


def test_parse_fail_inner_whitespace() -> None:
    secret = tokens.make_secret(tokens.new_token_id()).reveal()
    with pytest.raises(InvalidArgumentError, match="malformed"):
        tokens.parse_secret(secret[:20] + " " + secret[20:])


def test_hash_matches_only_its_secret() -> None:
    token_id = tokens.new_token_id()
    one = tokens.parse_secret(tokens.make_secret(token_id).reveal())
    two = tokens.parse_secret(tokens.make_secret(token_id).reveal())
    stored = tokens.hash_secret(one)
    assert tokens.secret_matches(one, stored)
    assert not tokens.secret_matches(two, stored)
    assert one.random.reveal().encode() not in stored


def test_secret_repr_is_redacted() -> None:
    secret = tokens.make_secret(tokens.new_token_id())
    assert secret.reveal() not in repr(secret)
    assert secret.reveal() not in str(secret)
    assert secret.reveal() not in f"{secret!r} {secret}"
    parsed = tokens.parse_secret(secret.reveal())
    assert parsed.random.reveal() not in repr(parsed)
