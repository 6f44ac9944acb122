"""Dashboard sign-in: one-time login codes and sessions, their lifetimes, and the checks on them.

A login code and a session key are each 32 random bytes. Only their SHA-256
is stored, so a copy of the database signs no one in; codes and sessions live
in the database, so every worker and every replica honours them. Nothing here
knows of HTTP: the dashboard's transport (dashboard/web.py) hands in the texts
it received and gets plain values or an UnauthenticatedError back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sielum.clock import Clock
from sielum.errors import UnauthenticatedError
from sielum.logs import log_event
from sielum.model import AuditEvent, DashboardLogin, DashboardSession
from sielum.recorder import DashboardLoginResult, NoRecorder, Recorder
from sielum.store.store import Store

log = logging.getLogger("sielum.dashboard")

LOGIN_LIFETIME = timedelta(minutes=5)
IDLE_LIMIT = timedelta(minutes=30)
SESSION_LIMIT = timedelta(hours=8)
# A session's last use is written at most this often: each call would otherwise
# be a write, and idle time is measured in tens of minutes.
TOUCH_INTERVAL = timedelta(minutes=1)
CREDENTIAL_BYTES = 32
_CREDENTIAL = re.compile(r"^[A-Za-z0-9_-]{43}$")  # 32 bytes, base64url without padding

# The pages add how to sign in again (`sielum-admin dashboard open`) to these.
SIGNED_OUT = "you are signed out"


class Credential:
    """A login code or a session key. Its repr and str are redacted, so no log line carries it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The text itself: only for the login link and the session cookie."""
        return self._value

    def digest(self) -> bytes:
        """What is stored: 256 random bits need no slow hash."""
        return hashlib.sha256(self._value.encode("ascii")).digest()

    def __repr__(self) -> str:
        return "Credential('…redacted')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Credential) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)


def new_credential(randbytes: Callable[[int], bytes] = secrets.token_bytes) -> Credential:
    raw = randbytes(CREDENTIAL_BYTES)
    return Credential(base64.urlsafe_b64encode(raw).decode("ascii").rstrip("="))


def parse_credential(text: str) -> Credential | None:
    """The credential in text, or None for anything that cannot be one (never looked up)."""
    return Credential(text) if _CREDENTIAL.match(text) else None


# Policy: pure functions of plain values and now.


def login_expiry(now: datetime, session_limit: datetime) -> datetime:
    """A login link lasts 5 minutes, and never past the credential of the admin who asked."""
    return min(now + LOGIN_LIFETIME, session_limit)


def session_expiry(now: datetime, session_limit: datetime) -> datetime:
    """A session lasts 8 hours at most, and never past the login's session limit."""
    return min(now + SESSION_LIMIT, session_limit)


def check_login(login: DashboardLogin | None, now: datetime) -> None:
    """Why a login code starts no session, as UnauthenticatedError; nothing when it may.

    A code carries 256 random bits, so saying "used" or "expired" tells a
    guesser nothing they could use.
    """
    if login is None:
        raise UnauthenticatedError("this login link is not valid")
    if login.used_at is not None:
        raise UnauthenticatedError("this login link was already used")
    if login.expires_at <= now:
        raise UnauthenticatedError("this login link has expired")


def check_session(session: DashboardSession | None, now: datetime) -> None:
    """Why a session no longer admits its admin, as UnauthenticatedError; nothing while it does."""
    if session is None:
        raise UnauthenticatedError(SIGNED_OUT)
    if session.expires_at <= now:
        raise UnauthenticatedError("the dashboard session has ended (8 hours at most)")
    if session.last_seen_at + IDLE_LIMIT <= now:
        raise UnauthenticatedError("the dashboard session ended after 30 minutes without use")


def _audit(action: str, admin: str, at: datetime, peer: str, detail: str) -> AuditEvent:
    return AuditEvent(
        at=at,
        actor=f"admin/{admin}",
        action=action,
        resource=f"admin/{admin}",
        peer=peer,
        detail=detail,
    )


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class NewLogin:
    code: Credential
    expires_at: datetime


@dataclass(frozen=True)
class NewSession:
    key: Credential
    session: DashboardSession


