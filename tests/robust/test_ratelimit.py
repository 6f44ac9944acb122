"""Guessing is rate-limited per address; legitimate enrollments from one address never are."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from sielum.admin.v1 import admin_pb2
from sielum.core.addresses import peer_group
from sielum.enroll.ratelimit import LIMITED, FailureLimit, FailureLimiter
from sielum.enroll.v1 import enroll_pb2, enroll_pb2_grpc
from sielum.errors import ResourceExhaustedError
from sielum.pb import to_timestamp
from sielum.tokens import make_secret
from tests.rpc.conftest import make_csr, make_key, start_harness, status_of

from .conftest import EXHAUSTED, Serve, create_token, make_data_dir

INVALID_TOKEN = "enrollment token is invalid"


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_parallel_failures_are_all_paid_for() -> None:
    """Failures answered anyway (revoked or expired secrets) are all paid for, below zero."""
    clock = FakeMonotonic()
    limiter = FailureLimiter(FailureLimit(burst=3, rate_per_second=1.0), monotonic=clock)
    for _ in range(10):
        limiter.record_failure("10.0.0.1")
    # 3 - 10 = -7: the address needs 8 seconds to earn one more answer.
    clock.now += 7.5
    with pytest.raises(ResourceExhaustedError) as refused:
        limiter.charge("10.0.0.1")
    assert refused.value.message == LIMITED
    clock.now += 0.5
    limiter.charge("10.0.0.1")
    # Other addresses are not affected.
    limiter.charge("10.0.0.2")


def test_a_refused_request_spends_nothing() -> None:
    clock = FakeMonotonic()
    limiter = FailureLimiter(FailureLimit(burst=2, rate_per_second=0.5), monotonic=clock)
    limiter.charge("10.0.0.1")
    limiter.charge("10.0.0.1")
    for _ in range(50):
        with pytest.raises(ResourceExhaustedError):
            limiter.charge("10.0.0.1")
    clock.now += 2.0  # one answer regained, whatever was refused meanwhile
    limiter.charge("10.0.0.1")
    with pytest.raises(ResourceExhaustedError):
        limiter.charge("10.0.0.1")


def test_burst_zero_disables_the_limit() -> None:
    limiter = FailureLimiter(FailureLimit(burst=0), monotonic=FakeMonotonic())
    for _ in range(1000):
        limiter.charge("10.0.0.1")
        limiter.record_failure("10.0.0.1")


@pytest.mark.parametrize(
    ("peer", "group"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::1", "::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("unix:/run/sielum.sock", "unix:/run/sielum.sock"),
    ],
)
def test_peers_are_grouped_ipv4_by_address_and_ipv6_by_64(peer: str, group: str) -> None:
    assert peer_group(peer) == group


def test_fail_one_ipv6_host_cannot_multiply_its_attempts() -> None:
    """A host holding a /64 guesses from a new address each time: one bucket for all of them.
    An IPv4 client reaching a dual-stack socket shares its IPv4 address's bucket."""
    limiter = FailureLimiter(
        FailureLimit(burst=3, rate_per_second=0.001), monotonic=FakeMonotonic()
    )
    for i in range(3):
        limiter.charge(f"2001:db8:1:2::{i + 1:x}")
    with pytest.raises(ResourceExhaustedError):
        limiter.charge("2001:db8:1:2:dead:beef:0:1")
    limiter.charge("2001:db8:1:3::1")  # the next /64 is another host
    limiter.charge("192.0.2.7")
    limiter.charge("192.0.2.7")
    limiter.charge("::ffff:192.0.2.7")
    with pytest.raises(ResourceExhaustedError):
        limiter.charge("192.0.2.7")


def _enroll(stub: Any, secret: str, csr_pem: str | None = None) -> Any:
    return stub.Enroll(
        enroll_pb2.EnrollRequest(
            token=secret, csr_pem=csr_pem or make_csr(make_key()), hostname="h"
        ),
        timeout=10,
    )


