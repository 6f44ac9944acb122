"""Metrics of an in-process server: every enrollment outcome and every call, counted once."""

from __future__ import annotations

import http.client
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from importlib import metadata
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sielum.admin.v1 import admin_pb2, admin_pb2_grpc
from sielum.agent.v1 import agent_pb2
from sielum.enroll.ratelimit import FailureLimit
from sielum.enroll.v1 import enroll_pb2
from sielum.pb import to_timestamp
from sielum.tokens import make_secret

from .conftest import Harness, make_csr, make_key, start_harness, status_of

ENROLL = {"grpc_service": "sielum.enroll.v1.EnrollService", "grpc_method": "Enroll"}


class Exposition:
    """One scrape of /metrics, parsed."""

    def __init__(self, port: int) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            self.text = reply.read().decode()
        self.samples = [
            sample
            for family in text_string_to_metric_families(self.text)
            for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of name's samples whose labels include these."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[Harness]:
    h = start_harness(
        tmp_path,
        metrics_addr="127.0.0.1:0",
        failure_limit=FailureLimit(burst=1000, rate_per_second=1000.0),
    )
    try:
        yield h
    finally:
        h.server.stop(grace=1)


def test_each_enrollment_outcome_and_call_is_counted_once(metered: Harness) -> None:
    h = metered
    admin = h.admin()
    fleet = h.create_token(label="fleet")
    other = h.create_token(label="other")
    single = h.create_token(label="single", max_uses=1)
    soon = h.create_token(label="soon", expires_at=to_timestamp(h.clock.now() + timedelta(hours=1)))
    revoked = h.create_token(label="revoked")
    admin.RevokeEnrollmentToken(
        admin_pb2.RevokeEnrollmentTokenRequest(id=revoked.token.id), timeout=10
    )
    stub = h.enroll_stub()

    def refused(secret: str, csr: str | None = None, hostname: str = "h") -> grpc.StatusCode:
        request = enroll_pb2.EnrollRequest(
            token=secret, csr_pem=csr or make_csr(make_key()), hostname=hostname
        )
        return status_of(lambda: stub.Enroll(request, timeout=10))[0]

    first, key1 = h.enroll(fleet.secret, hostname="metrics-host-1")  # ok
    h.enroll(fleet.secret, key=key1, hostname="metrics-host-1")  # retried
    h.enroll(single.secret, hostname="metrics-host-2")  # ok
    second, key2 = h.enroll(fleet.secret, hostname="metrics-host-3")  # ok
    assert refused("slm_not-a-token") == grpc.StatusCode.INVALID_ARGUMENT  # malformed_token
    assert refused(make_secret(fleet.token.id).reveal()) == grpc.StatusCode.UNAUTHENTICATED
    assert refused(single.secret) == grpc.StatusCode.PERMISSION_DENIED  # exhausted
    assert refused(revoked.secret) == grpc.StatusCode.PERMISSION_DENIED  # revoked
    assert refused(fleet.secret, csr="junk") == grpc.StatusCode.INVALID_ARGUMENT  # bad_csr
    assert refused(fleet.secret, hostname="a\x01b") == grpc.StatusCode.INVALID_ARGUMENT
    assert refused(other.secret, csr=make_csr(key1)) == grpc.StatusCode.ALREADY_EXISTS
    admin.RevokeDevice(admin_pb2.RevokeDeviceRequest(id=first.device_id), timeout=10)
    assert refused(fleet.secret, csr=make_csr(key1)) == grpc.StatusCode.PERMISSION_DENIED
    h.agent(key2, second.certificate_pem).RenewCertificate(
        agent_pb2.RenewCertificateRequest(csr_pem=make_csr(make_key())), timeout=10
    )
    h.clock.advance(timedelta(hours=2))
    assert refused(soon.secret) == grpc.StatusCode.PERMISSION_DENIED  # expired
    # An admin method on the enroll port, without a certificate; a method nobody serves.
    no_certificate = admin_pb2_grpc.AdminServiceStub(h.enroll_channel())
    assert status_of(
        lambda: no_certificate.ListDevices(admin_pb2.ListDevicesRequest(), timeout=10)
    )[0] == (grpc.StatusCode.PERMISSION_DENIED)
    nope = h.enroll_channel().unary_unary("/sielum.enroll.v1.EnrollService/Nope")
    assert status_of(lambda: nope(b"", timeout=10))[0] == grpc.StatusCode.UNIMPLEMENTED

    scrape = Exposition(h.server.metrics_port)
    results = {
        s.labels["result"]: s.value
        for s in scrape.samples
        if s.name == "sielum_enrollments_total" and s.value
    }
    assert results == {
        "ok": 3,
        "retried": 1,
        "malformed_token": 1,
        "invalid_token": 1,
        "exhausted": 1,
        "revoked": 1,
        "bad_csr": 1,
        "bad_request": 1,
        "key_in_use": 1,
        "device_revoked": 1,
        "expired": 1,
    }
    issued = scrape.value
    assert issued("sielum_certificates_issued_total", kind="device") == 3
    assert issued("sielum_certificates_issued_total", kind="renewal") == 1
    assert issued("sielum_certificates_issued_total", kind="admin") == 0

    handled = {
        s.labels["grpc_code"]: s.value
        for s in scrape.samples
        if s.name == "grpc_server_handled_total"
        and s.labels["grpc_method"] == "Enroll"
        and s.labels["grpc_type"] == "unary"
        and s.labels["transport"] == "grpc"
    }
    assert handled == {
        "OK": 4,
        "InvalidArgument": 3,
        "Unauthenticated": 1,
        "PermissionDenied": 4,
        "AlreadyExists": 1,
    }
    assert scrape.value("grpc_server_handling_seconds_count", **ENROLL) == 13
    assert scrape.value("grpc_server_handling_seconds_bucket", **ENROLL, le="+Inf") == 13
    assert (
        scrape.value(
            "grpc_server_handled_total",
            grpc_service="sielum.agent.v1.AgentService",
            grpc_method="RenewCertificate",
            grpc_code="OK",
        )
        == 1
    )
    assert (
        scrape.value(
            "grpc_server_handled_total", grpc_method="ListDevices", grpc_code="PermissionDenied"
        )
        == 1
    )
    assert scrape.value("grpc_server_handled_total", grpc_method="CreateEnrollmentToken") == 5
    # The readiness checks before the test began are health Checks, counted as such.
    assert scrape.value("grpc_server_handled_total", grpc_method="Nope") == 0
    assert scrape.value("grpc_server_handled_total", grpc_service="unknown") == 0

    tokens = {s.labels["state"]: s.value for s in scrape.samples if s.name == "sielum_tokens"}
    assert tokens == {"active": 2, "expired": 1, "exhausted": 1, "revoked": 1}
    devices = {s.labels["state"]: s.value for s in scrape.samples if s.name == "sielum_devices"}
    assert devices == {"active": 2, "expired": 0, "revoked": 1}
    not_after = h.server.ca.certificate.not_valid_after_utc.timestamp()
    assert scrape.value("sielum_ca_certificate_expiry_timestamp_seconds") == not_after


def test_started_build_certificates_silent_devices_and_process(metered: Harness) -> None:
    """The operator's daily figures: calls started, the version, the server certificate's
    expiry, the devices gone silent, and the process's memory and CPU."""
    h = metered
    fleet = h.create_token(label="fleet")
    quiet, _ = h.enroll(fleet.secret, hostname="quiet-host")
    h.enroll(fleet.secret, hostname="other-host")
    gone, _ = h.enroll(fleet.secret, hostname="gone-host")
    h.admin().RevokeDevice(admin_pb2.RevokeDeviceRequest(id=gone.device_id), timeout=10)
    h.clock.advance(timedelta(hours=2))
    scrape = Exposition(h.server.metrics_port)

    # Started and handled agree once every call has ended: one each.
    assert scrape.value("grpc_server_started_total", **ENROLL, grpc_type="unary") == 3
    assert scrape.value("grpc_server_handled_total", **ENROLL) == 3
    revoke = {"grpc_method": "RevokeDevice", "transport": "grpc"}
    assert scrape.value("grpc_server_started_total", **revoke) == 1
    assert scrape.value("grpc_server_started_total", grpc_service="unknown") == 0

    [info] = [s for s in scrape.samples if s.name == "sielum_build_info"]
    assert info.value == 1 and info.labels == {"version": metadata.version("sielum")}
    served = h.server.server_certificate.current.not_after.timestamp()
    assert scrape.value("sielum_server_certificate_expiry_timestamp_seconds") == served
    assert served != scrape.value("sielum_ca_certificate_expiry_timestamp_seconds")

    # Two devices not revoked, never heard from since they enrolled two hours ago.
    silent = {s.labels["for"]: s.value for s in scrape.samples if s.name == "sielum_devices_silent"}
    assert silent == {"1h": 2, "24h": 0, "7d": 0}
    assert quiet.device_id  # the revoked one is not among them

    # This process alone (no workers): its own figures, as /proc gives them.
    rss = scrape.value("process_resident_memory_bytes")
    cpu = scrape.value("process_cpu_seconds_total")
    assert 10_000_000 < rss < 4_000_000_000, rss
    assert 0 < cpu <= time.process_time() + 1, cpu


def test_health_checks_and_library_streams_are_counted(metered: Harness) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(metered.enroll_channel())
    before = Exposition(metered.server.metrics_port).value(
        "grpc_server_handled_total", grpc_method="Check", grpc_code="OK"
    )
    health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert status_of(
        lambda: health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
    )[0] == (grpc.StatusCode.NOT_FOUND)
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()

    def watched(scrape: Exposition) -> list[tuple[str, str, float]]:
        return [
            (s.labels["grpc_type"], s.labels["grpc_code"], s.value)
            for s in scrape.samples
            if s.name == "grpc_server_handled_total" and s.labels["grpc_method"] == "Watch"
        ]

    # A stream is counted when it ends: the cancelled Watch, once grpc has told the server.
    deadline = time.monotonic() + 10
    scrape = Exposition(metered.server.metrics_port)
    while not watched(scrape) and time.monotonic() < deadline:
        time.sleep(0.05)
        scrape = Exposition(metered.server.metrics_port)
    assert watched(scrape) == [("server_stream", "Canceled", 1.0)]
    check = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Check"}
    assert scrape.value("grpc_server_handled_total", **check, grpc_code="OK") == before + 1
    assert scrape.value("grpc_server_handled_total", **check, grpc_code="NotFound") == 1


def test_rate_limited_enrollments_are_counted(tmp_path: Path) -> None:
    h = start_harness(
        tmp_path,
        metrics_addr="127.0.0.1:0",
        failure_limit=FailureLimit(burst=1, rate_per_second=0.001),
    )
    try:
        created = h.create_token()
        guess = make_secret(created.token.id).reveal()
        stub = h.enroll_stub()
        codes = [
            status_of(
                lambda: stub.Enroll(
                    enroll_pb2.EnrollRequest(token=guess, csr_pem=make_csr(make_key())),
                    timeout=10,
                )
            )[0]
            for _ in range(3)
        ]
        assert codes == [grpc.StatusCode.UNAUTHENTICATED] + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
        scrape = Exposition(h.server.metrics_port)
        assert scrape.value("sielum_enrollments_total", result="invalid_token") == 1
        assert scrape.value("sielum_enrollments_total", result="rate_limited") == 2
        assert (
            scrape.value("grpc_server_handled_total", **ENROLL, grpc_code="ResourceExhausted") == 2
        )
    finally:
        h.server.stop(grace=1)


def test_metrics_are_off_unless_asked_for(harness: Harness) -> None:
    assert harness.server.metrics is None
    assert harness.server.metrics_port == 0


def _get_metrics(port: int, host: str | None, address: str = "127.0.0.1") -> int:
    """The status of GET /metrics sent to address with this Host header (None: without one)."""
    connection = http.client.HTTPConnection(address, port, timeout=10)
    try:
        connection.putrequest("GET", "/metrics", skip_host=True)
        if host is not None:
            connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("bind", "host", "status"),
    [
        ("127.0.0.1", "127.0.0.1:{port}", 200),  # what Prometheus sends for its target
        ("127.0.0.1", "127.0.0.1", 200),
        ("127.0.0.1", "localhost:{port}", 200),  # loopback's own name
        ("127.0.0.1", "LocalHost.", 200),
        ("127.0.0.1", "metrics.example.test:{port}", 200),  # --metrics-host
        ("127.0.0.1", "Metrics.Example.Test", 200),
        ("127.0.0.1", "evil.example:{port}", 421),  # a name rebound to 127.0.0.1
        ("127.0.0.1", "evil.example", 421),
        ("127.0.0.1", "localhost.evil.example:{port}", 421),
        ("127.0.0.1", "127.0.0.2:{port}", 421),  # not this listener's address
        ("127.0.0.1", "", 421),
        ("127.0.0.1", None, 400),  # HTTP/1.1 without Host: aiohttp's own refusal
        ("0.0.0.0", "127.0.0.1:{port}", 200),  # a wildcard: the address the call came in on
        ("0.0.0.0", "evil.example:{port}", 421),
        ("::1", "[::1]:{port}", 200),
        ("::1", "localhost:{port}", 200),
        ("::1", "127.0.0.1:{port}", 421),
    ],
)
def test_fail_metrics_answers_any_host_dns_rebinding(
    tmp_path: Path, bind: str, host: str | None, status: int
) -> None:
    """A web page can read /metrics through DNS rebinding only if it answers a Host that names
    the attacker's domain: it answers only its own address, localhost on loopback, and the
    names given with --metrics-host; anything else is 421 Misdirected Request."""
    shown = f"[{bind}]" if ":" in bind else bind
    h = start_harness(tmp_path, metrics_addr=f"{shown}:0", metrics_hosts=("metrics.example.test",))
    try:
        port = h.server.metrics_port
        address = "::1" if bind == "::1" else "127.0.0.1"
        wanted = None if host is None else host.format(port=port)
        assert _get_metrics(port, wanted, address) == status
    finally:
        h.server.stop(grace=1)
