"""Enrollment requests and ephemeral devices in the store: decided once, within max_uses,
on SQLite and PostgreSQL, with two stores on one database standing for two replicas."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from sielum.errors import TokenUnusableError
from sielum.model import (
    AuditEvent,
    AuditFilter,
    Device,
    EnrollmentRequest,
    EnrollmentRequestState,
    Token,
    TokenPolicy,
)
from sielum.store import Store
from sielum.store.requests import RequestDecidedError

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
APPROVAL = TokenPolicy(requires_approval=True)


@pytest.fixture
def stores(database_url: str) -> Iterator[tuple[Store, Store]]:
    """Two stores on one database: two replicas of the server."""
    first = Store.open(database_url)
    second = Store.open(database_url)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def _token(store: Store, *, max_uses: int | None = None, policy: TokenPolicy = APPROVAL) -> str:
    token_id = uuid.uuid4().hex[:16]
    store.create_token(
        Token(
            id=token_id, label="t", secret_hash=b"h", max_uses=max_uses, uses=0,
            expires_at=None, created_at=T0, created_by="alice", policy=policy,
        ),
        AuditEvent(at=T0, actor="admin/alice", action="token.create", resource=f"token/{token_id}"),
    )  # fmt: skip
    return token_id


def _request(store: Store, token_id: str) -> EnrollmentRequest:
    request = EnrollmentRequest(
        id=str(uuid.uuid4()), token_id=token_id, hostname="h", facts={"os": "linux"},
        peer="10.0.0.1", public_key_sha256=uuid.uuid4().hex, csr_pem="CSR", requested_at=T0,
    )  # fmt: skip
    audit = AuditEvent(at=T0, actor=f"token/{token_id}", action="request.create", resource="r")
    return store.create_enrollment_request(request, audit, max_pending=1000)


def _device(request: EnrollmentRequest) -> Device:
    return Device(
        id=str(uuid.uuid4()), hostname=request.hostname, token_id=request.token_id,
        public_key_sha256=request.public_key_sha256, serial=uuid.uuid4().hex,
        certificate_pem="PEM", not_after=T0 + timedelta(days=90), enrolled_at=T0,
        peer=request.peer, facts=request.facts, tags=("web",),
    )  # fmt: skip


def _approve(store: Store, request: EnrollmentRequest, admin: str = "admin/alice") -> Device:
    device = _device(request)
    audits = (
        AuditEvent(at=T0, actor=admin, action="request.approve", resource=f"request/{request.id}"),
        AuditEvent(at=T0, actor=admin, action="device.enroll", resource=f"device/{device.id}"),
    )
    return store.approve_enrollment_request(request.id, admin, device, T0, audits)


def _deny(store: Store, request: EnrollmentRequest) -> EnrollmentRequest:
    audit = AuditEvent(
        at=T0, actor="admin/bob", action="request.deny", resource=f"request/{request.id}"
    )
    return store.deny_enrollment_request(request.id, "admin/bob", T0, audit)


def _race(*calls: Callable[[], object]) -> list[object]:
    """Run calls at once on threads; each one's result or the exception it raised."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as error:
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def _devices_of(store: Store, token_id: str) -> int:
    return len(store.list_devices(token_id=token_id, page_size=1000).items)


def test_ok_approve_enrolls_the_device_and_consumes_one_use(stores: tuple[Store, Store]) -> None:
    store, _ = stores
    token_id = _token(store, max_uses=2)
    request = _request(store, token_id)
    assert store.get_token(token_id).uses == 0
    device = _approve(store, request)
    decided = store.get_enrollment_request(request.id)
    assert (decided.state, decided.decided_by, decided.device_id) == (
        EnrollmentRequestState.APPROVED,
        "admin/alice",
        device.id,
    )
    assert store.get_token(token_id).uses == 1
    assert store.find_device_by_key(request.public_key_sha256) == device
    assert store.get_device(device.id).tags == ("web",)
    actions = [e.action for e in store.list_audit(limit=10)]
    assert {"request.approve", "device.enroll", "request.create"} <= set(actions)
    assert store.check_integrity() == []


@pytest.mark.parametrize("round_", range(3))
def test_race_approve_against_deny_leaves_one_decision(
    stores: tuple[Store, Store], round_: int
) -> None:
    first, second = stores
    token_id = _token(first, max_uses=5)
    request = _request(first, token_id)
    approved, denied = _race(lambda: _approve(first, request), lambda: _deny(second, request))
    outcomes = [isinstance(r, RequestDecidedError) for r in (approved, denied)]
    assert sorted(outcomes) == [False, True], (approved, denied)
    final = first.get_enrollment_request(request.id)
    if isinstance(approved, Device):
        assert final.state is EnrollmentRequestState.APPROVED
        assert _devices_of(first, token_id) == 1
        assert str(denied) == "enrollment request was approved already"
    else:
        assert final.state is EnrollmentRequestState.DENIED
        assert _devices_of(first, token_id) == 0
        assert first.get_token(token_id).uses == 0
        assert str(approved) == "enrollment request was denied already"
    assert first.check_integrity() == []


def test_race_two_admins_approving_at_once_enroll_one_device(stores: tuple[Store, Store]) -> None:
    first, second = stores
    token_id = _token(first)
    request = _request(first, token_id)
    results = _race(
        lambda: _approve(first, request, "admin/alice"),
        lambda: _approve(second, request, "admin/bob"),
    )
    assert sum(isinstance(r, Device) for r in results) == 1, results
    assert sum(isinstance(r, RequestDecidedError) for r in results) == 1, results
    assert _devices_of(first, token_id) == 1
    assert first.get_token(token_id).uses == 1
    assert first.check_integrity() == []


