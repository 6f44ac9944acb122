"""Why a certificate is refused: one exception per reason, each with its gRPC status and message."""

from __future__ import annotations

import grpc


class VerifyError(Exception):
    """A refusal. The message is safe to send to the caller as is."""

    code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoCertificateError(VerifyError):
    """The call carries no verified client certificate."""


class NotADeviceCertificateError(VerifyError):
    """Unreadable, issued by another CA, of another role, or not for client authentication."""


class DeviceRevokedError(VerifyError):
    """The directory holds no device of that id: revoked, unenrolled, or never enrolled."""


class CertificateExpiredError(VerifyError):
    """The certificate is outside its validity period."""


class CertificateSupersededError(VerifyError):
    """The device has renewed: this is no longer one of its honoured certificates."""


class DirectoryUnavailableError(VerifyError):
    """The index is not synced, or stale beyond max_staleness: every certificate is refused.

    UNAVAILABLE, not PERMISSION_DENIED: the caller did nothing wrong and should retry,
    while PERMISSION_DENIED tells a client (sielum-agent, for one) to give up for good.
    """

    code = grpc.StatusCode.UNAVAILABLE
