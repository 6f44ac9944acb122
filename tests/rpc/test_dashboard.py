"""The dashboard in-process: login links, sessions, the Connect transport, headers, the overview."""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from sielum.admin.v1 import admin_pb2
from sielum.enroll.ratelimit import FailureLimit
from tests.connect_client import COOKIE, DashboardClient

from .conftest import Harness, start_harness, status_of
from .test_metrics import Exposition

LINK = re.compile(r"^https://127\.0\.0\.1:(\d+)/login#([A-Za-z0-9_-]{43})$")


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = start_harness(
        tmp_path,
        failure_limit=FailureLimit(burst=1000, rate_per_second=1000.0),
        dashboard_addr="127.0.0.1:0",
    )
    try:
        yield h
    finally:
        h.server.stop(grace=1)


def _client(h: Harness) -> DashboardClient:
    return DashboardClient(h.server.dashboard_url, h.ca_pem)


def _link(h: Harness) -> admin_pb2.CreateDashboardLoginResponse:
    return h.admin().CreateDashboardLogin(admin_pb2.CreateDashboardLoginRequest(), timeout=10)


def _signed_in(h: Harness) -> DashboardClient:
    client = _client(h)
    assert client.sign_in(_link(h).url).status == 200
    return client


def _audit(h: Harness) -> list[tuple[str, str]]:
    return [(e.actor, e.action) for e in reversed(h.server.store.list_audit(limit=1000))]


def test_ok_login_link_signs_in_and_sets_a_host_only_secure_cookie(harness: Harness) -> None:
    link = _link(harness)
    found = LINK.match(link.url)
    assert found, link.url
    assert int(found.group(1)) == harness.server.dashboard.listener.port  # type: ignore[union-attr]
    expires = link.expires_at.ToDatetime(tzinfo=UTC)
    assert timedelta(minutes=4) < expires - datetime.now(UTC) <= timedelta(minutes=5)
    client = _client(harness)
    answer = client.sign_in(link.url)
    assert answer.status == 200 and answer.json() == {"admin": "admin"}
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert attributes == {"httponly", "path", "samesite", "secure"}
    assert "Path=/" in cookie and "SameSite=Strict" in cookie
    assert answer.headers["cache-control"] == "no-store"
    assert client.post("/session/current").json()["admin"] == "admin"
    assert _audit(harness)[-2:] == [
        ("admin/admin", "dashboard.login_link"),
        ("admin/admin", "dashboard.login"),
    ]


def test_ok_connect_calls_answer_with_the_same_handlers(harness: Harness) -> None:
    client = _signed_in(harness)
    created = client.call("CreateEnrollmentToken", {"label": "from the browser", "maxUses": 2})
    assert created.status == 200, created.body
    assert created.headers["content-type"].startswith("application/json")
    assert created.headers["cache-control"] == "no-store"
    token = created.json()["token"]
    assert token["createdBy"] == "admin" and token["maxUses"] == "2" and token["uses"] == "0"
    assert created.json()["secret"].startswith(f"slm_{token['id']}_")
    # The same token over gRPC: one application behind two transports.
    same = harness.admin().GetEnrollmentToken(
        admin_pb2.GetEnrollmentTokenRequest(id=token["id"]), timeout=10
    )
    assert same.token.label == "from the browser"
    listed = client.call("ListEnrollmentTokens", {"state": "TOKEN_STATE_ACTIVE"}).json()
    assert [t["id"] for t in listed["tokens"]] == [token["id"]]
    assert ("admin/admin", "token.create") in _audit(harness)


@pytest.mark.parametrize(
    ("method", "request_body", "want"),
    [
        ("GetEnrollmentToken", {"id": "aaaaaaaaaaaaaaaa"}, (404, "not_found", "not found")),
        ("CreateEnrollmentToken", {"label": ""}, (400, "invalid_argument", "label is required")),
        (
            "CreateEnrollmentToken",
            {"label": "a\tb"},
            (400, "invalid_argument", "label contains control characters"),
        ),
        (
            "CreateEnrollmentToken",
            {"label": "x", "maxUses": "lots"},
            (400, "invalid_argument", "not a valid sielum.admin.v1.CreateEnrollmentTokenRequest"),
        ),
        ("GetOverview", {"days": 400}, (400, "invalid_argument", "days must be between 1 and 366")),
        ("NoSuchMethod", {}, (501, "unimplemented", "is not a method served here")),
    ],
    ids=["not-found", "empty-label", "control-character", "not-the-message", "days", "unknown"],
)
def test_fail_errors_in_connects_codes_and_words(
    harness: Harness, method: str, request_body: object, want: tuple[int, str, str]
) -> None:
    answer = _signed_in(harness).call(method, request_body)
    assert (answer.status, answer.code) == want[:2]
    assert want[2] in answer.message
    assert set(answer.json()) == {"code", "message"}


