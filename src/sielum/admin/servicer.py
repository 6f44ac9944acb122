"""AdminService over gRPC: protobuf in, plain values to Administration, protobuf out."""

from __future__ import annotations

from datetime import timedelta

from sielum import tokens
from sielum.admin.service import Administration, check_audit_filter
from sielum.admin.v1 import admin_pb2
from sielum.devices import policy as devices
from sielum.enroll.approval import Approvals
from sielum.errors import FailedPreconditionError, InvalidArgumentError
from sielum.identities.admins import AdminRegistry
from sielum.identities.services import ServiceRegistry
from sielum.identity import Call, Caller
from sielum.model import (
    Admin,
    AdminState,
    AuditEvent,
    Device,
    DeviceState,
    EnrollmentRequest,
    EnrollmentRequestState,
    Service,
    ServiceState,
    Token,
    TokenPolicy,
    TokenState,
)
from sielum.pb import from_timestamp, to_duration, to_timestamp
from sielum.sessions import LoginLinks

# RevokeDeviceRequest.reason as stored: RFC 5280's name, spelled as cryptography does.
_GIVEN_REASONS: dict[admin_pb2.RevocationReason.ValueType, str] = {
    admin_pb2.REVOCATION_REASON_UNSPECIFIED: "unspecified",
    admin_pb2.REVOCATION_REASON_KEY_COMPROMISE: "keyCompromise",
    admin_pb2.REVOCATION_REASON_CA_COMPROMISE: "cACompromise",
    admin_pb2.REVOCATION_REASON_AFFILIATION_CHANGED: "affiliationChanged",
    admin_pb2.REVOCATION_REASON_CESSATION_OF_OPERATION: "cessationOfOperation",
    admin_pb2.REVOCATION_REASON_PRIVILEGE_WITHDRAWN: "privilegeWithdrawn",
}

_TOKEN_STATES = {
    TokenState.ACTIVE: admin_pb2.TOKEN_STATE_ACTIVE,
    TokenState.EXPIRED: admin_pb2.TOKEN_STATE_EXPIRED,
    TokenState.EXHAUSTED: admin_pb2.TOKEN_STATE_EXHAUSTED,
    TokenState.REVOKED: admin_pb2.TOKEN_STATE_REVOKED,
}
_STATE_FILTERS = {number: state for state, number in _TOKEN_STATES.items()}
_DEVICE_STATES = {
    DeviceState.ACTIVE: admin_pb2.DEVICE_STATE_ACTIVE,
    DeviceState.EXPIRED: admin_pb2.DEVICE_STATE_EXPIRED,
    DeviceState.REVOKED: admin_pb2.DEVICE_STATE_REVOKED,
}
_DEVICE_STATE_FILTERS = {number: state for state, number in _DEVICE_STATES.items()}

_REQUEST_STATES = {
    EnrollmentRequestState.PENDING: admin_pb2.ENROLLMENT_REQUEST_STATE_PENDING,
    EnrollmentRequestState.APPROVED: admin_pb2.ENROLLMENT_REQUEST_STATE_APPROVED,
    EnrollmentRequestState.DENIED: admin_pb2.ENROLLMENT_REQUEST_STATE_DENIED,
    EnrollmentRequestState.EXPIRED: admin_pb2.ENROLLMENT_REQUEST_STATE_EXPIRED,
}
_REQUEST_STATE_FILTERS = {number: state for state, number in _REQUEST_STATES.items()}
_NO_APPROVALS = "this server decides no enrollment requests"

_ADMIN_STATES = {
    AdminState.ACTIVE: admin_pb2.ADMIN_STATE_ACTIVE,
    AdminState.REVOKED: admin_pb2.ADMIN_STATE_REVOKED,
}
_SERVICE_STATES = {
    ServiceState.ACTIVE: admin_pb2.SERVICE_STATE_ACTIVE,
    ServiceState.REVOKED: admin_pb2.SERVICE_STATE_REVOKED,
}


def _state_filter(number: admin_pb2.TokenState.ValueType) -> TokenState | None:
    """The state to list; unspecified lists all, and a number no state has is refused."""
    if number == admin_pb2.TOKEN_STATE_UNSPECIFIED:
        return None
    state = _STATE_FILTERS.get(number)
    if state is None:
        # An open proto3 enum lets any number through; ignoring it would list
        # every token to a caller who asked for some.
        raise InvalidArgumentError(f"state {number} is not a token state")
    return state


def _device_state_filter(number: admin_pb2.DeviceState.ValueType) -> DeviceState | None:
    """As _state_filter, for devices."""
    if number == admin_pb2.DEVICE_STATE_UNSPECIFIED:
        return None
    state = _DEVICE_STATE_FILTERS.get(number)
    if state is None:
        raise InvalidArgumentError(f"state {number} is not a device state")
    return state


