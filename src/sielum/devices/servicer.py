"""AgentService over gRPC: the calling device comes from its verified certificate."""

from __future__ import annotations

from sielum.agent.v1 import agent_pb2
from sielum.devices.service import DeviceService
from sielum.identity import Call
from sielum.pb import to_duration, to_timestamp


class AgentServicer:
    """sielum.agent.v1.AgentService: one method per RPC, of (request, authorized Call)."""

    def __init__(self, service: DeviceService) -> None:
        self._service = service
        # The advised interval is the server's setting: made once, copied into each answer.
        self._interval = to_duration(service.heartbeat_interval)

    def Heartbeat(
        self, request: agent_pb2.HeartbeatRequest, call: Call
    ) -> agent_pb2.HeartbeatResponse:
        caller = call.identity()
        # The authorizer admits only device certificates here, which carry both.
        assert caller.not_before is not None and caller.not_after is not None
        beat = self._service.heartbeat(caller.name, caller.not_before, caller.not_after)
        return agent_pb2.HeartbeatResponse(
            device_id=beat.device_id,
            server_time=to_timestamp(beat.server_time),
            not_after=to_timestamp(beat.not_after),
            renew_after=to_timestamp(beat.renew_after),
            heartbeat_interval=self._interval,
        )

    def RenewCertificate(
        self, request: agent_pb2.RenewCertificateRequest, call: Call
    ) -> agent_pb2.RenewCertificateResponse:
        issued = self._service.renew(call.identity(), request.csr_pem, call.peer)
        return agent_pb2.RenewCertificateResponse(
            certificate_pem=issued.certificate_pem,
            ca_certificate_pem=self._service.ca_certificate_pem,
            not_after=to_timestamp(issued.not_after),
        )

    def Unenroll(
        self, request: agent_pb2.UnenrollRequest, call: Call
    ) -> agent_pb2.UnenrollResponse:
        caller = call.identity()
        device = self._service.unenroll(caller.name, call.peer)
        # Set by unenroll (or by an admin's revoke that came first).
        assert device.revoked_at is not None
        return agent_pb2.UnenrollResponse(
            device_id=device.id, revoked_at=to_timestamp(device.revoked_at)
        )
