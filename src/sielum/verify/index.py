"""The device index WatchDevices builds: a snapshot or a replay, then live events, applied once."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sielum.directory.v1 import directory_pb2

log = logging.getLogger("sielum.verify")

Kind = directory_pb2.DeviceEventKind
_REMOVING = frozenset({Kind.DEVICE_EVENT_KIND_REVOKED, Kind.DEVICE_EVENT_KIND_UNENROLLED})


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device the directory accepts, and which of its certificates are honoured.

    Serials are ints (the proto's lowercase hex, parsed): a million of them take half
    the memory of their text (bench/verify_lookup.py).
    """

    id: str
    serial: int
    previous_serial: int | None
    previous_until: float | None  # seconds since the epoch; None: until an event says otherwise
    hostname: str
    tags: tuple[str, ...]

    def honours(self, serial: int, now: float) -> bool:
        """The current certificate, or the previous one while it is still honoured.

        The same rule as the server's (sielum.devices.policy.is_honoured).
        """
        if serial == self.serial:
            return True
        return serial == self.previous_serial and (
            self.previous_until is None or now < self.previous_until
        )


def record_of(event: directory_pb2.WatchDevicesResponse) -> DeviceRecord | None:
    """The device's standing after the event, or None when the event removes the device.

    An event whose serial cannot be read removes the device too: failing closed for one
    device beats stopping the whole stream on it.
    """
    if event.kind in _REMOVING or not event.serial:
        return None
    try:
        serial = int(event.serial, 16)
        previous = int(event.previous_serial, 16) if event.previous_serial else None
    except ValueError:
        log.warning("unreadable serial for device %s: refusing the device", event.device_id)
        return None
    until = None
    if previous is not None and event.HasField("previous_until"):
        until = event.previous_until.seconds + event.previous_until.nanos / 1e9
    return DeviceRecord(
        id=event.device_id,
        serial=serial,
        previous_serial=previous,
        previous_until=until,
        hostname=event.hostname,
        tags=tuple(event.tags),
    )


class Index:
    """The devices the directory accepts, and the last sequence applied to them.

    One thread (the verifier's follower) writes; any thread reads `devices`. Each
    write is one dict operation or the swap of the whole dict, both atomic for a
    reader, so readers take no lock.
    """

    def __init__(self) -> None:
        self.devices: dict[str, DeviceRecord] = {}
        self.sequence: int | None = None  # None until a snapshot has been applied
        self.applied = 0  # events applied, snapshot entries excepted
        self.ignored = 0  # events at or below `sequence`, seen twice

    def request(self) -> directory_pb2.WatchDevicesRequest:
        """A snapshot first, or the events after the last sequence applied."""
        if self.sequence is None:
            return directory_pb2.WatchDevicesRequest()
        return directory_pb2.WatchDevicesRequest(after_sequence=self.sequence)

    def forget_position(self) -> None:
        """The server no longer holds our position (OUT_OF_RANGE): ask for a snapshot next.

        The devices stay in use until the new snapshot replaces them; the verifier's
        staleness bound refuses them once they are too old.
        """
        self.sequence = None


class Stream:
    """One WatchDevices call: a snapshot (built aside, swapped in at SYNCED) or a replay, then live.

    receive() returns True when the message confirms the index is current: a SYNCED,
    or an event once this stream has been synced. Staleness is measured from there.
    """

    def __init__(self, index: Index) -> None:
        self._index = index
        self._snapshot: dict[str, DeviceRecord] | None = {} if index.sequence is None else None
        self.synced = False

    def receive(self, event: directory_pb2.WatchDevicesResponse) -> bool:
        index = self._index
        if event.kind == Kind.DEVICE_EVENT_KIND_SYNCED:
            if self._snapshot is not None:
                index.devices = self._snapshot
                index.sequence = event.sequence
                self._snapshot = None
                log.info(
                    "directory snapshot applied: %d devices at sequence %d",
                    len(index.devices),
                    event.sequence,
                )
            elif index.sequence is None or event.sequence > index.sequence:
                index.sequence = event.sequence
            self.synced = True
            return True
        if self._snapshot is not None:
            _apply(self._snapshot, event)
            return False
        if index.sequence is not None and event.sequence <= index.sequence:
            # A replay that overlaps what we hold: applying it again could bring back
            # a device revoked since (tests/verify/test_follow.py).
            index.ignored += 1
            return self.synced
        _apply(index.devices, event)
        index.sequence = event.sequence
        index.applied += 1
        return self.synced


def _apply(devices: dict[str, DeviceRecord], event: directory_pb2.WatchDevicesResponse) -> None:
    record = record_of(event)
    if record is None:
        devices.pop(event.device_id, None)
    else:
        # Keyed by the record's own id: each read of event.device_id makes a new str,
        # and a second copy of every id would cost 60 bytes a device.
        devices[record.id] = record
