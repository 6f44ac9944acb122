"""A task the server runs every so often on a thread of its own (the ephemeral devices' sweep)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sielum.errors import SielumError
from sielum.logs import log_event

log = logging.getLogger("sielum.server")


class PeriodicTask:
    """Calls run every interval seconds until stopped; then calls finish, on the same thread.

    A failure is logged and the next round tries again: a database that is away for a
    while must not end the task.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        run: Callable[[], object],
        finish: Callable[[], object] | None = None,
    ) -> None:
        self.name = name
        self._interval = interval
        self._run = run
        self._finish = finish
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self._interval):
                try:
                    self._run()
                except SielumError as error:
                    log_event(log, self.name, level=logging.WARNING, reason=error.message)
                except Exception:
                    log.exception("%s failed; trying again in %s s", self.name, self._interval)
        finally:
            if self._finish is not None:
                self._finish()
