"""The CRL, built on a thread of its own and kept ready; OCSP's answer for one serial.

Building the CRL reads every refused certificate and signs a list of them: at a million
devices that is seconds of CPU (bench/RESULTS.md), so it never happens on a request.
CrlPublisher's thread reads the store's revocation stamp every `poll` seconds (one row)
and, when it moved, reads the certificates refused since and signs the list again; every
`refresh`, well before the CRL's nextUpdate (one hour ahead), it reads them all. A
revocation is in /crl within poll plus one rebuild, which DESIGN bounds at 5 seconds.
GET /crl hands out the bytes built last.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sielum.ca.authority import CertificateAuthority
from sielum.ca.revocation import (
    CertificateStatus,
    Revocation,
    Standing,
    crl_entry_der,
    reason_flag,
)
from sielum.clock import Clock
from sielum.errors import SielumError
from sielum.logs import log_event
from sielum.model import CertificateRecord
from sielum.store.certificates import RefusedRow
from sielum.store.models import to_micros
from sielum.store.store import Store

log = logging.getLogger("sielum.revocation")

POLL_SECONDS = 1.0
# Rebuilt at least this often: a CRL fetched at any moment is valid for 45 minutes more.
REFRESH = timedelta(minutes=15)
_SUPERSEDED = "superseded"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def revocation_of(record: CertificateRecord) -> Revocation | None:
    """How a refused certificate is listed; None while it is honoured.

    A superseded certificate says superseded, from when it stopped being honoured, even
    if its device was revoked later: it was refused first, for that reason.
    """
    if record.superseded_at is not None:
        return Revocation(
            serial=int(record.serial, 16),
            revoked_at=record.superseded_at,
            not_after=record.not_after,
            reason=reason_flag(_SUPERSEDED),
        )
    if record.revoked_at is not None:
        return Revocation(
            serial=int(record.serial, 16),
            revoked_at=record.revoked_at,
            not_after=record.not_after,
            reason=reason_flag(record.reason),
        )
    return None


def _entry(row: RefusedRow) -> bytes:
    """The CRL entry of one refused row, as revocation_of lists it."""
    serial, not_after, superseded_at, revoked_at, reason = row
    record = CertificateRecord(
        serial=serial,
        device_id="",
        not_after=_EPOCH + timedelta(microseconds=not_after),
        superseded_at=None
        if superseded_at is None
        else _EPOCH + timedelta(microseconds=superseded_at),
        revoked_at=None if revoked_at is None else _EPOCH + timedelta(microseconds=revoked_at),
        reason=reason,
    )
    revocation = revocation_of(record)
    if revocation is None:  # the query returns refused certificates only
        raise ValueError(f"certificate {serial} is not refused")
    return crl_entry_der(revocation.serial, revocation.revoked_at, revocation.reason)


def _kept(row: RefusedRow) -> tuple[RefusedRow, bytes]:
    return row, _entry(row)


def standing_of(record: CertificateRecord | None) -> Standing:
    """What OCSP says of a serial: unknown when no device certificate has it."""
    if record is None:
        return Standing(CertificateStatus.UNKNOWN)
    revocation = revocation_of(record)
    if revocation is None:
        return Standing(CertificateStatus.GOOD)
    return Standing(CertificateStatus.REVOKED, revocation)


@dataclass(frozen=True)
class Crl:
    """One CRL as served: its DER and when it was built."""

    der: bytes
    built_at: datetime
    entries: int


class CrlPublisher:
    """Keeps a current CRL: rebuilds it on a change of the revocation stamp or every refresh.

    on_age(seconds), when given, is told after each poll how old the CRL served is (the
    sielum_crl_age_seconds gauge); before the first CRL, how long this publisher has been
    trying. close runs on the thread as it ends (it closes the thread's own connection).
    """

    def __init__(
        self,
        store: Store,
        ca: CertificateAuthority,
        clock: Clock,
        *,
        poll: float = POLL_SECONDS,
        refresh: timedelta = REFRESH,
        on_age: Callable[[float], None] | None = None,
        close: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._ca = ca
        self._clock = clock
        self._poll = poll
        self._refresh = refresh
        self._on_age = on_age
        self._close = close
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crl", daemon=True)
        self._current: Crl | None = None
        self._stamp: int | None = None
        self._started_at = clock.now()
        self._last_number = 0
        # The entries of the last CRL by serial: the stored row and its DER.
        self._entries: dict[str, tuple[RefusedRow, bytes]] = {}

    @property
    def current(self) -> Crl | None:
        """The CRL to serve, None until the first one is built."""
        return self._current

    def look_up(self, serial: int) -> Standing:
        """OCSP's answer for serial, from the store as it is now (one indexed lookup)."""
        return standing_of(self._store.certificate_status(format(serial, "x")))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.update()
                self._stop.wait(self._poll)
        finally:
            self._close()

    def update(self) -> bool:
        """Rebuild if the stamp moved or the CRL is due; True when a new CRL was built.

        A moved stamp reads only the certificates refused since the last build; a due CRL
        (every refresh), the first one, and a stamp gone back (a database restored from
        a backup) read every refused certificate.
        """
        built = False
        try:
            stamp = self._store.revocation_stamp()
            current, last = self._current, self._stamp
            due = current is None or self._clock.now() - current.built_at >= self._refresh
            if due or last is None or stamp < last:
                self._current = self._build(after=None)
            elif stamp != last:
                self._current = self._build(after=last)
            # The stamp is read before the rows: a change committed in between is read
            # now and again next time (entries are kept by serial, so that costs nothing).
            if self._current is not current:
                self._stamp = stamp
                built = True
        except SielumError as error:  # the database is unavailable: keep the last CRL
            log_event(log, "crl", level=logging.WARNING, outcome="failed", reason=error.message)
        except Exception:
            log.exception("building the CRL failed; the last one is served")
        if self._on_age is not None:
            since = self._current.built_at if self._current is not None else self._started_at
            self._on_age(max(0.0, (self._clock.now() - since).total_seconds()))
        return built

    def _build(self, after: int | None) -> Crl:
        """The CRL from every refused certificate (after None), or from the last one's
        entries and the certificates refused after stamp `after`."""
        started = time.perf_counter()
        now = self._clock.now()
        if after is None:
            rows = self._store.refused_certificate_rows(now)
            previous, entries = self._entries, {}
        else:
            rows = self._store.refused_certificate_changes(after, now)
            previous = entries = self._entries
        # Each entry's DER is kept by serial, with the row it was made from, from one CRL
        # to the next: a rebuild encodes only new or changed rows, and signs the list.
        for row in rows:
            known = previous.get(row[0])
            entries[row[0]] = known if known is not None and known[0] == row else _kept(row)
        self._entries = entries
        # An expired certificate leaves the list; its entry leaves memory at the next
        # full read, which does not return it.
        at = to_micros(now)
        listed = [der for (row, der) in entries.values() if row[1] > at]
        der = self._ca.sign_crl_entries(listed, self._number(now), now)
        log_event(
            log,
            "crl",
            outcome="ok",
            read="all" if after is None else "changes",
            rows=len(rows),
            entries=len(listed),
            bytes=len(der),
            seconds=round(time.perf_counter() - started, 3),
        )
        return Crl(der=der, built_at=now, entries=len(listed))

    def _number(self, now: datetime) -> int:
        """The CRL number: microseconds since the epoch, so that it grows across the workers
        and replicas that each build their own (relying parties keep the highest seen)."""
        number = max(int(now.timestamp() * 1_000_000), self._last_number + 1)
        self._last_number = number
        return number
