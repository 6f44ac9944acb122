"""Accept exactly the device certificates Sielum accepts: DeviceVerifier and interceptors."""

from __future__ import annotations

from collections.abc import Collection

from sielum.verify.certificates import Certificate
from sielum.verify.errors import (
    CertificateExpiredError,
    CertificateSupersededError,
    DeviceRevokedError,
    DirectoryUnavailableError,
    NoCertificateError,
    NotADeviceCertificateError,
    VerifyError,
)
from sielum.verify.index import DeviceRecord
from sielum.verify.interceptors import HEALTH_METHODS, AioDeviceInterceptor, DeviceInterceptor
from sielum.verify.verifier import Backoff, DeviceVerifier, VerifierStatus

__all__ = [
    "HEALTH_METHODS",
    "AioDeviceInterceptor",
    "Backoff",
    "Certificate",
    "CertificateExpiredError",
    "CertificateSupersededError",
    "DeviceInterceptor",
    "DeviceRecord",
    "DeviceRevokedError",
    "DeviceVerifier",
    "DirectoryUnavailableError",
    "NoCertificateError",
    "NotADeviceCertificateError",
    "VerifierStatus",
    "VerifyError",
    "aio_interceptor",
    "interceptor",
]


def interceptor(
    verifier: DeviceVerifier, allow: Collection[str] = HEALTH_METHODS
) -> DeviceInterceptor:
    """For grpc.server(interceptors=[...]): admits only calls whose device certificate checks."""
    return DeviceInterceptor(verifier, allow)


def aio_interceptor(
    verifier: DeviceVerifier, allow: Collection[str] = HEALTH_METHODS
) -> AioDeviceInterceptor:
    """For grpc.aio.server(interceptors=[...]): the same admission, on the event loop."""
    return AioDeviceInterceptor(verifier, allow)
