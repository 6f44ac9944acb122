"""Devices in SQL: enrolled with a token's use, read, listed, revoked, touched and renewed."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import peewee

from sielum.errors import AlreadyExistsError, NotFoundError, RenewalRefusedError, TokenUnusableError
from sielum.model import (
    AuditEvent,
    Device,
    DeviceEventKind,
    DeviceStanding,
    DeviceState,
    Page,
    RenewalPace,
)
from sielum.store.base import (
    _CONNECTION_ERRORS,
    DEFAULT_PAGE_SIZE,
    PageBudget,
    _guarded,
    _keyset_page,
    _micros,
    _time,
    as_unavailable,
)
from sielum.store.certificates import CertificateStore
from sielum.store.database import execute, is_sqlite, is_unavailable, write_transaction
from sielum.store.models import from_micros, to_micros

_MICROSECOND = timedelta(microseconds=1)
# Devices per UPDATE of touch_devices: well under SQLite's limit on parameters.
TOUCH_CHUNK = 1000

_DEVICE_NOT_FOUND = "device not found"
_KEY_ENROLLED = "this public key is already enrolled"
_TOKEN_UNUSABLE = "enrollment token cannot be used"  # noqa: S105 - a message, not a secret
# One enrollment of a batch at a time is inside it: the name is reused, one after another.
_SAVEPOINT = "SAVEPOINT enrollment"
_RELEASE = "RELEASE SAVEPOINT enrollment"
_ROLLBACK_TO = "ROLLBACK TO SAVEPOINT enrollment"
_NOT_WRITTEN = RuntimeError("not written")  # a placeholder every enrollment replaces


@dataclasses.dataclass(frozen=True)
class NewDevice:
    """One enrollment's write: the device, when it enrolled, and its audit event."""

    device: Device
    now: datetime
    audit: AuditEvent


