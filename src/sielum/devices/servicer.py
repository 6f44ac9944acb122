"""AgentService over gRPC: the calling device comes from its verified certificate."""

from __future__ import annotations

from sielum.agent.v1 import agent_pb2, agent_pb2_grpc
from sielum.devices.service import DeviceService
from sielum.server.auth import CallContext, require_identity
from sielum.server.pb import peer_host, to_timestamp


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, service: DeviceService) -> None:
        self._service = service

    def Heartbeat(
        self, request: agent_pb2.HeartbeatRequest, context: CallContext
    ) -> agent_pb2.HeartbeatResponse:
        caller = require_identity(context)
        beat = self._service.heartbeat(caller.name, caller.not_before, caller.not_after)
        return agent_pb2.HeartbeatResponse(
            device_id=beat.device_id,
            server_time=to_timestamp(beat.server_time),
            not_after=to_timestamp(beat.not_after),
            renew_after=to_timestamp(beat.renew_after),
        )

    def RenewCertificate(
        self, request: agent_pb2.RenewCertificateRequest, context: CallContext
    ) -> agent_pb2.RenewCertificateResponse:
        caller = require_identity(context)
        issued = self._service.renew(caller.name, request.csr_pem, peer_host(context.peer()))
        return agent_pb2.RenewCertificateResponse(
            certificate_pem=issued.certificate_pem,
            ca_certificate_pem=self._service.ca_certificate_pem,
            not_after=to_timestamp(issued.not_after),
        )
