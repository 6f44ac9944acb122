"""The server certificate while serving: gRPC credentials that follow reloads, expiry warnings."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

import grpc
from cryptography import x509

from sielum.ca.expiry import expiry_warning, warning_due
from sielum.ca.servercert import ServerCertificate, ServerKeyPair
from sielum.clock import Clock
from sielum.errors import InvalidArgumentError
from sielum.logs import log_event

log = logging.getLogger("sielum.server")

# A renewal swaps key and certificate with two renames; a reload that falls between
# them sees a pair that does not match, and tries again after this pause.
_RETRY_PAUSE = 0.2
_ATTEMPTS = 3


def grpc_credentials(
    holder: ServerCertificate, *, client_ca_pem: bytes | None
) -> grpc.ServerCredentials:
    """TLS credentials presenting holder's pair; with client_ca_pem, client certificates required.

    gRPC asks the fetcher before every new handshake (grpc.dynamic_ssl_server_credentials,
    served on grpc.aio as on the sync server): it answers None, "no change", until the
    holder has a new pair, so the cost per handshake is one attribute read. Connections
    already open keep their TLS session and the calls on them go on
    (tests/e2e/test_server_certificate.py::test_renewal_reaches_a_running_server).
    """

    def configuration(pair: ServerKeyPair) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(pair.key_pem, pair.chain_pem)], root_certificates=client_ca_pem
        )

    served = [holder.current]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        current = holder.current
        if current is served[0]:
            return None
        served[0] = current
        return configuration(current)

    return grpc.dynamic_ssl_server_credentials(
        configuration(served[0]),
        # grpc documents None as "no change"; types-grpcio's stub does not allow it.
        fetch,  # type: ignore[arg-type]
        require_client_authentication=client_ca_pem is not None,
    )


class CertificateWatch:
    """Reloads the server certificate when its files change or on request; warns of expiry.

    check() runs at start and then every `interval` seconds on a thread of its own:
    two stat calls, and the expiry warnings, logged at start and once a day while a
    certificate (the server's or the CA's) has less than 30 days left.
    """

    def __init__(
        self,
        holder: ServerCertificate,
        ca_certificate: x509.Certificate,
        clock: Clock,
        *,
        renew_command: str,
        interval: float = 10.0,
        warn: bool = True,
    ) -> None:
        self._holder = holder
        self._ca_not_after = ca_certificate.not_valid_after_utc
        self._clock = clock
        self._renew_command = renew_command
        self._interval = interval
        self._warn = warn
        self._last_warned: dict[str, datetime] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._check_lock = threading.Lock()

    def start(self) -> None:
        self.check()
        self._thread = threading.Thread(target=self._run, name="cert-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check()
            except Exception:
                log.exception("checking the server certificate failed")

    def check(self) -> None:
        """Reload if the files changed; log the expiry warnings that are due."""
        with self._check_lock:
            if self._holder.files_changed():
                self._reload("files changed")
            if self._warn:
                self._warn_if_expiring()

    def reload(self, trigger: str = "SIGHUP") -> bool:
        """Read the files now (SIGHUP); True when a new pair is served from now on."""
        with self._check_lock:
            changed = self._reload(trigger)
            if self._warn:
                self._warn_if_expiring()
            return changed

    def _reload(self, trigger: str) -> bool:
        for attempt in range(_ATTEMPTS):
            try:
                changed = self._holder.reload()
                break
            except InvalidArgumentError as error:
                if attempt + 1 < _ATTEMPTS:
                    time.sleep(_RETRY_PAUSE)
                    continue
                log_event(
                    log,
                    "server certificate not reloaded",
                    level=logging.WARNING,
                    trigger=trigger,
                    reason=error.message,
                    serving=self._holder.current.serial,
                )
                return False
        pair = self._holder.current
        log_event(
            log,
            "server certificate reloaded" if changed else "server certificate unchanged",
            trigger=trigger,
            serial=pair.serial,
            not_after=pair.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            names=",".join(pair.names),
        )
        return changed

    def _warn_if_expiring(self) -> None:
        now = self._clock.now()
        watched = (
            (
                "server certificate",
                self._holder.current.not_after,
                f"run `{self._renew_command}`",
            ),
            (
                "CA certificate",
                self._ca_not_after,
                "every certificate it signed stops working then; see "
                "docs/tokens-and-certificates.md, 'Planning for the CA's expiry'",
            ),
        )
        for name, not_after, action in watched:
            warning = expiry_warning(name, not_after, action, now)
            if warning is None:
                self._last_warned.pop(name, None)
                continue
            if not warning_due(self._last_warned.get(name), now):
                continue
            self._last_warned[name] = now
            log_event(
                log,
                "certificate expired" if warning.days_left < 0 else "certificate expiring",
                level=logging.WARNING,
                certificate=name,
                not_after=not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                days_left=warning.days_left,
                action=action,
            )
