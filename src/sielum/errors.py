"""The one exception hierarchy: each error carries its gRPC status and a message safe to show."""

from __future__ import annotations

import grpc


class SielumError(Exception):
    """Base of every error a client may see. The message must be safe to send as is."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(SielumError):
    """The request is malformed: bad CSR, wrong key type, a field out of range."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class MalformedTokenError(InvalidArgumentError):
    """The text is no enrollment token: wrong format, or a checksum that does not match."""


class InvalidCsrError(InvalidArgumentError):
    """The CSR is unreadable, of another key type, or its signature does not verify."""


class UnauthenticatedError(SielumError):
    """The credential is unknown or wrong; always one generic message."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(SielumError):
    """The caller is known but not allowed: wrong role, revoked device, unusable token."""

    code = grpc.StatusCode.PERMISSION_DENIED


class TokenRevokedError(PermissionDeniedError):
    """The enrollment token was revoked by an admin."""


class TokenExpiredError(PermissionDeniedError):
    """The enrollment token's expiry has passed."""


class TokenExhaustedError(PermissionDeniedError):
    """The enrollment token has no uses left."""


class NotFoundError(SielumError):
    """No resource has that id."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(SielumError):
    """The resource exists already (a public key enrolled as another device)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(SielumError):
    """The system is not in a state that allows this (the last active admin, the dashboard off)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhaustedError(SielumError):
    """The caller is over a limit (too many failed enrollments from one peer)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class OutOfRangeError(SielumError):
    """A position the server no longer holds or never held (WatchDevices' after_sequence)."""

    code = grpc.StatusCode.OUT_OF_RANGE


class UnavailableError(SielumError):
    """A dependency (the database) is unreachable for now; the call may be retried."""

    code = grpc.StatusCode.UNAVAILABLE


class InternalError(SielumError):
    """Something unexpected; the cause is logged, never sent."""

    code = grpc.StatusCode.INTERNAL


class TokenUnusableError(PermissionDeniedError):
    """The store could not consume a use: revoked, expired or exhausted at commit time.

    The enroll service re-reads the token to say which of the three.
    """


class RenewalRefusedError(PermissionDeniedError):
    """The store could not swap in a renewal: revoked, superseded or paced at commit time.

    The device service re-reads the device to say which.
    """


class TokenPolicyError(PermissionDeniedError):
    """The enrollment breaks a rule of its token's policy; rule names which, for metrics.

    Only ever raised once the secret has verified: a caller without it learns nothing
    of the policy.
    """

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"token policy: {message}")
        self.rule = rule


class PendingApprovalError(FailedPreconditionError):
    """The enrollment waits for an admin's approval; the agent asks again with the same key."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"pending approval: request {request_id}")
        self.request_id = request_id


class EnrollmentDeniedError(PermissionDeniedError):
    """An admin denied the enrollment request of this key."""

    def __init__(self) -> None:
        super().__init__("enrollment denied")