def test_ok_refusals_after_a_valid_secret_are_not_counted(tmp_path: Path) -> None:
    """An office that outnumbers its token's max uses is told "exhausted", then enrolls with
    the next token: holding a valid secret is not guessing."""
    h = start_harness(tmp_path, failure_limit=FailureLimit(burst=3, rate_per_second=0.001))
    try:
        stub = h.enroll_stub()
        first = h.create_token(max_uses=2)
        for _ in range(2):
            _enroll(stub, first.secret)
        for _ in range(10):
            code, details = status_of(lambda: _enroll(stub, first.secret))
            assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, EXHAUSTED)
        for _ in range(5):
            code, details = status_of(lambda: _enroll(stub, first.secret, "not a csr"))
            assert code is grpc.StatusCode.INVALID_ARGUMENT
            assert details.startswith("CSR is not PEM")
        second = h.create_token()
        assert _enroll(stub, second.secret).device_id
    finally:
        h.server.stop(grace=1)


def test_ok_a_whole_office_enrolls_at_once_from_one_address(tmp_path: Path) -> None:
    """150 enrollments in parallel from 127.0.0.1 with a burst of 2: none is throttled."""
    h = start_harness(tmp_path, failure_limit=FailureLimit(burst=2, rate_per_second=0.001))
    try:
        created = h.create_token()
        stub = h.enroll_stub()
        csrs = [make_csr(make_key()) for _ in range(150)]
        with ThreadPoolExecutor(max_workers=24) as pool:
            replies = list(pool.map(lambda csr: _enroll(stub, created.secret, csr), csrs))
        assert len({r.device_id for r in replies}) == 150
    finally:
        h.server.stop(grace=1)


def test_fail_parallel_guessing_buys_no_extra_attempts(tmp_path: Path) -> None:
    """30 guesses at once with a burst of 5: 5 are answered, 25 refused, the right secret is not."""
    # On threads: on the event loop the 30 guesses would run one after another.
    h = start_harness(
        tmp_path, failure_limit=FailureLimit(burst=5, rate_per_second=0.001), threads=30
    )
    store = h.server.store
    real_get_token = store.get_token

    def slow_get_token(token_id: str) -> Any:
        # Holds every guess inside the server long enough that all 30 are in flight at once.
        time.sleep(0.5)
        return real_get_token(token_id)

    try:
        created = h.create_token()
        store.get_token = slow_get_token  # type: ignore[method-assign]
        stub = h.enroll_stub()
        start = threading.Barrier(30)

        def guess(_: int) -> str:
            start.wait()
            try:
                _enroll(stub, make_secret(created.token.id).reveal())
            except grpc.RpcError as error:
                return str(error.code().name)  # type: ignore[attr-defined]
            return "OK"

        with ThreadPoolExecutor(max_workers=30) as pool:
            codes = list(pool.map(guess, range(30)))
        store.get_token = real_get_token  # type: ignore[method-assign]
        assert sorted(codes) == ["RESOURCE_EXHAUSTED"] * 25 + ["UNAUTHENTICATED"] * 5
        code, details = status_of(lambda: _enroll(stub, make_secret(created.token.id).reveal()))
        assert (code, details) == (grpc.StatusCode.RESOURCE_EXHAUSTED, LIMITED)
        # The right secret is never refused by the limit.
        assert _enroll(stub, created.secret).device_id
        assert store.get_token(created.token.id).uses == 1
    finally:
        h.server.stop(grace=1)


def test_fail_garbage_from_a_shared_address_locks_out_nobody(tmp_path: Path) -> None:
    """One machine behind the office NAT (or anyone, behind a layer-4 load balancer) sends
    garbage until the address is limited: every agent holding a valid secret still gets its
    own answer, success or refusal, and the garbage stays limited."""
    h = start_harness(tmp_path, failure_limit=FailureLimit(burst=3, rate_per_second=0.001))
    try:
        stub = h.enroll_stub()
        created = h.create_token()
        used_up = h.create_token(max_uses=1)
        garbage = [make_secret(created.token.id).reveal(), "slm_garbage", "x" * 100]
        codes = [status_of(lambda g=g: _enroll(stub, g))[0] for g in garbage * 4]
        assert codes[:3] == [
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.INVALID_ARGUMENT,
        ]
        assert set(codes[3:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        # Bad hostnames and facts with garbage are limited too.
        refused = status_of(
            lambda: stub.Enroll(
                enroll_pb2.EnrollRequest(token=garbage[0], csr_pem="x", hostname="a\x1b"),
                timeout=10,
            )
        )
        assert refused == (grpc.StatusCode.RESOURCE_EXHAUSTED, LIMITED)

        for i in range(5):
            assert _enroll(stub, created.secret).device_id, i
        assert _enroll(stub, used_up.secret).device_id
        assert status_of(lambda: _enroll(stub, used_up.secret)) == (
            grpc.StatusCode.PERMISSION_DENIED,
            EXHAUSTED,
        )
        code, details = status_of(lambda: _enroll(stub, created.secret, "not a csr"))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("CSR is not PEM")
        code, details = status_of(
            lambda: stub.Enroll(
                enroll_pb2.EnrollRequest(
                    token=created.secret, csr_pem=make_csr(make_key()), hostname="a\x1b"
                ),
                timeout=10,
            )
        )
        assert (code, details) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "hostname contains control characters",
        )
        assert status_of(lambda: _enroll(stub, garbage[0])) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            LIMITED,
        )
        assert h.server.store.get_token(created.token.id).uses == 5
    finally:
        h.server.stop(grace=1)


