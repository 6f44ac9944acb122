"""Approval in a real browser: a New Token with Advanced -> Require approval and tags, agents
that wait, Devices -> Pending with Approve and Deny, and what the agents make of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from playwright.sync_api import expect

from tests.e2e.test_token_policy import WaitingAgent

from .conftest import SCREENSHOTS, Dashboard
from .test_dashboard import confirm, row, sign_in

pytestmark = pytest.mark.e2e


def test_approve_and_deny_from_devices_pending(
    context: Any, dashboard: Dashboard, tmp_path: Path
) -> None:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, dashboard)

    # Settings -> Enrollment Tokens -> New Token, with its policy under Advanced.
    page.get_by_role("link", name="Settings", exact=True).click()
    page.get_by_role("link", name="Enrollment Tokens", exact=True).click()
    page.get_by_role("button", name="New Token").click()
    dialog = page.get_by_role("dialog", name="New Token")
    dialog.get_by_label("Label").fill("approved-rollout")
    dialog.get_by_text("Advanced", exact=True).click()
    dialog.get_by_label("Tags").fill("Web")
    dialog.get_by_label("Require approval").check()
    before = dashboard.everything()
    dialog.get_by_role("button", name="Create").click()
    expect(dialog.get_by_text("“Web” is not a tag")).to_be_visible()
    assert dashboard.everything() == before  # refused in the page: nothing sent
    dialog.get_by_label("Tags").fill("web, eu-west")
    dialog.get_by_label("Ephemeral after").fill("soon")
    dialog.get_by_role("button", name="Create").click()
    expect(dialog.get_by_text("A duration like 30m")).to_be_visible()
    # Well-formed but out of bounds: the server's words.
    dialog.get_by_label("Ephemeral after").fill("5s")
    dialog.get_by_role("button", name="Create").click()
    expect(dialog.get_by_role("alert")).to_contain_text(
        "Ephemeral_after must be between 1 minute and 365 days."
    )
    assert dashboard.everything() == before
    dialog.get_by_label("Ephemeral after").fill("")
    dialog.get_by_role("button", name="Create").click()
    created = page.get_by_role("dialog", name="Token created")
    expect(created.get_by_text("Approval required · Tags: eu-west, web")).to_be_visible()
    secret = created.get_by_label("Secret").input_value()
    created.get_by_role("button", name="Done").click()
    token_row = row(page, "approved-rollout")
    expect(token_row.get_by_text("Approval required · Tags: eu-west, web")).to_be_visible()

    # Two machines ask; each waits, with the id the page will show.
    first = WaitingAgent(dashboard.server, secret, tmp_path / "first", "pending-first")
    first_id = first.request_id()
    second = WaitingAgent(dashboard.server, secret, tmp_path / "second", "pending-second")
    second_id = second.request_id()

    # Devices -> Pending.
    page.get_by_role("link", name="Devices", exact=True).click()
    page.get_by_role("link", name="Pending", exact=True).click()
    expect(page.get_by_role("heading", name="Pending", exact=True)).to_be_visible()
    first_row = row(page, first_id)
    expect(first_row.get_by_text("pending-first", exact=True)).to_be_visible()
    expect(row(page, second_id)).to_have_count(1)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "1280-devices-pending.png")
    first_row.get_by_role("button", name="Approve").click()
    expect(row(page, first_id)).to_have_count(0)
    code, out, err = first.finish()
    assert code == 0, err
    assert "enrolled as device" in out
    device_id = json.loads((tmp_path / "first" / "agent.json").read_text())["device_id"]
    certificate = x509.load_pem_x509_certificate((tmp_path / "first" / "device.pem").read_bytes())
    uris = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"sielum://device/{device_id}",
        "sielum://tag/eu-west",
        "sielum://tag/web",
    ]

    row(page, second_id).get_by_role("button", name="Deny").click()
    confirm(page, "Deny")
    expect(row(page, second_id)).to_have_count(0)
    expect(page.get_by_text("No enrollments are waiting")).to_be_visible()
    code, out, err = second.finish()
    assert code == 4, err
    assert err.strip().splitlines()[-1] == "sielum-agent: enrollment denied"

    # The approved device, with its tags, found by its tag (back through the breadcrumb).
    page.get_by_role("navigation", name="Breadcrumb").get_by_role("link", name="Devices").click()
    page.get_by_label("Tag", exact=True).fill("eu-west")
    page.get_by_label("Tag", exact=True).press("Enter")
    expect(page).to_have_url(f"{dashboard.url}/devices?tag=eu-west")
    device_row = row(page, device_id)
    expect(device_row.get_by_text("pending-first", exact=True)).to_be_visible()
    expect(device_row.get_by_text("eu-west", exact=True)).to_be_visible()
    expect(page.locator("main table tbody tr")).to_have_count(1)

    # Audited: both decisions, by this admin.
    page.get_by_role("link", name="Audit", exact=True).click()
    expect(row(page, f"request/{first_id}").filter(has_text="request.approve")).to_have_count(1)
    expect(row(page, f"request/{second_id}").filter(has_text="request.deny")).to_have_count(1)
    assert errors == []
