"""Reading device certificates, the index's rules, and backoff: pure functions, no network."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sielum.ca import profile
from sielum.directory.v1 import directory_pb2
from sielum.verify import Backoff, NotADeviceCertificateError
from sielum.verify.certificates import load_credentials, read_device_certificate
from sielum.verify.index import Index, Stream, record_of
from tests.verify.conftest import NOW, Kind, TestCA, key_pem


@pytest.fixture(scope="module")
def module_ca() -> TestCA:
    return TestCA()


def test_a_device_certificate_reads_the_same_in_every_form(module_ca: TestCA) -> None:
    issued = module_ca.device("dev-1", ttl=timedelta(days=90))
    forms = (
        issued.certificate,
        issued.pem,
        issued.pem.decode(),
        issued.certificate.public_bytes(serialization.Encoding.DER),
    )
    read = {read_device_certificate(form, [module_ca.certificate]) for form in forms}
    assert len(read) == 1
    (facts,) = read
    assert facts.device_id == "dev-1"
    assert facts.serial == issued.certificate.serial_number
    assert facts.not_after == issued.certificate.not_valid_after_utc.timestamp()
    assert facts.not_before < NOW.timestamp() < facts.not_after


def refusal(certificate: object, anchors: list[x509.Certificate]) -> str:
    with pytest.raises(NotADeviceCertificateError) as refused:
        read_device_certificate(certificate, anchors)  # type: ignore[arg-type]
    return refused.value.message


def test_fail_certificates_that_are_no_device_certificate_of_the_pinned_ca(
    module_ca: TestCA,
) -> None:
    anchors = [module_ca.certificate]
    assert refusal(b"garbage", anchors) == "not a readable X.509 certificate"
    assert refusal("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", anchors) == (
        "not a readable X.509 certificate"
    )
    other = TestCA().device("dev-1")
    assert refusal(other.pem, anchors) == "certificate is not issued by the trusted Sielum CA"
    admin = profile.admin_certificate(
        public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
        name="root",
        ca_certificate=module_ca.certificate,
        ca_key=module_ca.key,
        serial=x509.random_serial_number(),
        now=NOW,
    )
    assert refusal(admin, anchors) == "certificate names no Sielum device"
    service = module_ca.service("billing").certificate
    assert refusal(service, anchors) == "certificate names no Sielum device"
    assert refusal(module_ca.certificate, anchors) == "certificate names no Sielum device"


def signed(
    ca: TestCA, uris: list[str], usage: x509.ObjectIdentifier | None = None
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.certificate.subject)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=True,
        )
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def test_tag_uris_may_stand_beside_the_device_uri_but_no_second_role(module_ca: TestCA) -> None:
    anchors = [module_ca.certificate]
    tagged = signed(module_ca, ["sielum://device/dev-2", "sielum://tag/prod", "sielum://tag/eu"])
    assert read_device_certificate(tagged, anchors).device_id == "dev-2"
    two_roles = signed(module_ca, ["sielum://device/dev-2", "sielum://admin/root"])
    assert refusal(two_roles, anchors) == "certificate names no Sielum device"
    bad_name = signed(module_ca, ["sielum://device/../etc"])
    assert refusal(bad_name, anchors) == "certificate names no Sielum device"
    server_only = signed(
        module_ca, ["sielum://device/dev-2"], x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
    )
    assert refusal(server_only, anchors) == "certificate is not for client authentication"


def test_credentials_come_from_a_service_or_an_admin_bundle(
    tmp_path: Path, module_ca: TestCA
) -> None:
    service_dir = module_ca.service_dir(tmp_path / "service")
    assert (
        load_credentials(service_dir).certificate_pem == (service_dir / "service.pem").read_bytes()
    )
    admin_dir = tmp_path / "admin"
    admin_dir.mkdir()
    issued = module_ca.service("x")
    (admin_dir / "ca.pem").write_bytes(module_ca.pem)
    (admin_dir / "admin.pem").write_bytes(issued.pem)
    (admin_dir / "admin.key").write_bytes(key_pem(issued.key))
    assert load_credentials(admin_dir).key_pem == key_pem(issued.key)
    with pytest.raises(FileNotFoundError, match=r"holds neither service\.pem and service\.key"):
        load_credentials(tmp_path)


def event(
    sequence: int, kind: int, device_id: str = "", serial: str = "", **fields: object
) -> directory_pb2.WatchDevicesResponse:
    return directory_pb2.WatchDevicesResponse(
        sequence=sequence,
        kind=kind,
        device_id=device_id,
        serial=serial,
        **fields,  # type: ignore[arg-type]
    )


def test_a_snapshot_is_swapped_in_whole_at_synced() -> None:
    index = Index()
    index.devices = {"old": record_of(event(1, Kind.DEVICE_EVENT_KIND_CURRENT, "old", "1"))}  # type: ignore[dict-item]
    assert index.request().HasField("after_sequence") is False
    stream = Stream(index)
    assert not stream.receive(event(0, Kind.DEVICE_EVENT_KIND_CURRENT, "a", "0A"))
    assert set(index.devices) == {"old"}, "a partial snapshot is never in use"
    assert stream.receive(event(7, Kind.DEVICE_EVENT_KIND_SYNCED))
    assert set(index.devices) == {"a"} and index.devices["a"].serial == 10
    assert index.request().after_sequence == 7


def test_a_replay_is_not_fresh_until_synced_and_duplicates_are_ignored() -> None:
    index = Index()
    Stream(index).receive(event(5, Kind.DEVICE_EVENT_KIND_SYNCED))
    stream = Stream(index)
    assert not stream.receive(event(6, Kind.DEVICE_EVENT_KIND_ENROLLED, "a", "1"))
    assert not stream.receive(event(9, Kind.DEVICE_EVENT_KIND_REVOKED, "a"))
    assert not stream.receive(event(6, Kind.DEVICE_EVENT_KIND_ENROLLED, "a", "1"))
    assert "a" not in index.devices
    assert (index.applied, index.ignored, index.sequence) == (2, 1, 9)
    assert stream.receive(event(9, Kind.DEVICE_EVENT_KIND_SYNCED))
    assert stream.receive(event(12, Kind.DEVICE_EVENT_KIND_ENROLLED, "b", "2")), "live: fresh"
    index.forget_position()
    assert not index.request().HasField("after_sequence")


def test_record_of_reads_the_previous_serial_and_its_deadline() -> None:
    until = datetime(2030, 1, 1, tzinfo=UTC)
    stamp = directory_pb2.WatchDevicesResponse().at
    stamp.FromDatetime(until)
    record = record_of(
        event(
            3,
            Kind.DEVICE_EVENT_KIND_RENEWED,
            "a",
            "ff",
            previous_serial="0e",
            previous_until=stamp,
            tags=["x"],
        )
    )
    assert record is not None
    assert (record.serial, record.previous_serial, record.previous_until) == (
        255,
        14,
        until.timestamp(),
    )
    assert record.tags == ("x",)
    assert record.honours(255, until.timestamp() + 1)
    assert record.honours(14, until.timestamp() - 1) and not record.honours(14, until.timestamp())
    assert not record.honours(13, 0)
    assert record_of(event(3, Kind.DEVICE_EVENT_KIND_RENEWED, "a", "not-hex")) is None


def test_backoff_grows_to_its_cap_with_full_jitter() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0)
    rng = random.Random(7)
    delays = [backoff.delay(attempt, rng) for attempt in range(200)]
    assert all(0 <= d <= 30.0 for d in delays)
    assert all(d <= 0.5 for d in delays[:1]) and max(delays[100:]) > 15


def test_an_empty_log_resumes_after_sequence_zero_not_from_a_snapshot() -> None:
    index = Index()
    assert Stream(index).receive(event(0, Kind.DEVICE_EVENT_KIND_SYNCED))
    request = index.request()
    assert request.HasField("after_sequence") and request.after_sequence == 0
