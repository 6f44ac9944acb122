"""Device policy: honoured certificates, renewal pace, and the size of a device in a listing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sielum.admin.servicer import device_to_proto
from sielum.admin.v1 import admin_pb2
from sielum.devices import policy
from sielum.errors import PermissionDeniedError, ResourceExhaustedError
from sielum.model import Device, DeviceStanding, DeviceState

T0 = datetime(2026, 3, 1, tzinfo=UTC)
TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=300)
TIMES = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)
).map(lambda t: t.replace(tzinfo=UTC))


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(TEXT, min_size=5, max_size=5),
    facts=st.dictionaries(TEXT, TEXT, max_size=20),
    times=st.lists(TIMES, min_size=4, max_size=4),
    state=st.sampled_from(DeviceState),
)
def test_listing_bytes_is_an_upper_bound(
    texts: list[str], facts: dict[str, str], times: list[datetime], state: DeviceState
) -> None:
    device = Device(
        id=texts[0],
        hostname=texts[1],
        token_id=texts[2],
        public_key_sha256="k",
        serial=texts[3],
        certificate_pem="",
        not_after=times[0],
        enrolled_at=times[1],
        last_seen_at=times[2],
        revoked_at=times[3],
        peer=texts[4],
        facts=facts,
    )
    actual = admin_pb2.ListDevicesResponse(devices=[device_to_proto(device, state)]).ByteSize()
    bound = policy.listing_bytes(device)
    assert actual <= bound <= actual + 120


def _standing(**fields: object) -> DeviceStanding:
    return DeviceStanding(id="dev", serial="b", **fields)  # type: ignore[arg-type]


def test_only_the_current_or_the_previous_certificate_until_retired_is_honoured() -> None:
    """The previous certificate is honoured however long the current one stays unused, up to
    its own bound (previous_until); retired (None) it is refused, and revocation wins."""
    standing = _standing(previous_serial="a", previous_until=T0 + timedelta(days=90))
    policy.check_may_call(standing, "b", T0 + timedelta(days=300))
    policy.check_may_call(standing, "a", T0 + timedelta(days=3))
    policy.check_may_call(standing, "a", T0 + timedelta(days=90) - timedelta(microseconds=1))
    assert policy.retires_previous(standing, "b", T0 + timedelta(days=3))
    assert not policy.retires_previous(standing, "a", T0 + timedelta(days=3))
    assert not policy.retires_previous(standing, "b", T0 + timedelta(days=90))
    retired = _standing(previous_serial="a", previous_until=None)
    assert not policy.retires_previous(retired, "b", T0)
    assert not policy.retires_previous(_standing(), "b", T0)
    for case, serial, at in (
        (standing, "a", T0 + timedelta(days=90)),
        (retired, "a", T0),
        (standing, "c", T0),
        (standing, "", T0),
    ):
        with pytest.raises(PermissionDeniedError) as refused:
            policy.check_may_call(case, serial, at)
        assert refused.value.message == policy.SUPERSEDED
    revoked = _standing(previous_serial="a", previous_until=T0 + timedelta(days=90), revoked_at=T0)
    for serial in ("a", "b"):
        with pytest.raises(PermissionDeniedError) as refused:
            policy.check_may_call(revoked, serial, T0)
        assert refused.value.message == "device has been revoked"


def test_renewal_pace_is_a_burst_then_one_per_tenth_of_the_lifetime() -> None:
    pace = policy.renewal_pace(timedelta(seconds=60))
    assert (pace.burst, pace.interval) == (5, timedelta(seconds=6))
    tat = None
    for _ in range(5):
        policy.check_renewal_pace(_standing(renewal_tat=tat), pace, T0)
        tat = policy.next_renewal_tat(tat, pace, T0)
    with pytest.raises(ResourceExhaustedError) as refused:
        policy.check_renewal_pace(_standing(renewal_tat=tat), pace, T0)
    assert refused.value.message == (
        "too many renewals for this device; the next one is allowed at 2026-03-01T00:00:06Z"
    )
    policy.check_renewal_pace(_standing(renewal_tat=tat), pace, T0 + timedelta(seconds=6))
    # An agent renewing at two thirds of a 60 s lifetime is never paced.
    tat, now = None, T0
    for _ in range(100):
        policy.check_renewal_pace(_standing(renewal_tat=tat), pace, now)
        tat = policy.next_renewal_tat(tat, pace, now)
        now += timedelta(seconds=40)


def test_only_a_certificate_issued_well_after_the_current_one_is_a_lost_renewal() -> None:
    margin = policy.LOST_RENEWAL_MARGIN
    assert policy.is_lost_renewal(T0 + margin + timedelta(seconds=1), T0)
    assert policy.is_lost_renewal(T0 + timedelta(days=30), T0)
    for issued in (T0 + margin, T0, T0 - timedelta(days=1)):
        assert not policy.is_lost_renewal(issued, T0)