class DeviceStore(CertificateStore):
    """Devices: enrollment with a token's use, the device gate's lookup, renewal."""

    # Enrollment

    @_guarded
    def find_device_by_key(self, public_key_sha256: str) -> Device | None:
        row = execute(self.db, self._sql.select_device_by_key, (public_key_sha256,)).fetchone()
        return None if row is None else _device_from_tuple(row)

    @_guarded
    def enroll_device(
        self,
        device: Device,
        now: datetime,
        audit: AuditEvent,
        *,
        before: Callable[[], None] | None = None,
    ) -> Device:
        """Consume one use of device.token_id and record the device, in one transaction.

        before, when given, runs first in that transaction, and whatever it raises
        rolls the whole back: an approval decides its request there
        (store/requests.py::approve_enrollment_request).

        The conditional UPDATE is the whole guarantee that a token with max_uses N
        yields at most N devices: PostgreSQL re-checks its WHERE against the row
        as the previous writer committed it, SQLite runs writers one at a time
        (tests/store/test_store.py::test_concurrent_enrollment_respects_max_uses).
        """
        return self._enroll_alone(NewDevice(device, now, audit), before)

    def _enroll_alone(self, new: NewDevice, before: Callable[[], None] | None = None) -> Device:
        sql, device = self._sql, new.device
        facts = _facts_json(device.facts)
        try:
            with write_transaction(self.db):
                if before is not None:
                    before()
                consume = sql.consume_use_params(device, new.now)
                consumed = execute(self.db, sql.consume_use, consume)
                if consumed.rowcount == 0:
                    raise TokenUnusableError(_TOKEN_UNUSABLE)
                execute(self.db, sql.insert_device, _device_values(device, facts))
                self._record_labels([device])
                self._record_first_certificate(device.id)
                self._insert_audit(new.audit)
                self._record_device_event(DeviceEventKind.ENROLLED, device.id, new.now)
        except peewee.IntegrityError as exc:
            # The transaction rolled back, so the use was not consumed.
            raise AlreadyExistsError(_KEY_ENROLLED) from exc
        return _as_stored(device, facts)

    @_guarded
    def enroll_devices(self, batch: Sequence[NewDevice]) -> list[Device | Exception]:
        """enroll_device for each of batch, all in one transaction with one COMMIT.

        Each enrollment's outcome is its own: its device, or the error enroll_device
        would have raised (TokenUnusableError, AlreadyExistsError, or what went wrong
        in its statements). Each one's UPDATE and INSERT run inside a SAVEPOINT, so a
        refused or failing one rolls back only itself; the others' certificates,
        audit events and device events are then written one INSERT per table. The
        token's conditional UPDATE stays the whole guarantee of max_uses: each one's
        UPDATE sees the uses the enrollments before it in the batch consumed
        (tests/store/test_group_commit.py).

        An error of the transaction itself (the connection lost, the COMMIT refused)
        raises, and then none of batch was recorded.

        The enrollments take their tokens' rows in the order of (token, key), so two
        replicas' batches lock rows in the same order and never deadlock.
        """
        if len(batch) == 1:
            try:
                return [self._enroll_alone(batch[0])]
            except (TokenUnusableError, AlreadyExistsError) as error:
                return [error]
        sql = self._sql
        sqlite = is_sqlite(self.db)
        outcomes: list[Device | Exception] = [_NOT_WRITTEN] * len(batch)
        order = sorted(
            range(len(batch)),
            key=lambda i: (batch[i].device.token_id, batch[i].device.public_key_sha256),
        )
        written: list[int] = []
        with write_transaction(self.db):
            for i in order:
                new = batch[i]
                device, facts = new.device, _facts_json(new.device.facts)
                consume = sql.consume_use_params(device, new.now)
                try:
                    if sqlite:
                        execute(self.db, _SAVEPOINT)
                        consumed = execute(self.db, sql.consume_use, consume)
                    else:  # one round trip for both: its count is the UPDATE's
                        consumed = execute(self.db, f"{_SAVEPOINT}; {sql.consume_use}", consume)
                    if consumed.rowcount == 0:
                        execute(self.db, _RELEASE)
                        outcomes[i] = TokenUnusableError(_TOKEN_UNUSABLE)
                        continue
                    values = _device_values(device, facts)
                    if sqlite:
                        execute(self.db, sql.insert_device, values)
                        execute(self.db, _RELEASE)
                    else:  # one round trip: a failing INSERT raises before the RELEASE
                        execute(self.db, f"{sql.insert_device}; {_RELEASE}", values)
                except peewee.DatabaseError as error:
                    if is_unavailable(error):
                        raise  # the transaction is lost, not this enrollment
                    execute(self.db, _ROLLBACK_TO)
                    execute(self.db, _RELEASE)
                    outcomes[i] = (
                        AlreadyExistsError(_KEY_ENROLLED)
                        if isinstance(error, peewee.IntegrityError)
                        else error
                    )
                    continue
                outcomes[i] = _as_stored(device, facts)
                written.append(i)
            if written:
                ids = [batch[i].device.id for i in written]
                execute(self.db, sql.batch(len(written)).insert_certificates, ids)
                self._record_labels([batch[i].device for i in written])
                self._insert_audits([batch[i].audit for i in written])
                self._record_device_events(
                    DeviceEventKind.ENROLLED, [(batch[i].device.id, batch[i].now) for i in written]
                )
        return outcomes

    def _record_labels(self, devices: Sequence[Device]) -> None:
        """The tags and facts of devices just inserted, as device_label rows: one INSERT
        per 500 labels (an enrollment has about five)."""
        pairs = [(label, device.id) for device in devices for label in device_labels(device)]
        p = self.db.param
        for start in range(0, len(pairs), _LABELS_PER_INSERT):
            chunk = pairs[start : start + _LABELS_PER_INSERT]
            values = ", ".join([f"({p}, {p})"] * len(chunk))
            execute(
                self.db,
                # VALUES' columns are column1 and column2 on SQLite and PostgreSQL alike.
                "INSERT INTO device_label (label, device_seq) SELECT v.column1, d.seq"  # noqa: S608
                f" FROM (VALUES {values}) AS v JOIN device d ON d.id = v.column2",
                [item for pair in chunk for item in pair],
            )

    # Devices

    @_guarded
    def get_device(self, device_id: str) -> Device:
        D = self._t.device
        row = D.get_or_none(D.id == device_id)
        if row is None:
            raise NotFoundError(_DEVICE_NOT_FOUND)
        return _device(row)

    def get_device_standing(self, device_id: str) -> DeviceStanding:
        """What the device gate needs, in one indexed lookup of a few short columns.

        On PostgreSQL a prepared statement on connections of its own, outside the
        pool (store/database.py PreparedRead): every device call makes it.
        """
        if self._standing_read is None:
            row = self._standing_row(device_id)
        else:
            try:
                row = self._standing_read.fetchone((device_id,))
            except _CONNECTION_ERRORS as exc:
                unavailable = as_unavailable(exc, "get_device_standing")
                if unavailable is None:
                    raise
                raise unavailable from exc
        if row is None:
            raise NotFoundError(_DEVICE_NOT_FOUND)
        return DeviceStanding(
            id=row[0],
            serial=row[1],
            previous_serial=row[2],
            previous_until=_time(row[3]),
            revoked_at=_time(row[4]),
            renewal_tat=_time(row[5]),
        )

    @_guarded
    def _standing_row(self, device_id: str) -> Any:
        return execute(self.db, self._sql.select_standing, (device_id,)).fetchone()

    @_guarded
    def list_devices(
        self,
        *,
        token_id: str = "",
        hostname: str = "",
        state: DeviceState | None = None,
        now: datetime | None = None,
        tag: str = "",
        hostname_prefix: str = "",
        facts: Mapping[str, str] | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        cursor: str = "",
        budget: PageBudget[Device] | None = None,
    ) -> Page[Device]:
        """Devices newest first: all, or those of token_id, with hostname, in state at now.

        hostname_prefix keeps the host names that start with it, and facts the devices
        whose facts hold every one of these names with exactly that value; every
        filter given must hold. A prefix walks the hostname index where text sorts by
        code point. A tag or a fact walks its labels (migration 14), newest first, and
        more of them are each one lookup per device
        (tests/store/test_device_search.py::test_tags_and_facts_walk_their_labels).

        Each filter has an index (migrations v1 and v2): token_id and hostname walk
        theirs newest first; revoked ones are a partial index of their own; expired
        ones are read from the unrevoked devices' not_after index; active ones are
        most devices, found by walking the table newest first
        (tests/store/test_store.py::test_device_filters_use_their_indexes).

        With a budget, the page also ends before the device that would take it over
        budget.max_bytes (never before the first), and the cursor resumes there.
        """
        query, key = self._devices_query(
            token_id=token_id, hostname=hostname, state=state, now=now, tag=tag,
            hostname_prefix=hostname_prefix, facts=facts,
        )  # fmt: skip
        D = self._t.device
        return _keyset_page(D, query, "devices", page_size, cursor, _device, budget, key=key)

    def _devices_query(
        self,
        *,
        token_id: str = "",
        hostname: str = "",
        state: DeviceState | None = None,
        now: datetime | None = None,
        tag: str = "",
        hostname_prefix: str = "",
        facts: Mapping[str, str] | None = None,
    ) -> tuple[Any, Any]:
        """list_devices' query, and the column its pages are ordered by."""
        D = self._t.device
        query = D.select()
        if token_id:
            query = query.where(D.token_id == token_id)
        if hostname:
            query = query.where(D.hostname == hostname)
        if hostname_prefix:
            query = query.where(
                device_hostname_prefix_condition(
                    D, hostname_prefix, ranged=self._text_sorts_by_code_point()
                )
            )
        # Tags and facts are labels (migration 14): the first walks its labels' key
        # newest first and orders the page, the others are looked up by key.
        labels = ([tag_label(tag)] if tag else []) + [
            fact_label(name, value) for name, value in sorted((facts or {}).items())
        ]
        key = D.seq
        if labels:
            L = self._t.device_label
            query = query.join(L, on=(L.device_seq == D.seq)).where(L.label == labels[0])
            key = L.device_seq
            for label in labels[1:]:
                other = L.alias()
                query = query.where(
                    peewee.fn.EXISTS(
                        other.select(peewee.SQL("1")).where(
                            (other.label == label) & (other.device_seq == D.seq)
                        )
                    )
                )
        if state is not None:
            if now is None:
                raise ValueError("a state filter needs now")
            query = query.where(device_state_condition(D, state, now, sqlite=is_sqlite(self.db)))
        return query, key

    def _text_sorts_by_code_point(self) -> bool:
        """Whether the database compares text by code point, as SQLite's BINARY does.

        PostgreSQL compares in the database's collation: with C or C.UTF-8 (as the
        tests run) that is code point order; with a language's (en_US.UTF-8, or any ICU
        locale), a range of host names is not the set of names with a prefix, so none is
        used there. The name alone could mislead (an ICU database keeps a datcollate),
        so three comparisons a language orders otherwise must come out by code point.
        """
        if is_sqlite(self.db):
            return True
        known = getattr(self, "_code_point_order", None)
        if known is None:
            with self._connection():
                row = execute(
                    self.db,
                    "SELECT datcollate, 'B' < 'a' AND 'a-z' < 'aa' AND 'z' < 'é'"
                    " FROM pg_database WHERE datname = current_database()",
                ).fetchone()
            collation, ordered = (str(row[0]), bool(row[1])) if row else ("", False)
            named = collation in ("C", "POSIX") or collation.startswith("C.")
            known = named and ordered
            self._code_point_order = known
        return bool(known)

    @_guarded
    def revoke_device(
        self,
        device_id: str,
        now: datetime,
        audit: AuditEvent,
        *,
        kind: DeviceEventKind = DeviceEventKind.REVOKED,
        reason: str = "",
    ) -> Device:
        """Revoke (kind REVOKED) or unenroll for reason (RFC 5280's name, '' unspecified);
        again keeps the first revoked_at and reason, and logs no event."""
        D, gone = self._t.device, _DEVICE_NOT_FOUND
        row = self._revoke_with_reason(
            D,
            device_id,
            now,
            audit,
            gone,
            reason,
            on_change=lambda: self._record_device_event(kind, device_id, now),
        )
        return _device(row)

    @_guarded
    def touch_device(self, device_id: str, now: datetime) -> None:
        """Record that the device was heard from at now (one UPDATE: heartbeats are frequent)."""
        D = self._t.device
        with write_transaction(self.db):
            if D.update(last_seen_at=now).where(D.id == device_id).execute() == 0:
                raise NotFoundError(_DEVICE_NOT_FOUND)

    @_guarded
    def touch_devices(self, seen: Mapping[str, datetime], at_most_every: timedelta) -> int:
        """Record when each device was heard from, in one UPDATE per TOUCH_CHUNK devices.

        A device's last_seen_at moves only forward, and only once it is at least
        at_most_every old: so replicas that each flush the same device write it once
        per at_most_every between them, and an older flush arriving late changes
        nothing (tests/store/test_last_seen.py::test_touch_devices_writes_once_per_minute).
        Returns how many rows changed; unknown devices are skipped.
        """
        items = [(device_id, to_micros(at)) for device_id, at in seen.items()]
        gap, p = at_most_every // _MICROSECOND, self.db.param
        changed = 0
        with write_transaction(self.db):
            for start in range(0, len(items), TOUCH_CHUNK):
                chunk = items[start : start + TOUCH_CHUNK]
                rows = ", ".join([f"({p}, {p})"] * len(chunk))
                params: list[object] = [value for item in chunk for value in item]
                sql = (
                    # Only placeholders are formatted in; the values are parameters.
                    f"UPDATE device SET last_seen_at = v.column2 FROM (VALUES {rows}) AS v"  # noqa: S608
                    " WHERE device.id = v.column1"
                    " AND (device.last_seen_at IS NULL"
                    f" OR device.last_seen_at <= v.column2 - {p})"
                )
                changed += execute(self.db, sql, (*params, gap)).rowcount
        return changed

    @_guarded
    def renew_device(
        self,
        device_id: str,
        *,
        caller_serial: str,
        public_key_sha256: str,
        serial: str,
        certificate_pem: str,
        not_after: datetime,
        now: datetime,
        pace: RenewalPace,
        audit: AuditEvent,
    ) -> Device:
        """Swap in the device's new key and certificate, if caller_serial may still renew.

        One conditional UPDATE checks and swaps, like a token's use: the device is not
        revoked, caller_serial is its current certificate (or the previous one, while
        the current one has never been used), the new key is not the current one, and
        the renewal pace allows one more (renewal_tat, a GCRA). So however renewals
        from one certificate race, on any number of replicas, one chain survives: the
        last renewal's certificate and the one it replaced
        (tests/store/test_store.py::test_renewals_racing_from_one_certificate_leave_one_chain).

        The caller's certificate becomes previous_serial: renewing from the current
        certificate honours it until its own not_after (the row's not_after before the
        swap) or until the new one is first used (retire_previous_certificate);
        renewing from the previous one (a retry after a lost answer) keeps it as it was
        and drops the unused certificate that retry replaces. RenewalRefusedError when
        the UPDATE matched nothing; the device service re-reads the device to say why.
        """
        now_us, interval_us = to_micros(now), pace.interval // _MICROSECOND
        limit_us = now_us + interval_us * (pace.burst - 1)
        params = (
            public_key_sha256, serial, certificate_pem, to_micros(not_after),
            now_us, caller_serial,
            caller_serial,
            now_us, now_us, interval_us,
            device_id, public_key_sha256,
            caller_serial, caller_serial, now_us,
            limit_us,
        )  # fmt: skip
        D = self._t.device
        try:
            with write_transaction(self.db):
                if execute(self.db, self._sql.renew_device, params).rowcount == 0:
                    raise RenewalRefusedError("device cannot renew now")
                self._record_certificates(device_id, now)
                self._insert_audit(audit)
                self._record_device_event(DeviceEventKind.RENEWED, device_id, now)
                row = D.get(D.id == device_id)
        except peewee.IntegrityError as exc:
            raise AlreadyExistsError(_KEY_ENROLLED) from exc
        return _device(row)

    @_guarded
    def retire_previous_certificate(self, device_id: str, serial: str, now: datetime) -> bool:
        """The first use of the device's current certificate serial: the previous one is refused
        from now on. False when nothing changed (retired already, or serial is no longer
        current).

        One conditional UPDATE, on the first use only (the device gate asks it when the
        standing it read still honours a previous certificate). It clears previous_until
        rather than comparing times, so that a renewal from the previous certificate racing
        with it on another replica fails its own `previous_until > now`, whatever the
        clocks say (tests/store/test_store.py::test_first_use_and_a_renewal_from_the_previous_race).
        """
        with write_transaction(self.db):
            cursor = execute(self.db, self._sql.retire_previous, (device_id, serial))
            if not cursor.rowcount:
                return False
            self._record_certificates(device_id, now)
            self._record_device_event(DeviceEventKind.RENEWED, device_id, now)
            return True

    @_guarded
    def adopt_certificate(
        self,
        device_id: str,
        *,
        current_serial: str,
        serial: str,
        public_key_sha256: str,
        certificate_pem: str,
        not_after: datetime,
        audit: AuditEvent,
    ) -> bool:
        """Make a certificate the database lost (a restored backup) the device's current one.

        One conditional UPDATE: the device is not revoked and current_serial, judged
        by the caller, is still current. The certificate it replaces becomes the
        previous one, retired at once (the adopted one is in use). False when the
        UPDATE matched nothing; AlreadyExistsError when the key is another device's.
        """
        D = self._t.device
        try:
            with write_transaction(self.db):
                changed = (
                    D.update(
                        serial=serial,
                        public_key_sha256=public_key_sha256,
                        certificate_pem=certificate_pem,
                        not_after=not_after,
                        previous_serial=D.serial,
                        previous_until=None,
                    )
                    .where(
                        (D.id == device_id) & (D.serial == current_serial) & D.revoked_at.is_null()
                    )
                    .execute()
                )
                if changed:
                    self._record_certificates(device_id, audit.at)
                    self._insert_audit(audit)
                    self._record_device_event(DeviceEventKind.RENEWED, device_id, audit.at)
        except peewee.IntegrityError as exc:
            raise AlreadyExistsError(_KEY_ENROLLED) from exc
        return bool(changed)


