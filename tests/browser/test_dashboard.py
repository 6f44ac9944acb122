"""The dashboard in a real browser: the documented path, the refusals, a screenshot of each page.

"Open the Dashboard and navigate to Settings -> Enrollment Tokens; click New
Token; configure Label, Max uses, Expires at; click Create; the token is shown
once; copy it immediately." Each step below is a click on those names, against
a real `sielum-server serve` with real agents.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from playwright.sync_api import Page, expect

from sielum.admin.v1 import admin_pb2, admin_pb2_grpc
from sielum.enroll.v1 import enroll_pb2, enroll_pb2_grpc
from tests.e2e.conftest import admin, log_events, run
from tests.rpc.conftest import make_csr, make_key

from .conftest import DESKTOP, DOCS_IMAGES, PHONE, SCREENSHOTS, Dashboard

pytestmark = pytest.mark.e2e

SECRET = re.compile(r"slm_[a-z2-7]{16}_[a-z2-7]{39}")


@pytest.fixture(scope="module")
def shared(dashboard: Dashboard) -> dict[str, Any]:
    """What the documented flow leaves for the later tests (and the screenshots) to look at."""
    return {}


def sign_in(page: Page, dashboard: Dashboard, link: str | None = None) -> None:
    page.goto(link or dashboard.login_link())
    expect(page).to_have_url(f"{dashboard.url}/")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def agent_command(page: Page) -> str:
    return page.locator("dialog pre.command").inner_text()


def shell_words(command: str) -> list[str]:
    """The words a POSIX shell reads: a backslash before a newline joins the two lines."""
    return shlex.split(command.replace("\\\n", ""))


def agent_words(command: str) -> list[str]:
    """The words of the agent's command (after the prompt's line), as a shell reads them:
    a backslash before a newline joins the two lines."""
    return shell_words(command.strip().split("\n", 1)[1])


def run_agent_command(command: str, secret: str, cert_dir: Path, hostname: str) -> Any:
    """The page's agent command as shown, run by bash, the secret typed at its prompt.

    Only the cert dir is this test's, and the host name.
    """
    read_line, agent_line = command.strip().split("\n", 1)
    assert secret not in command
    agent_line = agent_line.replace(
        " --cert-dir /etc/sielum", f" --cert-dir {shlex.quote(str(cert_dir))}"
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    env.pop("SIELUM_ENROLLMENT_TOKEN", None)
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", f"{read_line}\n{agent_line} --hostname {hostname}"],
        input=secret + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def row(page: Page, text: str) -> Any:
    return page.locator("main table tbody tr").filter(has_text=text)


def confirm(page: Page, button: str = "Revoke") -> None:
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name=button).click()
    expect(dialog).to_have_count(0)


def test_the_documented_flow(
    context: Any, dashboard: Dashboard, shared: dict[str, Any], tmp_path: Path
) -> None:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # A script, style or image the CSP blocked would be a broken page: chromium says so here.
    page.on(
        "console",
        lambda message: errors.append(message.text) if "Security Policy" in message.text else None,
    )

    # The login link from `sielum-admin dashboard login`, as an admin opens it.
    link = dashboard.login_link()
    code = link.split("#", 1)[1]
    sign_in(page, dashboard, link)
    assert code not in page.url
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it
    [cookie] = context.cookies()
    assert cookie["name"] == "__Host-sielum_session"
    assert (cookie["secure"], cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (
        True,
        True,
        "Strict",
        "/",
    )
    assert cookie["domain"] == "127.0.0.1"  # host-only: no Domain attribute

    # Settings -> Enrollment Tokens -> New Token.
    page.get_by_role("link", name="Settings", exact=True).click()
    page.get_by_role("link", name="Enrollment Tokens", exact=True).click()
    expect(page).to_have_url(f"{dashboard.url}/settings/enrollment-tokens")
    expect(page.get_by_role("heading", name="Enrollment Tokens", exact=True)).to_be_visible()
    page.get_by_role("button", name="New Token").click()
    dialog = page.get_by_role("dialog", name="New Token")

    # Checked in the page first: nothing is sent.
    before = dashboard.everything()
    dialog.get_by_role("button", name="Create").click()
    expect(dialog.get_by_text("Enter a label")).to_be_visible()
    dialog.get_by_label("Max uses").fill("0")
    dialog.get_by_label("Label").fill("browser-rollout")
    dialog.get_by_role("button", name="Create").click()
    expect(dialog.get_by_text("A whole number from 1")).to_be_visible()
    assert dashboard.everything() == before
    # Then by the server, whose words are shown.
    dialog.get_by_label("Label").fill("browser\trollout")
    dialog.get_by_label("Max uses").fill("2")
    dialog.get_by_role("button", name="Create").click()
    expect(dialog.get_by_role("alert")).to_contain_text("Label contains control characters.")
    assert dashboard.everything() == before

    dialog.get_by_label("Label").fill("browser-rollout")
    tomorrow = datetime.now() + timedelta(days=1)  # the browser's local time, like the field
    dialog.get_by_label("Expires at").fill(tomorrow.strftime("%Y-%m-%dT%H:%M"))
    dialog.get_by_role("button", name="Create").click()

    # The secret, once, with Copy and the ready agent command.
    created = page.get_by_role("dialog", name="Token created")
    expect(created).to_be_visible()
    secret = created.get_by_label("Secret").input_value()
    assert SECRET.fullmatch(secret), secret
    created.get_by_role("button", name="Copy", exact=True).click()
    expect(created.get_by_text("Secret copied to the clipboard.")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    command = agent_command(page)
    assert command.splitlines()[0] == (
        "read -rsp 'enrollment token: ' SIELUM_ENROLLMENT_TOKEN"
        " && export SIELUM_ENROLLMENT_TOKEN && echo"
    )
    words = agent_words(command)
    assert words[:2] == ["sielum-agent", "enroll"]
    fingerprint = run("sielum-server", "fingerprint", "--data-dir", str(dashboard.server.data_dir))
    assert words[words.index("--ca-fingerprint") + 1] == fingerprint.stdout.strip()
    assert words[words.index("--server") + 1] == (
        f"https://127.0.0.1:{dashboard.server.enroll_port}"
    )

    # The secret enrolls a real agent, with the command exactly as the page shows it.
    first = tmp_path / "agent-1"
    enrolled = run_agent_command(command, secret, first, "browser-agent-1")
    assert enrolled.returncode == 0, enrolled.stderr
    device_id = json.loads((first / "agent.json").read_text())["device_id"]

    # Closed, the dialog leaves nothing behind; after a reload the secret is nowhere.
    created.get_by_role("button", name="Done").click()
    expect(page.get_by_role("dialog")).to_have_count(0)
    # The dialog leaves the DOM on its close event, a task after it stops being shown:
    # wait for the element itself (role counts only open dialogs), then read the page.
    expect(page.locator("dialog")).to_have_count(0)
    assert secret not in page.content()
    page.reload()
    token_row = row(page, "browser-rollout")
    expect(token_row).to_have_count(1)
    assert secret not in page.content()
    assert secret not in page.evaluate(
        "JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)])"
    )
    assert secret[4:20] in token_row.inner_text()  # its public id is shown; the rest never
    expect(token_row.get_by_text("1/2")).to_be_visible()
    expect(token_row.get_by_text("Active")).to_be_visible()

    # Revoke, confirmed; the agent's next enroll with it exits 4.
    token_row.get_by_role("button", name="Revoke").click()
    confirm(page)
    expect(token_row.get_by_text("Revoked")).to_be_visible()
    refused = run_agent_command(command, secret, tmp_path / "agent-2", "browser-agent-2")
    assert refused.returncode == 4, refused.stderr
    assert "revoked" in refused.stderr

    # Devices: filter by the token, revoke the device; its agent's status exits 9.
    page.get_by_role("link", name="Devices", exact=True).click()
    page.get_by_label("Token").select_option(label=f"browser-rollout ({secret[4:20]})")
    device_row = row(page, device_id)
    expect(device_row).to_have_count(1)
    expect(device_row.get_by_text("browser-agent-1", exact=True)).to_be_visible()
    assert run("sielum-agent", "status", "--cert-dir", str(first)).returncode == 0
    device_row.get_by_role("button", name="Revoke").click()
    confirm(page)
    expect(device_row.get_by_text("Revoked")).to_be_visible()
    status = run("sielum-agent", "status", "--cert-dir", str(first))
    assert status.returncode == 9, status.stderr

    # Audit: both revocations, by this admin, newest first, after the sign-in.
    page.get_by_role("link", name="Audit", exact=True).click()
    expect(page.get_by_role("heading", name="Audit", exact=True)).to_be_visible()
    expect(row(page, f"device/{device_id}").filter(has_text="device.revoke")).to_have_count(1)
    lines = page.locator("main table tbody tr").all_inner_texts()
    token_id = secret[4:20]

    def first_line(action: str, resource: str) -> int:
        found = [n for n, line in enumerate(lines) if action in line and resource in line]
        assert found, (action, resource, lines)
        assert "admin/admin" in lines[found[0]]
        return found[0]

    device_revoke = first_line("device.revoke", f"device/{device_id}")
    token_revoke = first_line("token.revoke", f"token/{token_id}")
    login = first_line("dashboard.login", "admin/admin")
    assert device_revoke < token_revoke < login, lines

    assert errors == []
    shared.update(token_id=secret[4:20], device_id=device_id, secret=secret)


def test_keyboard_alone_opens_and_cancels_new_token(context: Any, dashboard: Dashboard) -> None:
    page = context.new_page()
    sign_in(page, dashboard)
    page.goto(f"{dashboard.url}/settings/enrollment-tokens")
    expect(page.get_by_role("button", name="New Token")).to_be_visible()
    before = dashboard.everything()
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "New Token":
            break
    else:
        pytest.fail("Tab never reached New Token")
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="New Token")
    expect(dialog.get_by_label("Label")).to_be_focused()
    page.keyboard.type("typed-but-cancelled")
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)
    assert dashboard.everything() == before


# --- refusals: each refused, each changes nothing ------------------------------------------------


def _connect_from_page(page: Page, method: str, body: object) -> dict[str, Any]:
    """A Connect call made by script in the page, as the dashboard's own code makes it."""
    return dict(
        page.evaluate(
            """async ([method, body]) => {
                const response = await fetch(`/sielum.admin.v1.AdminService/${method}`, {
                    method: "POST",
                    headers: {"Content-Type": "application/json", "Connect-Protocol-Version": "1"},
                    body: JSON.stringify(body),
                });
                return {status: response.status, body: await response.json()};
            }""",
            [method, body],
        )
    )