def _request_state_filter(
    number: admin_pb2.EnrollmentRequestState.ValueType,
) -> EnrollmentRequestState | None:
    """As _state_filter, for enrollment requests."""
    if number == admin_pb2.ENROLLMENT_REQUEST_STATE_UNSPECIFIED:
        return None
    state = _REQUEST_STATE_FILTERS.get(number)
    if state is None:
        raise InvalidArgumentError(f"state {number} is not an enrollment request state")
    return state


def _ephemeral_after(request: admin_pb2.CreateEnrollmentTokenRequest) -> timedelta | None:
    if not request.HasField("ephemeral_after"):
        return None
    value = request.ephemeral_after
    if value.seconds < 0 or value.nanos < 0 or value.nanos >= 1_000_000_000:
        raise InvalidArgumentError("ephemeral_after must be a positive duration")
    if value.seconds > 10 * 365 * 86400:
        raise InvalidArgumentError("ephemeral_after must be between 1 minute and 365 days")
    return timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def request_to_proto(request: EnrollmentRequest) -> admin_pb2.EnrollmentRequest:
    message = admin_pb2.EnrollmentRequest(
        id=request.id,
        token_id=request.token_id,
        hostname=request.hostname,
        facts=dict(request.facts),
        peer=request.peer,
        public_key_sha256=request.public_key_sha256,
        requested_at=to_timestamp(request.requested_at),
        state=_REQUEST_STATES[request.state],
        decided_by=request.decided_by,
        device_id=request.device_id,
    )
    if request.decided_at is not None:
        message.decided_at.CopyFrom(to_timestamp(request.decided_at))
    return message


def token_to_proto(token: Token, state: TokenState) -> admin_pb2.EnrollmentToken:
    message = admin_pb2.EnrollmentToken(
        id=token.id,
        label=token.label,
        uses=token.uses,
        state=_TOKEN_STATES[state],
        created_at=to_timestamp(token.created_at),
        created_by=token.created_by,
        tags=token.policy.tags,
        allowed_networks=token.policy.allowed_networks,
        hostname_pattern=token.policy.hostname_pattern,
        required_facts=dict(token.policy.required_facts),
        requires_approval=token.policy.requires_approval,
    )
    if token.policy.ephemeral_after is not None:
        message.ephemeral_after.CopyFrom(to_duration(token.policy.ephemeral_after))
    if token.max_uses is not None:
        message.max_uses = token.max_uses
    if token.expires_at is not None:
        message.expires_at.CopyFrom(to_timestamp(token.expires_at))
    if token.revoked_at is not None:
        message.revoked_at.CopyFrom(to_timestamp(token.revoked_at))
    if token.last_used_at is not None:
        message.last_used_at.CopyFrom(to_timestamp(token.last_used_at))
    return message


def device_to_proto(device: Device, state: DeviceState) -> admin_pb2.Device:
    message = admin_pb2.Device(
        id=device.id,
        hostname=device.hostname,
        token_id=device.token_id,
        serial=device.serial,
        not_after=to_timestamp(device.not_after),
        enrolled_at=to_timestamp(device.enrolled_at),
        state=_DEVICE_STATES[state],
        peer=device.peer,
        facts=dict(device.facts),
        tags=device.tags,
    )
    if device.last_seen_at is not None:
        message.last_seen_at.CopyFrom(to_timestamp(device.last_seen_at))
    if device.revoked_at is not None:
        message.revoked_at.CopyFrom(to_timestamp(device.revoked_at))
    return message


def admin_to_proto(admin: Admin) -> admin_pb2.Admin:
    message = admin_pb2.Admin(
        name=admin.name,
        created_at=to_timestamp(admin.created_at),
        created_by=admin.created_by,
        state=_ADMIN_STATES[admin.state],
    )
    if admin.revoked_at is not None:
        message.revoked_at.CopyFrom(to_timestamp(admin.revoked_at))
    return message


def service_to_proto(service: Service) -> admin_pb2.Service:
    message = admin_pb2.Service(
        name=service.name,
        created_at=to_timestamp(service.created_at),
        created_by=service.created_by,
        state=_SERVICE_STATES[service.state],
    )
    if service.revoked_at is not None:
        message.revoked_at.CopyFrom(to_timestamp(service.revoked_at))
    return message


def audit_event_to_proto(event: AuditEvent) -> admin_pb2.AuditEvent:
    return admin_pb2.AuditEvent(
        at=to_timestamp(event.at),
        actor=event.actor,
        action=event.action,
        resource=event.resource,
        peer=event.peer,
        detail=event.detail,
    )


