"""AdminService over mTLS: tokens and devices, paging, filters, created_by, and failures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from sielum.admin.v1 import admin_pb2
from sielum.pb import to_timestamp

from .conftest import Harness, start_harness, status_of


def test_ok_create_returns_the_secret_once(harness: Harness) -> None:
    created = harness.create_token(label="laptops", max_uses=50)
    assert created.secret.startswith(f"slm_{created.token.id}_")
    assert created.token.label == "laptops"
    assert created.token.max_uses == 50
    assert created.token.uses == 0
    assert created.token.state == admin_pb2.TOKEN_STATE_ACTIVE
    assert created.token.created_by == "admin"
    assert not created.token.HasField("expires_at")
    fetched = harness.admin().GetEnrollmentToken(
        admin_pb2.GetEnrollmentTokenRequest(id=created.token.id)
    )
    assert created.secret not in str(fetched)
    listed = harness.admin().ListEnrollmentTokens(admin_pb2.ListEnrollmentTokensRequest())
    assert created.secret not in str(listed)
    assert [t.id for t in listed.tokens] == [created.token.id]


def test_ok_unlimited_token_has_no_max_uses(harness: Harness) -> None:
    created = harness.create_token()
    assert not created.token.HasField("max_uses")


def test_ok_the_audit_trail_states_a_new_tokens_terms_in_words(harness: Harness) -> None:
    expires = datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC)
    unlimited = harness.create_token(expires_at=to_timestamp(expires))
    limited = harness.create_token(max_uses=7)
    details = {e.resource: e.detail for e in harness.server.store.list_audit(limit=10)}
    assert details[f"token/{unlimited.token.id}"] == (
        "max_uses=unlimited expires_at=2099-01-02T03:04:05Z"
    )
    assert details[f"token/{limited.token.id}"] == "max_uses=7 expires_at=never"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"label": ""}, "label is required"),
        ({"label": "   "}, "label is required"),
        ({"label": "x" * 201}, "label is longer than 200"),
        ({"label": "a\nb"}, "control characters"),
        ({"label": "l", "max_uses": 0}, "max_uses must be between 1"),
        ({"label": "l", "max_uses": -5}, "max_uses must be between 1"),
    ],
)
def test_fail_create_invalid(harness: Harness, fields: dict[str, object], message: str) -> None:
    code, details = status_of(
        lambda: harness.admin().CreateEnrollmentToken(
            admin_pb2.CreateEnrollmentTokenRequest(**fields),
            timeout=10,  # type: ignore[arg-type]
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert message in details
    assert not harness.admin().ListEnrollmentTokens(admin_pb2.ListEnrollmentTokensRequest()).tokens


def test_fail_create_expiry_in_the_past(harness: Harness) -> None:
    past = to_timestamp(datetime.now(UTC) - timedelta(minutes=1))
    code, details = status_of(lambda: harness.create_token(expires_at=past))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details == "expires_at must be in the future"


def test_fail_unknown_ids_are_not_found(harness: Harness) -> None:
    admin = harness.admin()
    cases = [
        (
            admin.GetEnrollmentToken,
            admin_pb2.GetEnrollmentTokenRequest(id="aaaaaaaaaaaaaaaa"),
            "enrollment token not found",
        ),
        (
            admin.RevokeEnrollmentToken,
            admin_pb2.RevokeEnrollmentTokenRequest(id="nope"),
            "enrollment token not found",
        ),
        (
            admin.GetDevice,
            admin_pb2.GetDeviceRequest(id="00000000-0000-0000-0000-000000000000"),
            "device not found",
        ),
        (admin.RevokeDevice, admin_pb2.RevokeDeviceRequest(id="nope"), "device not found"),
    ]
    for method, request, message in cases:
        code, details = status_of(
            lambda method=method, request=request: method(request, timeout=10)
        )
        assert code is grpc.StatusCode.NOT_FOUND
        assert details == message


def test_ok_revoke_is_idempotent_and_keeps_the_first_time(harness: Harness) -> None:
    created = harness.create_token()
    first = harness.admin().RevokeEnrollmentToken(
        admin_pb2.RevokeEnrollmentTokenRequest(id=created.token.id)
    )
    second = harness.admin().RevokeEnrollmentToken(
        admin_pb2.RevokeEnrollmentTokenRequest(id=created.token.id)
    )
    assert first.token.state == admin_pb2.TOKEN_STATE_REVOKED
    assert second.token.revoked_at == first.token.revoked_at


def test_ok_list_tokens_pages_and_filters_by_state(harness: Harness) -> None:
    ids = [harness.create_token(label=f"t{i}", max_uses=1).token.id for i in range(7)]
    harness.enroll(harness.create_token(label="used", max_uses=1).secret)
    harness.admin().RevokeEnrollmentToken(admin_pb2.RevokeEnrollmentTokenRequest(id=ids[0]))

    seen: list[str] = []
    page_token = ""
    while True:
        page = harness.admin().ListEnrollmentTokens(
            admin_pb2.ListEnrollmentTokensRequest(page_size=3, page_token=page_token)
        )
        assert len(page.tokens) <= 3
        seen += [t.id for t in page.tokens]
        page_token = page.next_page_token
        if not page_token:
            break
    assert len(seen) == 8 and len(set(seen)) == 8
    assert seen[-7:] == list(reversed(ids))  # newest first

    def states(state: int) -> list[str]:
        listed = harness.admin().ListEnrollmentTokens(
            admin_pb2.ListEnrollmentTokensRequest(state=state)
        )
        return [t.label for t in listed.tokens]

    assert states(admin_pb2.TOKEN_STATE_REVOKED) == ["t0"]
    assert states(admin_pb2.TOKEN_STATE_EXHAUSTED) == ["used"]
    assert sorted(states(admin_pb2.TOKEN_STATE_ACTIVE)) == [f"t{i}" for i in range(1, 7)]
    assert states(admin_pb2.TOKEN_STATE_EXPIRED) == []


def test_fail_list_with_a_forged_page_token(harness: Harness) -> None:
    code, details = status_of(
        lambda: harness.admin().ListDevices(admin_pb2.ListDevicesRequest(page_token="garbage!"))
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in details


def test_ok_list_devices_by_token_and_revoke(harness: Harness) -> None:
    one = harness.create_token()
    two = harness.create_token()
    a, _ = harness.enroll(one.secret)
    b, _ = harness.enroll(one.secret)
    c, _ = harness.enroll(two.secret)
    listed = harness.admin().ListDevices(admin_pb2.ListDevicesRequest(token_id=one.token.id))
    assert {d.id for d in listed.devices} == {a.device_id, b.device_id}
    everything = harness.admin().ListDevices(admin_pb2.ListDevicesRequest())
    assert [d.id for d in everything.devices] == [c.device_id, b.device_id, a.device_id]

    revoked = harness.admin().RevokeDevice(admin_pb2.RevokeDeviceRequest(id=a.device_id)).device
    assert revoked.state == admin_pb2.DEVICE_STATE_REVOKED
    assert revoked.HasField("revoked_at")
    # Revoking a device leaves its token alone.
    token = harness.admin().GetEnrollmentToken(admin_pb2.GetEnrollmentTokenRequest(id=one.token.id))
    assert token.token.uses == 2
    assert token.token.state == admin_pb2.TOKEN_STATE_ACTIVE


def test_ok_audit_trail_records_who_did_what(harness: Harness) -> None:
    created = harness.create_token()
    response, _ = harness.enroll(created.secret)
    harness.admin().RevokeEnrollmentToken(
        admin_pb2.RevokeEnrollmentTokenRequest(id=created.token.id)
    )
    events = harness.server.store.list_audit(limit=10)
    actions = [(e.action, e.actor, e.resource) for e in reversed(events)]
    assert actions == [
        # init_data_dir's admin certificate predates the database: it registers on first use.
        ("admin.register", "admin/admin", "admin/admin"),
        ("token.create", "admin/admin", f"token/{created.token.id}"),
        ("device.enroll", f"token/{created.token.id}", f"device/{response.device_id}"),
        ("token.revoke", "admin/admin", f"token/{created.token.id}"),
    ]
    assert all(e.peer == "127.0.0.1" for e in events if e.action != "admin.register")


def test_fail_padded_id_hides_a_revocation_from_the_audit_trail(
    tmp_path: Path, database_url: str
) -> None:
    """Ids sent with whitespace around them ("  <id>\t", as pasted) are revoked, and the audit
    row names the canonical resource, so a search by the resource finds the revocation."""
    h = start_harness(tmp_path, database_url)
    try:
        created = h.create_token()
        enrolled, _ = h.enroll(created.secret)
        h.admin().RevokeEnrollmentToken(
            admin_pb2.RevokeEnrollmentTokenRequest(id=f"  {created.token.id}\t"), timeout=10
        )
        h.admin().RevokeDevice(
            admin_pb2.RevokeDeviceRequest(id=f"\n{enrolled.device_id}  "), timeout=10
        )
        store = h.server.store
        token_events = store.list_audit(resource=f"token/{created.token.id}")
        assert [e.action for e in token_events] == ["token.revoke", "token.create"]
        device_events = store.list_audit(resource=f"device/{enrolled.device_id}")
        assert [e.action for e in device_events] == ["device.revoke", "device.enroll"]
        assert all(e.resource.strip() == e.resource for e in store.list_audit(limit=100))
    finally:
        h.server.stop(grace=1)


def test_ok_list_devices_by_state_and_hostname(harness: Harness) -> None:
    token = harness.create_token()
    web, _ = harness.enroll(token.secret, hostname="web-1")
    db, _ = harness.enroll(token.secret, hostname="db-1")
    gone, _ = harness.enroll(token.secret, hostname="web-1")
    admin = harness.admin()
    admin.RevokeDevice(admin_pb2.RevokeDeviceRequest(id=gone.device_id))

    def listed(**fields: object) -> list[str]:
        reply = admin.ListDevices(admin_pb2.ListDevicesRequest(**fields), timeout=10)  # type: ignore[arg-type]
        return [d.id for d in reply.devices]

    assert listed(hostname="web-1") == [gone.device_id, web.device_id]
    assert listed(hostname=" web-1 ") == [gone.device_id, web.device_id]
    assert listed(hostname="web") == []
    assert listed(state=admin_pb2.DEVICE_STATE_REVOKED) == [gone.device_id]
    assert listed(state=admin_pb2.DEVICE_STATE_ACTIVE) == [db.device_id, web.device_id]
    assert listed(state=admin_pb2.DEVICE_STATE_EXPIRED) == []
    assert listed(state=admin_pb2.DEVICE_STATE_ACTIVE, hostname="web-1") == [web.device_id]
    # Once the certificates' not_after has passed (by the server's clock), unrevoked
    # devices are expired, and the revoked one stays revoked.
    harness.clock.advance(timedelta(days=91))
    assert listed(state=admin_pb2.DEVICE_STATE_EXPIRED) == [db.device_id, web.device_id]
    assert listed(state=admin_pb2.DEVICE_STATE_ACTIVE) == []
    assert listed(state=admin_pb2.DEVICE_STATE_REVOKED) == [gone.device_id]


def test_ok_list_devices_by_hostname_prefix_and_facts(harness: Harness) -> None:
    token = harness.create_token()
    web1, _ = harness.enroll(token.secret, hostname="web-1", facts={"os": "linux", "dc": "a"})
    web2, _ = harness.enroll(token.secret, hostname="web-2", facts={"os": "bsd", "dc": "a"})
    db, _ = harness.enroll(token.secret, hostname="db-1", facts={"os": "linux", "dc": "b"})
    weber, _ = harness.enroll(token.secret, hostname="Web-3", facts={"note": 'x","os":"linux'})
    admin = harness.admin()

    def listed(**fields: object) -> list[str]:
        reply = admin.ListDevices(admin_pb2.ListDevicesRequest(**fields), timeout=10)  # type: ignore[arg-type]
        return [d.id for d in reply.devices]

    assert listed(hostname_prefix="web-") == [web2.device_id, web1.device_id]
    assert listed(hostname_prefix=" web-2 ") == [web2.device_id]
    assert listed(hostname_prefix="Web") == [weber.device_id]
    assert listed(hostname_prefix="web-%") == []
    assert listed(facts={"os": "linux"}) == [db.device_id, web1.device_id]
    assert listed(facts={"os": "linux", "dc": "a"}) == [web1.device_id]
    assert listed(facts={"os": "Linux"}) == []
    assert listed(facts={"dc": "a"}, hostname_prefix="web-1") == [web1.device_id]
    assert listed(facts={"note": 'x","os":"linux'}) == [weber.device_id]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"state": 9}, "state 9 is not a device state"),
        ({"hostname": "a\x00b"}, "hostname contains control characters"),
        ({"hostname": "h" * 254}, "hostname is longer than 253 characters"),
        ({"hostname_prefix": "a\x1bb"}, "hostname_prefix contains control characters"),
        ({"hostname_prefix": "h" * 254}, "hostname_prefix is longer than 253 characters"),
        ({"facts": {"": "x"}}, "fact names are 1-64 characters of letters, digits, '._/-'"),
        ({"facts": {"a b": "x"}}, "fact names are 1-64 characters of letters, digits, '._/-'"),
        ({"facts": {"os": "x" * 1025}}, "fact 'os' is longer than 1024 characters"),
        ({"facts": {"os": "a\nb"}}, "fact 'os' contains control characters"),
        ({"facts": {f"f{n}": "" for n in range(65)}}, "too many facts: 65 (at most 64)"),
    ],
)
def test_fail_list_devices_with_bad_filters(
    harness: Harness, fields: dict[str, object], message: str
) -> None:
    request = admin_pb2.ListDevicesRequest(**fields)  # type: ignore[arg-type]
    assert status_of(lambda: harness.admin().ListDevices(request, timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
    )