def test_refused_without_a_session(context: Any, dashboard: Dashboard) -> None:
    page = context.new_page()
    before = dashboard.everything()
    page.goto(f"{dashboard.url}/settings/enrollment-tokens")
    expect(page.get_by_role("heading", name="You are signed out", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="New Token")).to_have_count(0)
    answer = _connect_from_page(page, "CreateEnrollmentToken", {"label": "no-session"})
    assert answer == {
        "status": 403,
        "body": {
            "code": "permission_denied",
            "message": "/sielum.admin.v1.AdminService/CreateEnrollmentToken needs an admin "
            "dashboard session",
        },
    }
    assert dashboard.everything() == before


def test_refused_a_used_login_link(browser: Any, dashboard: Dashboard) -> None:
    link = dashboard.login_link()
    first = browser.new_context(viewport=DESKTOP)
    second = browser.new_context(viewport=DESKTOP)
    try:
        sign_in(first.new_page(), dashboard, link)
        before = dashboard.everything()
        page = second.new_page()
        page.goto(link)
        expect(page.get_by_role("alert")).to_contain_text("This login link was already used.")
        assert link.split("#")[1] not in page.url
        assert second.cookies() == []
        page.goto(f"{dashboard.url}/")
        expect(page.get_by_role("heading", name="You are signed out", exact=True)).to_be_visible()
        assert dashboard.everything() == before
    finally:
        first.close()
        second.close()


