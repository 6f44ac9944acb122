"""The dashboard's daily questions in a real browser: the agent command as a shell reads it,
New Token's short expiry, Devices searched by host name (whole or its beginning), tag and
fact with their facts and the machines not heard from, Audit filtered as the CLI filters it,
serials kept on one line.

Each page is also left as a screenshot in tests/browser/screenshots/ for people to look at.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from playwright.sync_api import Page, expect

from sielum.admin.v1 import admin_pb2, admin_pb2_grpc
from sielum.enroll.v1 import enroll_pb2, enroll_pb2_grpc
from tests.rpc.conftest import make_csr, make_key

from .conftest import DESKTOP, PHONE, SCREENSHOTS, Dashboard
from .test_dashboard import row, shell_words, sign_in

pytestmark = pytest.mark.e2e

# Each word of an element's text, and how many lines the browser drew it on.
WORD_LINES = """(element) => {
    const text = element.firstChild.firstChild;  // <pre><code>#text
    const lines = [];
    const pattern = /\\S+/g;
    let match;
    while ((match = pattern.exec(text.data)) !== null) {
        const range = document.createRange();
        range.setStart(text, match.index);
        range.setEnd(text, match.index + match[0].length);
        const tops = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
        lines.push([match[0], tops.size]);
    }
    return lines;
}"""


def _micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def _open_new_token(page: Page, dashboard: Dashboard) -> Any:
    page.goto(f"{dashboard.url}/settings/enrollment-tokens")
    page.get_by_role("button", name="New Token").click()
    return page.get_by_role("dialog", name="New Token")


def _shell_arguments(command: str, tmp_path: Path, typed: str) -> list[str]:
    """What bash hands `sielum-agent` when it runs the copied command, typed typed at its
    prompt: the token, then argv."""
    script = tmp_path / "command.sh"
    script.write_text(
        'sielum-agent() { printf \'%s\\0\' "$SIELUM_ENROLLMENT_TOKEN" "$@"; }\n' + command + "\n"
    )
    result = subprocess.run(
        ["bash", str(script)],
        input=typed + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # The prompt's line ends with `echo`: one newline before what the agent was handed.
    assert result.stdout.startswith("\n"), result.stdout
    return result.stdout[1:].split("\0")[:-1]


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280", "phone"])
def test_agent_command_wraps_between_arguments_and_copies_exactly(
    browser: Any, dashboard: Dashboard, tmp_path: Path, viewport: dict[str, int]
) -> None:
    context = browser.new_context(viewport=viewport)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=dashboard.url)
    try:
        page = context.new_page()
        sign_in(page, dashboard)
        dialog = _open_new_token(page, dashboard)
        dialog.get_by_label("Label").fill(f"command-{viewport['width']}")
        dialog.get_by_role("button", name="Create").click()
        created = page.get_by_role("dialog", name="Token created")
        secret = created.get_by_label("Secret").input_value()
        box = created.locator("pre.command")
        shown = box.inner_text()

        # Drawn: no argument split across two lines (a long line scrolls instead).
        words = box.evaluate(WORD_LINES)
        assert [word for word, lines in words if lines != 1] == [], words
        assert any(word == "--ca-fingerprint" for word, _ in words)
        # One argument per line, each joined to the next as a shell joins them.
        lines = shown.split("\n")
        assert [line.split()[0] for line in lines[1:]] == [
            "sielum-agent",
            "--server",
            "--ca-fingerprint",
            "--cert-dir",
        ]
        assert lines[0].startswith("read -rsp ")  # the secret at a prompt, never shown
        assert secret not in shown
        assert all(line.endswith(" \\") for line in lines[1:-1]), lines

        # Copy command copies exactly what is shown, and bash reads it as one command.
        created.get_by_role("button", name="Copy command").click()
        expect(created.get_by_text("Command copied to the clipboard.")).to_be_visible()
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied == shown
        token, *argv = _shell_arguments(copied, tmp_path, secret)
        assert token == secret
        assert argv == shell_words(shown.split("\n", 1)[1])[1:]
        assert argv[:2] == ["enroll", "--server"]
        size = "1280" if viewport == DESKTOP else "phone"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / f"{size}-token-command.png")
    finally:
        context.close()


def test_new_token_suggests_a_short_expiry_and_keeps_never(
    context: Any, dashboard: Dashboard
) -> None:
    page = context.new_page()
    sign_in(page, dashboard)
    dialog = _open_new_token(page, dashboard)
    expires = dialog.get_by_label("Expires at")
    # Preselected: 24 hours from now, in the browser's local time (the field's own form).
    local = datetime.strptime(expires.input_value(), "%Y-%m-%dT%H:%M")
    assert abs(local - (datetime.now() + timedelta(hours=24))) < timedelta(minutes=5)
    expect(dialog.get_by_text("Set to 24 hours from now")).to_be_visible()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "1280-new-token-expiry.png")

    choices = dialog.get_by_role("group", name="Expires in")
    choices.get_by_role("button", name="7 days").click()
    local = datetime.strptime(expires.input_value(), "%Y-%m-%dT%H:%M")
    assert abs(local - (datetime.now() + timedelta(days=7))) < timedelta(minutes=5)
    choices.get_by_role("button", name="Never").click()
    assert expires.input_value() == ""
    dialog.get_by_label("Label").fill("forever-token")
    dialog.get_by_role("button", name="Create").click()
    created = page.get_by_role("dialog", name="Token created")
    expect(created).to_contain_text("expires never")
    created.get_by_role("button", name="Done").click()
    [(never,)] = dashboard.sql("SELECT expires_at FROM token WHERE label = 'forever-token'")
    assert never is None

    # Left as offered: the token expires a day after it was made.
    dialog = _open_new_token(page, dashboard)
    dialog.get_by_label("Label").fill("day-token")
    dialog.get_by_role("button", name="Create").click()
    expect(page.get_by_role("dialog", name="Token created")).to_be_visible()
    [(expires_at, created_at)] = dashboard.sql(
        "SELECT expires_at, created_at FROM token WHERE label = 'day-token'"
    )
    assert abs(expires_at - created_at - 24 * 3600 * 1_000_000) < 5 * 60 * 1_000_000


def _admin_api(dashboard: Dashboard) -> tuple[grpc.Channel, Any]:
    admin_dir = dashboard.server.data_dir / "admin"
    channel = grpc.secure_channel(
        f"localhost:{dashboard.server.api_port}",
        grpc.ssl_channel_credentials(
            root_certificates=dashboard.ca_pem,
            private_key=(admin_dir / "admin.key").read_bytes(),
            certificate_chain=(admin_dir / "admin.pem").read_bytes(),
        ),
    )
    return channel, admin_pb2_grpc.AdminServiceStub(channel)


def _enroll(dashboard: Dashboard, secret: str, hostname: str, facts: dict[str, str]) -> str:
    with grpc.secure_channel(
        f"localhost:{dashboard.server.enroll_port}",
        grpc.ssl_channel_credentials(root_certificates=dashboard.ca_pem),
    ) as channel:
        answer = enroll_pb2_grpc.EnrollServiceStub(channel).Enroll(
            enroll_pb2.EnrollRequest(
                token=secret, csr_pem=make_csr(make_key()), hostname=hostname, facts=facts
            ),
            timeout=30,
        )
    return str(answer.device_id)


@pytest.fixture(scope="module")
def fleet(dashboard: Dashboard) -> dict[str, str]:
    """Hostname -> device id: web machines tagged web (one silent for 2 h, one never heard
    from since it enrolled 3 h ago), a lab machine without tags, heard from a minute ago."""
    channel, api = _admin_api(dashboard)
    with channel:
        web = api.CreateEnrollmentToken(
            admin_pb2.CreateEnrollmentTokenRequest(label="web-fleet", tags=["web", "eu-west"]),
            timeout=30,
        )
        lab = api.CreateEnrollmentToken(
            admin_pb2.CreateEnrollmentTokenRequest(label="lab-fleet"), timeout=30
        )
    ids = {
        "web-01.example.com": _enroll(
            dashboard, web.secret, "web-01.example.com", {"os": "linux", "arch": "amd64"}
        ),
        "web-02.example.com": _enroll(
            dashboard, web.secret, "web-02.example.com", {"os": "linux", "arch": "arm64"}
        ),
        "web-03.example.com": _enroll(dashboard, web.secret, "web-03.example.com", {}),
        "lab-build": _enroll(dashboard, lab.secret, "lab-build", {"os": "darwin"}),
    }
    now = datetime.now(UTC)
    dashboard.sql(
        "UPDATE device SET last_seen_at = ? WHERE id = ?",
        (_micros(now - timedelta(hours=2)), ids["web-02.example.com"]),
    )
    dashboard.sql(
        "UPDATE device SET enrolled_at = ?, last_seen_at = NULL WHERE id = ?",
        (_micros(now - timedelta(hours=3)), ids["web-03.example.com"]),
    )
    for name in ("web-01.example.com", "lab-build"):
        dashboard.sql(
            "UPDATE device SET last_seen_at = ? WHERE id = ?",
            (_micros(now - timedelta(minutes=1)), ids[name]),
        )
    return ids


def test_devices_search_tags_facts_and_not_heard_from(
    context: Any, dashboard: Dashboard, fleet: dict[str, str]
) -> None:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, dashboard)
    page.get_by_role("link", name="Devices", exact=True).click()

    # Not heard from for over an hour: said in words on the row, and counted above the table.
    for name, silent in (
        ("web-01.example.com", False),
        ("web-02.example.com", True),
        ("web-03.example.com", True),
        ("lab-build", False),
    ):
        marks = row(page, fleet[name]).get_by_text("Not heard from", exact=True)
        expect(marks).to_have_count(1 if silent else 0)
    expect(page.get_by_role("status").filter(has_text="not been heard from")).to_have_text(
        "2 of the 4 devices shown have not been heard from for over an hour."
    )
    # Tags and facts on each row.
    web01 = row(page, fleet["web-01.example.com"])
    expect(web01.locator("td[data-label='Tags']")).to_have_text("eu-westweb")
    facts = web01.get_by_role("list", name="Facts").get_by_role("listitem")
    expect(facts).to_have_text(["arch=amd64", "os=linux"])
    expect(row(page, fleet["lab-build"]).locator("td[data-label='Tags']")).to_have_text("—")
    wrap = page.locator("main .table-wrap")
    assert wrap.evaluate("e => e.scrollWidth <= e.clientWidth"), wrap.evaluate(
        "e => [e.scrollWidth, e.clientWidth, [...e.querySelectorAll('th')].map(t => t.offsetWidth)]"
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "1280-devices-silent.png", full_page=True)

    # Search by the exact host name; a part of a name finds nothing and says why.
    search = page.get_by_label("Hostname")
    search.fill("web-02.example.com")
    search.press("Enter")
    expect(page.locator("main table tbody tr")).to_have_count(1)
    expect(row(page, fleet["web-02.example.com"])).to_have_count(1)
    expect(page).to_have_url(f"{dashboard.url}/devices?hostname=web-02.example.com")
    search.fill("web-02")
    search.press("Enter")
    expect(page.get_by_role("heading", name="No device with this host name")).to_be_visible()
    expect(page.get_by_text("To search by its beginning, end it with *")).to_be_visible()

    # Filter by tag: the web machines only; the address keeps the filter for a reload.
    search.fill("")
    page.get_by_label("Tag", exact=True).fill("web")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("main table tbody tr")).to_have_count(3)
    expect(row(page, fleet["lab-build"])).to_have_count(0)
    page.reload()
    expect(page.get_by_label("Tag", exact=True)).to_have_value("web")
    expect(page.locator("main table tbody tr")).to_have_count(3)
    page.screenshot(path=SCREENSHOTS / "1280-devices-tag.png", full_page=True)
    assert errors == []


def test_devices_search_by_hostname_beginning_and_by_fact(
    context: Any, dashboard: Dashboard, fleet: dict[str, str]
) -> None:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, dashboard)
    page.get_by_role("link", name="Devices", exact=True).click()
    shown = page.locator("main table tbody tr")
    expect(shown).to_have_count(4)
    hint = page.locator("#hostname-filter-hint")
    expect(hint).to_have_text("The exact name, or its beginning and *, e.g. web-*")
    expect(page.locator("#fact-filter-hint")).to_have_text("name=value, exactly, e.g. os=linux")

    # A beginning and *: every web machine, newest first, and the address keeps it.
    search = page.get_by_label("Hostname")
    search.fill("web-*")
    search.press("Enter")
    expect(shown).to_have_count(3)
    ids = [fleet[f"web-0{n}.example.com"] for n in (3, 2, 1)]
    expect(shown.first).to_have_attribute("data-device-id", ids[0])
    assert shown.evaluate_all("rows => rows.map((r) => r.dataset.deviceId)") == ids
    expect(page).to_have_url(f"{dashboard.url}/devices?hostname=web-*")

    # And a fact, exactly: web machines on arm64, then any machine on linux.
    fact = page.get_by_label("Fact", exact=True)
    fact.fill("arch=arm64")
    fact.press("Enter")
    expect(shown).to_have_count(1)
    expect(row(page, fleet["web-02.example.com"])).to_have_count(1)
    expect(page).to_have_url(f"{dashboard.url}/devices?hostname=web-*&fact=arch%3Darm64")
    page.reload()
    expect(page.get_by_label("Hostname")).to_have_value("web-*")
    expect(page.get_by_label("Fact", exact=True)).to_have_value("arch=arm64")
    expect(shown).to_have_count(1)
    expect(page.get_by_role("status").filter(has_text="not been heard from")).to_have_text(
        "The device shown has not been heard from for over an hour."
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "1280-devices-prefix-and-fact.png", full_page=True)

    search = page.get_by_label("Hostname")
    fact = page.get_by_label("Fact", exact=True)
    search.fill("")
    fact.fill("os=linux")
    page.get_by_role("button", name="Search").click()
    expect(shown).to_have_count(2)
    linux = [fleet["web-02.example.com"], fleet["web-01.example.com"]]
    expect(shown.first).to_have_attribute("data-device-id", linux[0])
    assert shown.evaluate_all("rows => rows.map((r) => r.dataset.deviceId)") == linux

    # Case counts, and a value that is only a part of one finds nothing; each says why.
    fact.fill("os=Linux")
    fact.press("Enter")
    expect(page.get_by_role("heading", name="No device with this fact")).to_be_visible()
    fact.fill("os")
    fact.press("Enter")
    expect(page.get_by_role("heading", name="Write the fact as name=value")).to_be_visible()
    fact.fill("")
    search.fill("lab-*")
    search.press("Enter")
    expect(shown).to_have_count(1)
    expect(row(page, fleet["lab-build"])).to_have_count(1)
    search.fill("db-*")
    search.press("Enter")
    expect(page.get_by_role("heading", name="No host name starts with this")).to_be_visible()
    page.screenshot(path=SCREENSHOTS / "1280-devices-prefix-none.png", full_page=True)
    # On a phone the four filters stack, each with its hint, and nothing runs off the side.
    page.set_viewport_size(PHONE)
    search.fill("web-*")
    fact.fill("os=linux")
    fact.press("Enter")
    expect(shown).to_have_count(2)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=SCREENSHOTS / "phone-devices-prefix-and-fact.png", full_page=True)
    assert errors == []


def test_audit_filters_as_the_cli_and_serials_on_one_line(
    context: Any, dashboard: Dashboard, fleet: dict[str, str]
) -> None:
    page = context.new_page()
    sign_in(page, dashboard)
    page.get_by_role("link", name="Audit", exact=True).click()
    expect(page.get_by_role("search", name="Filter audit events")).to_be_visible()

    # Action: only enrollments; the serial in each detail stays on one line, whole in its title.
    page.get_by_label("Action").fill("device.enroll")
    page.get_by_role("button", name="Apply filters").click()
    expect(page).to_have_url(f"{dashboard.url}/audit?action=device.enroll")
    rows = page.locator("main table tbody tr")
    expect(rows).to_have_count(4)
    assert set(rows.locator("td[data-label='Action']").all_inner_texts()) == {"device.enroll"}
    serials = page.locator("main td[data-label='Detail'] .hex")
    expect(serials).to_have_count(4)
    [(serial,)] = dashboard.sql(
        "SELECT serial FROM device WHERE id = ?", (fleet["web-01.example.com"],)
    )
    shown = row(page, f"device/{fleet['web-01.example.com']}").locator(".hex")
    expect(shown).to_have_attribute("title", serial)
    assert shown.text_content() == serial  # cut on screen, whole when copied
    line_height = page.evaluate(
        "parseFloat(getComputedStyle("
        "document.querySelector('main td[data-label=Detail]')).lineHeight)"
    )
    for box in (serials.nth(n).bounding_box() for n in range(4)):
        assert box is not None and box["height"] < 1.5 * line_height, (box, line_height)
    for detail in rows.locator("td[data-label='Detail']").all():
        cell = detail.bounding_box()
        assert cell is not None and cell["height"] < 4 * line_height, cell
    # The whole table fits the page at 1280 px: nothing hides behind a sideways scroll.
    wrap = page.locator("main .table-wrap")
    assert wrap.evaluate("e => e.scrollWidth <= e.clientWidth"), wrap.evaluate(
        "e => [e.scrollWidth, e.clientWidth]"
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "1280-audit-filtered.png", full_page=True)

    # Resource, as a link from a row: that device's events alone.
    row(page, f"device/{fleet['lab-build']}").get_by_role(
        "link", name=f"device/{fleet['lab-build']}"
    ).click()
    expect(page).to_have_url(f"{dashboard.url}/audit?resource=device%2F{fleet['lab-build']}")
    expect(page.get_by_label("Resource")).to_have_value(f"device/{fleet['lab-build']}")
    expect(rows).to_have_count(1)

    # Actor and since: the admin's events, none of them in the future.
    page.get_by_role("button", name="Clear").click()
    expect(page).to_have_url(f"{dashboard.url}/audit")
    page.get_by_label("Actor").fill("admin/admin")
    page.get_by_role("button", name="Apply filters").click()
    expect(rows.first).to_be_visible()
    assert set(rows.locator("td[data-label='Actor']").all_inner_texts()) == {"admin/admin"}
    assert wrap.evaluate("e => e.scrollWidth <= e.clientWidth")
    page.screenshot(path=SCREENSHOTS / "1280-audit-by-actor.png", full_page=True)
    tomorrow = datetime.now() + timedelta(days=1)
    page.get_by_label("Since").fill(tomorrow.strftime("%Y-%m-%dT%H:%M"))
    page.get_by_role("button", name="Apply filters").click()
    expect(page.get_by_role("heading", name="No events match")).to_be_visible()
    expect(page.get_by_role("status").filter(has_text="Showing events")).to_contain_text(
        "by admin/admin"
    )
