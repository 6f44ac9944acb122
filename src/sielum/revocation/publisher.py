"""The CRL, built on a thread of its own and kept ready; OCSP's answer for one serial.

Building the CRL reads every refused certificate and signs a list of them: at a million
devices that is seconds of CPU (bench/RESULTS.md), so it never happens on a request.
CrlPublisher's thread reads the store's revocation stamp every `poll` seconds (one row)
and rebuilds when it changed, and in any case every `refresh`, well before the CRL's
nextUpdate (one hour ahead): a revocation is in /crl within poll plus one build, which
DESIGN bounds at 5 seconds. GET /crl hands out the bytes built last.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from sielum.ca.authority import CertificateAuthority
from sielum.ca.revocation import (
    CertificateStatus,
    Revocation,
    Standing,
    reason_flag,
)
from sielum.clock import Clock
from sielum.errors import SielumError
from sielum.logs import log_event
from sielum.model import CertificateRecord
from sielum.store.store import Store

log = logging.getLogger("sielum.revocation")

POLL_SECONDS = 1.0
# Rebuilt at least this often: a CRL fetched at any moment is valid for 45 minutes more.
REFRESH = timedelta(minutes=15)
_SUPERSEDED = "superseded"


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
        # The entries of the last CRL, reused by the next (ca/revocation.py::build_crl).
        self._entries: dict[Revocation, x509.RevokedCertificate] = {}

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
        """Rebuild if the stamp moved or the CRL is due; True when a new CRL was built."""
        built = False
        try:
            stamp = self._store.revocation_stamp()
            current = self._current
            due = current is None or self._clock.now() - current.built_at >= self._refresh
            if due or stamp != self._stamp:
                # The stamp is read before the list: a change committed in between is in
                # the list, and moves the stamp again, so it costs one more build at worst.
                self._current = self._build()
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

    def _build(self) -> Crl:
        started = time.perf_counter()
        now = self._clock.now()
        records = self._store.refused_certificates(now)
        revocations = [r for r in map(revocation_of, records) if r is not None]
        der = self._ca.sign_crl(revocations, self._number(now), now, self._entries)
        log_event(
            log,
            "crl",
            outcome="ok",
            entries=len(revocations),
            bytes=len(der),
            seconds=round(time.perf_counter() - started, 3),
        )
        return Crl(der=der, built_at=now, entries=len(revocations))

    def _number(self, now: datetime) -> int:
        """The CRL number: microseconds since the epoch, so that it grows across the workers
        and replicas that each build their own (relying parties keep the highest seen)."""
        number = max(int(now.timestamp() * 1_000_000), self._last_number + 1)
        self._last_number = number
        return number