def test_refused_an_expired_login_link(context: Any, dashboard: Dashboard) -> None:
    link = dashboard.login_link()
    code = link.split("#", 1)[1]
    # Five minutes pass, for this code alone: its stored expiry moves into the past.
    past = int((datetime.now(UTC) - timedelta(seconds=1)).timestamp() * 1_000_000)
    digest = hashlib.sha256(code.encode()).digest()
    dashboard.sql("UPDATE dashboard_login SET expires_at = ? WHERE code_hash = ?", (past, digest))
    before = dashboard.everything()
    page = context.new_page()
    page.goto(link)
    expect(page.get_by_role("alert")).to_contain_text("This login link has expired.")
    assert context.cookies() == []
    assert dashboard.everything() == before


class _Site(http.server.BaseHTTPRequestHandler):
    """A page on another origin of the same site (https://127.0.0.1, another port)."""

    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def other_site(dashboard: Dashboard) -> Iterator[str]:
    """An HTTPS page elsewhere that tries, by every means a page has, to call the dashboard.

    Same site (127.0.0.1, https), so the browser does send the SameSite=Strict
    cookie: only the dashboard's own checks stand in the way.
    """
    target = f"{dashboard.url}/sielum.admin.v1.AdminService/CreateEnrollmentToken"
    _Site.page = f"""<!doctype html><title>elsewhere</title>
<form id="urlencoded" method="post" action="{target}"><input name="label" value="csrf"></form>
<form id="plain" method="post" enctype="text/plain" action="{target}">
<input name='{{"label":"csrf","x":"' value='"}}'></form>""".encode()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    data = dashboard.server.data_dir
    context.load_cert_chain(data / "server.pem", data / "server.key")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_refused_from_another_origin_and_as_a_form_post(
    context: Any, dashboard: Dashboard, other_site: str
) -> None:
    page = context.new_page()
    sign_in(page, dashboard)
    assert _connect_from_page(page, "ListDevices", {})["status"] == 200  # the session is live
    before = dashboard.everything()
    refusals = len(log_events(dashboard.server, "dashboard.refused"))
    evil = context.new_page()
    evil.goto(other_site)
    # fetch with JSON: the browser asks first (CORS preflight), the dashboard grants nothing.
    blocked = evil.evaluate(
        """async (target) => {
            try {
                await fetch(target, {method: "POST", credentials: "include",
                    headers: {"Content-Type": "application/json", "Connect-Protocol-Version": "1"},
                    body: JSON.stringify({label: "csrf"})});
                return "sent";
            } catch (error) { return "blocked"; }
        }""",
        f"{dashboard.url}/sielum.admin.v1.AdminService/CreateEnrollmentToken",
    )
    assert blocked == "blocked"
    # A request no preflight guards: reaches the server with the cookie, and is refused.
    evil.evaluate(
        """async (target) => {
            try {
                await fetch(target, {method: "POST", mode: "no-cors", credentials: "include",
                    headers: {"Content-Type": "text/plain"}, body: '{"label": "csrf"}'});
            } catch (error) {
                // The answer is withheld from this page (Cross-Origin-Resource-Policy).
            }
        }""",
        f"{dashboard.url}/sielum.admin.v1.AdminService/CreateEnrollmentToken",
    )
    # HTML forms, both encodings a form can send as JSON-ish text.
    for form in ("urlencoded", "plain"):
        evil.goto(other_site)
        with evil.expect_navigation():
            evil.evaluate(f"document.getElementById('{form}').submit()")
        document = json.loads(evil.locator("body").inner_text())
        assert document == {
            "code": "permission_denied",
            "message": "requests must come from the dashboard's own pages (Origin not allowed)",
        }
    # Three posts reached the server (the preflighted one never did); it refused each.
    refused = log_events(dashboard.server, "dashboard.refused")[refusals:]
    assert len(refused) == 3, refused
    assert all(f"origin={other_site.rstrip('/')}" in line for line in refused), refused
    assert dashboard.everything() == before


