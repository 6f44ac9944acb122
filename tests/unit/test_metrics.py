"""Metrics without a server: label sets, refusal results, the gauges' cache, run directories."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sielum import errors
from sielum.clock import FixedClock
from sielum.enroll.service import enrollment_result
from sielum.model import DeviceState, StateCounts, TokenState
from sielum.recorder import CertificateKind, EnrollmentResult
from sielum.server import multiproc
from sielum.server.metrics import (
    Metrics,
    StateCollector,
    grpc_code_name,
    host_is_ours,
    host_name,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
ENROLL = "/sielum.enroll.v1.EnrollService/Enroll"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.parametrize(
    ("error", "result"),
    [
        (errors.MalformedTokenError("x"), EnrollmentResult.MALFORMED_TOKEN),
        (errors.InvalidCsrError("x"), EnrollmentResult.BAD_CSR),
        (errors.InvalidArgumentError("hostname"), EnrollmentResult.BAD_REQUEST),
        (errors.UnauthenticatedError("x"), EnrollmentResult.INVALID_TOKEN),
        (errors.TokenRevokedError("x"), EnrollmentResult.REVOKED),
        (errors.TokenExpiredError("x"), EnrollmentResult.EXPIRED),
        (errors.TokenExhaustedError("x"), EnrollmentResult.EXHAUSTED),
        (errors.TokenUnusableError("x"), EnrollmentResult.TOKEN_UNUSABLE),
        (errors.PermissionDeniedError("device revoked"), EnrollmentResult.DEVICE_REVOKED),
        (errors.AlreadyExistsError("x"), EnrollmentResult.KEY_IN_USE),
        (errors.ResourceExhaustedError("x"), EnrollmentResult.RATE_LIMITED),
        (errors.UnavailableError("x"), EnrollmentResult.UNAVAILABLE),
        (errors.InternalError("x"), EnrollmentResult.ERROR),
        (RuntimeError("x"), EnrollmentResult.ERROR),
    ],
)
def test_each_refusal_has_its_result(error: BaseException, result: EnrollmentResult) -> None:
    assert enrollment_result(error) is result


def test_status_codes_are_spelled_as_the_go_libraries_do() -> None:
    assert grpc_code_name(grpc.StatusCode.OK) == "OK"
    assert grpc_code_name(grpc.StatusCode.CANCELLED) == "Canceled"
    assert grpc_code_name(grpc.StatusCode.PERMISSION_DENIED) == "PermissionDenied"
    assert grpc_code_name(grpc.StatusCode.DEADLINE_EXCEEDED) == "DeadlineExceeded"
    assert len({grpc_code_name(code) for code in grpc.StatusCode}) == len(grpc.StatusCode)


def test_calls_are_counted_by_method_and_unknown_names_fold_into_one_series() -> None:
    metrics = Metrics({ENROLL: "unary"})
    metrics.observe_call("grpc", ENROLL, grpc.StatusCode.OK, 0.002)
    metrics.observe_call("grpc", ENROLL, grpc.StatusCode.OK, 0.004)
    metrics.observe_call("connect", ENROLL, grpc.StatusCode.UNAUTHENTICATED, 0.001)
    for n in range(50):
        metrics.observe_call("connect", f"/evil.Service/Method{n}", grpc.StatusCode.NOT_FOUND, 0)
    samples = _samples(generate_latest(metrics.registry()).decode())

    def handled(**labels: str) -> float:
        key = ("grpc_server_handled_total", tuple(sorted(labels.items())))
        return samples.get(key, 0.0)

    enroll = {"grpc_service": "sielum.enroll.v1.EnrollService", "grpc_method": "Enroll"}
    assert handled(**enroll, grpc_type="unary", grpc_code="OK", transport="grpc") == 2
    assert (
        handled(**enroll, grpc_type="unary", grpc_code="Unauthenticated", transport="connect") == 1
    )
    unknown = {"grpc_service": "unknown", "grpc_method": "unknown", "grpc_type": "unknown"}
    assert handled(**unknown, grpc_code="NotFound", transport="connect") == 50
    count = (
        "grpc_server_handling_seconds_count",
        tuple(sorted({**enroll, "grpc_type": "unary", "transport": "grpc"}.items())),
    )
    assert samples[count] == 2
    assert not any("evil" in value for _, labels in samples for _, value in labels)
    assert len(metrics._calls) == 3  # nor do made-up names grow what the process keeps


def test_calls_started_are_counted_by_method_and_unknown_names_fold_into_one_series() -> None:
    metrics = Metrics({ENROLL: "unary"})
    for _ in range(3):
        metrics.start_call("grpc", ENROLL)
    for n in range(20):
        metrics.start_call("connect", f"/evil.Service/Method{n}")
    samples = _samples(generate_latest(metrics.registry()).decode())

    def started(**labels: str) -> float:
        return samples.get(("grpc_server_started_total", tuple(sorted(labels.items()))), 0.0)

    enroll = {"grpc_service": "sielum.enroll.v1.EnrollService", "grpc_method": "Enroll"}
    assert started(**enroll, grpc_type="unary", transport="grpc") == 3
    unknown = {"grpc_service": "unknown", "grpc_method": "unknown", "grpc_type": "unknown"}
    assert started(**unknown, transport="connect") == 20
    assert len(metrics._starts) == 2


def test_silent_devices_are_read_with_the_state_counts() -> None:
    asked: list[dict[str, datetime]] = []

    def silent(cutoffs: dict[str, datetime]) -> dict[str, int]:
        asked.append(dict(cutoffs))
        return {"1h": 7, "24h": 3, "7d": 1}

    clock_s = [0.0]
    collector = StateCollector(
        _Counts(),
        datetime(2036, 1, 1, tzinfo=UTC),
        FixedClock(NOW),
        silent=silent,
        server_not_after=lambda: datetime(2027, 1, 1, tzinfo=UTC),
        version="1.2.3",
        monotonic=lambda: clock_s[0],
    )
    registry = Metrics({}).registry(collector)
    samples = _samples(generate_latest(registry).decode())
    assert samples[("sielum_devices_silent", (("for", "1h"),))] == 7
    assert samples[("sielum_devices_silent", (("for", "7d"),))] == 1
    assert samples[("sielum_build_info", (("version", "1.2.3"),))] == 1
    expiry = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert samples[("sielum_server_certificate_expiry_timestamp_seconds", ())] == expiry
    assert asked == [
        {
            "1h": NOW - timedelta(hours=1),
            "24h": NOW - timedelta(days=1),
            "7d": NOW - timedelta(days=7),
        }
    ]
    generate_latest(registry)  # within the TTL: not asked again
    assert len(asked) == 1


def test_recorded_outcomes_start_at_zero_and_count() -> None:
    metrics = Metrics({})
    metrics.enrollment(EnrollmentResult.OK)
    metrics.enrollment(EnrollmentResult.OK)
    metrics.certificate_issued(CertificateKind.RENEWAL)
    samples = _samples(generate_latest(metrics.registry()).decode())
    assert samples[("sielum_enrollments_total", (("result", "ok"),))] == 2
    # Every result is a series from the start, so rate() and alerts see it before it happens.
    assert samples[("sielum_enrollments_total", (("result", "rate_limited"),))] == 0
    assert samples[("sielum_certificates_issued_total", (("kind", "renewal"),))] == 1
    assert samples[("sielum_certificates_issued_total", (("kind", "admin"),))] == 0


class _Counts:
    def __init__(self) -> None:
        self.calls = 0
        self.failing = False

    def __call__(self, now: datetime) -> StateCounts:
        self.calls += 1
        if self.failing:
            raise errors.UnavailableError("database unavailable, try again")
        return StateCounts(
            tokens={state: self.calls for state in TokenState},
            devices={state: 10 * self.calls for state in DeviceState},
        )


def test_state_gauges_are_read_at_most_once_per_ttl() -> None:
    counts, clock_s = _Counts(), [100.0]
    collector = StateCollector(
        counts,
        datetime(2036, 1, 1, tzinfo=UTC),
        FixedClock(NOW),
        ttl=5.0,
        monotonic=lambda: clock_s[0],
    )
    metrics = Metrics({})
    registry = metrics.registry(collector)

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return _samples(generate_latest(registry).decode())

    first = scrape()
    assert first[("sielum_tokens", (("state", "active"),))] == 1
    assert first[("sielum_devices", (("state", "revoked"),))] == 10
    expiry = first[("sielum_ca_certificate_expiry_timestamp_seconds", ())]
    assert expiry == datetime(2036, 1, 1, tzinfo=UTC).timestamp()
    clock_s[0] += 4.9
    assert scrape()[("sielum_tokens", (("state", "active"),))] == 1
    assert counts.calls == 1
    clock_s[0] += 0.1
    assert scrape()[("sielum_tokens", (("state", "active"),))] == 2
    # A database that cannot answer leaves the gauges out, not stale figures in.
    counts.failing = True
    clock_s[0] += 5
    failed = scrape()
    assert not any(name in ("sielum_tokens", "sielum_devices") for name, _ in failed)
    assert ("sielum_ca_certificate_expiry_timestamp_seconds", ()) in failed
    assert counts.calls == 3


def test_run_directories_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{multiproc.PREFIX}{dead.pid}-abc"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"x")
    live = tmp_path / f"{multiproc.PREFIX}{os.getppid()}-def"
    live.mkdir()
    unrelated = tmp_path / "sielum-metrics-notes"
    unrelated.mkdir()
    run = multiproc.create_run_directory({multiproc.ENV: str(tmp_path)})
    assert run.parent == tmp_path and run.name.startswith(f"{multiproc.PREFIX}{os.getpid()}-")
    assert list(run.iterdir()) == []
    assert not stale.exists()
    assert live.exists() and unrelated.exists()
    multiproc.remove_run_directory(run)
    assert not run.exists()


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:9464", "127.0.0.1"),
        ("LocalHost.", "localhost"),
        ("[::1]:9464", "::1"),
        ("[::1]", "::1"),
        ("Metrics.Example.Test:80", "metrics.example.test"),
        ("::1", None),  # IPv6 needs brackets in Host
        ("[::1", None),
        ("[::1]x", None),
        ("127.0.0.1:port", None),
        ("", None),
        (":9464", None),
    ],
)
def test_host_header_names(header: str, name: str | None) -> None:
    assert host_name(header) == name


def test_only_our_address_localhost_on_loopback_and_given_names_are_our_host() -> None:
    names = frozenset({"metrics.example.test"})
    assert host_is_ours("10.0.0.5:9464", "10.0.0.5", names)
    assert host_is_ours("10.0.0.5:9464", "::ffff:10.0.0.5", names)  # a dual-stack socket
    assert host_is_ours("metrics.example.test.", "10.0.0.5", names)
    assert not host_is_ours("localhost:9464", "10.0.0.5", names)  # not loopback
    assert host_is_ours("localhost:9464", "127.0.0.1", names)
    assert not host_is_ours("10.0.0.6:9464", "10.0.0.5", names)
    assert not host_is_ours("evil.example:9464", "10.0.0.5", names)
