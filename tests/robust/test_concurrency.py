"""Many agents at once: a token with max uses N yields exactly N devices, on one server or two."""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from sielum.admin.v1 import admin_pb2
from sielum.enroll.ratelimit import FailureLimit
from sielum.enroll.v1 import enroll_pb2
from sielum.server.app import ServerConfig, SielumServer
from tests.rpc.conftest import Harness, make_csr, make_key, start_harness

from .conftest import (
    EXHAUSTED,
    Agent,
    Serve,
    create_token,
    device_rows,
    enroll_requests,
    integrity_problems,
    make_data_dir,
    run_clients,
    sqlite_url,
    token_rows,
)

AGENTS = 500
MAX_USES = 50
CLIENT_PROCESSES = 4
KEY_ENROLLED = "this public key is already enrolled as another device"


def _check_race_outcome(
    results: list[dict[str, Any]], database_url: str, token_id: str, agents: list[Agent]
) -> None:
    outcomes = collections.Counter((r["code"], r["details"]) for r in results)
    assert outcomes == {("OK", ""): MAX_USES, ("PERMISSION_DENIED", EXHAUSTED): AGENTS - MAX_USES}

    assert token_rows(database_url) == {token_id: (MAX_USES, MAX_USES)}
    rows = device_rows(database_url)
    assert len(rows) == MAX_USES
    assert {row["token_id"] for row in rows} == {token_id}
    # Every winner got the device the database holds for its key, and nobody else got one.
    by_id = {row["id"]: row for row in rows}
    winners = [r for r in results if r["code"] == "OK"]
    assert {r["device_id"] for r in winners} == set(by_id)
    for result in winners:
        certificate = x509.load_pem_x509_certificate(result["certificate_pem"].encode())
        row = by_id[result["device_id"]]
        assert format(certificate.serial_number, "x") == row["serial"]
        agent = agents[result["id"]]
        assert certificate.public_key() == agent.key.public_key()
    assert integrity_problems(database_url) == []


@pytest.mark.e2e
def test_ok_500_agents_race_for_50_uses_on_sqlite(tmp_path: Path, serves: list[Serve]) -> None:
    data_dir = make_data_dir(tmp_path)
    # Default flags, rate limit included: refusals of a valid secret must not
    # turn into RESOURCE_EXHAUSTED for the office NAT all these agents share.
    serve = Serve(data_dir)
    serves.append(serve.start())
    created = create_token(serve, max_uses=MAX_USES)
    agents = [Agent.new() for _ in range(AGENTS)]

    results = run_clients(
        tmp_path,
        (data_dir / "ca.pem").read_bytes(),
        [[serve.enroll_target]] * CLIENT_PROCESSES,
        enroll_requests(agents, [created.secret]),
        concurrency=16,
    )
    _check_race_outcome(results, sqlite_url(data_dir), created.token.id, agents)


@pytest.mark.e2e
@pytest.mark.postgres
def test_ok_500_agents_race_for_50_uses_on_two_replicas_sharing_postgresql(
    tmp_path: Path, serves: list[Serve], postgres_url: str
) -> None:
    data_dir = make_data_dir(tmp_path)
    # One replica runs its calls on its event loop (the default for a database on
    # this host), the other on threads (the default for one across a network).
    replicas = [
        Serve(data_dir, ("--database", postgres_url)),
        Serve(data_dir, ("--database", postgres_url, "--threads", "16")),
    ]
    for replica in replicas:
        serves.append(replica.start())
    created = create_token(replicas[0], max_uses=MAX_USES)
    agents = [Agent.new() for _ in range(AGENTS)]

    results = run_clients(
        tmp_path,
        (data_dir / "ca.pem").read_bytes(),
        # Every client alternates between the replicas, request by request.
        [[r.enroll_target for r in replicas]] * CLIENT_PROCESSES,
        enroll_requests(agents, [created.secret]),
        concurrency=16,
    )
    _check_race_outcome(results, postgres_url, created.token.id, agents)
    for replica in replicas:
        # Both replicas took part: each issued devices and each refused agents.
        assert " enroll outcome=ok " in replica.log
        assert " enroll outcome=permission_denied " in replica.log
    assert ' calls="event loop" ' in replicas[0].log
    assert ' calls="16 threads" ' in replicas[1].log


def _second_replica(
    harness: Harness, database_url: str, threads: int | None = None
) -> SielumServer:
    """Another server on the same data dir (CA) and database, as a second host would run."""
    return SielumServer(
        ServerConfig(
            data_dir=harness.data_dir,
            enroll_addr="127.0.0.1:0",
            api_addr="127.0.0.1:0",
            database_url=database_url,
            threads=threads,
        ),
        clock=harness.clock,
    ).start()


def _race(calls: list[Any]) -> list[tuple[str, str, str]]:
    """Run the calls on threads released together; outcomes (code, details, device id) in order."""
    start = threading.Barrier(len(calls))
    outcomes: list[tuple[str, str, str] | None] = [None] * len(calls)

    def run(index: int) -> None:
        start.wait()
        try:
            reply = calls[index]()
            outcomes[index] = ("OK", "", reply.device_id)
        except grpc.RpcError as error:
            outcomes[index] = (error.code().name, error.details(), "")  # type: ignore[attr-defined]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    finished = [o for o in outcomes if o is not None]
    assert len(finished) == len(calls), "a call did not finish within a minute"
    return finished


def _enroll_call(target: str, ca_pem: bytes, secret: str, csr_pem: str) -> Any:
    channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca_pem))
    from sielum.enroll.v1 import enroll_pb2_grpc

    stub = enroll_pb2_grpc.EnrollServiceStub(channel)
    request = enroll_pb2.EnrollRequest(token=secret, csr_pem=csr_pem, hostname="same-agent")
    return lambda: stub.Enroll(request, timeout=30)