def test_sign_out_ends_the_session(context: Any, dashboard: Dashboard) -> None:
    page = context.new_page()
    sign_in(page, dashboard)
    [cookie] = context.cookies()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="You are signed out", exact=True)).to_be_visible()
    assert context.cookies() == []
    before = dashboard.everything()
    # The old cookie, replayed by a browser that kept it, is refused.
    context.add_cookies([cookie])
    answer = _connect_from_page(page, "CreateEnrollmentToken", {"label": "after sign-out"})
    assert answer["status"] == 401
    assert answer["body"]["code"] == "unauthenticated"
    page.goto(f"{dashboard.url}/devices")
    expect(page.get_by_role("heading", name="You are signed out", exact=True)).to_be_visible()
    assert dashboard.everything() == before


def test_refused_a_revoked_admins_session(
    browser: Any, dashboard: Dashboard, tmp_path: Path
) -> None:
    """An admin signed in, then revoked by another: refused from the next request."""
    bundle = tmp_path / "leaving-admin"
    created = admin(dashboard.server, "admins", "create", "leaving", "--out", str(bundle))
    assert created.returncode == 0, created.stderr
    link = admin(dashboard.server, "--cert-dir", str(bundle), "dashboard", "login")
    assert link.returncode == 0, link.stderr
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        sign_in(page, dashboard, link.stdout.strip())
        expect(page.locator("#who")).to_have_text("leaving")
        revoked = admin(dashboard.server, "admins", "revoke", "leaving")
        assert revoked.returncode == 0, revoked.stderr
        before = dashboard.everything()
        answer = _connect_from_page(page, "CreateEnrollmentToken", {"label": "left already"})
        assert answer == {
            "status": 403,
            "body": {"code": "permission_denied", "message": "admin leaving has been revoked"},
        }
        page.goto(f"{dashboard.url}/settings/enrollment-tokens")
        expect(page.get_by_role("heading", name="You are signed out", exact=True)).to_be_visible()
        expect(page.get_by_text("Admin leaving has been revoked.")).to_be_visible()
        assert dashboard.everything() == before
    finally:
        context.close()