def device_state_condition(
    D: Any, state: DeviceState, now: datetime, *, sqlite: bool = False
) -> Any:
    """SQL that holds exactly when devices.policy.device_state() gives state at now.

    Revoked > Expired (not_after <= now) > Active
    (tests/store/test_store.py::test_device_state_filter_agrees_with_device_state).
    """
    to_micros(now)  # rejects a naive now here rather than deep inside peewee
    if state is DeviceState.REVOKED:
        return D.revoked_at.is_null(False)
    expired = D.revoked_at.is_null() & (D.not_after <= now)
    if state is DeviceState.EXPIRED and sqlite:
        # SQLite, asked for the newest first, would rather walk the whole table in seq
        # order than read the few expired rows from their index and sort them; for a
        # subquery it reads the index. PostgreSQL reads the index for the plain
        # condition, but walks the table to merge-join the subquery
        # (bench/device_filters.py).
        E = D.alias()
        return D.seq.in_(E.select(E.seq).where(E.revoked_at.is_null() & (E.not_after <= now)))
    if state is DeviceState.EXPIRED:
        return expired
    return D.revoked_at.is_null() & (D.not_after > now)


# Above every character a host name can hold (check_hostname refuses it: U+10FFFF is
# not printable), so p + this is above every name that starts with p.
_ABOVE_HOSTNAMES = "\U0010ffff"


