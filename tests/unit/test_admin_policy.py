"""Which admin certificates are honoured: the newest, and the one before it until it is used."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sielum.errors import PermissionDeniedError
from sielum.identities import policy
from sielum.model import Admin

T0 = datetime(2026, 3, 1, tzinfo=UTC)
UNTIL = T0 + timedelta(days=365)


def _admin(**fields: object) -> Admin:
    return Admin(name="alice", created_at=T0, created_by="root", **fields)  # type: ignore[arg-type]


def _refused(admin: Admin, serial: str, now: datetime = T0) -> str:
    with pytest.raises(PermissionDeniedError) as refused:
        policy.check_may_call("alice", admin, serial, now)
    return refused.value.message


def test_newest_and_previous_until_the_newest_is_used() -> None:
    pending = _admin(serial="b", previous_serial="a", previous_until=UNTIL)
    for serial in ("a", "b", ""):  # "" is a dashboard session: no certificate to judge
        policy.check_may_call("alice", pending, serial, T0 + timedelta(days=30))
    assert policy.retires_previous(pending, "b", T0)
    assert not policy.retires_previous(pending, "a", T0)
    assert not policy.retires_previous(pending, "", T0)
    assert _refused(pending, "a", UNTIL) == policy.SUPERSEDED
    assert _refused(pending, "c") == policy.SUPERSEDED
    retired = _admin(serial="b", previous_serial="a", previous_until=None)
    assert not policy.retires_previous(retired, "b", T0)
    assert _refused(retired, "a") == policy.SUPERSEDED
    policy.check_may_call("alice", retired, "b", T0)
    policy.check_may_call("alice", retired, "", T0)


def test_certificates_never_recorded() -> None:
    # No certificate recorded: each is honoured, as before admins' certificates were tracked.
    policy.check_may_call("alice", _admin(), "anything", T0)
    # A new one recorded since: any earlier one until it is used.
    pending = _admin(serial="b", previous_serial=None, previous_until=UNTIL)
    policy.check_may_call("alice", pending, "anything", T0)
    assert _refused(_admin(serial="b"), "anything") == policy.SUPERSEDED


def test_revoked_and_unknown_admins_are_refused_first() -> None:
    revoked = _admin(serial="b", previous_serial="a", previous_until=UNTIL, revoked_at=T0)
    for serial in ("a", "b", ""):
        assert _refused(revoked, serial) == "admin alice has been revoked"
    with pytest.raises(PermissionDeniedError, match=r"^admin alice is not registered$"):
        policy.check_may_call("alice", None, "b", T0)


def test_only_a_certificate_issued_well_after_the_newest_is_a_lost_one() -> None:
    recorded = _admin(serial="b", certified_at=T0)
    margin = policy.LOST_RENEWAL_MARGIN
    assert policy.is_lost_certificate(recorded, T0 + margin + timedelta(seconds=1))
    for issued in (T0 + margin, T0, T0 - timedelta(days=1)):
        assert not policy.is_lost_certificate(recorded, issued)
    # Nothing recorded to compare with: nothing is adopted.
    assert not policy.is_lost_certificate(_admin(serial="b"), T0 + timedelta(days=30))


def test_a_second_ca_on_the_same_database_keeps_its_own_chain() -> None:
    # A CA rollover: the new CA's server shares the database, whose admin row records the
    # old CA's certificates. A certificate of the new CA is in no chain recorded there
    # and is judged by the admin's name alone; the old CA's own chain still holds.
    retired = _admin(serial="b", previous_serial="a", previous_until=None, issuer="0ld")
    policy.check_may_call("alice", retired, "n1", T0, "beef")
    assert policy.is_honoured(retired, "n1", T0, "beef")
    assert not policy.is_honoured(retired, "a", T0, "0ld")
    with pytest.raises(PermissionDeniedError) as refused:
        policy.check_may_call("alice", retired, "a", T0, "0ld")
    assert refused.value.message == policy.SUPERSEDED
    revoked = _admin(serial="b", issuer="0ld", revoked_at=T0)
    with pytest.raises(PermissionDeniedError) as refused:
        policy.check_may_call("alice", revoked, "n1", T0, "beef")
    assert refused.value.message == "admin alice has been revoked"