@pytest.mark.parametrize("state", ["revoked", "expired"])
def test_fail_revoked_or_expired_secrets_count_as_failures(tmp_path: Path, state: str) -> None:
    """A verified secret of a revoked or expired token (found in an old script) is answered,
    never refused, but spends the address's failures like a guess."""
    h = start_harness(tmp_path, failure_limit=FailureLimit(burst=3, rate_per_second=0.001))
    try:
        stub = h.enroll_stub()
        if state == "revoked":
            old = h.create_token()
            h.admin().RevokeEnrollmentToken(
                admin_pb2.RevokeEnrollmentTokenRequest(id=old.token.id), timeout=10
            )
            message = "enrollment token has been revoked"
        else:
            old = h.create_token(expires_at=to_timestamp(datetime.now(UTC) + timedelta(hours=1)))
            h.clock.advance(timedelta(hours=2))
            message = "enrollment token has expired"
        for _ in range(6):
            assert status_of(lambda: _enroll(stub, old.secret)) == (
                grpc.StatusCode.PERMISSION_DENIED,
                message,
            )
        assert status_of(lambda: _enroll(stub, make_secret(old.token.id).reveal())) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            LIMITED,
        )
        assert _enroll(stub, h.create_token().secret).device_id
    finally:
        h.server.stop(grace=1)


@pytest.mark.e2e
def test_limits_are_configurable_on_the_command_line(tmp_path: Path, serves: list[Serve]) -> None:
    data_dir = make_data_dir(tmp_path)
    limited = Serve(data_dir, ("--enroll-failure-burst", "3", "--enroll-failure-rate", "0.5"))
    unlimited = Serve(data_dir, ("--enroll-failure-burst", "0"))
    for serve in (limited, unlimited):
        serves.append(serve.start())
    created = create_token(limited)
    wrong = make_secret(created.token.id).reveal()
    ca = (data_dir / "ca.pem").read_bytes()

    # One channel is one connection, so every call reaches the same server process.
    channel = grpc.secure_channel(
        limited.enroll_target, grpc.ssl_channel_credentials(root_certificates=ca)
    )
    stub = enroll_pb2_grpc.EnrollServiceStub(channel)
    for _ in range(40):
        assert _enroll(stub, created.secret).device_id
    for _ in range(3):
        code, details = status_of(lambda: _enroll(stub, wrong))
        assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, INVALID_TOKEN)
    code, details = status_of(lambda: _enroll(stub, wrong))
    assert (code, details) == (grpc.StatusCode.RESOURCE_EXHAUSTED, LIMITED)
    assert _enroll(stub, created.secret).device_id  # never refused: its secret verifies
    time.sleep(2.5)  # --enroll-failure-rate 0.5: one and a quarter attempts regained
    code, details = status_of(lambda: _enroll(stub, wrong))
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, INVALID_TOKEN)
    code, details = status_of(lambda: _enroll(stub, wrong))
    assert (code, details) == (grpc.StatusCode.RESOURCE_EXHAUSTED, LIMITED)

    # --enroll-failure-burst 0 turns the limit off.
    stub = enroll_pb2_grpc.EnrollServiceStub(
        grpc.secure_channel(
            unlimited.enroll_target, grpc.ssl_channel_credentials(root_certificates=ca)
        )
    )
    for _ in range(30):
        code, details = status_of(lambda: _enroll(stub, wrong))
        assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, INVALID_TOKEN)