def device_hostname_prefix_condition(D: Any, prefix: str, *, ranged: bool) -> Any:
    """SQL that holds when the device's host name starts with prefix, case and all.

    The first len(prefix) characters equal prefix: exact in any collation. Where text
    sorts by code point (ranged), the same names are also those from prefix up to
    prefix + U+10FFFF, a range the hostname index walks
    (tests/store/test_store.py::test_device_filters_use_their_indexes); LIKE would not
    do: SQLite's ignores case, and PostgreSQL's uses a plain index only in the C locale.
    """
    exact = peewee.fn.substr(D.hostname, 1, len(prefix)) == prefix
    if not ranged:
        return exact
    return (D.hostname >= prefix) & (D.hostname < prefix + _ABOVE_HOSTNAMES) & exact


_LABELS_PER_INSERT = 500


def tag_label(tag: str) -> str:
    """The label of a tag in device_label."""
    return "t:" + tag


def fact_label(name: str, value: str) -> str:
    """The label of a fact in device_label. A fact name holds no '=' (check_facts), so
    the first one ends it."""
    if "=" in name:
        raise ValueError(f"a fact name holds no '=': {name!r}")
    return f"f:{name}={value}"


def device_labels(device: Device) -> list[str]:
    """Every label of device: its tags and its facts, once each."""
    labels = [tag_label(tag) for tag in device.tags]
    labels += [fact_label(name, value) for name, value in device.facts.items()]
    return list(dict.fromkeys(labels))


