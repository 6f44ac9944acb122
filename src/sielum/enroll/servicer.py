"""EnrollService over gRPC: protobuf in, plain values to the Enroller, protobuf out."""

from __future__ import annotations

from collections.abc import Awaitable

from sielum.enroll.service import Enroller, Enrollment, EnrollmentRequest
from sielum.enroll.v1 import enroll_pb2
from sielum.identity import Call
from sielum.pb import to_timestamp


class EnrollServicer:
    """sielum.enroll.v1.EnrollService, of (request, authorized Call)."""

    def __init__(self, enroller: Enroller, api_endpoint: str) -> None:
        self._enroller = enroller
        self._api_endpoint = api_endpoint

    def Enroll(
        self, request: enroll_pb2.EnrollRequest, call: Call
    ) -> enroll_pb2.EnrollResponse | Awaitable[enroll_pb2.EnrollResponse]:
        """The reply, or, when the enrollment's write waits for its batch, the reply to await."""
        begun = self._enroller.begin(
            EnrollmentRequest(
                token=request.token,
                csr_pem=request.csr_pem,
                hostname=request.hostname,
                facts=dict(request.facts),
                peer=call.peer,
            )
        )
        if isinstance(begun, Enrollment):
            return self._reply(begun)
        return self._reply_when(begun)

    async def _reply_when(self, enrolled: Awaitable[Enrollment]) -> enroll_pb2.EnrollResponse:
        return self._reply(await enrolled)

    def _reply(self, result: Enrollment) -> enroll_pb2.EnrollResponse:
        return enroll_pb2.EnrollResponse(
            device_id=result.device.id,
            certificate_pem=result.device.certificate_pem,
            ca_certificate_pem=result.ca_certificate_pem,
            not_after=to_timestamp(result.device.not_after),
            api_endpoint=self._api_endpoint,
        )
