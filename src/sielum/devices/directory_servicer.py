"""DirectoryService over gRPC: protobuf in and out of the directory and its event feed."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from sielum.devices.directory import Directory
from sielum.devices.feed import Watch
from sielum.directory.v1 import directory_pb2
from sielum.identity import Call
from sielum.logs import log_event
from sielum.model import DeviceEvent, DeviceStanding
from sielum.pb import to_timestamp

log = logging.getLogger("sielum.directory")


class DirectoryServicer:
    """sielum.directory.v1.DirectoryService, for services and admins (core/authorization.py)."""

    def __init__(self, directory: Directory, watch: Watch) -> None:
        self._directory = directory
        self._watch = watch

    def CheckCertificate(
        self, request: directory_pb2.CheckCertificateRequest, call: Call
    ) -> directory_pb2.CheckCertificateResponse:
        check = self._directory.check(request.certificate_pem)
        reply = directory_pb2.CheckCertificateResponse(
            valid=check.valid, status=directory_pb2.CertificateStatus.ValueType(check.status)
        )
        if check.device is not None:
            reply.device.CopyFrom(_device(check.device))
        return reply

    def GetTrustBundle(
        self, request: directory_pb2.GetTrustBundleRequest, call: Call
    ) -> directory_pb2.GetTrustBundleResponse:
        bundle = self._directory.trust_bundle()
        return directory_pb2.GetTrustBundleResponse(
            ca_certificates_pem=[ca.certificate_pem for ca in bundle],
            fingerprints=[ca.fingerprint for ca in bundle],
        )

    async def WatchDevices(
        self, request: directory_pb2.WatchDevicesRequest, call: Call
    ) -> AsyncIterator[directory_pb2.WatchDevicesResponse]:
        after = request.after_sequence if request.HasField("after_sequence") else None
        caller = call.identity()
        log_event(
            log,
            "watch",
            caller=f"{caller.role.value}/{caller.name}",
            after=after if after is not None else "snapshot",
            peer=call.peer,
        )
        async for event in self._watch.events(after):
            yield _event(event)


def _event(event: DeviceEvent) -> directory_pb2.WatchDevicesResponse:
    reply = directory_pb2.WatchDevicesResponse(
        sequence=event.sequence,
        at=to_timestamp(event.at),
        kind=directory_pb2.DeviceEventKind.ValueType(event.kind),
        device_id=event.device_id,
        serial=event.serial,
        previous_serial=event.previous_serial,
        hostname=event.hostname,
        tags=event.tags,
    )
    if event.previous_until is not None and event.previous_serial:
        reply.previous_until.CopyFrom(to_timestamp(event.previous_until))
    return reply


def _device(standing: DeviceStanding) -> directory_pb2.Device:
    reply = directory_pb2.Device(
        id=standing.id, hostname=standing.hostname, serial=standing.serial, tags=standing.tags
    )
    if standing.not_after is not None:
        reply.not_after.CopyFrom(to_timestamp(standing.not_after))
    if standing.previous_serial and standing.previous_until is not None:
        reply.previous_serial = standing.previous_serial
        reply.previous_until.CopyFrom(to_timestamp(standing.previous_until))
    if standing.revoked_at is not None:
        reply.revoked_at.CopyFrom(to_timestamp(standing.revoked_at))
    return reply
