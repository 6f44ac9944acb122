"""Device certificates in SQL: each one issued, when it stopped being honoured, and why.

The device rows say which certificates Sielum honours now (the current one, and the
previous one until the current one is first used). Relying parties that check X.509
revocation (the CRL and OCSP of sielum/revocation/) need the others too, until they
expire: this part keeps a row per device certificate (table device_certificate,
migration step 10) and the revocation reason of a device. DeviceStore calls
_record_certificates after every change of a device's certificates, and
_revoke_with_reason to revoke, each inside the transaction that makes the change; so
the history can never disagree with what the device gate honours
(tests/store/test_certificates.py).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sielum.model import AuditEvent, CertificateRecord
from sielum.store.base import StoreBase, _guarded, _time
from sielum.store.database import execute, write_transaction
from sielum.store.models import from_micros, to_micros

# The reason a revocation carries when none was given (RFC 5280's name).
UNSPECIFIED = "unspecified"

RefusedRow = tuple[str, int, int | None, int | None, str | None]
"""A refused certificate as stored: serial (lowercase hex), not_after, superseded_at,
revoked_at (microseconds since the epoch), reason."""


@dataclasses.dataclass(frozen=True)
class _CertificateSql:
    """The statements of this part, with the driver's placeholders, made once per Store."""

    insert_current: str
    supersede_others: str
    set_reason: str
    bump_stamp: str
    read_stamp: str
    refused: str
    status: str

    @classmethod
    def build(cls, param: str) -> _CertificateSql:
        sql = {
            # The device's current certificate, once (a repeat changes nothing).
            "insert_current": (
                "INSERT INTO device_certificate (serial, device_id, not_after)"
                " SELECT serial, id, not_after FROM device WHERE id = ?"
                " ON CONFLICT (serial) DO NOTHING"
            ),
            # Every other certificate of the device that it no longer holds: neither the
            # current one nor the previous one while that is honoured.
            "supersede_others": (
                "UPDATE device_certificate SET superseded_at = ?"
                " WHERE device_id = ? AND superseded_at IS NULL"
                " AND serial NOT IN (SELECT serial FROM device WHERE id = ?"
                " UNION ALL SELECT previous_serial FROM device WHERE id = ?"
                " AND previous_serial IS NOT NULL AND previous_until IS NOT NULL)"
            ),
            # The first revocation's reason stays, as its revoked_at does.
            "set_reason": (
                "UPDATE device SET revocation_reason = ?"
                " WHERE id = ? AND revoked_at IS NOT NULL AND revocation_reason IS NULL"
            ),
            "bump_stamp": "UPDATE revocation_change SET stamp = stamp + 1 WHERE id = 1",
            "read_stamp": "SELECT stamp FROM revocation_change WHERE id = 1",
            # Two parts, each on its index: superseded certificates on
            # device_certificate_superseded, and the others of revoked devices on
            # device_revoked_seq then device_certificate_device_id.
            "refused": (
                "SELECT serial, device_id, not_after, superseded_at, NULL, NULL"
                " FROM device_certificate WHERE superseded_at IS NOT NULL AND not_after > ?"
                " UNION ALL"
                " SELECT c.serial, c.device_id, c.not_after, NULL, d.revoked_at,"
                " d.revocation_reason"
                # CROSS JOIN: SQLite then joins in this order, from the few revoked
                # devices (without it, it walked every certificate); PostgreSQL plans freely.
                " FROM device d CROSS JOIN device_certificate c"
                " WHERE c.device_id = d.id AND d.revoked_at IS NOT NULL AND c.superseded_at IS NULL"
                " AND c.not_after > ?"
            ),
            "status": (
                "SELECT c.serial, c.device_id, c.not_after, c.superseded_at, d.revoked_at,"
                " d.revocation_reason"
                " FROM device_certificate c JOIN device d ON d.id = c.device_id"
                " WHERE c.serial = ?"
            ),
        }
        return cls(**{name: text.replace("?", param) for name, text in sql.items()})


class CertificateStore(StoreBase):
    """Device certificates: recorded as they are issued and retired; read for CRL and OCSP."""

    @functools.cached_property
    def _certificate_sql(self) -> _CertificateSql:
        return _CertificateSql.build(self.db.param)

    # Written inside DeviceStore's transactions

    def _record_first_certificate(self, device_id: str) -> None:
        """A new device's certificate: its only one, so nothing to supersede."""
        execute(self.db, self._certificate_sql.insert_current, (device_id,))

    def _record_certificates(self, device_id: str, now: datetime) -> None:
        """After a change of the device's certificates: record its current one, and mark
        superseded at now every other one it no longer holds."""
        sql = self._certificate_sql
        execute(self.db, sql.insert_current, (device_id,))
        superseded = execute(
            self.db, sql.supersede_others, (to_micros(now), device_id, device_id, device_id)
        )
        if superseded.rowcount:
            execute(self.db, sql.bump_stamp)

    def _revoke_with_reason(
        self, model: Any, device_id: str, now: datetime, audit: AuditEvent, not_found: str,
        reason: str, on_change: Callable[[], object] | None = None,
    ) -> Any:  # fmt: skip
        """StoreBase._revoke for a device, recording the reason of its first revocation;
        on_change runs last in the transaction when the device was revoked by this call."""
        reason = reason or UNSPECIFIED
        with write_transaction(self.db):
            row = self._revoke(model, device_id, now, audit, not_found)
            if execute(self.db, self._certificate_sql.set_reason, (reason, device_id)).rowcount:
                execute(self.db, self._certificate_sql.bump_stamp)
                row.revocation_reason = reason
                if on_change is not None:
                    on_change()  # last in the transaction: the device event log's rule
        return row

    # Read by the revocation port

    @_guarded
    def revocation_stamp(self) -> int:
        """A number that changes whenever a certificate is refused (one row, read each second)."""
        row = execute(self.db, self._certificate_sql.read_stamp).fetchone()
        return 0 if row is None else int(row[0])

    @_guarded
    def refused_certificate_rows(self, now: datetime) -> list[RefusedRow]:
        """refused_certificates as the database holds them, for the CRL's rebuild: (serial,
        not_after, superseded_at, revoked_at, reason), times in microseconds since the
        epoch. Turning 600,000 rows into dataclasses of datetimes took longer than reading
        them (bench/crl_store.py); the CRL keeps its entries by row, and converts only new
        ones."""
        at = to_micros(now)
        rows = execute(self.db, self._certificate_sql.refused, (at, at)).fetchall()
        return [(row[0], row[2], row[3], row[4], row[5]) for row in rows]

    @_guarded
    def refused_certificates(self, now: datetime) -> list[CertificateRecord]:
        """Every device certificate relying parties must refuse that has not expired at now.

        Superseded ones carry superseded_at (and no reason); the others of a revoked device
        carry revoked_at and the reason. One statement: on PostgreSQL, one snapshot.
        """
        at = to_micros(now)
        rows = execute(self.db, self._certificate_sql.refused, (at, at)).fetchall()
        return [_record(row) for row in rows]

    @_guarded
    def certificate_status(self, serial: str) -> CertificateRecord | None:
        """The certificate of that serial (lowercase hex), None if no device's: one lookup."""
        row = execute(self.db, self._certificate_sql.status, (serial,)).fetchone()
        return None if row is None else _record(row)


def _record(row: Sequence[Any]) -> CertificateRecord:
    return CertificateRecord(
        serial=row[0],
        device_id=row[1],
        not_after=from_micros(int(row[2])),
        superseded_at=_time(row[3]),
        revoked_at=_time(row[4]),
        reason=row[5],
    )
