"""What the revocation port decides from plain values: reasons, URLs, a certificate's standing,
and when the CRL is rebuilt (on a real SQLite store, with a fault wrapped around it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from sielum.ca import profile
from sielum.ca.authority import CertificateAuthority
from sielum.ca.revocation import CertificateStatus, check_given_reason, check_public_url
from sielum.errors import InvalidArgumentError, UnavailableError
from sielum.model import AuditEvent, CertificateRecord, Device, Token
from sielum.revocation.publisher import CrlPublisher, standing_of
from sielum.store import Store

T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://crl.example/crl", "must start with http:// or https://"),
        ("crl.example/crl", "must start with http:// or https://"),
        ("http:///crl", "has no host"),
        ("http://crl.example:99999/crl", "has a port that is not a number"),
        ("https://user:pw@crl.example/crl", "must not carry a user name or password"),
        ("http://crl.example/crl#x", "must not have a #fragment"),
        ("http://crl.example/a b", "must be printable ASCII without spaces"),
    ],
)
def test_fail_a_bad_public_url_is_refused_saying_why(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=r"^--crl-url ") as caught:
        check_public_url("--crl-url", url)
    assert problem in str(caught.value)


def test_ok_public_urls() -> None:
    for url in ("http://127.0.0.1:8446/crl", "https://pki.example.org/sielum/ocsp"):
        assert check_public_url("--ocsp-url", url) == url


def test_the_ca_refuses_a_bad_url_as_invalid_argument() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = profile.self_signed_ca_certificate(key=key, now=T0)
    with pytest.raises(InvalidArgumentError, match=r"^--ocsp-url 'ldap://x' must start with"):
        CertificateAuthority(certificate, key, ocsp_url="ldap://x")


def test_given_reasons_exclude_superseded_and_hold() -> None:
    assert check_given_reason("") == "unspecified"
    assert check_given_reason("keyCompromise") == "keyCompromise"
    for name in ("superseded", "certificateHold", "removeFromCRL", "stolen"):
        with pytest.raises(ValueError, match=r"cannot be given; one of: unspecified, "):
            check_given_reason(name)


def test_standing_superseded_first_then_revoked_else_good() -> None:
    assert standing_of(None).status is CertificateStatus.UNKNOWN
    good = CertificateRecord("ab", "dev", T0)
    assert standing_of(good).status is CertificateStatus.GOOD
    both = CertificateRecord("ab", "dev", T0, superseded_at=T0, revoked_at=T0 + timedelta(1))
    standing = standing_of(both)
    assert standing.status is CertificateStatus.REVOKED and standing.revocation is not None
    assert standing.revocation.reason is x509.ReasonFlags.superseded
    assert standing.revocation.revoked_at == T0
    assert standing.revocation.serial == 0xAB
    revoked = CertificateRecord("ab", "dev", T0, revoked_at=T0, reason="unspecified")
    standing = standing_of(revoked)
    assert standing.revocation is not None and standing.revocation.reason is None


class _Clock:
    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def now(self) -> datetime:
        return self.at


class _Faulty(Store):
    """The real store, whose revocation_stamp fails while `down` is set."""

    down = False

    def revocation_stamp(self) -> int:
        if self.down:
            raise UnavailableError("database unavailable, try again")
        return super().revocation_stamp()


def test_the_crl_is_rebuilt_on_a_change_or_when_due_and_kept_while_the_database_is_down(
    tmp_path: Path,
) -> None:
    store = _Faulty.open(f"sqlite:///{tmp_path / 'sielum.db'}")
    clock = _Clock()
    key = ec.generate_private_key(ec.SECP256R1())
    ca = CertificateAuthority(profile.self_signed_ca_certificate(key=key, now=clock.at), key)
    ages: list[float] = []
    publisher = CrlPublisher(store, ca, clock, refresh=timedelta(minutes=15), on_age=ages.append)
    try:
        assert publisher.current is None
        assert publisher.update() is True
        first = publisher.current
        assert first is not None and first.entries == 0
        assert publisher.update() is False  # nothing changed
        store.create_token(
            Token("tok", "l", b"h", None, 0, None, clock.at, "a"),
            AuditEvent(at=clock.at, actor="a", action="token.create", resource="token/tok"),
        )
        store.enroll_device(
            Device(
                id="dev", hostname="h", token_id="tok", public_key_sha256="k", serial="ab",
                certificate_pem="PEM", not_after=clock.at + timedelta(days=90),
                enrolled_at=clock.at, peer="p",
            ),
            clock.at,
            AuditEvent(at=clock.at, actor="a", action="device.enroll", resource="device/dev"),
        )  # fmt: skip
        assert publisher.update() is False  # a new certificate is no revocation
        store.revoke_device(
            "dev", clock.at, AuditEvent(at=clock.at, actor="a", action="x", resource="device/dev")
        )
        assert publisher.update() is True
        assert publisher.current is not None and publisher.current.entries == 1
        clock.at += timedelta(minutes=15)
        assert publisher.update() is True  # due
        built = publisher.current
        store.down = True
        clock.at += timedelta(minutes=20)
        assert publisher.update() is False
        assert publisher.current is built  # the last CRL stays
        assert ages[-1] == pytest.approx(20 * 60)
    finally:
        store.close()


def _serials(crl: object) -> set[int]:
    der = getattr(crl, "der")
    return {entry.serial_number for entry in x509.load_der_x509_crl(der)}


def test_a_rebuild_reads_only_the_changes_and_lists_what_a_full_build_lists(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'sielum.db'}")
    clock = _Clock()
    key = ec.generate_private_key(ec.SECP256R1())
    ca = CertificateAuthority(profile.self_signed_ca_certificate(key=key, now=clock.at), key)
    store.create_token(
        Token("tok", "l", b"h", None, 0, None, clock.at, "a"),
        AuditEvent(at=clock.at, actor="a", action="token.create", resource="token/tok"),
    )
    for i in range(1, 5):
        store.enroll_device(
            Device(
                id=f"dev{i}", hostname="h", token_id="tok", public_key_sha256=f"k{i}",
                serial=f"{i:x}0", certificate_pem="PEM", not_after=clock.at + timedelta(days=90),
                enrolled_at=clock.at, peer="p",
            ),
            clock.at,
            AuditEvent(at=clock.at, actor="a", action="device.enroll", resource=f"device/dev{i}"),
        )  # fmt: skip
    publisher = CrlPublisher(store, ca, clock)
    try:
        assert publisher.update() is True
        for i in (1, 3):
            store.revoke_device(
                f"dev{i}", clock.at, AuditEvent(at=clock.at, actor="a", action="x", resource="d")
            )
        caplog.clear()
        with caplog.at_level("INFO", logger="sielum.revocation"):
            assert publisher.update() is True
        [built] = [r.sielum_fields for r in caplog.records if r.getMessage() == "crl"]  # type: ignore[attr-defined]
        assert (built["read"], built["rows"], built["entries"]) == ("changes", 2, 2)
        incremental = publisher.current
        fresh = CrlPublisher(store, ca, clock)
        assert fresh.update() is True
        assert _serials(incremental) == _serials(fresh.current) == {0x10, 0x30}
        # Past the certificates' not_after, the changes read nothing and the list empties.
        clock.at += timedelta(days=91)
        store.revoke_device(
            "dev2", clock.at, AuditEvent(at=clock.at, actor="a", action="x", resource="d")
        )
        assert publisher.update() is True
        assert publisher.current is not None and publisher.current.entries == 0
    finally:
        store.close()


def test_an_exited_workers_live_gauges_are_forgotten_and_its_counters_kept(
    tmp_path: Path,
) -> None:
    """sielum_crl_age_seconds is a livemax gauge: a dead worker's last age must not stay in
    the maximum, while its counters keep counting in the sums (server/multiproc.py)."""
    from sielum.server.multiproc import forget_process

    names = [
        "gauge_livemax_41.db",
        "gauge_livesum_41.db",
        "counter_41.db",
        "histogram_41.db",
        "gauge_livemax_42.db",
        "gauge_livemax_410.db",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    forget_process(tmp_path, 41)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["counter_41.db", "histogram_41.db", "gauge_livemax_42.db", "gauge_livemax_410.db"]
    )


def test_entries_encoded_here_make_the_crl_cryptography_would_byte_for_byte() -> None:
    """The CrlPublisher's CRL (crl_entry_der, sign_crl_entries) against build_crl's: the same
    signed content, for every reason, serials with and without a leading zero octet, times
    before and after 2050, and no entries at all."""
    from sielum.ca.revocation import Revocation, build_crl, crl_entry_der, sign_crl_entries

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC).replace(microsecond=654321)
    ca = profile.self_signed_ca_certificate(key=key, now=now)
    reasons: list[x509.ReasonFlags | None] = [None, *x509.ReasonFlags]
    revocations = [
        Revocation(profile.random_serial(), now - timedelta(days=i), now + timedelta(30), r)
        for i, r in enumerate(reasons)
    ]
    revocations += [
        Revocation(0x7F, now, now + timedelta(days=1)),
        Revocation(0x80, now, now + timedelta(days=1)),
        Revocation(2**159 - 1, now, now + timedelta(days=1)),
        Revocation(1, datetime(2051, 6, 1, 12, tzinfo=UTC), now + timedelta(days=1)),
    ]
    for listed in (revocations, []):
        reference = x509.load_der_x509_crl(build_crl(ca, key, listed, number=9, now=now))
        ours = x509.load_der_x509_crl(
            sign_crl_entries(
                ca,
                key,
                [crl_entry_der(r.serial, r.revoked_at, r.reason) for r in listed],
                number=9,
                now=now,
            )
        )
        assert ours.tbs_certlist_bytes == reference.tbs_certlist_bytes
        assert ours.is_signature_valid(key.public_key())
        assert len(ours) == len(listed)
