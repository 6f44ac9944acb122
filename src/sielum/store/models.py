"""Peewee models of the store's tables, bound per database; they never leave sielum.store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import peewee

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(value: datetime) -> int:
    """An aware datetime as integer microseconds since the Unix epoch (exact, no float)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("the store takes only timezone-aware datetimes")
    return (value - EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


class UtcMicrosField(peewee.BigIntegerField):
    """A point in time as a BIGINT of microseconds since 1970-01-01 UTC.

    One representation on both backends, so `expires_at > now` in SQL compares
    integers exactly as Python compares the datetimes, to the microsecond
    (tests/store/test_store.py::test_expiry_boundary_is_exact).
    """

    def db_value(self, value: Any) -> Any:
        if isinstance(value, datetime):
            return to_micros(value)
        return value

    def python_value(self, value: Any) -> datetime | None:
        if value is None:
            return None
        return from_micros(int(value))


@dataclass(frozen=True)
class Tables:
    """The model classes bound to one database (one Store, one set of classes)."""

    token: Any
    device: Any
    audit_event: Any
    admin: Any
    admin_first_use: Any
    service: Any
    schema_version: Any
    dashboard_login: Any
    dashboard_session: Any
    enrollment_request: Any
    device_label: Any

    def all(self) -> tuple[Any, ...]:
        return (
            self.token,
            self.device,
            self.audit_event,
            self.admin,
            self.admin_first_use,
            self.service,
            self.schema_version,
            self.dashboard_login,
            self.dashboard_session,
            self.enrollment_request,
            self.device_label,
        )


def bind_tables(db: peewee.Database) -> Tables:
    """Model classes for db. Built per database because several stores may live in one process.

    The DDL lives in migrations.py; test_migrations.py checks that these models
    and the migrated schema have the same columns.
    """

    class _Base(peewee.Model):
        class Meta:
            database = db

    class TokenRow(_Base):
        seq = peewee.BigAutoField()
        id = peewee.TextField(unique=True)
        label = peewee.TextField()
        secret_hash = peewee.BlobField()
        max_uses = peewee.IntegerField(null=True)
        uses = peewee.IntegerField(default=0)
        expires_at = UtcMicrosField(null=True)
        created_at = UtcMicrosField()
        created_by = peewee.TextField()
        revoked_at = UtcMicrosField(null=True)
        last_used_at = UtcMicrosField(null=True)
        policy = peewee.TextField(default="{}")  # JSON (store/tokens.py)
        ephemeral_after = peewee.BigIntegerField(null=True)  # microseconds

        class Meta:
            table_name = "token"

    class DeviceRow(_Base):
        seq = peewee.BigAutoField()
        id = peewee.TextField(unique=True)
        hostname = peewee.TextField()
        token_id = peewee.TextField(index=True)  # REFERENCES token(id) in the DDL
        public_key_sha256 = peewee.TextField(unique=True)
        serial = peewee.TextField()
        certificate_pem = peewee.TextField()
        not_after = UtcMicrosField()
        enrolled_at = UtcMicrosField()
        last_seen_at = UtcMicrosField(null=True)
        revoked_at = UtcMicrosField(null=True)
        peer = peewee.TextField()
        facts = peewee.TextField(default="{}")  # JSON object of strings
        previous_serial = peewee.TextField(null=True)
        previous_until = UtcMicrosField(null=True)
        renewal_tat = UtcMicrosField(null=True)
        revocation_reason = peewee.TextField(null=True)  # store/certificates.py
        tags = peewee.TextField(default="[]")  # JSON array of strings

        class Meta:
            table_name = "device"

    class DeviceLabelRow(_Base):
        """One tag or fact of a device, by which ListDevices finds it (store/devices.py)."""

        label = peewee.TextField()
        device_seq = peewee.BigIntegerField()

        class Meta:
            table_name = "device_label"
            primary_key = peewee.CompositeKey("label", "device_seq")

    class AuditEventRow(_Base):
        seq = peewee.BigAutoField()
        at = UtcMicrosField()
        actor = peewee.TextField()
        action = peewee.TextField()
        resource = peewee.TextField()
        peer = peewee.TextField(default="")
        detail = peewee.TextField(default="")

        class Meta:
            table_name = "audit_event"

    class AdminRow(_Base):
        seq = peewee.BigAutoField()
        name = peewee.TextField(unique=True)
        created_at = UtcMicrosField()
        created_by = peewee.TextField()
        revoked_at = UtcMicrosField(null=True)
        serial = peewee.TextField(null=True)
        previous_serial = peewee.TextField(null=True)
        previous_until = UtcMicrosField(null=True)
        certified_at = UtcMicrosField(null=True)
        issuer = peewee.TextField(null=True)

        class Meta:
            table_name = "admin"

    class AdminFirstUseRow(_Base):
        id = peewee.IntegerField(primary_key=True)
        issued_until = UtcMicrosField()

        class Meta:
            table_name = "admin_first_use"

    class ServiceRow(_Base):
        seq = peewee.BigAutoField()
        name = peewee.TextField(unique=True)
        created_at = UtcMicrosField()
        created_by = peewee.TextField()
        revoked_at = UtcMicrosField(null=True)
        serial = peewee.TextField()
        issuer = peewee.TextField()

        class Meta:
            table_name = "service"

    class SchemaVersionRow(_Base):
        id = peewee.IntegerField(primary_key=True)
        version = peewee.IntegerField()

        class Meta:
            table_name = "schema_version"

    class DashboardLoginRow(_Base):
        seq = peewee.BigAutoField()
        code_hash = peewee.BlobField(unique=True)
        admin = peewee.TextField()
        created_at = UtcMicrosField()
        expires_at = UtcMicrosField()
        session_limit = UtcMicrosField()
        used_at = UtcMicrosField(null=True)

        class Meta:
            table_name = "dashboard_login"

    class DashboardSessionRow(_Base):
        seq = peewee.BigAutoField()
        key_hash = peewee.BlobField(unique=True)
        admin = peewee.TextField(index=True)
        created_at = UtcMicrosField()
        last_seen_at = UtcMicrosField()
        expires_at = UtcMicrosField()

        class Meta:
            table_name = "dashboard_session"

    class EnrollmentRequestRow(_Base):
        seq = peewee.BigAutoField()
        id = peewee.TextField(unique=True)
        token_id = peewee.TextField()  # REFERENCES token(id) in the DDL
        hostname = peewee.TextField()
        facts = peewee.TextField(default="{}")
        peer = peewee.TextField()
        public_key_sha256 = peewee.TextField(unique=True)
        csr_pem = peewee.TextField()
        requested_at = UtcMicrosField()
        state = peewee.TextField()
        decided_by = peewee.TextField(default="")
        decided_at = UtcMicrosField(null=True)
        device_id = peewee.TextField(default="")

        class Meta:
            table_name = "enrollment_request"

    return Tables(
        token=TokenRow,
        device=DeviceRow,
        audit_event=AuditEventRow,
        admin=AdminRow,
        admin_first_use=AdminFirstUseRow,
        service=ServiceRow,
        schema_version=SchemaVersionRow,
        dashboard_login=DashboardLoginRow,
        dashboard_session=DashboardSessionRow,
        enrollment_request=EnrollmentRequestRow,
        device_label=DeviceLabelRow,
    )