# --- screenshots -------------------------------------------------------------------------------


def _seed(dashboard: Dashboard) -> None:
    """A fleet to look at, made through the public API: tokens in every state, some devices."""
    data = dashboard.server.data_dir
    admin_dir = data / "admin"
    admin_channel = grpc.secure_channel(
        f"localhost:{dashboard.server.api_port}",
        grpc.ssl_channel_credentials(
            root_certificates=dashboard.ca_pem,
            private_key=(admin_dir / "admin.key").read_bytes(),
            certificate_chain=(admin_dir / "admin.pem").read_bytes(),
        ),
    )
    enroll_channel = grpc.secure_channel(
        f"localhost:{dashboard.server.enroll_port}",
        grpc.ssl_channel_credentials(root_certificates=dashboard.ca_pem),
    )
    api = admin_pb2_grpc.AdminServiceStub(admin_channel)
    enroll = enroll_pb2_grpc.EnrollServiceStub(enroll_channel)
    in_a_week = datetime.now(UTC) + timedelta(days=7)
    fleet = (
        ("web-rollout", 50, in_a_week, [f"web-{n:02d}.example.com" for n in range(1, 7)]),
        ("lab-machines", None, None, ["lab-printer", "lab-build-1"]),
        ("kiosk-batch", 2, None, ["kiosk-lobby", "kiosk-cafe"]),
        ("pilot-2025", 10, None, []),
    )
    with admin_channel, enroll_channel:
        for label, max_uses, expires_at, hostnames in fleet:
            request = admin_pb2.CreateEnrollmentTokenRequest(label=label)
            if max_uses is not None:
                request.max_uses = max_uses
            if expires_at is not None:
                request.expires_at.FromDatetime(expires_at)
            token = api.CreateEnrollmentToken(request, timeout=30)
            for hostname in hostnames:
                enroll.Enroll(
                    enroll_pb2.EnrollRequest(
                        token=token.secret, csr_pem=make_csr(make_key()), hostname=hostname
                    ),
                    timeout=30,
                )
            if label == "pilot-2025":
                api.RevokeEnrollmentToken(
                    admin_pb2.RevokeEnrollmentTokenRequest(id=token.token.id), timeout=30
                )
        printer = [
            d
            for d in api.ListDevices(admin_pb2.ListDevicesRequest(), timeout=30).devices
            if d.hostname == "lab-printer"
        ]
        api.RevokeDevice(admin_pb2.RevokeDeviceRequest(id=printer[0].id), timeout=30)


