"""Enroll over real TLS, many calls at once: their writes committed together, on SQLite and
PostgreSQL, with the calls on the event loop or on threads; max_uses holds, each call gets
its own answer, and the event log stays gap-free."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sielum.admin.v1 import admin_pb2
from sielum.enroll.ratelimit import FailureLimit
from sielum.enroll.v1 import enroll_pb2
from sielum.store import Store

from .conftest import Harness, make_csr, make_key, start_harness


@pytest.fixture(params=[0, 4], ids=["loop", "threads"])
def harness(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Iterator[Harness]:
    h = start_harness(
        tmp_path,
        database_url=database_url,
        threads=request.param,
        failure_limit=FailureLimit(burst=1000, rate_per_second=1000.0),
    )
    try:
        yield h
    finally:
        h.server.stop(grace=1)


def burst(harness: Harness, secrets: list[str], keys: list[object] | None = None) -> list[str]:
    """Every Enroll at once, on one channel; each call's outcome: "ok" or its details."""
    stub = harness.enroll_stub()
    keys = keys or [make_key() for _ in secrets]
    calls = [
        stub.Enroll.future(
            enroll_pb2.EnrollRequest(token=secret, csr_pem=make_csr(key), hostname=f"host-{i}"),
            timeout=30,
        )
        for i, (secret, key) in enumerate(zip(secrets, keys, strict=True))
    ]
    outcomes = []
    for call in calls:
        try:
            call.result()
            outcomes.append("ok")
        except grpc.RpcError as error:
            assert error.code() is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
            outcomes.append(error.details())  # type: ignore[attr-defined]
    return outcomes


def test_ok_a_burst_on_a_token_with_fewer_uses_enrolls_exactly_max_uses(
    harness: Harness, database_url: str
) -> None:
    limited = harness.create_token(max_uses=10)
    free = harness.create_token()
    secrets = [limited.secret] * 24 + [free.secret] * 8
    outcomes = burst(harness, secrets)
    assert outcomes[24:] == ["ok"] * 8
    assert collections.Counter(outcomes[:24]) == {
        "ok": 10,
        "enrollment token is exhausted: it has no uses left": 14,
    }
    admin = harness.admin()
    listed = admin.ListDevices(admin_pb2.ListDevicesRequest(token_id=limited.token.id))
    assert len(listed.devices) == 10
    store = Store.open(database_url)
    try:
        assert store.get_token(limited.token.id).uses == 10
        assert [e.sequence for e in store.device_events_after(0, 100)] == list(range(1, 19))
        assert store.check_integrity() == []
    finally:
        store.close()


def test_ok_the_same_key_twice_in_a_burst_is_one_device(harness: Harness) -> None:
    created = harness.create_token(max_uses=5)
    key = make_key()
    outcomes = burst(harness, [created.secret] * 3, [key, key, make_key()])
    assert outcomes == ["ok"] * 3  # the second call with the key is the first one's retry
    listed = harness.admin().ListDevices(admin_pb2.ListDevicesRequest(token_id=created.token.id))
    assert len(listed.devices) == 2