def _device_values(device: Device, facts_json: str) -> tuple[object, ...]:
    return (
        device.id,
        device.hostname,
        device.token_id,
        device.public_key_sha256,
        device.serial,
        device.certificate_pem,
        to_micros(device.not_after),
        to_micros(device.enrolled_at),
        _micros(device.last_seen_at),
        _micros(device.revoked_at),
        device.peer,
        facts_json,
        _tags_json(device.tags),
    )


def _device_from_tuple(row: Sequence[Any]) -> Device:
    """A Device from a row of _DEVICE_COLUMNS."""
    return Device(
        id=row[0],
        hostname=row[1],
        token_id=row[2],
        public_key_sha256=row[3],
        serial=row[4],
        certificate_pem=row[5],
        not_after=from_micros(int(row[6])),
        enrolled_at=from_micros(int(row[7])),
        last_seen_at=_time(row[8]),
        revoked_at=_time(row[9]),
        peer=row[10],
        facts=_facts(row[11]),
        tags=_tags(row[12]),
    )


def _as_stored(device: Device, facts: str) -> Device:
    """A device just inserted, as the store would read it back.

    Every column was written from device, so reading the row back would only return
    it again; facts as the store gives them everywhere else.
    """
    return dataclasses.replace(device, facts=_facts(facts), tags=tuple(device.tags))


def _facts_json(facts: Mapping[str, str]) -> str:
    return json.dumps(dict(facts), sort_keys=True, separators=(",", ":"))


def _facts(text: str) -> dict[str, str]:
    value = json.loads(text or "{}")
    return {str(k): str(v) for k, v in value.items()}


def _device(row: Any) -> Device:
    return Device(
        id=row.id,
        hostname=row.hostname,
        token_id=row.token_id,
        public_key_sha256=row.public_key_sha256,
        serial=row.serial,
        certificate_pem=row.certificate_pem,
        not_after=row.not_after,
        enrolled_at=row.enrolled_at,
        peer=row.peer,
        facts=_facts(row.facts),
        last_seen_at=row.last_seen_at,
        revoked_at=row.revoked_at,
        tags=_tags(row.tags),
    )


def _tags_json(tags: Sequence[str]) -> str:
    return json.dumps(list(tags), separators=(",", ":"))


def _tags(text: str | None) -> tuple[str, ...]:
    return tuple(str(t) for t in json.loads(text or "[]"))
