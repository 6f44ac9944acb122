"""What the domain services report for metrics: a protocol, closed label sets, a no-op default.

Enroller, DeviceService and Administration are handed a Recorder at start-up
(server/app.py wires server/metrics.py's Metrics in); they never import
prometheus_client or server/. Every label value is a member of one of the enums
below, so no label can ever carry a token id, device id, hostname or address
(tests/e2e/test_metrics.py::test_two_workers_count_every_call_once_even_across_kill_9
checks a real exposition for them).
"""

from __future__ import annotations

import enum
from typing import Protocol


class EnrollmentResult(enum.Enum):
    """How one Enroll call ended, as sielum_enrollments_total{result} names it."""

    OK = "ok"
    RETRIED = "retried"  # the same key again: the same device, no new use
    # Label values, not secrets (S105), here and below.
    MALFORMED_TOKEN = "malformed_token"  # noqa: S105 - not a token's format or checksum
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - unknown id or wrong secret
    REVOKED = "revoked"
    EXPIRED = "expired"
    EXHAUSTED = "exhausted"
    TOKEN_UNUSABLE = "token_unusable"  # noqa: S105 - a concurrent call took the last use
    BAD_CSR = "bad_csr"
    BAD_REQUEST = "bad_request"  # hostname or facts out of bounds
    KEY_IN_USE = "key_in_use"  # the key is another device's (a cloned disk image)
    DEVICE_REVOKED = "device_revoked"  # a retry for a device revoked since
    POLICY = "policy"  # a rule of the token's policy refused it (which: policy_refusal)
    PENDING = "pending"  # waits for an admin's approval
    DENIED = "denied"  # an admin denied this key's request
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"  # the database
    ERROR = "error"  # anything unexpected


class CertificateKind(enum.Enum):
    """What a certificate the CA signed is for, as sielum_certificates_issued_total{kind}."""

    DEVICE = "device"  # a first enrollment
    RENEWAL = "renewal"  # a device's new key
    ADMIN = "admin"  # AdminService/CreateAdmin
    SERVICE = "service"  # AdminService/CreateService


class PolicyRule(enum.Enum):
    """Which rule of a token's policy refused an enrollment, as sielum_policy_refusals_total{rule}.

    The values are tokenpolicy.PolicyRule's (tests/unit/test_tokenpolicy.py checks they agree).
    """

    NETWORK = "network"
    HOSTNAME = "hostname"
    FACT = "fact"


class Decision(enum.Enum):
    """An admin's decision on an enrollment request, as sielum_enrollment_decisions_total."""

    APPROVED = "approved"
    DENIED = "denied"


class DashboardLoginResult(enum.Enum):
    """How one dashboard login ended, as sielum_dashboard_logins_total{result}."""

    OK = "ok"
    REFUSED = "refused"  # the one-time code is unknown, spent or expired


class Recorder(Protocol):
    """Counts what the domain decided. Each call must be cheap: it sits on the enrollment path."""

    def enrollment(self, result: EnrollmentResult) -> None: ...

    def certificate_issued(self, kind: CertificateKind) -> None: ...

    def dashboard_login(self, result: DashboardLoginResult) -> None: ...

    def directory_streams(self, change: int) -> None:
        """WatchDevices streams opened (+1) or ended (-1)."""

    def directory_events(self, count: int) -> None:
        """Events sent on WatchDevices streams (snapshot entries and keepalives included)."""

    def policy_refusal(self, rule: PolicyRule) -> None: ...

    def decision(self, decision: Decision) -> None: ...


class NoRecorder:
    """Records nothing: the default, and what `serve --metrics-addr off` runs with."""

    def enrollment(self, result: EnrollmentResult) -> None:
        pass

    def certificate_issued(self, kind: CertificateKind) -> None:
        pass

    def dashboard_login(self, result: DashboardLoginResult) -> None:
        pass

    def directory_streams(self, change: int) -> None:
        pass

    def directory_events(self, count: int) -> None:
        pass

    def policy_refusal(self, rule: PolicyRule) -> None:
        pass

    def decision(self, decision: Decision) -> None:
        pass
