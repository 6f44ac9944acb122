"""Plain values shared by every layer: tokens, devices, admins, services, audit events."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypeVar

T = TypeVar("T")


class TokenState(enum.Enum):
    ACTIVE = "active"
    EXPIRED = "expired"
    EXHAUSTED = "exhausted"
    REVOKED = "revoked"


class DeviceState(enum.Enum):
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


class AdminState(enum.Enum):
    ACTIVE = "active"
    REVOKED = "revoked"


class ServiceState(enum.Enum):
    ACTIVE = "active"
    REVOKED = "revoked"


class DeviceEventKind(enum.IntEnum):
    """What a directory event reports (the values are sielum.directory.v1.DeviceEventKind's)."""

    CURRENT = 1  # a snapshot entry
    SYNCED = 2  # the subscriber holds every event up to this sequence
    ENROLLED = 3
    RENEWED = 4  # the device's honoured certificates changed
    REVOKED = 5
    UNENROLLED = 6


@dataclass(frozen=True)
class DeviceEvent:
    """One entry of the device event log, or a snapshot entry, carrying the device's standing.

    serial is empty for a revoked device; previous_serial is set only while the
    certificate the last renewal replaced is still honoured, until previous_until.
    """

    sequence: int
    at: datetime
    kind: DeviceEventKind
    device_id: str = ""
    serial: str = ""
    previous_serial: str = ""
    previous_until: datetime | None = None
    hostname: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenPolicy:
    """Optional rules on a token, checked at each enrollment (tokenpolicy.judge).

    Each empty field sets no rule. Values are as tokenpolicy.check_policy left them:
    tags sorted and unique, networks in their canonical form, facts sorted.
    """

    tags: tuple[str, ...] = ()
    allowed_networks: tuple[str, ...] = ()
    hostname_pattern: str = ""
    required_facts: Mapping[str, str] = field(default_factory=dict)
    ephemeral_after: timedelta | None = None
    requires_approval: bool = False


NO_POLICY = TokenPolicy()


@dataclass(frozen=True)
class Token:
    """An enrollment token as stored: never the secret, only its hash."""

    id: str
    label: str
    secret_hash: bytes
    max_uses: int | None
    uses: int
    expires_at: datetime | None
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    policy: TokenPolicy = NO_POLICY


@dataclass(frozen=True)
class Device:
    """An enrolled device and its current certificate."""

    id: str
    hostname: str
    token_id: str
    public_key_sha256: str
    serial: str
    certificate_pem: str
    not_after: datetime
    enrolled_at: datetime
    peer: str
    facts: Mapping[str, str] = field(default_factory=dict)
    last_seen_at: datetime | None = None
    revoked_at: datetime | None = None
    # The tags of its token's policy at enrollment, also in its certificate.
    tags: tuple[str, ...] = ()


class EnrollmentRequestState(enum.Enum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    # Undecided, while its token can no longer be used: computed, never stored.
    EXPIRED = "expired"


@dataclass(frozen=True)
class EnrollmentRequest:
    """An enrollment with a token that requires approval, waiting for (or given) a decision.

    The CSR is kept so that the approval can sign it; the agent keeps its key and
    asks again until its device exists (or the request is denied).
    """

    id: str
    token_id: str
    hostname: str
    facts: Mapping[str, str]
    peer: str
    public_key_sha256: str
    csr_pem: str
    requested_at: datetime
    state: EnrollmentRequestState = EnrollmentRequestState.PENDING
    decided_by: str = ""
    decided_at: datetime | None = None
    device_id: str = ""


@dataclass(frozen=True)
class Admin:
    """A registered admin: the person behind the certificates that name sielum://admin/<name>.

    A name is never reused once revoked, so admin/<name> in the audit trail always
    means one person.
    """

    name: str
    created_at: datetime
    # The admin who created this one, or how it was registered: "init",
    # "issue-admin-cert", or "certificate" (known from a certificate made before
    # admins were registered).
    created_by: str
    revoked_at: datetime | None = None
    # Which of the admin's certificates are honoured (identities/policy.py::is_honoured):
    # the newest, `serial` (None: none was recorded, every one made before is); the one
    # before it, `previous_serial` (None: any made before `serial`), until
    # `previous_until`, which the first use of the newest clears to None. `certified_at`
    # is when `serial` was issued; `issuer` is the key identifier of the CA that signed
    # it: a certificate of another CA (a CA rollover on a shared database) is no newer
    # or older than these, and is judged by the admin's name alone.
    serial: str | None = None
    previous_serial: str | None = None
    previous_until: datetime | None = None
    certified_at: datetime | None = None
    issuer: str | None = None

    @property
    def state(self) -> AdminState:
        return AdminState.ACTIVE if self.revoked_at is None else AdminState.REVOKED


@dataclass(frozen=True)
class Service:
    """A service identity: another system that calls Sielum with the certificate that names
    sielum://service/<name>. A name is never reused once revoked, so service/<name> in the
    audit trail always means one system.
    """

    name: str
    created_at: datetime
    created_by: str  # the admin who created it
    # The one certificate made for it (CreateService), and the key identifier of the CA
    # that signed it: only that certificate is honoured.
    serial: str
    issuer: str
    revoked_at: datetime | None = None

    @property
    def state(self) -> ServiceState:
        return ServiceState.ACTIVE if self.revoked_at is None else ServiceState.REVOKED


@dataclass(frozen=True)
class DeviceStanding:
    """What the device gate reads on every call: revocation, and which certificates count.

    `serial` is the current certificate's; `previous_serial` the one its last renewal
    replaced, honoured until `previous_until` (its own not_after), which the first
    call with the current certificate clears to None. `renewal_tat` paces renewals
    (devices/policy.py).
    """

    id: str
    serial: str
    previous_serial: str | None = None
    previous_until: datetime | None = None
    revoked_at: datetime | None = None
    renewal_tat: datetime | None = None
    # Read for the directory (Store.get_directory_entry), not by the gate.
    hostname: str = ""
    not_after: datetime | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class RenewalPace:
    """How often a device may renew: `burst` renewals at once, then one per `interval`."""

    burst: int
    interval: timedelta


@dataclass(frozen=True)
class CertificateRecord:
    """One device certificate the CA issued, and whether relying parties must refuse it.

    `serial` is lowercase hex. A certificate is refused once `superseded_at` is set (a
    renewal replaced it and the new one was used, or the retry of a renewal dropped it)
    or once its device is revoked (`revoked_at`, with the RFC 5280 reason as given,
    spelled as cryptography's x509.ReasonFlags values: "keyCompromise", "unspecified").
    """

    serial: str
    device_id: str
    not_after: datetime
    superseded_at: datetime | None = None
    revoked_at: datetime | None = None
    reason: str | None = None


# The action of every enrollment: most of the trail, so the action index leaves it out
# (store/migrations.py, step 6).
ENROLL_ACTION = "device.enroll"


@dataclass(frozen=True)
class AuditEvent:
    """One line of the audit trail: who did what to which resource, from where, when."""

    at: datetime
    actor: str
    action: str
    resource: str
    peer: str = ""
    detail: str = ""


@dataclass(frozen=True)
class AuditFilter:
    """Which audit events to list; an empty field (or None) does not filter."""

    actor: str = ""  # "admin/alice", "device/<id>", "token/<id>"
    resource: str = ""  # "token/<id>", "device/<id>", "admin/<name>"
    action: str = ""  # "token.create", "device.revoke", ...
    since: datetime | None = None  # at or after this time


@dataclass(frozen=True)
class Page(Generic[T]):
    """A page of a listing and the cursor of the next one ("" on the last page)."""

    items: tuple[T, ...]
    next_cursor: str


@dataclass(frozen=True)
class StateCounts:
    """How many tokens and devices are in each state at one moment (every state present)."""

    tokens: Mapping[TokenState, int]
    devices: Mapping[DeviceState, int]


@dataclass(frozen=True)
class DashboardLogin:
    """A one-time dashboard login code as stored: only the hash of the code.

    session_limit is the latest a session it starts may last: the expiry of the
    credential of the admin who asked for the link.
    """

    code_hash: bytes
    admin: str
    created_at: datetime
    expires_at: datetime
    session_limit: datetime
    used_at: datetime | None = None


@dataclass(frozen=True)
class DashboardSession:
    """A dashboard session as stored: only the hash of the cookie's key."""

    key_hash: bytes
    admin: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime  # absolute: 8 hours, never past the login's session_limit