class DashboardSessions:
    """Makes login codes, turns one into a session, checks and ends sessions."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        recorder: Recorder | None = None,
        randbytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._store = store
        self._clock = clock
        self._recorder: Recorder = recorder or NoRecorder()
        self._randbytes = randbytes

    def create_login(
        self, admin: str, credential_not_after: datetime | None, peer: str
    ) -> NewLogin:
        """A one-time code for admin. credential_not_after caps the session it will start.

        It is the expiry of the credential the admin called with: their client
        certificate, or the session that asks for a link to pass on.
        """
        now = self._clock.now()
        limit = credential_not_after if credential_not_after is not None else now + SESSION_LIMIT
        if limit <= now:
            raise UnauthenticatedError("the caller's credential has expired")
        code = new_credential(self._randbytes)
        expires_at = login_expiry(now, limit)
        # Codes and sessions ended by time are forgotten here: links are asked
        # for rarely, and often enough to keep both tables small.
        self._store.purge_dashboard_credentials(now, now - IDLE_LIMIT)
        self._store.create_dashboard_login(
            DashboardLogin(
                code_hash=code.digest(),
                admin=admin,
                created_at=now,
                expires_at=expires_at,
                session_limit=limit,
            ),
            _audit("dashboard.login_link", admin, now, peer, f"expires_at={_iso(expires_at)}"),
        )
        log_event(log, "dashboard.login_link", admin=admin, peer=peer, outcome="ok")
        return NewLogin(code=code, expires_at=expires_at)

    def admin_of(self, code_text: str) -> str | None:
        """The admin a login code would sign in, without spending it; None if it would not."""
        code = parse_credential(code_text.strip())
        login = None if code is None else self._store.get_dashboard_login(code.digest())
        try:
            check_login(login, self._clock.now())
        except UnauthenticatedError:
            return None
        return None if login is None else login.admin

    def start_session(self, code_text: str, peer: str) -> NewSession:
        """Spend the login code and start a session as its admin, or UnauthenticatedError."""
        now = self._clock.now()
        code = parse_credential(code_text.strip())
        session: DashboardSession | None = None
        key = new_credential(self._randbytes)

        def open_session(login: DashboardLogin) -> tuple[DashboardSession, AuditEvent]:
            expires_at = session_expiry(now, login.session_limit)
            opened = DashboardSession(
                key_hash=key.digest(),
                admin=login.admin,
                created_at=now,
                last_seen_at=now,
                expires_at=expires_at,
            )
            detail = f"expires_at={_iso(expires_at)}"
            return opened, _audit("dashboard.login", login.admin, now, peer, detail)

        if code is not None:
            session = self._store.redeem_dashboard_login(code.digest(), now, open_session)
        if session is None:
            login = None if code is None else self._store.get_dashboard_login(code.digest())
            # Passing the checks here means another call spent the code a moment ago.
            refusal = UnauthenticatedError("this login link was already used")
            try:
                check_login(login, now)
            except UnauthenticatedError as error:
                refusal = error
            log_event(log, "dashboard.login", peer=peer, outcome="refused", reason=refusal.message)
            self._recorder.dashboard_login(DashboardLoginResult.REFUSED)
            raise refusal
        log_event(log, "dashboard.login", admin=session.admin, peer=peer, outcome="ok")
        self._recorder.dashboard_login(DashboardLoginResult.OK)
        return NewSession(key=key, session=session)

    def check(self, key_text: str) -> DashboardSession:
        """The live session this cookie value names, or UnauthenticatedError saying why not."""
        now = self._clock.now()
        key = parse_credential(key_text)
        session = None if key is None else self._store.get_dashboard_session(key.digest())
        check_session(session, now)
        assert session is not None  # check_session refused None
        if now - session.last_seen_at >= TOUCH_INTERVAL:
            self._store.touch_dashboard_session(session.key_hash, now)
        return session

    def end(self, key_text: str, peer: str) -> DashboardSession | None:
        """Sign out: delete the session, recorded in the audit trail; None if there was none."""
        key = parse_credential(key_text)
        if key is None:
            return None
        now = self._clock.now()
        ended = self._store.end_dashboard_session(
            key.digest(), lambda session: _audit("dashboard.logout", session.admin, now, peer, "")
        )
        if ended is not None:
            log_event(log, "dashboard.logout", admin=ended.admin, peer=peer, outcome="ok")
        return ended

    def count_open(self, now: datetime) -> int:
        """Sessions open at now: neither past their 8 hours nor idle for 30 minutes."""
        return self._store.count_dashboard_sessions(now, now - IDLE_LIMIT)

    def end_all_of(self, admin: str) -> int:
        """End every session of admin (revoked): the count ended."""
        return self._store.end_dashboard_sessions_of(admin)


class LoginLinks:
    """Login links to this server's dashboard: https://<dashboard>/login#<code>.

    The code travels in the fragment, which browsers never send to a server: it
    stays out of access logs, proxies and Referer headers.
    """

    def __init__(self, sessions: DashboardSessions, base_url: str) -> None:
        self._sessions = sessions
        self.base_url = base_url.rstrip("/")

    def create(
        self, admin: str, credential_not_after: datetime | None, peer: str
    ) -> tuple[str, datetime]:
        """(the link, when it expires) for admin."""
        login = self._sessions.create_login(admin, credential_not_after, peer)
        return f"{self.base_url}/login#{login.code.reveal()}", login.expires_at
