"""The device event log in SQL: its head, the events after a sequence, and snapshot pages."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sielum.errors import NotFoundError
from sielum.model import DeviceEvent, DeviceEventKind, DeviceStanding
from sielum.store.base import StoreBase, _guarded, _time
from sielum.store.database import execute, is_sqlite
from sielum.store.models import from_micros, to_micros

_EVENT_COLUMNS = (
    "sequence, at, kind, device_id, serial, previous_serial, previous_until, hostname, tags"
)


class EventStore(StoreBase):
    """Reads of the device event log that DirectoryService/WatchDevices streams.

    The writes are StoreBase._record_device_event, in the transaction of each change.
    """

    @_guarded
    def event_head(self) -> int:
        """The sequence of the newest committed event (0 before the first)."""
        if is_sqlite(self.db):  # the row id is the sequence (migrations._v9_device_events)
            sql = "SELECT COALESCE(MAX(sequence), 0) FROM device_event"
        else:
            sql = "SELECT sequence FROM event_head WHERE id = 1"
        return int(execute(self.db, sql).fetchone()[0])

    @_guarded
    def device_events_after(self, sequence: int, limit: int) -> list[DeviceEvent]:
        """Up to limit events after sequence, oldest first (one range of the primary key)."""
        p = self.db.param
        rows = execute(
            self.db,
            f"SELECT {_EVENT_COLUMNS} FROM device_event"  # noqa: S608 - constant columns
            f" WHERE sequence > {p} ORDER BY sequence LIMIT {p}",
            (sequence, limit),
        ).fetchall()
        return [_event(row) for row in rows]

    @_guarded
    def get_directory_entry(self, device_id: str) -> DeviceStanding:
        """The device's standing with its host name and not_after: what CheckCertificate
        answers, in one indexed lookup that leaves the certificate itself unread."""
        p = self.db.param
        row = execute(
            self.db,
            "SELECT id, serial, previous_serial, previous_until, revoked_at, hostname,"  # noqa: S608 - only the placeholder is formatted in
            f" not_after, tags FROM device WHERE id = {p}",
            (device_id,),
        ).fetchone()
        if row is None:
            raise NotFoundError("device not found")
        return DeviceStanding(
            id=row[0],
            serial=row[1],
            previous_serial=row[2],
            previous_until=_time(row[3]),
            revoked_at=_time(row[4]),
            hostname=row[5],
            not_after=from_micros(int(row[6])),
            tags=_tags(row[7]),
        )

    @_guarded
    def current_devices(
        self, after: int, limit: int, now: datetime, sequence: int
    ) -> tuple[list[DeviceEvent], int]:
        """One page of the snapshot at sequence: CURRENT entries of devices not revoked,
        after the cursor after (a device's seq, 0 for the first page); and the cursor of
        the next page, 0 when this one is the last. The rows have the log's own columns,
        read by the same _event."""
        p = self.db.param
        rows = execute(
            self.db,
            f"SELECT {p}, {p}, {p}, id, serial,"  # noqa: S608 - only placeholders formatted in
            " CASE WHEN previous_until IS NOT NULL THEN COALESCE(previous_serial, '') ELSE '' END,"
            " CASE WHEN previous_serial IS NOT NULL THEN previous_until END,"
            " hostname, tags, seq"
            f" FROM device WHERE revoked_at IS NULL AND seq > {p} ORDER BY seq LIMIT {p}",
            (sequence, to_micros(now), int(DeviceEventKind.CURRENT), after, limit),
        ).fetchall()
        return [_event(row) for row in rows], (int(rows[-1][9]) if len(rows) == limit else 0)


def _event(row: Sequence[Any]) -> DeviceEvent:
    return DeviceEvent(
        sequence=int(row[0]),
        at=from_micros(int(row[1])),
        kind=DeviceEventKind(int(row[2])),
        device_id=row[3],
        serial=row[4],
        previous_serial=row[5],
        previous_until=_time(row[6]) if row[5] else None,
        hostname=row[7],
        tags=_tags(row[8]),
    )


def _tags(text: str | None) -> tuple[str, ...]:
    return tuple(str(tag) for tag in json.loads(text or "[]"))
