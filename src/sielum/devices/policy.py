"""Device policy: host name, state, which certificate a device may call with, when to renew."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from types import MappingProxyType

from sielum.errors import InvalidArgumentError, PermissionDeniedError, ResourceExhaustedError
from sielum.model import Device, DeviceStanding, DeviceState, RenewalPace

# A certificate of a device issued this much later than the one the database names as
# current can only come from a renewal the database no longer holds (restored from a
# backup, or a failover that lost commits). Otherwise the current certificate is always
# the newest one handed out; the margin covers clocks of replicas that disagree, under
# which a certificate replaced while unused may look a little newer than its successor.
LOST_RENEWAL_MARGIN = timedelta(minutes=5)
# How often agents are asked to heartbeat (HeartbeatResponse.heartbeat_interval), and
# the bounds an operator may set it within (serve --heartbeat-interval): often enough to
# notice a silent device, rarely enough that a large fleet costs little.
DEFAULT_HEARTBEAT_INTERVAL = timedelta(minutes=5)
MIN_HEARTBEAT_INTERVAL = timedelta(seconds=10)
MAX_HEARTBEAT_INTERVAL = timedelta(days=1)
# The agent draws each heartbeat this fraction either side of the interval
# (endpoint/schedule.py INTERVAL_JITTER, tests/unit/test_device_policy.py
# ::test_the_idle_limit_outlasts_the_agents_longest_gap).
AGENT_JITTER = 0.10
# An open connection with no call on it is closed (GOAWAY) after connection_idle_limit:
# never sooner than this, and never later than the cap, beyond which an agent opens a
# new connection per heartbeat (a few a day) rather than hold one for hours.
MIN_CONNECTION_IDLE = timedelta(minutes=5)
MAX_CONNECTION_IDLE = timedelta(hours=2)
CONNECTION_IDLE_SLACK = timedelta(minutes=1)
# Renewals a device may make at once before it is paced (retries of lost answers).
RENEWAL_BURST = 5
# One renewal more per this share of the certificate lifetime: an agent renewing
# at two thirds of the lifetime is never paced, a loop is.
RENEWAL_REFILL_FRACTION = 10

SUPERSEDED = "this certificate has been superseded by a renewal; use the device's current one"
REVOKED = "device has been revoked"

MAX_HOSTNAME = 253
MAX_FACTS = 64
MAX_FACT_KEY = 64
MAX_FACT_VALUE = 1024
# All names and values of one device together, in UTF-8 bytes: a device listing then
# stays small, and a page of them in one reply (admin/service.py cuts pages by size).
MAX_FACTS_BYTES = 16 * 1024
_FACT_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


def check_hostname(hostname: str, what: str = "hostname") -> str:
    """The host name as stored and searched: stripped, at most 253 printable characters.

    what names the field in the error (a prefix of host names is checked the same way).

    Control characters are refused: an admin reads host names in a terminal, where
    they could rewrite what is shown (and PostgreSQL refuses a NUL byte).
    """
    name = hostname.strip()
    if len(name) > MAX_HOSTNAME:
        raise InvalidArgumentError(f"{what} is longer than {MAX_HOSTNAME} characters")
    if any(not c.isprintable() for c in name):
        raise InvalidArgumentError(f"{what} contains control characters")
    return name


def check_facts(facts: Mapping[str, str]) -> Mapping[str, str]:
    """Facts as stored and searched: at most MAX_FACTS pairs, named and sized as below."""
    if len(facts) > MAX_FACTS:
        raise InvalidArgumentError(f"too many facts: {len(facts)} (at most {MAX_FACTS})")
    for key, value in facts.items():
        if len(key) > MAX_FACT_KEY or not _FACT_KEY.match(key):
            raise InvalidArgumentError(
                f"fact names are 1-{MAX_FACT_KEY} characters of letters, digits, '._/-'"
            )
        if len(value) > MAX_FACT_VALUE:
            raise InvalidArgumentError(f"fact {key!r} is longer than {MAX_FACT_VALUE} characters")
        # As for the hostname: an admin reads facts in a terminal, where control
        # characters could rewrite what is shown.
        if any(not c.isprintable() for c in value):
            raise InvalidArgumentError(f"fact {key!r} contains control characters")
    size = sum(len(key.encode()) + len(value.encode()) for key, value in facts.items())
    if size > MAX_FACTS_BYTES:
        raise InvalidArgumentError(
            f"facts are too large: {size} bytes of names and values (at most {MAX_FACTS_BYTES})"
        )
    return MappingProxyType(dict(sorted(facts.items())))


def device_state(device: Device, now: datetime) -> DeviceState:
    """Revoked > Expired (its certificate's not_after has passed) > Active."""
    if device.revoked_at is not None:
        return DeviceState.REVOKED
    if device.not_after <= now:
        return DeviceState.EXPIRED
    return DeviceState.ACTIVE


def listing_bytes(device: Device) -> int:
    """An upper bound of the device's size in a ListDevicesResponse, in bytes.

    Each field counted as protobuf encodes it (tag, length, UTF-8 payload; empty
    ones too), timestamps and the state at their largest, so a page whose devices
    add up to less than the reply limit is always sent
    (tests/unit/test_device_policy.py::test_listing_bytes_is_an_upper_bound).
    """
    body = sum(
        _field(len(text.encode()))
        for text in (device.id, device.hostname, device.token_id, device.serial, device.peer)
    )
    body += 4 * _TIMESTAMP + _ENUM
    for key, value in device.facts.items():
        body += _field(_field(len(key.encode())) + _field(len(value.encode())))
    return _field(body)


def _varint(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def _field(n: int) -> int:
    """A length-delimited field of n bytes with a one-byte tag (field numbers below 16)."""
    return 1 + _varint(n) + n


_TIMESTAMP = _field((1 + 10) + (1 + 5))  # seconds and nanos as the longest varints
_ENUM = 1 + 10


def check_heartbeat_interval(interval: timedelta) -> timedelta:
    """An interval an operator may ask agents to heartbeat at: 10 seconds to 1 day."""
    if not MIN_HEARTBEAT_INTERVAL <= interval <= MAX_HEARTBEAT_INTERVAL:
        raise InvalidArgumentError("heartbeat interval must be between 10s and 1d")
    return interval


def connection_idle_limit(heartbeat_interval: timedelta) -> timedelta:
    """How long the server keeps a connection that carries no call.

    Longer than the agent's longest gap between heartbeats (the interval plus its
    jitter, plus a minute for a slow call or a clock that drifts), so that the one
    connection `sielum-agent run` keeps is still open at its next heartbeat, which then
    costs no TCP or TLS handshake (bench/RESULTS.md, "Fleet scale").
    """
    longest_gap = heartbeat_interval * (1 + AGENT_JITTER) + CONNECTION_IDLE_SLACK
    return min(max(longest_gap, MIN_CONNECTION_IDLE), MAX_CONNECTION_IDLE)


def renew_after(not_before: datetime, not_after: datetime) -> datetime:
    """Two thirds into the certificate's lifetime: time enough to retry a failed renewal."""
    return not_before + (not_after - not_before) * 2 / 3


def renewal_pace(device_ttl: timedelta) -> RenewalPace:
    """RENEWAL_BURST at once, then one per tenth of the device certificate lifetime."""
    return RenewalPace(burst=RENEWAL_BURST, interval=device_ttl / RENEWAL_REFILL_FRACTION)


def is_honoured(standing: DeviceStanding, serial: str, now: datetime) -> bool:
    """The current certificate, or the one the last renewal replaced until it is retired.

    The previous certificate stays honoured while the current one has never been
    used, however long that takes: an agent whose renewal answer was lost still
    holds it, and asks again with it. previous_until is its own not_after (or, for a
    renewal made before this rule, the end of the old 15-minute overlap); the first
    call with the current certificate sets it to None
    (tests/rpc/test_superseded.py::test_ok_lost_renewal_answer_and_days_offline_keep_the_device).
    """
    if serial == standing.serial:
        return True
    return (
        serial == standing.previous_serial
        and standing.previous_until is not None
        and now < standing.previous_until
    )


def retires_previous(standing: DeviceStanding, serial: str, now: datetime) -> bool:
    """Whether a call with serial is the first use of the current certificate, which retires
    the previous one: only then does the device gate write, once per renewal."""
    return (
        serial == standing.serial
        and standing.previous_serial is not None
        and standing.previous_until is not None
        and now < standing.previous_until
    )


def is_lost_renewal(issued: datetime, current_issued: datetime) -> bool:
    """Whether a certificate of the device that the database does not honour is a renewal the
    database lost (a restored backup): issued well after the current one, by not_before.

    The device gate then makes it current rather than lock the device out
    (tests/rpc/test_superseded.py::test_ok_restored_backup_takes_the_newer_certificate).
    """
    return issued > current_issued + LOST_RENEWAL_MARGIN


def check_may_call(standing: DeviceStanding, serial: str, now: datetime) -> None:
    """A revoked device, or a certificate a renewal superseded, is refused on its next call.

    Revocation wins over everything; a previous certificate is refused once the
    current one has been used
    (tests/rpc/test_superseded.py::test_fail_superseded_cert_stolen_old_key_stops_once_the_device_uses_its_new_one).
    """
    if standing.revoked_at is not None:
        raise PermissionDeniedError(REVOKED)
    if not is_honoured(standing, serial, now):
        raise PermissionDeniedError(SUPERSEDED)


def renewal_limit(pace: RenewalPace, now: datetime) -> datetime:
    """The latest renewal_tat that still allows a renewal at now (a GCRA's tolerance)."""
    return now + pace.interval * (pace.burst - 1)


def next_renewal_tat(tat: datetime | None, pace: RenewalPace, now: datetime) -> datetime:
    """renewal_tat after one more renewal at now; the store computes the same in its UPDATE."""
    return max(tat or now, now) + pace.interval


def check_renewal_pace(standing: DeviceStanding, pace: RenewalPace, now: datetime) -> None:
    """RESOURCE_EXHAUSTED once the device has spent its burst of renewals."""
    tat = standing.renewal_tat
    if tat is not None and tat > renewal_limit(pace, now):
        allowed_at = tat - pace.interval * (pace.burst - 1)
        raise ResourceExhaustedError(
            "too many renewals for this device; the next one is allowed at "
            f"{allowed_at:%Y-%m-%dT%H:%M:%SZ}"
        )
