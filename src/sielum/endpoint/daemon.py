"""`sielum-agent run`: heartbeats, jittered renewal, backoff through outages, clean stops."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import signal
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from types import FrameType
from typing import Any, Protocol

from sielum.clock import Clock, SystemClock
from sielum.endpoint import enrollment
from sielum.endpoint.certdir import CertDir, StoredEnrollment
from sielum.endpoint.connection import AgentConnection
from sielum.endpoint.enrollment import DEFAULT_TIMEOUT, RenewResult, Status
from sielum.endpoint.errors import (
    EXIT_DEVICE_REFUSED,
    EXIT_OK,
    AgentError,
    CertDirError,
    DeviceRefusedError,
    NotEnrolledError,
    RenewedElsewhereError,
    ServerBusyError,
    ServerUnreachableError,
)
from sielum.endpoint.schedule import (
    DEFAULT_INTERVAL,
    advised_interval,
    backoff_delay,
    heartbeat_delay,
    renewal_time,
)
from sielum.logs import log_event

# How often a running agent says it is alive, with the heartbeats since the last time.
ALIVE_EVERY = timedelta(days=1)
# A renewal this close to its moment is due now: waking up a hair early (the local
# clock against the server's) must not cost a whole extra sleep.
_DUE_SLACK = timedelta(seconds=1)

log = logging.getLogger("sielum.agent")


class Calls(Protocol):
    """What the loop does to the cert dir and the server; tests hand in a fake."""

    def load(self, cert_dir: CertDir) -> StoredEnrollment: ...

    def status(self, cert_dir: CertDir, timeout: float) -> Status: ...

    def renew(self, cert_dir: CertDir, timeout: float, expected_serial: int) -> RenewResult: ...


class RemoteCalls:
    """The real calls: the cert dir on disk (re-read every time) and AgentService over mTLS.

    Every call goes over one kept connection (endpoint/connection.py): a heartbeat on an
    open connection costs the server half of one that opens its own.
    """

    def __init__(self) -> None:
        self.connection = AgentConnection()

    def load(self, cert_dir: CertDir) -> StoredEnrollment:
        return cert_dir.load_locked()

    def status(self, cert_dir: CertDir, timeout: float) -> Status:
        # An expired certificate is sent anyway: only the server may refuse the device.
        return enrollment.status(cert_dir, timeout, allow_expired=True, connection=self.connection)

    def renew(self, cert_dir: CertDir, timeout: float, expected_serial: int) -> RenewResult:
        return enrollment.renew(
            cert_dir,
            timeout,
            allow_expired=True,
            expected_serial=expected_serial,
            connection=self.connection,
        )

    def close(self) -> None:
        self.connection.close()


class Waiter(Protocol):
    """Sleeps between calls; a stop request ends the sleep at once."""

    @property
    def stopped(self) -> bool: ...

    @property
    def stop_reason(self) -> str: ...

    def wait(self, seconds: float) -> bool:
        """Sleeps up to seconds; True when a stop was requested (before or during the sleep)."""
        ...


_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


class StopSignals:
    """SIGTERM and SIGINT request a stop: a sleep ends at once, a call in flight is finished.

    The handler only sets a flag and writes a byte to a pipe the sleep waits on: no lock
    is taken in a signal handler, so a signal can never deadlock the loop.

    The kernel may deliver a signal to any thread, and grpc runs threads of its own;
    Python runs the handler in the main thread only when that thread next wakes, which
    could be at the end of a five-minute sleep. So the pipe is also Python's wakeup fd:
    whichever thread takes the signal writes its number there, the sleep ends, and the
    number read from the pipe is a stop even before the handler has run
    (tests/unit/test_agent_daemon.py::test_a_signal_taken_by_another_thread_ends_the_sleep).
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self.signal: int | None = None
        self._previous_wakeup_fd = -1
        self._installed = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._installed = True

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.request_stop(signum)

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        self.signal = signum
        with contextlib.suppress(BlockingIOError):
            os.write(self._write, b"\0")

    @property
    def stopped(self) -> bool:
        return self.signal is not None

    @property
    def stop_reason(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

    def wait(self, seconds: float) -> bool:
        if not self.stopped:
            select.select([self._read], [], [], max(0.0, seconds))
        with contextlib.suppress(BlockingIOError):
            for number in os.read(self._read, 64):
                if number in _STOP_SIGNALS and self.signal is None:
                    self.signal = number
        return self.stopped

    def close(self) -> None:
        if self._installed:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
        os.close(self._read)
        os.close(self._write)


class State(Enum):
    """What the last attempt found; a line is logged each time this changes."""

    STARTING = "starting"
    OK = "ok"
    UNREACHABLE = "unreachable"  # no connection, UNAVAILABLE, deadline exceeded
    BUSY = "busy"  # RESOURCE_EXHAUSTED: the server asks us to call less often
    FAILING = "failing"  # any other error, or an answer that fails our checks


@dataclass(frozen=True)
class Plan:
    """The renewal moment drawn for one certificate, in the server's time."""

    renew_after: datetime
    not_after: datetime
    renew_at: datetime


@dataclass(frozen=True)
class DaemonOptions:
    cert_dir: CertDir
    # None: the interval the server advises in each heartbeat's answer (DEFAULT_INTERVAL
    # until the first answer, or from a server that advises none); set: this one, always.
    interval: timedelta | None = None
    timeout: float = DEFAULT_TIMEOUT
    verbose: bool = False  # a line for every heartbeat, not only for changes


class Daemon:
    """The loop: heartbeat, renew when the plan says so, back off on failure, stop on request.

    Every attempt re-reads the cert dir, so a renewal done by another process (or a new
    enrollment with --force) is used from the next call on; renewals take the cert dir's
    lock, so two never run at once on one directory.
    """

    def __init__(
        self,
        options: DaemonOptions,
        *,
        waiter: Waiter,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        calls: Calls | None = None,
        logger: logging.Logger = log,
    ) -> None:
        self._options = options
        self._waiter = waiter
        self._clock = clock if clock is not None else SystemClock()
        self._rng = rng if rng is not None else random.SystemRandom()
        self._calls = calls if calls is not None else RemoteCalls()
        self._log = logger
        self._state = State.STARTING
        self._failures = 0
        self._serial: int | None = None  # the certificate on disk at the last attempt
        self._renewed_elsewhere = False  # seen, not yet reported with its plan
        self._plan: Plan | None = None
        self._interval = options.interval or DEFAULT_INTERVAL
        self._beats = 0  # heartbeats answered since _alive_since
        self._alive_since = self._clock.now()

    @property
    def state(self) -> State:
        return self._state

    def run(self) -> int:
        """Until a stop request (exit 0) or the server refuses the device (exit 9)."""
        options = self._options
        fields: dict[str, Any] = {"cert_dir": str(options.cert_dir.root)}
        try:
            stored = self._calls.load(options.cert_dir)
        except AgentError:
            pass  # said by the first attempt, which meets the same failure
        else:
            fields["device"] = stored.state.device_id
            fields["server"] = stored.state.api_endpoint
        fields["interval"] = (
            f"{options.interval.total_seconds():g}s"
            if options.interval is not None
            else "as the server advises"
        )
        self._alive_since = self._clock.now()
        self._event("agent_started", **fields)
        while not self._waiter.stopped:
            try:
                delay = self._attempt()
                self._failures = 0
            except DeviceRefusedError as error:
                self._event("device_refused", logging.ERROR, reason=error.message)
                return EXIT_DEVICE_REFUSED
            except (CertDirError, NotEnrolledError) as error:
                # Not something a retry mends: exit, and let the service manager's
                # restart policy and the log line bring it to someone's attention.
                self._event("cert_dir_unusable", logging.ERROR, reason=error.message)
                return error.exit_code
            except RenewedElsewhereError:
                # Nothing failed: the next attempt reads the new certificate and says so.
                delay = timedelta(0)
            except AgentError as error:
                self._failures += 1
                delay = backoff_delay(self._failures, self._interval, self._rng)
                self._failed(error, delay)
            if self._waiter.wait(delay.total_seconds()):
                break
        self._event("agent_stopped", reason=self._waiter.stop_reason)
        return EXIT_OK

    # --- one attempt ------------------------------------------------------------

    def _attempt(self) -> timedelta:
        """Heartbeat, then renew if the plan says so; returns how long to sleep."""
        options = self._options
        stored = self._calls.load(options.cert_dir)
        serial = stored.certificate.serial_number
        if self._serial is not None and serial != self._serial:
            self._renewed_elsewhere = True
        self._serial = serial
        not_after = stored.certificate.not_valid_after_utc
        if not_after <= self._clock.now():
            # Said on every attempt, for as long as it lasts: the server will refuse
            # this certificate once it is reached, unless this machine's clock is wrong.
            self._event(
                "certificate_expired",
                logging.ERROR,
                not_after=_when(not_after),
                hint="enroll again with a new token and --force",
            )

        status = self._calls.status(options.cert_dir, options.timeout)
        self._follow(status)
        self._beat(status)
        plan, new_plan = self._plan_for(status)
        due = plan.renew_at - status.server_time <= _DUE_SLACK
        if self._renewed_elsewhere:
            # Said before a renewal of our own, which may follow at once.
            self._renewed_elsewhere = False
            self._event(
                "renewed_elsewhere",
                device=status.device_id,
                serial=format(serial, "x"),
                not_after=_when(status.not_after),
                next_renewal=_when(plan.renew_at),
            )
        elif new_plan and not due and self._state is State.OK:
            self._event("renewal_scheduled", next_renewal=_when(plan.renew_at))
        if due:
            return self._renew(serial)
        self._succeeded(status, plan)
        return min(heartbeat_delay(self._interval, self._rng), plan.renew_at - status.server_time)

    def _renew(self, serial: int) -> timedelta:
        options = self._options
        result = self._calls.renew(options.cert_dir, options.timeout, serial)
        self._serial = int(result.serial, 16)
        fields: dict[str, Any] = {
            "device": result.device_id,
            "serial": result.serial,
            "not_after": _when(result.not_after),
        }
        try:
            # At once, with the new pair: proves it works and learns its renew_after,
            # so the one line per renewal can say when the next one is.
            status = self._calls.status(options.cert_dir, options.timeout)
        except AgentError:
            self._event("renewed", **fields)
            raise
        self._follow(status)
        self._beat(status)
        plan, _ = self._plan_for(status)
        self._succeeded(status, plan)
        self._event("renewed", **fields, next_renewal=_when(plan.renew_at))
        beat = heartbeat_delay(self._interval, self._rng)
        remaining = plan.renew_at - status.server_time
        # Never two renewals within one heartbeat, whatever the plan says (a certificate
        # born due, a draw of zero): a loop of renewals is what the server rate-limits.
        return beat if remaining <= _DUE_SLACK else min(beat, remaining)

    def _follow(self, status: Status) -> None:
        """Take the heartbeat interval the server advises, unless --interval was given."""
        if self._options.interval is not None:
            return
        interval = advised_interval(status.heartbeat_interval, self._interval)
        if interval != self._interval:
            self._event(
                "interval_changed",
                interval=f"{interval.total_seconds():g}s",
                previous=f"{self._interval.total_seconds():g}s",
                source="server",
            )
            self._interval = interval

    def _plan_for(self, status: Status) -> tuple[Plan, bool]:
        """The plan for the certificate the server just saw; drawn once per certificate."""
        plan = self._plan
        if (
            plan is not None
            and plan.renew_after == status.renew_after
            and plan.not_after == status.not_after
        ):
            return plan, False
        # Drawn in the server's time from the server's renew_after, so a skewed local
        # clock neither advances nor delays the renewal.
        renew_at = renewal_time(status.renew_after, status.not_after, status.server_time, self._rng)
        self._plan = Plan(status.renew_after, status.not_after, renew_at)
        return self._plan, True

    def _beat(self, status: Status) -> None:
        """A heartbeat answered: a line with --verbose, and once a day in any case."""
        self._beats += 1
        if self._options.verbose:
            self._event(
                "heartbeat",
                device=status.device_id,
                server=status.api_endpoint,
                not_after=_when(status.not_after),
            )
        now = self._clock.now()
        if now - self._alive_since >= ALIVE_EVERY:
            self._event(
                "alive",
                heartbeats=self._beats,
                since=_when(self._alive_since),
                device=status.device_id,
                server=status.api_endpoint,
            )
            self._beats = 0
            self._alive_since = now

    # --- state changes, one line each --------------------------------------------

    def _succeeded(self, status: Status, plan: Plan) -> None:
        if self._state is State.OK:
            return
        fields: dict[str, Any] = {
            "device": status.device_id,
            "server": status.api_endpoint,
            "interval": f"{self._interval.total_seconds():g}s",
            "not_after": _when(status.not_after),
            "next_renewal": _when(plan.renew_at),
        }
        if self._state is not State.STARTING:
            fields["after_failures"] = self._failures
        self._state = State.OK
        self._event("connected", **fields)

    def _failed(self, error: AgentError, retry_in: timedelta) -> None:
        if isinstance(error, ServerUnreachableError):
            state = State.UNREACHABLE
        elif isinstance(error, ServerBusyError):
            state = State.BUSY
        else:
            state = State.FAILING
        if state is self._state:
            self._log.debug("retry %s in %.1fs: %s", state.value, retry_in.total_seconds(), error)
            return
        self._state = state
        self._event(
            state.value,
            logging.WARNING,
            reason=error.message,
            retry_in=f"{retry_in.total_seconds():.1f}s",
        )

    def _event(self, event: str, level: int = logging.INFO, **fields: Any) -> None:
        log_event(self._log, event, level, **fields)


def serve(options: DaemonOptions) -> int:
    """The process: signals wired to a clean stop, then the loop until it ends."""
    signals = StopSignals()
    signals.install()
    calls = RemoteCalls()
    try:
        return Daemon(options, waiter=signals, calls=calls).run()
    finally:
        calls.close()
        signals.close()


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