def test_settings_lists_admins_and_services(
    context: Any, dashboard: Dashboard, tmp_path: Path
) -> None:
    """Settings -> Admins and Services: read-only lists, fed by ListAdmins and ListServices."""
    for name in ("billing-api", "old-crm"):
        made = admin(dashboard.server, "services", "create", name, "--out", str(tmp_path / name))
        assert made.returncode == 0, made.stderr
    assert admin(dashboard.server, "services", "revoke", "old-crm").returncode == 0
    page = context.new_page()
    sign_in(page, dashboard)
    page.get_by_role("link", name="Settings", exact=True).click()
    expect(page).to_have_url(f"{dashboard.url}/settings")

    services = page.get_by_role("region", name="Services")
    expect(services.get_by_role("heading", name="Services", exact=True)).to_be_visible()
    billing = services.locator("tbody tr").filter(has_text="billing-api")
    expect(billing).to_contain_text("Active")
    expect(billing.locator("td[data-label='Created by']")).to_have_text("admin")
    crm = services.locator("tbody tr").filter(has_text="old-crm")
    expect(crm).to_contain_text("Revoked")
    expect(crm.locator("td[data-label='Revoked'] time")).to_have_count(1)
    admins = page.get_by_role("region", name="Admins")
    first = admins.locator("tbody tr").filter(
        has=page.locator("td[data-label='Name']", has_text=re.compile(r"^admin$"))
    )
    expect(first).to_contain_text("Active")
    # Read-only: nothing on the page makes or revokes an identity.
    expect(page.locator("main").get_by_role("button", name="Revoke")).to_have_count(0)
    page.wait_for_load_state("networkidle")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "1280-settings-services.png", full_page=True)

    # The trail shows who made and revoked them, a page of 50 at a time (the same
    # paging as the lists above).
    admin_dir = dashboard.server.data_dir / "admin"
    with grpc.secure_channel(
        f"localhost:{dashboard.server.api_port}",
        grpc.ssl_channel_credentials(
            root_certificates=dashboard.ca_pem,
            private_key=(admin_dir / "admin.key").read_bytes(),
            certificate_chain=(admin_dir / "admin.pem").read_bytes(),
        ),
    ) as channel:
        api = admin_pb2_grpc.AdminServiceStub(channel)
        # Revoking again changes nothing but is audited: 50 events, no other trace.
        for _ in range(50):
            api.RevokeService(admin_pb2.RevokeServiceRequest(name="old-crm"), timeout=10)
    page.get_by_role("link", name="Audit", exact=True).click()
    expect(page.locator("main table tbody tr")).to_have_count(50)
    expect(row(page, "already revoked")).to_have_count(50)
    expect(row(page, "service/billing-api")).to_have_count(0)  # older than the first page
    page.get_by_role("button", name="Show older events").click()
    expect(row(page, "service/billing-api")).to_contain_text("service.create")
    expect(row(page, "service/billing-api")).to_contain_text("admin/admin")


def _settled(page: Page) -> None:
    """Every call of the page answered and drawn."""
    page.wait_for_load_state("networkidle")
    expect(page.locator("main .loading")).to_have_count(0)


