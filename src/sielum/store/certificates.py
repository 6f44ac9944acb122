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


# A device's certificates that it no longer holds (parameters: the device id three times).
_NO_LONGER_HELD = (
    "device_id = ? AND superseded_at IS NULL"
    " AND serial NOT IN (SELECT serial FROM device WHERE id = ?"
    " UNION ALL SELECT previous_serial FROM device WHERE id = ?"
    " AND previous_serial IS NOT NULL AND previous_until IS NOT NULL)"
)


@dataclasses.dataclass(frozen=True)
class _CertificateSql:
    """The statements of this part, with the driver's placeholders, made once per Store."""

    insert_current: str
    to_supersede: str
    supersede_others: str
    set_reason: str
    mark_revoked: str
    next_stamp: str
    read_stamp: str
    refused: str
    refused_after: str
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
            # current one nor the previous one while that is honoured. Looked for first,
            # so that the stamp moves only when one is superseded.
            "to_supersede": (
                f"SELECT 1 FROM device_certificate WHERE {_NO_LONGER_HELD} LIMIT 1"  # noqa: S608
            ),
            "supersede_others": (
                "UPDATE device_certificate SET superseded_at = ?, refused_change = ?"  # noqa: S608
                f" WHERE {_NO_LONGER_HELD}"
            ),
            # The first revocation's reason stays, as its revoked_at does.
            "set_reason": (
                "UPDATE device SET revocation_reason = ?"
                " WHERE id = ? AND revoked_at IS NOT NULL AND revocation_reason IS NULL"
            ),
            # The certificates a revocation refuses: the device's, but the superseded
            # ones, which stay listed as superseded.
            "mark_revoked": (
                "UPDATE device_certificate SET refused_change = ?"
                " WHERE device_id = ? AND superseded_at IS NULL"
            ),
            # First in the change's transaction (migration step 13): the row lock makes
            # the changes commit in stamp order.
            "next_stamp": (
                "UPDATE revocation_change SET stamp = stamp + 1 WHERE id = 1 RETURNING stamp"
            ),
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
            # What changed since a stamp, as the rows of "refused" (the revoked device's
            # time and reason, unless the certificate was superseded first).
            "refused_after": (
                "SELECT c.serial, c.device_id, c.not_after, c.superseded_at,"
                " CASE WHEN c.superseded_at IS NULL THEN d.revoked_at END,"
                " CASE WHEN c.superseded_at IS NULL THEN d.revocation_reason END"
                " FROM device_certificate c JOIN device d ON d.id = c.device_id"
                " WHERE c.refused_change > ? AND c.not_after > ?"
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
        # The caller changed the device row first, so its lock keeps another change of
        # this device's certificates out between the look and the update.
        if execute(self.db, sql.to_supersede, (device_id,) * 3).fetchone() is None:
            return
        stamp = self._next_revocation_stamp()
        execute(self.db, sql.supersede_others, (to_micros(now), stamp, *(device_id,) * 3))

    def _refuse_device_certificates(self, device_id: str) -> None:
        """The device was just revoked in this transaction: its certificates are refused."""
        stamp = self._next_revocation_stamp()
        execute(self.db, self._certificate_sql.mark_revoked, (stamp, device_id))

    def _next_revocation_stamp(self) -> int:
        """Move the revocation stamp, and hold it until this transaction ends."""
        row = execute(self.db, self._certificate_sql.next_stamp).fetchone()
        return int(row[0])

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
                self._refuse_device_certificates(device_id)
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
    def refused_certificate_changes(self, after: int, now: datetime) -> list[RefusedRow]:
        """The rows of refused_certificate_rows that changed after revocation stamp after.

        Read the stamp first: a change committed between the two reads comes again in the
        next call (the CRL keeps its entries by serial, so that costs nothing), and one
        that committed before it is marked with a stamp at most the one read (migration
        step 13). So the CRL reads only what changed, on the partial index of
        refused_change, instead of every refused certificate (bench/crl_store.py).
        """
        at = to_micros(now)
        rows = execute(self.db, self._certificate_sql.refused_after, (after, at)).fetchall()
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
