"""serve's signals, noted from the moment serve starts, for its loops to act on when ready.

A SIGTERM that arrives while the server or its workers are still starting (loading
the CA, migrating the database, binding ports) is kept, not lost and not fatal:
the start-up finishes or is skipped, and the server stops cleanly with exit code 0
(tests/e2e/test_server_cli.py, test_sigterm_while_starting_stops_cleanly).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalInbox:
    """SIGTERM and SIGINT (stop) and SIGHUP (reload), noted by the handler, acted on by a loop.

    The handler only notes the signal and writes a byte to a pipe the loop waits on:
    nothing else is safe at an arbitrary point of the start-up, and no lock may be
    taken. (A threading.Event did: the handler's set() wants the Event's lock, which
    the interrupted main thread may be holding in wait() or clear(), and the worker
    then never stopped: seen once in a two-worker test, SIGTERM ignored until killed.)
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._stop: int | None = None
        self._hangups = 0

    def install(self) -> None:
        # SIGHUP too: its default action would end the process.
        for sig in (*STOP_SIGNALS, signal.SIGHUP):
            signal.signal(sig, self._note)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._hangups += 1
        elif self._stop is None:
            self._stop = signum
        with contextlib.suppress(BlockingIOError):
            os.write(self._write, b"\0")

    def wait(self, seconds: float) -> None:
        """Sleep until a signal is noted or seconds pass."""
        if self._stop is None:
            select.select([self._read], [], [], max(0.0, seconds))
        with contextlib.suppress(BlockingIOError):
            os.read(self._read, 64)

    @property
    def stop(self) -> int | None:
        """The first stop signal received, if any."""
        return self._stop

    @property
    def stop_name(self) -> str:
        return signal.Signals(self._stop).name if self._stop is not None else ""

    def take_hangups(self) -> int:
        """SIGHUPs received since the last call."""
        count, self._hangups = self._hangups, 0
        return count