class AdminServicer:
    """sielum.admin.v1.AdminService: one method per RPC, of (request, authorized Call)."""

    def __init__(
        self,
        administration: Administration,
        admins: AdminRegistry,
        services: ServiceRegistry,
        links: LoginLinks | None = None,
        approvals: Approvals | None = None,
    ) -> None:
        self._admin = administration
        self._admins = admins
        self._services = services
        self._links = links  # None: this server runs no dashboard
        self._approvals = approvals

    def _caller(self, call: Call) -> Caller:
        return Caller(name=call.identity().name, peer=call.peer)

    def _token(self, token: Token) -> admin_pb2.EnrollmentToken:
        return token_to_proto(token, tokens.state_of(token, self._admin.now()))

    def _device(self, device: Device) -> admin_pb2.Device:
        return device_to_proto(device, devices.device_state(device, self._admin.now()))

    def CreateEnrollmentToken(
        self, request: admin_pb2.CreateEnrollmentTokenRequest, call: Call
    ) -> admin_pb2.CreateEnrollmentTokenResponse:
        created = self._admin.create_token(
            self._caller(call),
            label=request.label,
            max_uses=request.max_uses if request.HasField("max_uses") else None,
            expires_at=from_timestamp(request.expires_at, "expires_at")
            if request.HasField("expires_at")
            else None,
            policy=TokenPolicy(
                tags=tuple(request.tags),
                allowed_networks=tuple(request.allowed_networks),
                hostname_pattern=request.hostname_pattern,
                required_facts=dict(request.required_facts),
                ephemeral_after=_ephemeral_after(request),
                requires_approval=request.requires_approval,
            ),
        )
        return admin_pb2.CreateEnrollmentTokenResponse(
            token=self._token(created.token), secret=created.secret.reveal()
        )

    def GetEnrollmentToken(
        self, request: admin_pb2.GetEnrollmentTokenRequest, call: Call
    ) -> admin_pb2.GetEnrollmentTokenResponse:
        return admin_pb2.GetEnrollmentTokenResponse(
            token=self._token(self._admin.get_token(request.id))
        )

    def ListEnrollmentTokens(
        self, request: admin_pb2.ListEnrollmentTokensRequest, call: Call
    ) -> admin_pb2.ListEnrollmentTokensResponse:
        page = self._admin.list_tokens(
            state=_state_filter(request.state),
            page_size=request.page_size,
            cursor=request.page_token,
        )
        return admin_pb2.ListEnrollmentTokensResponse(
            tokens=[self._token(token) for token in page.items],
            next_page_token=page.next_cursor,
        )

    def RevokeEnrollmentToken(
        self, request: admin_pb2.RevokeEnrollmentTokenRequest, call: Call
    ) -> admin_pb2.RevokeEnrollmentTokenResponse:
        token = self._admin.revoke_token(self._caller(call), request.id)
        return admin_pb2.RevokeEnrollmentTokenResponse(token=self._token(token))

    def ListDevices(
        self, request: admin_pb2.ListDevicesRequest, call: Call
    ) -> admin_pb2.ListDevicesResponse:
        page = self._admin.list_devices(
            token_id=request.token_id,
            hostname=request.hostname,
            tag=request.tag,
            hostname_prefix=request.hostname_prefix,
            facts=dict(request.facts),
            state=_device_state_filter(request.state),
            page_size=request.page_size,
            cursor=request.page_token,
        )
        return admin_pb2.ListDevicesResponse(
            devices=[self._device(device) for device in page.items],
            next_page_token=page.next_cursor,
        )

    def GetDevice(
        self, request: admin_pb2.GetDeviceRequest, call: Call
    ) -> admin_pb2.GetDeviceResponse:
        return admin_pb2.GetDeviceResponse(device=self._device(self._admin.get_device(request.id)))

    def RevokeDevice(
        self, request: admin_pb2.RevokeDeviceRequest, call: Call
    ) -> admin_pb2.RevokeDeviceResponse:
        reason = _GIVEN_REASONS.get(request.reason)
        if reason is None:
            raise InvalidArgumentError(
                f"reason {request.reason} cannot be given; one of: "
                + ", ".join(admin_pb2.RevocationReason.Name(r) for r in _GIVEN_REASONS)
            )
        device = self._admin.revoke_device(self._caller(call), request.id, reason)
        return admin_pb2.RevokeDeviceResponse(device=self._device(device))

    def _decider(self) -> Approvals:
        if self._approvals is None:
            raise FailedPreconditionError(_NO_APPROVALS)
        return self._approvals

    def ListEnrollmentRequests(
        self, request: admin_pb2.ListEnrollmentRequestsRequest, call: Call
    ) -> admin_pb2.ListEnrollmentRequestsResponse:
        page = self._decider().list_requests(
            state=_request_state_filter(request.state),
            page_size=request.page_size,
            cursor=request.page_token,
        )
        return admin_pb2.ListEnrollmentRequestsResponse(
            requests=[request_to_proto(r) for r in page.items], next_page_token=page.next_cursor
        )

    def ApproveEnrollmentRequest(
        self, request: admin_pb2.ApproveEnrollmentRequestRequest, call: Call
    ) -> admin_pb2.ApproveEnrollmentRequestResponse:
        approved, device = self._decider().approve(self._caller(call), request.id)
        return admin_pb2.ApproveEnrollmentRequestResponse(
            request=request_to_proto(approved), device=self._device(device)
        )

    def DenyEnrollmentRequest(
        self, request: admin_pb2.DenyEnrollmentRequestRequest, call: Call
    ) -> admin_pb2.DenyEnrollmentRequestResponse:
        denied = self._decider().deny(self._caller(call), request.id)
        return admin_pb2.DenyEnrollmentRequestResponse(request=request_to_proto(denied))

    def CreateDashboardLogin(
        self, request: admin_pb2.CreateDashboardLoginRequest, call: Call
    ) -> admin_pb2.CreateDashboardLoginResponse:
        if self._links is None:
            raise FailedPreconditionError(
                "this server runs no dashboard (serve --dashboard-addr off)"
            )
        caller = call.identity()
        url, expires_at = self._links.create(caller.name, caller.not_after, call.peer)
        return admin_pb2.CreateDashboardLoginResponse(url=url, expires_at=to_timestamp(expires_at))

    def GetOverview(
        self, request: admin_pb2.GetOverviewRequest, call: Call
    ) -> admin_pb2.GetOverviewResponse:
        overview = self._admin.overview(request.days)
        return admin_pb2.GetOverviewResponse(
            tokens=[
                admin_pb2.TokenStateCount(state=_TOKEN_STATES[state], count=count)
                for state, count in overview.counts.tokens.items()
            ],
            devices=[
                admin_pb2.DeviceStateCount(state=_DEVICE_STATES[state], count=count)
                for state, count in overview.counts.devices.items()
            ],
            enrollments_per_day=[
                admin_pb2.DayCount(day=day.isoformat(), count=count)
                for day, count in overview.enrollments_per_day
            ],
        )

    def CreateAdmin(
        self, request: admin_pb2.CreateAdminRequest, call: Call
    ) -> admin_pb2.CreateAdminResponse:
        created = self._admins.create(self._caller(call), request.name, request.csr_pem)
        return admin_pb2.CreateAdminResponse(
            admin=admin_to_proto(created.admin),
            certificate_pem=created.certificate_pem,
            ca_certificate_pem=created.ca_certificate_pem,
        )

    def ListAdmins(
        self, request: admin_pb2.ListAdminsRequest, call: Call
    ) -> admin_pb2.ListAdminsResponse:
        page = self._admins.list(page_size=request.page_size, cursor=request.page_token)
        return admin_pb2.ListAdminsResponse(
            admins=[admin_to_proto(admin) for admin in page.items],
            next_page_token=page.next_cursor,
        )

    def RevokeAdmin(
        self, request: admin_pb2.RevokeAdminRequest, call: Call
    ) -> admin_pb2.RevokeAdminResponse:
        admin = self._admins.revoke(self._caller(call), request.name)
        return admin_pb2.RevokeAdminResponse(admin=admin_to_proto(admin))

    def CreateService(
        self, request: admin_pb2.CreateServiceRequest, call: Call
    ) -> admin_pb2.CreateServiceResponse:
        created = self._services.create(self._caller(call), request.name, request.csr_pem)
        return admin_pb2.CreateServiceResponse(
            service=service_to_proto(created.service),
            certificate_pem=created.certificate_pem,
            ca_certificate_pem=created.ca_certificate_pem,
        )

    def ListServices(
        self, request: admin_pb2.ListServicesRequest, call: Call
    ) -> admin_pb2.ListServicesResponse:
        page = self._services.list(page_size=request.page_size, cursor=request.page_token)
        return admin_pb2.ListServicesResponse(
            services=[service_to_proto(service) for service in page.items],
            next_page_token=page.next_cursor,
        )

    def RevokeService(
        self, request: admin_pb2.RevokeServiceRequest, call: Call
    ) -> admin_pb2.RevokeServiceResponse:
        service = self._services.revoke(self._caller(call), request.name)
        return admin_pb2.RevokeServiceResponse(service=service_to_proto(service))

    def ListAuditEvents(
        self, request: admin_pb2.ListAuditEventsRequest, call: Call
    ) -> admin_pb2.ListAuditEventsResponse:
        where = check_audit_filter(
            actor=request.actor,
            resource=request.resource,
            action=request.action,
            since=from_timestamp(request.since, "since") if request.HasField("since") else None,
        )
        page = self._admin.list_audit_events(
            where, page_size=request.page_size, cursor=request.page_token
        )
        return admin_pb2.ListAuditEventsResponse(
            events=[audit_event_to_proto(event) for event in page.items],
            next_page_token=page.next_cursor,
        )
