"""Dashboard policy without a server: credentials, lifetimes, and the browser-request checks."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from sielum import sessions
from sielum.admin.v1 import admin_pb2
from sielum.dashboard.connect import (
    CONNECT_CODES,
    ConnectError,
    check_browser_request,
    parse_request,
)
from sielum.dashboard.web import PageConfig, origin_of
from sielum.errors import UnauthenticatedError
from sielum.model import DashboardLogin, DashboardSession

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ORIGINS = {"https://127.0.0.1:8445", "https://localhost:8445"}


def test_credentials_are_256_random_bits_and_never_shown_by_repr() -> None:
    credential = sessions.new_credential()
    text = credential.reveal()
    assert len(base64.urlsafe_b64decode(text + "=")) == 32
    assert text not in repr(credential) and text not in str(credential)
    assert sessions.parse_credential(text) == credential
    assert credential.digest() != text.encode() and len(credential.digest()) == 32
    assert sessions.new_credential() != credential


@pytest.mark.parametrize(
    "text",
    ["", "short", "a" * 42, "a" * 44, "a" * 42 + "=", "a" * 42 + "/", "a" * 42 + "\x00"],
)
def test_parse_credential_refuses_what_cannot_be_one(text: str) -> None:
    assert sessions.parse_credential(text) is None


def test_login_link_lasts_5_minutes_and_never_past_the_callers_certificate() -> None:
    assert sessions.login_expiry(T0, T0 + timedelta(days=30)) == T0 + timedelta(minutes=5)
    assert sessions.login_expiry(T0, T0 + timedelta(minutes=2)) == T0 + timedelta(minutes=2)


def test_session_lasts_8_hours_and_never_past_the_callers_certificate() -> None:
    assert sessions.session_expiry(T0, T0 + timedelta(days=30)) == T0 + timedelta(hours=8)
    assert sessions.session_expiry(T0, T0 + timedelta(hours=1)) == T0 + timedelta(hours=1)


def _login(**fields: object) -> DashboardLogin:
    values: dict[str, object] = {
        "code_hash": b"h" * 32,
        "admin": "alice",
        "created_at": T0,
        "expires_at": T0 + timedelta(minutes=5),
        "session_limit": T0 + timedelta(days=1),
    }
    return DashboardLogin(**{**values, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("login", "now", "message"),
    [
        (None, T0, "this login link is not valid"),
        (_login(used_at=T0), T0 + timedelta(seconds=1), "this login link was already used"),
        (_login(), T0 + timedelta(minutes=5), "this login link has expired"),
    ],
    ids=["fail/unknown", "fail/used", "fail/expired-at-the-boundary"],
)
def test_check_login_says_why(login: DashboardLogin | None, now: datetime, message: str) -> None:
    with pytest.raises(UnauthenticatedError) as refused:
        sessions.check_login(login, now)
    assert refused.value.message == message


def test_check_login_passes_a_fresh_code() -> None:
    sessions.check_login(_login(), T0 + timedelta(minutes=5) - timedelta(microseconds=1))


def _session(last_seen: datetime, expires: datetime) -> DashboardSession:
    return DashboardSession(
        key_hash=b"k" * 32, admin="alice", created_at=T0, last_seen_at=last_seen, expires_at=expires
    )


def test_check_session_idle_limit_is_30_minutes() -> None:
    live = _session(T0, T0 + timedelta(hours=8))
    sessions.check_session(live, T0 + timedelta(minutes=30) - timedelta(microseconds=1))
    with pytest.raises(UnauthenticatedError, match="30 minutes without use"):
        sessions.check_session(live, T0 + timedelta(minutes=30))


def test_check_session_absolute_limit() -> None:
    # Used a minute ago, but its 8 hours are up.
    session = _session(T0 + timedelta(hours=8) - timedelta(minutes=1), T0 + timedelta(hours=8))
    with pytest.raises(UnauthenticatedError, match="the dashboard session has ended"):
        sessions.check_session(session, T0 + timedelta(hours=8))


def test_check_session_without_a_session() -> None:
    with pytest.raises(UnauthenticatedError, match="you are signed out"):
        sessions.check_session(None, T0)


GOOD = {
    "Origin": "https://127.0.0.1:8445",
    "Content-Type": "application/json",
    "Connect-Protocol-Version": "1",
}


def _refusal(headers: dict[str, str], *, connect: bool = True) -> tuple[str, int, str]:
    with pytest.raises(ConnectError) as refused:
        check_browser_request(headers, ORIGINS, connect=connect)
    error = refused.value
    return CONNECT_CODES[error.code][0], error.status, error.message


def test_ok_the_dashboards_own_request() -> None:
    check_browser_request(GOOD, ORIGINS, connect=True)
    check_browser_request(
        {
            **GOOD,
            "Content-Type": "application/json; charset=utf-8",
            "Sec-Fetch-Site": "same-origin",
        },
        ORIGINS,
        connect=True,
    )
    without_version = {k: v for k, v in GOOD.items() if k != "Connect-Protocol-Version"}
    check_browser_request(without_version, ORIGINS, connect=False)


@pytest.mark.parametrize(
    ("change", "want"),
    [
        ({"Origin": "https://evil.example"}, ("permission_denied", 403, "Origin not allowed")),
        ({"Origin": "https://127.0.0.1:8446"}, ("permission_denied", 403, "Origin not allowed")),
        ({"Origin": "http://127.0.0.1:8445"}, ("permission_denied", 403, "Origin not allowed")),
        ({"Origin": "null"}, ("permission_denied", 403, "Origin not allowed")),
        ({"Origin": None}, ("permission_denied", 403, "Origin missing")),
        ({"Sec-Fetch-Site": "cross-site"}, ("permission_denied", 403, "Sec-Fetch-Site")),
        ({"Sec-Fetch-Site": "same-site"}, ("permission_denied", 403, "Sec-Fetch-Site")),
        (
            {"Content-Type": "application/x-www-form-urlencoded"},
            ("invalid_argument", 415, "Content-Type must be application/json"),
        ),
        (
            {"Content-Type": "multipart/form-data; boundary=x"},
            ("invalid_argument", 415, "Content-Type must be application/json"),
        ),
        ({"Content-Type": "text/plain"}, ("invalid_argument", 415, "Content-Type must be")),
        ({"Content-Type": None}, ("invalid_argument", 415, "Content-Type must be")),
        ({"Connect-Protocol-Version": None}, ("invalid_argument", 400, "Connect-Protocol-Version")),
        ({"Connect-Protocol-Version": "2"}, ("invalid_argument", 400, "Connect-Protocol-Version")),
    ],
    ids=lambda value: str(value),
)
def test_fail_requests_the_dashboards_pages_would_not_send(
    change: dict[str, str | None], want: tuple[str, int, str]
) -> None:
    headers = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    code, status, message = _refusal(headers)  # type: ignore[arg-type]
    assert (code, status) == want[:2]
    assert want[2] in message


def test_origin_of_is_what_browsers_send() -> None:
    assert origin_of("https://Dash.Example.com/") == "https://dash.example.com"
    assert origin_of("https://dash.example.com:443/x") == "https://dash.example.com"
    assert origin_of("https://dash.example.com:8445") == "https://dash.example.com:8445"
    assert origin_of("https://[::1]:8445") == "https://[::1]:8445"
    with pytest.raises(ValueError):
        origin_of("ftp://x")


def test_connect_codes_cover_every_status_but_ok() -> None:
    assert set(CONNECT_CODES) == set(grpc.StatusCode) - {grpc.StatusCode.OK}
    assert CONNECT_CODES[grpc.StatusCode.CANCELLED] == ("canceled", 499)
    assert CONNECT_CODES[grpc.StatusCode.UNAUTHENTICATED] == ("unauthenticated", 401)


def test_parse_request_takes_json_and_refuses_what_is_not_the_message() -> None:
    parsed = parse_request(
        b'{"label": "x", "maxUses": "3"}', admin_pb2.CreateEnrollmentTokenRequest, "/m", "peer"
    )
    assert parsed == admin_pb2.CreateEnrollmentTokenRequest(label="x", max_uses=3)
    assert parse_request(b"", admin_pb2.ListDevicesRequest, "/m", "p") == (
        admin_pb2.ListDevicesRequest()
    )
    for body in (b"{", b'{"nope": 1}', b'{"maxUses": "many"}', b"\xff\xfe", b"[]"):
        with pytest.raises(ConnectError) as refused:
            parse_request(body, admin_pb2.CreateEnrollmentTokenRequest, "/m", "peer")
        assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.message.startswith(
            "request is not a valid sielum.admin.v1.CreateEnrollmentTokenRequest message"
        )


def test_the_agent_command_names_the_host_the_browser_used() -> None:
    pages = PageConfig(ca_fingerprint="sha256:ab", enroll_port=8443)
    assert pages.enroll_url_for("sielum.example.com") == "https://sielum.example.com:8443"
    assert pages.enroll_url_for("::1") == "https://[::1]:8443"
    # A Host header that is no host name is not echoed into the page.
    assert pages.enroll_url_for('evil"><script>') == "https://localhost:8443"
    assert pages.enroll_url_for(None) == "https://localhost:8443"
    fixed = PageConfig(ca_fingerprint="x", enroll_port=8443, enroll_url="https://enroll.example")
    assert fixed.enroll_url_for("anything") == "https://enroll.example"
