"""Enrollment token policy: the secret's format and checksum, its hash, and the token state."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sielum.errors import (
    InvalidArgumentError,
    TokenExhaustedError,
    TokenExpiredError,
    TokenRevokedError,
)
from sielum.model import Token, TokenState

PREFIX = "slm_"
_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lowercase
ID_CHARS = 16  # 80 bits: unique, and public
SECRET_CHARS = 32  # 160 bits of randomness
CHECK_CHARS = 7  # CRC-32 in base32
_FORMAT = re.compile(
    rf"^{PREFIX}([a-z2-7]{{{ID_CHARS}}})_([a-z2-7]{{{SECRET_CHARS}}})([a-z2-7]{{{CHECK_CHARS}}})$"
)
_ID_FORMAT = re.compile(rf"^[a-z2-7]{{{ID_CHARS}}}$")


class Secret:
    """A token secret. Its repr and str are redacted, so a log line cannot carry it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: only for the one create response and the agent's request."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('slm_…redacted')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ParsedToken:
    """A well-formed token secret split into its public id and its random part."""

    id: str
    random: Secret


def _random_chars(n: int, randbytes: Callable[[int], bytes]) -> str:
    raw = base64.b32encode(randbytes((n * 5 + 7) // 8)).decode().lower().rstrip("=")
    return raw[:n]


def _checksum(body: str) -> str:
    crc = zlib.crc32(body.encode())
    chars = []
    for _ in range(CHECK_CHARS):
        chars.append(_ALPHABET[crc & 31])
        crc >>= 5
    return "".join(reversed(chars))


def new_token_id(randbytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    return _random_chars(ID_CHARS, randbytes)


def make_secret(token_id: str, randbytes: Callable[[int], bytes] = secrets.token_bytes) -> Secret:
    """A fresh secret for token_id: slm_<id>_<160 random bits><CRC-32 checksum>."""
    body = f"{PREFIX}{token_id}_{_random_chars(SECRET_CHARS, randbytes)}"
    return Secret(body + _checksum(body))


def parse_secret(text: str) -> ParsedToken:
    """Split a pasted token into id and random part, or raise InvalidArgumentError.

    Surrounding whitespace is forgiven (a token pasted with a trailing newline);
    anything else that breaks the format or the checksum is refused, so a mistyped
    token is caught before it is sent anywhere.
    """
    candidate = text.strip()
    match = _FORMAT.match(candidate)
    if match is None:
        raise InvalidArgumentError(
            "enrollment token is malformed: expected slm_<16 chars>_<39 chars> in lowercase base32"
        )
    token_id, random_part, check = match.groups()
    if not hmac.compare_digest(check, _checksum(candidate[:-CHECK_CHARS])):
        raise InvalidArgumentError("enrollment token checksum does not match: it was mistyped")
    return ParsedToken(id=token_id, random=Secret(random_part))


def is_token_id(text: str) -> bool:
    return _ID_FORMAT.match(text) is not None


def hash_secret(parsed: ParsedToken) -> bytes:
    """What is stored at rest. The secret has 160 random bits, so a plain SHA-256 is enough."""
    return hashlib.sha256(f"{parsed.id}:{parsed.random.reveal()}".encode()).digest()


def secret_matches(parsed: ParsedToken, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_secret(parsed), stored_hash)


def token_state(
    *,
    revoked: bool,
    expires_at: datetime | None,
    uses: int,
    max_uses: int | None,
    now: datetime,
) -> TokenState:
    """The one state function; first match wins: Revoked > Expired > Exhausted > Active.

    A token whose expires_at equals now is expired (tests/unit/test_tokens.py).
    """
    if revoked:
        return TokenState.REVOKED
    if expires_at is not None and expires_at <= now:
        return TokenState.EXPIRED
    if max_uses is not None and uses >= max_uses:
        return TokenState.EXHAUSTED
    return TokenState.ACTIVE


def state_of(token: Token, now: datetime) -> TokenState:
    return token_state(
        revoked=token.revoked_at is not None,
        expires_at=token.expires_at,
        uses=token.uses,
        max_uses=token.max_uses,
        now=now,
    )


def check_usable(token: Token, now: datetime) -> None:
    """Raise the PermissionDeniedError that says why the token cannot enroll now."""
    state = state_of(token, now)
    if state is TokenState.REVOKED:
        raise TokenRevokedError("enrollment token has been revoked")
    if state is TokenState.EXPIRED:
        raise TokenExpiredError("enrollment token has expired")
    if state is TokenState.EXHAUSTED:
        raise TokenExhaustedError("enrollment token is exhausted: it has no uses left")