@pytest.mark.parametrize("max_uses", [1, 5])
@pytest.mark.parametrize("threads", [None, 8], ids=["default", "threads"])
def test_ok_same_agent_retrying_in_parallel(
    tmp_path: Path, database_url: str, max_uses: int, threads: int | None
) -> None:
    """20 parallel calls with one key and one token: one device, one use, every call answered."""
    harness = start_harness(tmp_path, database_url=database_url, threads=threads)
    replica = _second_replica(harness, database_url, threads)
    try:
        created = harness.create_token(max_uses=max_uses)
        csr_pem = make_csr(make_key())
        targets = [harness.enroll_target, f"localhost:{replica.enroll_port}"]
        calls = [
            _enroll_call(targets[i % 2], harness.ca_pem, created.secret, csr_pem) for i in range(20)
        ]
        outcomes = _race(calls)

        device_ids = {device_id for _, _, device_id in outcomes}
        assert [code for code, _, _ in outcomes] == ["OK"] * 20, outcomes
        assert len(device_ids) == 1
        store = harness.server.store
        assert store.get_token(created.token.id).uses == 1
        assert [d.id for d in store.list_devices().items] == list(device_ids)
        assert store.check_integrity() == []
    finally:
        replica.stop(grace=1)
        harness.server.stop(grace=1)


def test_ok_cloned_image_two_agents_one_key_two_tokens(tmp_path: Path, database_url: str) -> None:
    """Two machines cloned from one image race under two tokens: one device between them."""
    harness = start_harness(
        tmp_path, database_url=database_url, failure_limit=FailureLimit(burst=0)
    )
    replica = _second_replica(harness, database_url)
    try:
        one = harness.create_token(max_uses=5)
        two = harness.create_token(max_uses=5)
        key = make_key()
        targets = [harness.enroll_target, f"localhost:{replica.enroll_port}"]
        secrets = [one.secret, two.secret]
        # Each machine retries too: 10 calls each, alternating replicas.
        calls = [
            _enroll_call(targets[i % 2], harness.ca_pem, secrets[(i // 2) % 2], make_csr(key))
            for i in range(20)
        ]
        outcomes = _race(calls)

        # One token's calls all get the one device; the other token's calls are all refused.
        per_token = {
            secret: {outcomes[i] for i in range(20) if secrets[(i // 2) % 2] == secret}
            for secret in secrets
        }
        winner_secret = one.secret if outcomes[0][0] == "OK" else two.secret
        loser_secret = two.secret if winner_secret == one.secret else one.secret
        (won,) = per_token[winner_secret]
        assert won[0] == "OK", per_token
        assert per_token[loser_secret] == {("ALREADY_EXISTS", KEY_ENROLLED, "")}, per_token

        store = harness.server.store
        devices = store.list_devices().items
        assert len(devices) == 1
        uses = {t.id: store.get_token(t.id).uses for t in (one.token, two.token)}
        assert sorted(uses.values()) == [0, 1]
        assert uses[devices[0].token_id] == 1
        assert store.check_integrity() == []
    finally:
        replica.stop(grace=1)
        harness.server.stop(grace=1)


def test_ok_revoking_a_token_under_load_stops_it_at_once(tmp_path: Path, database_url: str) -> None:
    """Agents pour in; an admin revokes the token: no call that starts after the revoke
    returns gets a device, and every device enrolled before it stays on record."""
    harness = start_harness(tmp_path, database_url=database_url)
    try:
        created = harness.create_token()
        revoked_at: list[float] = []
        outcomes: list[tuple[float, str, str]] = []
        lock = threading.Lock()
        stop = threading.Event()

        def agent_stream() -> None:
            stub = harness.enroll_stub()
            for _ in range(200):
                if stop.is_set():
                    return
                started = time.monotonic()
                try:
                    reply = stub.Enroll(
                        enroll_pb2.EnrollRequest(
                            token=created.secret, csr_pem=make_csr(make_key()), hostname="h"
                        ),
                        timeout=30,
                    )
                    outcome = (started, "OK", reply.device_id)
                except grpc.RpcError as error:
                    outcome = (started, error.code().name, error.details())  # type: ignore[attr-defined]
                with lock:
                    outcomes.append(outcome)

        def wait_until(condition: Any) -> None:
            deadline = time.monotonic() + 30
            while not condition():
                assert time.monotonic() < deadline, "the agents made no progress"
                time.sleep(0.02)

        threads = [threading.Thread(target=agent_stream) for _ in range(8)]
        for thread in threads:
            thread.start()
        wait_until(lambda: sum(code == "OK" for _, code, _ in outcomes) >= 20)
        harness.admin().RevokeEnrollmentToken(
            admin_pb2.RevokeEnrollmentTokenRequest(id=created.token.id), timeout=10
        )
        revoked_at.append(time.monotonic())
        wait_until(lambda: sum(started > revoked_at[0] for started, _, _ in outcomes) >= 20)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

        before = [o for o in outcomes if o[0] < revoked_at[0]]
        after = [o for o in outcomes if o[0] > revoked_at[0]]
        assert any(code == "OK" for _, code, _ in before)
        assert after and {(code, detail) for _, code, detail in after} == {
            ("PERMISSION_DENIED", "enrollment token has been revoked")
        }
        store = harness.server.store
        devices = store.list_devices(page_size=1000).items
        assert {d.id for d in devices} == {detail for _, code, detail in outcomes if code == "OK"}
        assert store.get_token(created.token.id).uses == len(devices)
        assert store.check_integrity() == []
    finally:
        harness.server.stop(grace=1)
