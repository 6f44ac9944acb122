"""Approval and ephemeral devices over gRPC, on an in-process server with a clock the test moves."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import grpc
from cryptography import x509
from google.protobuf.duration_pb2 import Duration

from sielum.admin.v1 import admin_pb2
from sielum.agent.v1 import agent_pb2
from sielum.enroll.v1 import enroll_pb2
from sielum.server.app import ServerConfig, SielumServer

from .conftest import Harness, make_csr, make_key, start_harness, status_of

PENDING = admin_pb2.ENROLLMENT_REQUEST_STATE_PENDING


def _pending_id(h: Harness, secret: str, key: object, **fields: object) -> str:
    code, details = status_of(lambda: h.enroll(secret, key, **fields))  # type: ignore[arg-type]
    assert code is grpc.StatusCode.FAILED_PRECONDITION, details
    assert details.startswith("pending approval: request "), details
    return details.removeprefix("pending approval: request ")


def test_ok_a_waiting_key_is_one_request_and_gets_its_device_once_approved(
    harness: Harness,
) -> None:
    h = harness
    created = h.create_token(requires_approval=True, max_uses=1, tags=["web"])
    key = make_key()
    request_id = _pending_id(h, created.secret, key, facts={"os": "linux"})
    # Asking again with the same key is the same request; nothing is consumed.
    assert _pending_id(h, created.secret, key) == request_id
    token = h.admin().GetEnrollmentToken(admin_pb2.GetEnrollmentTokenRequest(id=created.token.id))
    assert token.token.uses == 0
    listed = h.admin().ListEnrollmentRequests(
        admin_pb2.ListEnrollmentRequestsRequest(state=PENDING)
    )
    [waiting] = [r for r in listed.requests if r.id == request_id]
    assert (waiting.hostname, dict(waiting.facts), waiting.peer) == (
        "host-1",
        {"os": "linux"},
        "127.0.0.1",
    )

    approved = h.admin().ApproveEnrollmentRequest(
        admin_pb2.ApproveEnrollmentRequestRequest(id=request_id)
    )
    assert approved.request.state == admin_pb2.ENROLLMENT_REQUEST_STATE_APPROVED
    assert approved.request.decided_by == "admin/admin"
    assert approved.request.device_id == approved.device.id
    assert list(approved.device.tags) == ["web"]
    # The agent's next try, same key: its device, without a second use.
    reply, _ = h.enroll(created.secret, key)
    assert reply.device_id == approved.device.id
    certificate = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
    uris = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"sielum://device/{reply.device_id}",
        "sielum://tag/web",
    ]
    token = h.admin().GetEnrollmentToken(admin_pb2.GetEnrollmentTokenRequest(id=created.token.id))
    assert token.token.uses == 1
    # The device works.
    beat = h.agent(key, reply.certificate_pem).Heartbeat(agent_pb2.HeartbeatRequest(), timeout=10)
    assert beat.device_id == reply.device_id


def test_fail_denied_and_decided_requests(harness: Harness) -> None:
    h = harness
    created = h.create_token(requires_approval=True)
    key = make_key()
    request_id = _pending_id(h, created.secret, key)
    denied = h.admin().DenyEnrollmentRequest(admin_pb2.DenyEnrollmentRequestRequest(id=request_id))
    assert denied.request.state == admin_pb2.ENROLLMENT_REQUEST_STATE_DENIED
    assert status_of(lambda: h.enroll(created.secret, key)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "enrollment denied",
    )
    assert status_of(
        lambda: h.admin().ApproveEnrollmentRequest(
            admin_pb2.ApproveEnrollmentRequestRequest(id=request_id)
        )
    ) == (grpc.StatusCode.FAILED_PRECONDITION, "enrollment request was denied already")
    for bogus in ("00000000-0000-4000-8000-000000000000", "nope", "x" * 5000):
        assert status_of(
            lambda bogus=bogus: h.admin().DenyEnrollmentRequest(
                admin_pb2.DenyEnrollmentRequestRequest(id=bogus)
            )
        ) == (grpc.StatusCode.NOT_FOUND, "enrollment request not found")
    assert status_of(
        lambda: h.admin().ApproveEnrollmentRequest(admin_pb2.ApproveEnrollmentRequestRequest())
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "enrollment request id is required")
    assert status_of(
        lambda: h.admin().ListEnrollmentRequests(
            admin_pb2.ListEnrollmentRequestsRequest(state=99)  # type: ignore[arg-type]
        )
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "state 99 is not an enrollment request state")


def test_fail_a_request_expires_with_its_token(harness: Harness) -> None:
    h = harness
    created = h.create_token(requires_approval=True)
    key = make_key()
    request_id = _pending_id(h, created.secret, key)
    h.admin().RevokeEnrollmentToken(admin_pb2.RevokeEnrollmentTokenRequest(id=created.token.id))
    assert status_of(
        lambda: h.admin().ApproveEnrollmentRequest(
            admin_pb2.ApproveEnrollmentRequestRequest(id=request_id)
        )
    ) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "enrollment token is revoked: the request can no longer be approved",
    )
    expired = h.admin().ListEnrollmentRequests(
        admin_pb2.ListEnrollmentRequestsRequest(state=admin_pb2.ENROLLMENT_REQUEST_STATE_EXPIRED)
    )
    assert [r.id for r in expired.requests] == [request_id]
    assert [
        r.state
        for r in h.admin()
        .ListEnrollmentRequests(admin_pb2.ListEnrollmentRequestsRequest())
        .requests
    ] == [admin_pb2.ENROLLMENT_REQUEST_STATE_EXPIRED]
    # The waiting agent hears why on its next try.
    assert status_of(lambda: h.enroll(created.secret, key)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "enrollment token has been revoked",
    )


def test_fail_a_bad_policy_makes_no_token(harness: Harness) -> None:
    h = harness
    before = h.admin().ListEnrollmentTokens(admin_pb2.ListEnrollmentTokensRequest()).tokens
    for fields, message in (
        ({"tags": ["UPPER"]}, "tag 'UPPER' is invalid"),
        ({"allowed_networks": ["300.0.0.0/8"]}, "allowed network '300.0.0.0/8' is not a CIDR"),
        ({"ephemeral_after": Duration(seconds=-5)}, "ephemeral_after must be a positive duration"),
        ({"ephemeral_after": Duration(seconds=10**11)}, "ephemeral_after must be between"),
        ({"required_facts": {"os": ""}}, "required fact 'os' needs a pattern"),
    ):
        code, details = status_of(lambda fields=fields: h.create_token(**fields))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert message in details, details
    after = h.admin().ListEnrollmentTokens(admin_pb2.ListEnrollmentTokensRequest()).tokens
    assert list(after) == list(before)


def test_ok_an_ephemeral_device_silent_too_long_is_revoked_by_the_server(harness: Harness) -> None:
    h = harness
    created = h.create_token(ephemeral_after=Duration(seconds=3600))
    quiet, quiet_key = h.enroll(created.secret)
    chatty, chatty_key = h.enroll(created.secret, hostname="chatty")
    lasting, _ = h.enroll(h.create_token().secret, hostname="lasting")
    token = h.admin().GetEnrollmentToken(admin_pb2.GetEnrollmentTokenRequest(id=created.token.id))
    assert token.token.ephemeral_after.seconds == 3600

    h.clock.advance(timedelta(minutes=50))
    assert h.server.ephemeral.sweep() == 0
    h.agent(chatty_key, chatty.certificate_pem).Heartbeat(agent_pb2.HeartbeatRequest(), timeout=10)
    h.clock.advance(timedelta(minutes=20))  # 70 minutes since enrollment, 20 since chatty called
    assert h.server.ephemeral.sweep() == 1
    assert h.server.ephemeral.sweep() == 0  # done once

    def state(device_id: str) -> int:
        return (
            h.admin().GetDevice(admin_pb2.GetDeviceRequest(id=device_id), timeout=10).device.state
        )

    assert state(quiet.device_id) == admin_pb2.DEVICE_STATE_REVOKED
    assert state(chatty.device_id) == admin_pb2.DEVICE_STATE_ACTIVE
    assert state(lasting.device_id) == admin_pb2.DEVICE_STATE_ACTIVE
    assert status_of(
        lambda: h.agent(quiet_key, quiet.certificate_pem).Heartbeat(
            agent_pb2.HeartbeatRequest(), timeout=10
        )
    ) == (grpc.StatusCode.PERMISSION_DENIED, "device has been revoked")
    events = (
        h.admin()
        .ListAuditEvents(admin_pb2.ListAuditEventsRequest(actor="server", action="device.expire"))
        .events
    )
    assert [(e.actor, e.resource) for e in events] == [("server", f"device/{quiet.device_id}")]


def test_fail_policy_refusals_over_grpc_consume_nothing(harness: Harness) -> None:
    h = harness
    created = h.create_token(max_uses=1, hostname_pattern="web-*", allowed_networks=["127.0.0.0/8"])
    request = enroll_pb2.EnrollRequest(
        token=created.secret, csr_pem=make_csr(make_key()), hostname="db-1"
    )
    assert status_of(lambda: h.enroll_stub().Enroll(request, timeout=10)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "token policy: hostname 'db-1' does not match 'web-*'",
    )
    token = h.admin().GetEnrollmentToken(admin_pb2.GetEnrollmentTokenRequest(id=created.token.id))
    assert token.token.uses == 0
    reply, _ = h.enroll(created.secret, hostname="web-1")
    assert reply.device_id


def test_race_two_replicas_on_postgresql_decide_each_request_once(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two servers on one PostgreSQL and one CA, admins on both deciding at once: each
    request is decided once, the token yields at most max_uses devices, and two sweeps
    revoke an ephemeral device once."""
    first = start_harness(tmp_path, postgres_url)
    second_server: SielumServer | None = None
    try:
        second_server = SielumServer(
            ServerConfig(
                data_dir=first.data_dir,
                enroll_addr="127.0.0.1:0",
                api_addr="127.0.0.1:0",
                database_url=postgres_url,
            ),
            clock=first.clock,
        ).start()
        second = Harness(server=second_server, data_dir=first.data_dir, clock=first.clock)
        approve = admin_pb2.ApproveEnrollmentRequestRequest
        deny = admin_pb2.DenyEnrollmentRequestRequest
        # Two admins on the two replicas decide the same request at once: one decision.
        unlimited = first.create_token(requires_approval=True)
        both = [_pending_id(first, unlimited.secret, make_key()) for _ in range(2)]
        outcomes = _at_once(
            lambda: first.admin().ApproveEnrollmentRequest(approve(id=both[0]), timeout=30),
            lambda: second.admin().ApproveEnrollmentRequest(approve(id=both[0]), timeout=30),
            lambda: first.admin().DenyEnrollmentRequest(deny(id=both[1]), timeout=30),
            lambda: second.admin().ApproveEnrollmentRequest(approve(id=both[1]), timeout=30),
        )
        one_decision = {grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION}
        assert set(outcomes[0:2]) == one_decision, outcomes
        assert set(outcomes[2:4]) == one_decision, outcomes
        # Four requests for a token of two uses, approved on both replicas at once.
        limited = first.create_token(requires_approval=True, max_uses=2)
        ids = [_pending_id(first, limited.secret, make_key()) for _ in range(4)]
        outcomes = _at_once(
            *(
                lambda h=h, i=i: h.admin().ApproveEnrollmentRequest(approve(id=i), timeout=30)
                for h, i in zip((first, second, first, second), ids, strict=True)
            )
        )
        assert outcomes.count(grpc.StatusCode.OK) == 2, outcomes
        assert outcomes.count(grpc.StatusCode.FAILED_PRECONDITION) == 2, outcomes
        for token in (unlimited, limited):
            devices = first.admin().ListDevices(
                admin_pb2.ListDevicesRequest(token_id=token.token.id), timeout=10
            )
            uses = first.admin().GetEnrollmentToken(
                admin_pb2.GetEnrollmentTokenRequest(id=token.token.id), timeout=10
            )
            assert len(devices.devices) == uses.token.uses
        assert first.server.store.check_integrity() == []

        # Ephemeral devices, swept by both replicas at once: revoked once, audited once.
        ephemeral = first.create_token(ephemeral_after=Duration(seconds=600))
        enrolled = [first.enroll(ephemeral.secret)[0].device_id for _ in range(3)]
        first.clock.advance(timedelta(minutes=11))
        counts: list[int] = [0, 0]
        sweepers = [
            threading.Thread(
                target=lambda i=i, h=h: counts.__setitem__(i, h.server.ephemeral.sweep())
            )
            for i, h in enumerate((first, second))
        ]
        for thread in sweepers:
            thread.start()
        for thread in sweepers:
            thread.join(timeout=60)
        assert sum(counts) == 3, counts
        events = (
            first.admin()
            .ListAuditEvents(admin_pb2.ListAuditEventsRequest(action="device.expire"), timeout=10)
            .events
        )
        assert sorted(e.resource for e in events) == sorted(f"device/{d}" for d in enrolled)
    finally:
        if second_server is not None:
            second_server.stop(grace=1)
        first.server.stop(grace=1)


def _at_once(*calls: Callable[[], object]) -> list[grpc.StatusCode]:
    """Each call's status code, the calls made at once on threads."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[grpc.StatusCode] = [grpc.StatusCode.UNKNOWN] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            calls[i]()
            outcomes[i] = grpc.StatusCode.OK
        except grpc.RpcError as error:
            outcomes[i] = error.code()  # type: ignore[attr-defined]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes
