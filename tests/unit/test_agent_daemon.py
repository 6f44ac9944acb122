"""The run loop's decisions on simulated time: when it renews, backs off, logs, stops and exits.

The server here is a fake that keeps real certificates; the real processes are driven in
tests/e2e/test_agent_run.py.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sielum.ca import profile
from sielum.devices.policy import renew_after
from sielum.endpoint.certdir import AgentState, CertDir, StoredEnrollment, private_pem
from sielum.endpoint.daemon import Daemon, DaemonOptions, State, StopSignals
from sielum.endpoint.enrollment import RenewResult, Status
from sielum.endpoint.errors import (
    EXIT_CERT_DIR,
    EXIT_DEVICE_REFUSED,
    EXIT_OK,
    AgentError,
    CertDirError,
    DeviceRefusedError,
    RenewedElsewhereError,
    ServerAnswerError,
    ServerBusyError,
    ServerUnreachableError,
)

START = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
DEVICE = "dev-1"
INTERVAL = timedelta(minutes=5)


class FakeTime:
    """The clock and the sleep at once: waiting moves the clock; stop_when ends the run."""

    def __init__(self) -> None:
        self.at = START
        self.sleeps: list[float] = []
        self.stop_when: Callable[[], bool] = lambda: False
        self._stopped = False

    def now(self) -> datetime:
        return self.at

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def stop_reason(self) -> str:
        return "SIGTERM"

    def wait(self, seconds: float) -> bool:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.at += timedelta(seconds=seconds)
        self._stopped = self._stopped or self.stop_when()
        return self._stopped


class FakeServer:
    """A cert dir and AgentService in one, issuing real certificates on simulated time."""

    def __init__(self, time: FakeTime, ttl: timedelta = timedelta(days=90)) -> None:
        self.time = time
        self.ttl = ttl
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = profile.self_signed_ca_certificate(key=self.ca_key, now=START)
        self.stored = self._issue()
        self.heartbeats = 0
        self.renewals = 0
        # Errors the next calls raise, in order; a callable decides per call.
        self.status_errors: list[AgentError] = []
        self.renew_errors: list[AgentError] = []
        self.on_status: Callable[[], None] = lambda: None
        self.advised: timedelta | None = None  # HeartbeatResponse.heartbeat_interval

    def _issue(self) -> StoredEnrollment:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = profile.device_certificate(
            public_key=key.public_key(),
            device_id=DEVICE,
            ca_certificate=self.ca,
            ca_key=self.ca_key,
            serial=profile.random_serial(),
            now=self.time.now(),
            ttl=self.ttl,
        )
        pem = serialization.Encoding.PEM
        state = AgentState(DEVICE, "localhost:8444", "https://localhost:8443", START, "")
        return StoredEnrollment(
            state,
            key,
            private_pem(key),
            certificate,
            certificate.public_bytes(pem),
            self.ca,
            self.ca.public_bytes(pem),
        )

    def renew_by_hand(self) -> None:
        self.stored = self._issue()

    @property
    def serial(self) -> int:
        return self.stored.certificate.serial_number

    # --- Calls ------------------------------------------------------------------

    def load(self, cert_dir: CertDir) -> StoredEnrollment:
        return self.stored

    def status(self, cert_dir: CertDir, timeout: float) -> Status:
        self.on_status()
        if self.status_errors:
            raise self.status_errors.pop(0)
        self.heartbeats += 1
        certificate = self.stored.certificate
        return Status(
            device_id=DEVICE,
            api_endpoint="localhost:8444",
            server_time=self.time.now(),
            not_after=certificate.not_valid_after_utc,
            renew_after=renew_after(
                certificate.not_valid_before_utc, certificate.not_valid_after_utc
            ),
            heartbeat_interval=self.advised,
        )

    def renew(self, cert_dir: CertDir, timeout: float, expected_serial: int) -> RenewResult:
        if expected_serial != self.serial:
            raise RenewedElsewhereError("renewed by another process")
        if self.renew_errors:
            raise self.renew_errors.pop(0)
        self.renewals += 1
        self.stored = self._issue()
        return RenewResult(
            device_id=DEVICE,
            not_after=self.stored.certificate.not_valid_after_utc,
            serial=format(self.serial, "x"),
        )


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def server(time: FakeTime) -> FakeServer:
    return FakeServer(time)


def make_daemon(
    time: FakeTime, server: FakeServer, seed: int = 1, interval: timedelta | None = INTERVAL
) -> Daemon:
    return Daemon(
        DaemonOptions(CertDir(Path("/nonexistent")), interval=interval, timeout=5),
        waiter=time,
        clock=time,
        rng=random.Random(seed),
        calls=server,
        logger=logging.getLogger("test.agent"),
    )


def events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.agent"]


def fields(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, object]]:
    return [
        dict(getattr(r, "sielum_fields", {}))
        for r in caplog.records
        if r.name == "test.agent" and r.getMessage() == event
    ]


@pytest.fixture(autouse=True)
def _info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.agent")


def test_renews_once_in_the_jittered_window_then_heartbeats(
    time: FakeTime, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    first = server.stored.certificate
    due = renew_after(first.not_valid_before_utc, first.not_valid_after_utc)
    window_end = due + (first.not_valid_after_utc - due) / 3
    time.stop_when = lambda: server.renewals == 1 and time.at > window_end + timedelta(days=1)
    assert make_daemon(time, server).run() == EXIT_OK

    assert server.renewals == 1
    (renewed,) = fields(caplog, "renewed")
    assert renewed["serial"] == format(server.serial, "x")
    assert "next_renewal" in renewed
    # Renewed at a heartbeat inside the window, never before renew_after.
    assert (
        due
        <= datetime.strptime(str(renewed["not_after"]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        - timedelta(days=90)
        <= window_end + timedelta(seconds=1)
    )
    # Between those, a heartbeat every interval ±10 %, or the last stretch up to the plan.
    assert all(s <= 330 for s in time.sleeps)
    assert sum(1 for s in time.sleeps if 270 <= s) > 0.95 * len(time.sleeps)
    # Thousands of heartbeats, and only the state changes, the renewal and one line a
    # day were logged.
    assert server.heartbeats > 17_000
    logged = events(caplog)
    assert [e for e in logged if e != "alive"] == [
        "agent_started",
        "connected",
        "renewed",
        "agent_stopped",
    ]
    days = (time.at - START) / timedelta(days=1)
    assert days - 2 <= logged.count("alive") <= days  # a day and a heartbeat apart
    alive = fields(caplog, "alive")
    assert sum(int(str(a["heartbeats"])) for a in alive) <= server.heartbeats
    assert alive[0]["since"] == START.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert 260 <= int(str(alive[0]["heartbeats"])) <= 300  # a day of 5-minute heartbeats


def test_the_start_line_names_device_server_and_interval(
    time: FakeTime, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    time.stop_when = lambda: server.heartbeats >= 3
    assert make_daemon(time, server).run() == EXIT_OK
    (started,) = fields(caplog, "agent_started")
    assert started["device"] == DEVICE
    assert started["server"] == "localhost:8444"
    assert started["interval"] == "300s"
    (connected,) = fields(caplog, "connected")
    assert connected["interval"] == "300s"
    assert "heartbeat" not in events(caplog)


def test_verbose_logs_every_heartbeat(
    time: FakeTime, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    time.stop_when = lambda: server.heartbeats >= 3
    daemon = Daemon(
        DaemonOptions(CertDir(Path("/nonexistent")), interval=INTERVAL, timeout=5, verbose=True),
        waiter=time,
        clock=time,
        rng=random.Random(1),
        calls=server,
        logger=logging.getLogger("test.agent"),
    )
    assert daemon.run() == EXIT_OK
    beats = fields(caplog, "heartbeat")
    assert len(beats) == server.heartbeats == 3
    assert beats[0]["device"] == DEVICE


def test_unreachable_backs_off_capped_at_the_interval_and_logs_once(
    time: FakeTime, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    before = server.stored
    server.status_errors = [ServerUnreachableError("cannot reach localhost:8444")] * 20
    time.stop_when = lambda: server.heartbeats >= 2
    assert make_daemon(time, server).run() == EXIT_OK

    backoff = time.sleeps[:20]
    assert backoff[0] <= 1.0
    for n, delay in enumerate(backoff, start=1):
        ceiling = min(INTERVAL.total_seconds(), 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert max(backoff) <= INTERVAL.total_seconds()
    assert backoff[-1] >= INTERVAL.total_seconds() / 2  # reached the cap
    assert server.stored is before  # nothing renewed, nothing replaced
    assert events(caplog) == ["agent_started", "unreachable", "connected", "agent_stopped"]
    (back,) = fields(caplog, "connected")
    assert back["after_failures"] == 20


def test_resource_exhausted_on_renewal_backs_off_and_retries(
    time: FakeTime, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.ttl = timedelta(seconds=60)
    server.stored = server._issue()  # renew_after is past at once for 60 s certificates
    server.renew_errors = [ServerBusyError("the server asks this client to slow down")] * 5
    time.stop_when = lambda: server.renewals >= 1
    assert make_daemon(time, server, interval=timedelta(seconds=2)).run() == EXIT_OK

    assert server.renewals == 1
    assert events(caplog).count("busy") == 1
    assert events(caplog)[-2:] == ["renewed", "agent_stopped"]


@pytest.mark.parametrize(
    "error",
    [
        ServerAnswerError("the server refused the request (INTERNAL): boom"),
        ServerAnswerError("the certificate the server sent is not signed by the pinned CA"),
    ],
)
def test_other_failures_back_off_too(
    time: FakeTime, server: FakeServer, error: AgentError, caplog: pytest.LogCaptureFixture
) -> None:
    server.status_errors = [error] * 3
    time.stop_when = lambda: server.heartbeats >= 1
    assert make_daemon(time, server).run() == EXIT_OK
    assert events(caplog) == ["agent_started", "failing", "connected", "agent_stopped"]
    assert fields(caplog, "failing")[0]["reason"] == error.message


def test_refused_device_exits_9_and_stops_calling(
    time: FakeTime, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    time.stop_when = lambda: server.heartbeats >= 3
    server.on_status = lambda: (
        server.status_errors.append(DeviceRefusedError("device has been revoked"))
        if server.heartbeats == 2 and not server.status_errors
        else None
    )
    assert make_daemon(time, server).run() == EXIT_DEVICE_REFUSED
    assert server.heartbeats == 2
    assert events(caplog)[-1] == "device_refused"
    assert fields(caplog, "device_refused")[0]["reason"] == "device has been revoked"


def test_an_unusable_cert_dir_exits_with_its_code(time: FakeTime, server: FakeServer) -> None:
    def broken(cert_dir: CertDir) -> StoredEnrollment:
        raise CertDirError("/etc/sielum/device.pem is not a readable PEM certificate")

    server.load = broken  # type: ignore[method-assign]
    assert make_daemon(time, server).run() == EXIT_CERT_DIR
    assert server.heartbeats == 0


def test_expired_certificate_is_reported_on_every_attempt_and_retried(
    time: FakeTime, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    time.at = server.stored.certificate.not_valid_after_utc + timedelta(hours=1)
    server.status_errors = [ServerUnreachableError("Socket closed")] * 6
    time.stop_when = lambda: len(time.sleeps) >= 6
    assert make_daemon(time, server).run() == EXIT_OK
    assert events(caplog).count("certificate_expired") == 6
    assert events(caplog).count("unreachable") == 1
    assert server.renewals == 0


def test_a_renewal_by_another_process_is_picked_up_not_repeated(
    time: FakeTime, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    time.stop_when = lambda: server.heartbeats >= 3
    server.on_status = lambda: server.renew_by_hand() if server.heartbeats == 1 else None
    assert make_daemon(time, server).run() == EXIT_OK
    assert server.renewals == 0
    (picked,) = fields(caplog, "renewed_elsewhere")
    assert picked["serial"] == format(server.serial, "x")


def test_a_renewal_by_another_process_while_due_is_not_renewed_again(
    time: FakeTime, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.ttl = timedelta(seconds=60)
    server.stored = server._issue()
    # Between our heartbeat and our renewal, someone renews by hand.
    original = server.renew

    def renew_after_someone_else(cert_dir: CertDir, timeout: float, serial: int) -> RenewResult:
        if not fields(caplog, "renewed_elsewhere") and server.renewals == 0:
            server.renew_by_hand()
        return original(cert_dir, timeout, serial)

    server.renew = renew_after_someone_else  # type: ignore[method-assign]
    time.stop_when = lambda: server.renewals >= 1
    assert make_daemon(time, server, interval=timedelta(seconds=2)).run() == EXIT_OK
    assert len(fields(caplog, "renewed_elsewhere")) == 1
    assert events(caplog).index("renewed_elsewhere") < events(caplog).index("renewed")


class ZeroRandom(random.Random):
    """Every draw is the earliest: every plan says "now"."""

    def random(self) -> float:
        return 0.0


def test_a_certificate_due_at_once_is_renewed_once_per_heartbeat_not_in_a_loop(
    time: FakeTime, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.ttl = timedelta(seconds=60)
    server.stored = server._issue()
    # A renewal by hand, itself due at once, is still reported before ours follows.
    server.on_status = lambda: server.renew_by_hand() if server.heartbeats == 2 else None
    time.stop_when = lambda: server.renewals >= 4
    daemon = Daemon(
        DaemonOptions(CertDir(Path("/nonexistent")), interval=timedelta(seconds=2), timeout=5),
        waiter=time,
        clock=time,
        rng=ZeroRandom(),
        calls=server,
        logger=logging.getLogger("test.agent"),
    )
    assert daemon.run() == EXIT_OK
    # One heartbeat (2 s, -10 % at most) between renewals; the one wait of 0 is the
    # renewal that found the certificate renewed by hand under its feet.
    assert len(time.sleeps) == 5
    assert time.sleeps.count(0.0) == 1
    assert all(s >= 1.8 for s in time.sleeps if s), time.sleeps
    (picked,) = fields(caplog, "renewed_elsewhere")
    names = events(caplog)
    assert names.index("renewed_elsewhere") < len(names) - 1 - names[::-1].index("renewed")
    assert picked["serial"] != fields(caplog, "renewed")[0]["serial"]


def test_a_stop_before_the_first_call_calls_nothing(time: FakeTime, server: FakeServer) -> None:
    time._stopped = True
    assert make_daemon(time, server).run() == EXIT_OK
    assert server.heartbeats == 0


def test_a_stop_during_a_call_finishes_it_then_exits(
    time: FakeTime, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.ttl = timedelta(seconds=60)
    server.stored = server._issue()
    daemon = make_daemon(time, server, interval=timedelta(seconds=2))
    original = server.renew

    def renew_and_get_stopped(cert_dir: CertDir, timeout: float, serial: int) -> RenewResult:
        time._stopped = True  # SIGTERM arrives while the renewal is in flight
        return original(cert_dir, timeout, serial)

    server.renew = renew_and_get_stopped  # type: ignore[method-assign]
    assert daemon.run() == EXIT_OK
    assert server.renewals == 1
    assert daemon.state is State.OK
    assert events(caplog)[-2:] == ["renewed", "agent_stopped"]


def test_stop_signals_end_a_sleep_at_once() -> None:
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    signals = StopSignals()
    signals.install()
    try:
        assert not signals.wait(0)
        threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
        # The sleep asked for is an hour: only the signal can end it within the test.
        assert signals.wait(3600)
        assert signals.stopped
        assert signals.stop_reason == "SIGTERM"
        assert signals.wait(3600)  # stays stopped
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
        signals.close()


@pytest.mark.timeout(120)
def test_a_signal_taken_by_another_thread_ends_the_sleep() -> None:
    """grpc's threads may take the SIGTERM meant for the process: the sleep ends all the same.

    The signal goes to a helper thread here, so the main thread's select is not
    interrupted by it; before the wakeup fd, the hour's sleep ran to its end.
    """
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    signals = StopSignals()
    signals.install()
    try:

        def kill_this_thread() -> None:
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

        threading.Timer(0.2, kill_this_thread).start()
        assert signals.wait(3600)
        assert signals.stop_reason == "SIGTERM"
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
        signals.close()
    assert signal.set_wakeup_fd(-1) == wakeup  # close() put the previous one back
    signal.set_wakeup_fd(wakeup)


def test_follows_the_interval_the_server_advises_unless_given_one(
    time: FakeTime, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    # No --interval: 5 minutes until the first answer, then what the server advises.
    server.advised = timedelta(minutes=30)
    time.stop_when = lambda: server.heartbeats >= 6
    assert make_daemon(time, server, interval=None).run() == EXIT_OK
    assert all(27 * 60 <= s <= 33 * 60 for s in time.sleeps[:-1]), time.sleeps
    (changed,) = fields(caplog, "interval_changed")
    assert changed == {"interval": "1800s", "previous": "300s", "source": "server"}

    # The operator lowers it: the next answer takes effect.
    server.advised = timedelta(minutes=1)
    time.sleeps.clear()
    time.stop_when = lambda: server.heartbeats >= 12
    time._stopped = False
    assert make_daemon(time, server, interval=None).run() == EXIT_OK
    assert all(54 <= s <= 66 for s in time.sleeps[1:-1]), time.sleeps


def test_an_interval_given_on_the_command_line_wins_over_the_server(
    time: FakeTime, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.advised = timedelta(minutes=30)
    time.stop_when = lambda: server.heartbeats >= 5
    assert make_daemon(time, server, interval=timedelta(minutes=2)).run() == EXIT_OK
    assert all(108 <= s <= 132 for s in time.sleeps[:-1]), time.sleeps
    assert fields(caplog, "interval_changed") == []


def test_a_server_advising_a_tight_loop_is_held_to_ten_seconds(
    time: FakeTime, server: FakeServer
) -> None:
    server.advised = timedelta(milliseconds=1)
    time.stop_when = lambda: server.heartbeats >= 5
    assert make_daemon(time, server, interval=None).run() == EXIT_OK
    assert all(s >= 9 for s in time.sleeps), time.sleeps