def test_race_approve_against_token_revoke(stores: tuple[Store, Store]) -> None:
    first, second = stores
    for _ in range(3):
        token_id = _token(first)
        request = _request(first, token_id)
        revoke = AuditEvent(at=T0, actor="admin/bob", action="token.revoke", resource="t")
        approved, _ = _race(
            lambda: _approve(first, request),
            lambda: second.revoke_token(token_id, T0, revoke),
        )
        final = first.get_enrollment_request(request.id)
        if isinstance(approved, Device):
            assert final.state is EnrollmentRequestState.APPROVED
            assert _devices_of(first, token_id) == 1
        else:
            # The revocation came first: no device, no use, the request still undecided
            # (shown as expired with its token, tests/rpc/test_approval.py).
            assert isinstance(approved, TokenUnusableError), approved
            assert final.state is EnrollmentRequestState.PENDING
            assert _devices_of(first, token_id) == 0
            assert first.get_token(token_id).uses == 0
        assert first.get_token(token_id).revoked_at is not None
    assert first.check_integrity() == []


def test_race_approvals_never_exceed_max_uses(stores: tuple[Store, Store]) -> None:
    first, second = stores
    token_id = _token(first, max_uses=3)
    requests = [_request(first, token_id) for _ in range(8)]
    results = _race(
        *(
            (lambda r=r, s=(first if i % 2 else second): _approve(s, r))
            for i, r in enumerate(requests)
        )
    )
    assert sum(isinstance(r, Device) for r in results) == 3, results
    assert all(isinstance(r, Device | TokenUnusableError) for r in results), results
    assert _devices_of(first, token_id) == 3
    assert first.get_token(token_id).uses == 3
    states = [first.get_enrollment_request(r.id).state for r in requests]
    assert states.count(EnrollmentRequestState.APPROVED) == 3
    assert states.count(EnrollmentRequestState.PENDING) == 5
    assert first.check_integrity() == []


def test_list_shows_pending_and_expired_apart(stores: tuple[Store, Store]) -> None:
    store, _ = stores
    live = _token(store)
    gone = _token(store)
    waiting = _request(store, live)
    orphan = _request(store, gone)
    denied = _request(store, live)
    _deny(store, denied)
    store.revoke_token(gone, T0, AuditEvent(at=T0, actor="a", action="token.revoke", resource="t"))

    def ids(state: EnrollmentRequestState | None) -> list[str]:
        return [r.id for r in store.list_enrollment_requests(now=T0, state=state).items]

    assert ids(EnrollmentRequestState.PENDING) == [waiting.id]
    assert ids(EnrollmentRequestState.EXPIRED) == [orphan.id]
    assert ids(EnrollmentRequestState.DENIED) == [denied.id]
    assert ids(None) == [denied.id, orphan.id, waiting.id]
    assert store.count_pending_requests(T0) == 1


def test_tag_filter_matches_whole_tags_only(stores: tuple[Store, Store]) -> None:
    """'_' is a LIKE wildcard: the filter for a_b must not find axb, nor a part of a tag."""
    store, _ = stores
    token_id = _token(store, policy=TokenPolicy())
    for tags in (("a_b",), ("axb",), ("web", "eu"), ("webby",)):
        request = _request(store, token_id)
        device = dataclasses.replace(_device(request), tags=tags)
        audit = AuditEvent(at=T0, actor="t", action="device.enroll", resource="d")
        store.enroll_device(device, T0, audit)

    def tagged(tag: str) -> list[tuple[str, ...]]:
        return [d.tags for d in store.list_devices(tag=tag).items]

    assert tagged("a_b") == [("a_b",)]
    assert tagged("web") == [("web", "eu")]
    assert tagged("eu") == [("web", "eu")]
    assert tagged("we") == []


def test_two_sweeps_expire_a_device_once(stores: tuple[Store, Store]) -> None:
    """Two replicas sweeping at once revoke each due device once and audit it once; a device
    that called within ephemeral_after, and devices of other tokens, are left alone."""
    first, second = stores
    ephemeral = _token(first, policy=TokenPolicy(ephemeral_after=timedelta(hours=1)))
    lasting = _token(first, policy=TokenPolicy())
    due = []
    for _ in range(6):
        device = _device(_request(first, ephemeral))
        first.enroll_device(device, T0, AuditEvent(at=T0, actor="t", action="e", resource="d"))
        due.append(device.id)
    fresh = _device(_request(first, ephemeral))
    first.enroll_device(fresh, T0, AuditEvent(at=T0, actor="t", action="e", resource="d"))
    first.touch_device(fresh.id, T0 + timedelta(minutes=90))
    other = _device(_request(first, lasting))
    first.enroll_device(other, T0, AuditEvent(at=T0, actor="t", action="e", resource="d"))

    now = T0 + timedelta(hours=2)
    assert sorted(first.find_ephemeral_devices_due(now, 100)) == sorted(due)

    def sweep(store: Store) -> int:
        revoked = 0
        for device_id in store.find_ephemeral_devices_due(now, 100):
            audit = AuditEvent(
                at=now, actor="server", action="device.expire", resource=f"device/{device_id}"
            )
            revoked += store.expire_device(device_id, now, audit)
        return revoked

    counts = _race(lambda: sweep(first), lambda: sweep(second))
    assert sum(counts) == 6, counts  # type: ignore[arg-type]
    assert all(first.get_device(d).revoked_at == now for d in due)
    assert first.get_device(fresh.id).revoked_at is None
    assert first.get_device(other.id).revoked_at is None
    expired = first.list_audit_events(AuditFilter(action="device.expire"), page_size=100)
    assert sorted(e.resource for e in expired.items) == sorted(f"device/{d}" for d in due)
    assert {e.actor for e in expired.items} == {"server"}
    assert first.find_ephemeral_devices_due(now, 100) == []
