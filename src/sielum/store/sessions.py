"""Dashboard login codes and sessions in SQL: issued, redeemed, touched, ended and purged."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sielum.model import AuditEvent, DashboardLogin, DashboardSession
from sielum.store.base import StoreBase, _guarded
from sielum.store.database import write_transaction


class SessionStore(StoreBase):
    """The dashboard's login codes and sessions, looked up by the hash of their secret."""

    @_guarded
    def create_dashboard_login(self, login: DashboardLogin, audit: AuditEvent) -> None:
        L = self._t.dashboard_login
        with write_transaction(self.db):
            L.insert(
                code_hash=bytes(login.code_hash),
                admin=login.admin,
                created_at=login.created_at,
                expires_at=login.expires_at,
                session_limit=login.session_limit,
                used_at=login.used_at,
            ).execute()
            self._insert_audit(audit)

    @_guarded
    def get_dashboard_login(self, code_hash: bytes) -> DashboardLogin | None:
        L = self._t.dashboard_login
        row = L.get_or_none(L.code_hash == bytes(code_hash))
        return None if row is None else _dashboard_login(row)

    @_guarded
    def redeem_dashboard_login(
        self,
        code_hash: bytes,
        now: datetime,
        open_session: Callable[[DashboardLogin], tuple[DashboardSession, AuditEvent]],
    ) -> DashboardSession | None:
        """Spend the login code and start the session open_session makes, in one transaction.

        The code is spent by one conditional UPDATE, as a token's use is: of any
        number of calls with one code, on any replica, one starts a session
        (tests/store/test_dashboard.py::test_a_login_code_starts_one_session_under_concurrency).
        None when the code is unknown, spent or expired.
        """
        L, S = self._t.dashboard_login, self._t.dashboard_session
        with write_transaction(self.db):
            spent = (
                L.update(used_at=now)
                .where(
                    (L.code_hash == bytes(code_hash)) & L.used_at.is_null() & (L.expires_at > now)
                )
                .execute()
            )
            if spent == 0:
                return None
            session, audit = open_session(_dashboard_login(L.get(L.code_hash == bytes(code_hash))))
            S.insert(
                key_hash=bytes(session.key_hash),
                admin=session.admin,
                created_at=session.created_at,
                last_seen_at=session.last_seen_at,
                expires_at=session.expires_at,
            ).execute()
            self._insert_audit(audit)
        return session

    @_guarded
    def get_dashboard_session(self, key_hash: bytes) -> DashboardSession | None:
        S = self._t.dashboard_session
        row = S.get_or_none(S.key_hash == bytes(key_hash))
        return None if row is None else _dashboard_session(row)

    @_guarded
    def touch_dashboard_session(self, key_hash: bytes, now: datetime) -> None:
        """Record the session's latest use (its idle time counts from here)."""
        S = self._t.dashboard_session
        with write_transaction(self.db):
            S.update(last_seen_at=now).where(
                (S.key_hash == bytes(key_hash)) & (S.last_seen_at < now)
            ).execute()

    @_guarded
    def end_dashboard_session(
        self, key_hash: bytes, audit: Callable[[DashboardSession], AuditEvent] | None = None
    ) -> DashboardSession | None:
        """Delete the session (and record audit(session)); None when there was none."""
        S = self._t.dashboard_session
        with write_transaction(self.db):
            row = S.get_or_none(S.key_hash == bytes(key_hash))
            if row is None:
                return None
            session = _dashboard_session(row)
            S.delete().where(S.key_hash == bytes(key_hash)).execute()
            if audit is not None:
                self._insert_audit(audit(session))
        return session

    @_guarded
    def end_dashboard_sessions_of(self, admin: str) -> int:
        """Delete every session of admin; how many there were."""
        S = self._t.dashboard_session
        with write_transaction(self.db):
            return int(S.delete().where(S.admin == admin).execute())

    @_guarded
    def count_dashboard_sessions(self, now: datetime, idle_since: datetime) -> int:
        """Sessions neither expired at now nor idle since idle_since (for metrics)."""
        S = self._t.dashboard_session
        return int(S.select().where((S.expires_at > now) & (S.last_seen_at > idle_since)).count())

    @_guarded
    def purge_dashboard_credentials(self, now: datetime, idle_since: datetime) -> None:
        """Forget login codes past their expiry and sessions ended by time (expired or idle)."""
        L, S = self._t.dashboard_login, self._t.dashboard_session
        with write_transaction(self.db):
            L.delete().where(L.expires_at <= now).execute()
            S.delete().where((S.expires_at <= now) | (S.last_seen_at <= idle_since)).execute()


def _dashboard_login(row: Any) -> DashboardLogin:
    return DashboardLogin(
        code_hash=bytes(row.code_hash),
        admin=row.admin,
        created_at=row.created_at,
        expires_at=row.expires_at,
        session_limit=row.session_limit,
        used_at=row.used_at,
    )


def _dashboard_session(row: Any) -> DashboardSession:
    return DashboardSession(
        key_hash=bytes(row.key_hash),
        admin=row.admin,
        created_at=row.created_at,
        last_seen_at=row.last_seen_at,
        expires_at=row.expires_at,
    )
