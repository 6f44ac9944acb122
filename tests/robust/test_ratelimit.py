"""Guessing is rate-limited per address; legitimate enrollments from one address never are."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from sielum.enroll.ratelimit import FailureLimit, FailureLimiter
from sielum.enroll.v1 import enroll_pb2, enroll_pb2_grpc
from sielum.errors import ResourceExhaustedError
from sielum.tokens import make_secret
from tests.rpc.conftest import make_csr, make_key, start_harness, status_of

from .conftest import EXHAUSTED, Serve, create_token, make_data_dir

LIMITED = "too many failed enrollments from this address; wait and retry"
INVALID_TOKEN = "enrollment token is invalid"


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_parallel_failures_are_all_paid_for() -> None:
    """Ten guesses that passed the check together cost ten, not just the burst."""
    clock = FakeMonotonic()
    limiter = FailureLimiter(FailureLimit(burst=3, rate_per_second=1.0), monotonic=clock)
    for _ in range(10):
        limiter.check("10.0.0.1")  # all in flight at once: none has failed yet
    for _ in range(10):
        limiter.record_failure("10.0.0.1")
    # 3 - 10 = -7: the address needs 8 seconds to earn one more attempt.
    clock.now += 7.5
    with pytest.raises(ResourceExhaustedError) as refused:
        limiter.check("10.0.0.1")
    assert refused.value.message == LIMITED
    clock.now += 0.5
    limiter.check("10.0.0.1")
    # Other addresses are not affected.
    limiter.check("10.0.0.2")


def test_burst_zero_disables_the_limit() -> None:
    limiter = FailureLimiter(FailureLimit(burst=0), monotonic=FakeMonotonic())
    for _ in range(1000):
        limiter.check("10.0.0.1")
        limiter.record_failure("10.0.0.1")


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
    """30 guesses at once: once the burst is spent, the address waits for all of them."""
    # On threads: on the event loop the 30 guesses would run one after another.
    h = start_harness(
        tmp_path, failure_limit=FailureLimit(burst=5, rate_per_second=2.0), threads=30
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
        evaluated = codes.count("UNAUTHENTICATED")
        assert set(codes) <= {"UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}
        # They really overlapped: far more than the burst got past the check together.
        assert evaluated >= 10, codes
        # At 2 per second the address has earned 2 attempts after a second; it still
        # owes at least 10 - 5 - 2 of them, so it is refused, the right secret included.
        time.sleep(1.0)
        code, details = status_of(lambda: _enroll(stub, created.secret))
        assert (code, details) == (grpc.StatusCode.RESOURCE_EXHAUSTED, LIMITED)
        assert store.get_token(created.token.id).uses == 0
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
    code, details = status_of(lambda: _enroll(stub, created.secret))
    assert (code, details) == (grpc.StatusCode.RESOURCE_EXHAUSTED, LIMITED)
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
