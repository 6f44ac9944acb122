"""gRPC C-core's own log lines, re-logged through the server's logging in the server's format.

The C core (TLS handshakes, transport errors) writes straight to file descriptor 2,
in its own format (`I1201 20:06:42.848557 23918 ssl_transport_security.cc:2563]
Handshake failed ...`), past Python's logging. While serving, fd 2 is a pipe read by
a thread that turns each line into a log record of the "grpc" logger; Python's own
stderr and Sielum's log handler write to the original stderr, saved before.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import re
import sys
import threading
from typing import TextIO

log = logging.getLogger("grpc")

# absl's prefix (grpcio >= 1.6x): severity letter, MMDD, time, thread id, file:line.
_CORE_LINE = re.compile(
    r"^(?P<severity>[DIWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+\s+"
    r"(?P<source>[^\s\]]+:\d+)\] ?(?P<text>.*)$"
)
# Every C-core line is logged at WARNING or above: the core prints few lines at its
# default verbosity, and those it prints (a failed handshake) are for the operator.
_LEVELS = {
    "D": logging.WARNING,
    "I": logging.WARNING,
    "W": logging.WARNING,
    "E": logging.ERROR,
    "F": logging.CRITICAL,
}
_SEVERITY = {"D": "debug", "I": "info", "W": "warning", "E": "error", "F": "fatal"}
_PIPE_SIZE = 1 << 20  # room for bursts, so the core seldom waits on the reader


def relog(line: str) -> None:
    """One line the C core wrote, as a record of the "grpc" logger."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return
    match = _CORE_LINE.match(text)
    if match is None:
        # Not in the core's format (absl's start-up notice, another C library):
        # kept whole, so that nothing written to stderr is lost.
        log.warning(text, extra={"sielum_fields": {"source": "stderr"}})
        return
    severity = match.group("severity")
    log.log(
        _LEVELS[severity],
        match.group("text"),
        extra={
            "sielum_fields": {
                "source": match.group("source"),
                "grpc_severity": _SEVERITY[severity],
            }
        },
    )


class CoreLogCapture:
    """Points fd 2 at a pipe whose lines are re-logged; stop() points it back."""

    def __init__(self) -> None:
        self._saved_fd = -1
        self._thread: threading.Thread | None = None
        self._previous_stderr: TextIO | None = None
        self.stream: TextIO = sys.stderr

    def start(self) -> TextIO:
        """Begin; returns a text stream to the original stderr, for the log handler."""
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        os.set_inheritable(self._saved_fd, False)
        self.stream = io.TextIOWrapper(
            io.FileIO(self._saved_fd, "w", closefd=False), line_buffering=True, errors="replace"
        )
        # Python's own writes to stderr (a traceback, a warning) go straight out.
        self._previous_stderr = sys.stderr
        sys.stderr = self.stream
        self._thread = threading.Thread(
            target=self._read, args=(read_fd,), name="grpc-core-log", daemon=True
        )
        self._thread.start()
        return self.stream

    def _read(self, read_fd: int) -> None:
        with open(read_fd, encoding="utf-8", errors="replace", closefd=True) as pipe:
            # A handler that fails reports it through logging's own handleError:
            # nothing raises out of relog.
            for line in pipe:
                relog(line)

    def stop(self, timeout: float = 2.0) -> None:
        """Point fd 2 back at the original stderr and log what is still in the pipe."""
        if self._saved_fd < 0:
            return
        # dup2 closes the pipe's last write end, so the reader sees its end.
        os.dup2(self._saved_fd, 2)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._previous_stderr is not None:
            sys.stderr = self._previous_stderr
        self.stream.flush()