def test_fail_other_services_and_other_http_methods(harness: Harness) -> None:
    client = _signed_in(harness)
    heartbeat = client.post(
        "/sielum.agent.v1.AgentService/Heartbeat", {}, **{"Connect-Protocol-Version": "1"}
    )
    assert (heartbeat.status, heartbeat.code) == (501, "unimplemented")
    get = client.request("GET", "/sielum.admin.v1.AdminService/ListDevices")
    assert get.status == 405
    options = client.request(
        "OPTIONS",
        "/sielum.admin.v1.AdminService/ListDevices",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert options.status == 405
    assert not any(name.startswith("access-control-") for name in options.headers)


def test_fail_a_body_above_the_limit(harness: Harness) -> None:
    client = _signed_in(harness)
    answer = client.request(
        "POST",
        "/sielum.admin.v1.AdminService/CreateEnrollmentToken",
        json.dumps({"label": "x" * 300_000}).encode(),
        {**client.browser_headers(), "Connect-Protocol-Version": "1"},
    )
    assert (answer.status, answer.code) == (413, "resource_exhausted")


def test_fail_login_links_that_cannot_sign_in(harness: Harness) -> None:
    link = _link(harness).url
    assert _client(harness).sign_in(link).status == 200
    again = _client(harness).sign_in(link)
    assert (again.status, again.code) == (401, "unauthenticated")
    assert again.message == "this login link was already used"
    assert "set-cookie" not in again.headers
    expired = _link(harness).url
    harness.clock.advance(timedelta(minutes=5))
    late = _client(harness).sign_in(expired)
    assert (late.status, late.message) == (401, "this login link has expired")
    bogus = _client(harness).post("/session/login", {"code": 42})
    assert (bogus.status, bogus.code) == (400, "invalid_argument")


def test_ok_sign_out_ends_the_session_for_every_call(harness: Harness) -> None:
    client = _signed_in(harness)
    assert client.call("ListDevices").status == 200
    signed_out = client.sign_out()
    assert signed_out.status == 200
    assert "Max-Age=0" in signed_out.headers["set-cookie"]
    after = client.call("ListDevices")
    assert (after.status, after.code) == (401, "unauthenticated")
    assert after.message == "you are signed out"
    assert client.post("/session/current").status == 401
    assert _audit(harness)[-1] == ("admin/admin", "dashboard.logout")


def test_ok_session_idle_and_absolute_limits_hold_on_the_server(harness: Harness) -> None:
    client = _signed_in(harness)
    harness.clock.advance(timedelta(minutes=29))
    assert client.call("ListDevices").status == 200
    harness.clock.advance(timedelta(minutes=30))
    idle = client.call("ListDevices")
    assert idle.status == 401 and "30 minutes without use" in idle.message


def test_ok_pages_carry_the_security_headers_and_the_agent_config(harness: Harness) -> None:
    client = _client(harness)
    page = client.request("GET", "/settings/enrollment-tokens")
    assert page.status == 200
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    html = page.body.decode()
    # No inline script or style: every script is a file of ours.
    assert re.findall(r"<script[^>]*>", html) == ['<script type="module" src="/static/js/app.js">']
    assert "<style" not in html and " style=" not in html and "http://" not in html
    assert (
        f'<meta name="sielum-enroll-url" content="https://127.0.0.1:{harness.server.enroll_port}">'
        in html
    )
    assert f'<meta name="sielum-ca-fingerprint" content="{harness.server.ca.fingerprint}">' in html
    # Every asset is Sielum's own: no file names another host to fetch from.
    static = Path(__file__).parents[2] / "src" / "sielum" / "dashboard" / "static"
    for path in static.rglob("*"):
        if path.is_file() and path.name != "icon.svg":  # its xmlns is a name, not a fetch
            assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", path.read_text()), path
    script = client.request("GET", "/static/js/pages/tokens.js")
    assert script.status == 200 and script.headers["content-type"].startswith("text/javascript")
    assert client.request("GET", "/static/../web.py").status == 404
    missing = client.request("GET", "/nowhere")
    assert missing.status == 404 and "content-security-policy" in missing.headers


def test_ok_overview_counts_and_30_days(harness: Harness) -> None:
    limited = harness.create_token(max_uses=1)
    harness.enroll(limited.secret)
    open_token = harness.create_token()
    device, _ = harness.enroll(open_token.secret)
    harness.admin().RevokeDevice(admin_pb2.RevokeDeviceRequest(id=device.device_id), timeout=10)
    overview = harness.admin().GetOverview(admin_pb2.GetOverviewRequest(), timeout=10)
    tokens = {admin_pb2.TokenState.Name(c.state): c.count for c in overview.tokens}
    devices = {admin_pb2.DeviceState.Name(c.state): c.count for c in overview.devices}
    assert tokens == {
        "TOKEN_STATE_ACTIVE": 1,
        "TOKEN_STATE_EXPIRED": 0,
        "TOKEN_STATE_EXHAUSTED": 1,
        "TOKEN_STATE_REVOKED": 0,
    }
    assert devices == {
        "DEVICE_STATE_ACTIVE": 1,
        "DEVICE_STATE_EXPIRED": 0,
        "DEVICE_STATE_REVOKED": 1,
    }
    days = [(d.day, d.count) for d in overview.enrollments_per_day]
    today = harness.clock.now().date()
    assert len(days) == 30
    assert days[-1] == (today.isoformat(), 2)
    assert days[0][0] == (today - timedelta(days=29)).isoformat()
    assert all(count == 0 for _, count in days[:-1])
    week = harness.admin().GetOverview(admin_pb2.GetOverviewRequest(days=7), timeout=10)
    assert len(week.enrollments_per_day) == 7


def test_fail_login_link_from_a_server_without_dashboard(tmp_path: Path) -> None:
    h = start_harness(tmp_path)
    try:
        code, details = status_of(
            lambda: h.admin().CreateDashboardLogin(
                admin_pb2.CreateDashboardLoginRequest(), timeout=10
            )
        )
    finally:
        h.server.stop(grace=1)
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert details == "this server runs no dashboard (serve --dashboard-addr off)"


def test_ok_a_connection_that_never_shakes_hands_is_closed(tmp_path: Path) -> None:
    """As on the gRPC ports: a TLS handshake not finished in time holds nothing open."""
    h = start_harness(
        tmp_path, dashboard_addr="127.0.0.1:0", handshake_timeout=timedelta(seconds=0.5)
    )
    try:
        port = h.server.dashboard.listener.port  # type: ignore[union-attr]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as idle:
            idle.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
            assert idle.recv(1024) == b""  # closed by the server, long before our 30 s
        # The listener still serves everyone else.
        assert _client(h).request("GET", "/").status == 200
    finally:
        h.server.stop(grace=1)


def test_ok_connect_calls_are_counted_apart_from_grpc_ones(tmp_path: Path) -> None:
    h = start_harness(tmp_path, dashboard_addr="127.0.0.1:0", metrics_addr="127.0.0.1:0")
    try:
        link = _link(h).url  # CreateDashboardLogin over gRPC
        client = _client(h)
        assert client.sign_in(link).status == 200
        assert _client(h).sign_in(link).status == 401  # spent
        assert client.call("ListDevices").status == 200
        assert client.call("ListDevices").status == 200
        assert client.call("GetDevice", {"id": "nope"}).status == 404
        assert DashboardClient(h.server.dashboard_url, h.ca_pem).call("ListDevices").status == 403
        scrape = Exposition(h.server.metrics_port)
    finally:
        h.server.stop(grace=1)
    admin = {"grpc_service": "sielum.admin.v1.AdminService"}
    handled = "grpc_server_handled_total"
    assert scrape.value(handled, **admin, grpc_method="ListDevices", transport="connect") == 3
    assert (
        scrape.value(
            handled, **admin, grpc_method="ListDevices", transport="connect", grpc_code="OK"
        )
        == 2
    )
    assert scrape.value(handled, **admin, grpc_method="GetDevice", grpc_code="NotFound") == 1
    assert scrape.value(handled, **admin, grpc_method="ListDevices", transport="grpc") == 0
    assert scrape.value(handled, **admin, grpc_method="CreateDashboardLogin", transport="grpc") == 1
    assert scrape.value("sielum_dashboard_logins_total", result="ok") == 1
    assert scrape.value("sielum_dashboard_logins_total", result="refused") == 1
    assert scrape.value("sielum_dashboard_sessions") == 1


@pytest.mark.parametrize(
    "path",
    ["/session/login", "/sielum.admin.v1.AdminService/ListDevices"],
    ids=["sign-in", "connect"],
)
def test_fail_deeply_nested_json_makes_a_500_and_a_traceback(
    harness: Harness, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """About 200 KB of [[[...]]] to sign-in (before any authentication) or to a Connect method:
    400 invalid_argument, one log line and no traceback, where the parser's RecursionError
    answered 500."""
    client = _client(harness) if path.startswith("/session/") else _signed_in(harness)
    headers = {**client.browser_headers(), "Connect-Protocol-Version": "1"}
    for body in (b"[" * 200_000, b'{"code": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
        caplog.clear()
        answer = client.request("POST", path, body, headers)
        assert (answer.status, answer.code) == (400, "invalid_argument"), answer.message
        assert set(answer.json()) == {"code", "message"}
        ours = [r for r in caplog.records if r.name.startswith("sielum")]
        assert len(ours) == 1, [r.getMessage() for r in ours]
        assert ours[0].exc_info is None
        assert "malformed request" in ours[0].getMessage()
    # The listener goes on answering.
    assert _signed_in(harness).call("ListDevices").status == 200


def test_fail_a_body_that_trickles_in_holds_its_connection(tmp_path: Path) -> None:
    """A POST with a plausible Origin whose body never finishes: 408 deadline_exceeded once
    the idle timeout has passed, and the server closes the connection."""
    h = start_harness(tmp_path, dashboard_addr="127.0.0.1:0", idle_timeout=timedelta(seconds=0.5))
    try:
        port = h.server.dashboard.listener.port  # type: ignore[union-attr]
        tls = ssl.create_default_context(cadata=h.ca_pem.decode())
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        with tls.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(
                b"POST /session/login HTTP/1.1\r\n"
                + f"Host: 127.0.0.1:{port}\r\nOrigin: {h.server.dashboard_url}\r\n".encode()
                + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
            )
            answer = b""
            while chunk := conn.recv(65536):  # until the server closes, long before 30 s
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        assert json.loads(body)["code"] == "deadline_exceeded"
        assert _client(h).request("GET", "/").status == 200
    finally:
        h.server.stop(grace=1)


def test_fail_connections_beyond_the_cap_are_closed_at_once(tmp_path: Path) -> None:
    """Each HTTP listener holds at most its cap of connections; one more is closed at once,
    and a slot that frees serves again."""
    h = start_harness(
        tmp_path,
        dashboard_addr="127.0.0.1:0",
        metrics_addr="127.0.0.1:0",
        max_http_connections=3,
    )
    try:
        dashboard = h.server.dashboard.listener.port  # type: ignore[union-attr]
        for port, served in (
            (h.server.metrics_port, lambda: Exposition(h.server.metrics_port).text != ""),
            (dashboard, lambda: _client(h).request("GET", "/").status == 200),
        ):
            idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(3)]
            with socket.create_connection(("127.0.0.1", port), timeout=30) as extra:
                try:
                    assert extra.recv(1) == b""  # closed by the server, long before our 30 s
                except ConnectionResetError:
                    pass
            idle.pop().close()
            # The server notices the close, and the freed slot serves again.
            deadline = time.monotonic() + 10
            while True:
                try:
                    ok = served()
                except (OSError, ssl.SSLError):
                    ok = False
                if ok:
                    break
                assert time.monotonic() < deadline, "the freed slot never served"
                time.sleep(0.05)
            for sock in idle:
                sock.close()
    finally:
        h.server.stop(grace=1)