def test_screenshots_of_every_page(browser: Any, dashboard: Dashboard) -> None:
    """Last in the module: each page at 1280 px and on a phone, for people to look at.

    Kept under tests/browser/screenshots/ (CI keeps the folder as an artefact);
    with SIELUM_UPDATE_DOCS_IMAGES=1 the README's two images are refreshed too.
    """
    # Each file below is written anew; the folder is kept, since another test of the
    # module (run at once on the other worker) writes its own screenshot there too.
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    _seed(dashboard)
    link = dashboard.login_link()
    desktop = browser.new_context(viewport=DESKTOP)
    phone = browser.new_context(
        viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    taken: list[Path] = []
    try:
        page = desktop.new_page()
        sign_in(page, dashboard, link)
        phone.add_cookies(desktop.cookies())
        for context, size, viewer in ((desktop, "1280", page), (phone, "phone", phone.new_page())):
            for name, path in (
                ("overview", "/"),
                ("settings", "/settings"),
                ("enrollment-tokens", "/settings/enrollment-tokens"),
                ("devices", "/devices"),
                ("audit", "/audit"),
            ):
                viewer.goto(f"{dashboard.url}{path}")
                _settled(viewer)
                shot = SCREENSHOTS / f"{size}-{name}.png"
                viewer.screenshot(path=shot, full_page=True)
                taken.append(shot)
            viewer.goto(f"{dashboard.url}/settings/enrollment-tokens")
            _settled(viewer)
            viewer.get_by_role("button", name="New Token").click()
            dialog = viewer.get_by_role("dialog", name="New Token")
            dialog.get_by_label("Label").fill(f"screenshot-{size}")
            dialog.get_by_label("Max uses").fill("25")
            viewer.screenshot(path=SCREENSHOTS / f"{size}-new-token.png")
            dialog.get_by_role("button", name="Create").click()
            expect(viewer.get_by_role("dialog", name="Token created")).to_be_visible()
            if size == "1280":
                viewer.mouse.move(0, 0)  # no button drawn as hovered
            viewer.screenshot(path=SCREENSHOTS / f"{size}-token-created.png")
            viewer.keyboard.press("Escape")
            taken += [
                SCREENSHOTS / f"{size}-new-token.png",
                SCREENSHOTS / f"{size}-token-created.png",
            ]
        signed_out = browser.new_context(viewport=DESKTOP).new_page()
        signed_out.goto(link)  # used by now
        expect(signed_out.get_by_role("alert")).to_be_visible()
        signed_out.screenshot(path=SCREENSHOTS / "1280-login-refused.png")
        taken.append(SCREENSHOTS / "1280-login-refused.png")
        signed_out.context.close()
    finally:
        desktop.close()
        phone.close()
    assert all(path.stat().st_size > 10_000 for path in taken)
    if os.environ.get("SIELUM_UPDATE_DOCS_IMAGES") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copy(
            SCREENSHOTS / "1280-enrollment-tokens.png", DOCS_IMAGES / "dashboard-tokens.png"
        )
        shutil.copy(
            SCREENSHOTS / "1280-token-created.png", DOCS_IMAGES / "dashboard-token-created.png"
        )


_COPYING_BROWSER = """\
import os, shutil, sys
from urllib.parse import unquote, urlsplit

# Keeps the page it is handed, for chromium to open after the command removed it.
shutil.copy2(unquote(urlsplit(sys.argv[-1]).path), os.environ["KEEP_PAGE_AT"])
"""


def test_ok_dashboard_open_signs_in_through_its_private_page(
    context: Any, dashboard: Dashboard, tmp_path: Path
) -> None:
    """The page `sielum-admin dashboard open` hands the browser takes chromium from a file
    to the dashboard, signed in, the code out of the address bar."""
    launcher = tmp_path / "copying-browser"
    launcher.write_text(f"#!{sys.executable}\n{_COPYING_BROWSER}")
    launcher.chmod(0o700)
    kept = tmp_path / "login.html"
    result = admin(
        dashboard.server,
        "dashboard",
        "open",
        env={"BROWSER": str(launcher), "KEEP_PAGE_AT": str(kept)},
    )
    assert result.returncode == 0, result.stderr
    page = context.new_page()
    page.goto(kept.as_uri())
    expect(page).to_have_url(f"{dashboard.url}/")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    assert "#" not in page.url
