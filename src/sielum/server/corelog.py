"""gRPC C-core's own log lines, re-logged through the server's logging in the server's format.

The C core (TLS handshakes, transport errors) writes straight to file descriptor 2,
in its own format (`I1201 20:06:42.848557 23918 ssl_transport_security.cc:2563]
Handshake failed ...`), past Python's logging. While serving, fd 2 is a pipe read by
a thread that turns each line into a log record of the "grpc" logger; Python's own
stderr and Sielum's log handler write to the original stderr, saved before.

Two kinds of line are the daily ones, and are said in plain words instead of the
core's (`tls_handshake_failed`, `unknown_server_name`), each at most once a minute
per reason (or name), with how many like it were held back: every client that
dials the API port without a certificate (a Sielum client checking which port it
reached does so after each refused call) would otherwise leave a WARNING. The
core's line names no peer, so neither can these.
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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


_HANDSHAKE_FAILED = re.compile(r"^Handshake failed with (?:fatal )?error \w+: (?P<detail>.*)$")
_OPENSSL_REASON = re.compile(r"OPENSSL_internal:(?P<reason>[A-Z0-9_]+)")
_UNKNOWN_NAME = re.compile(r"^No match found for server name: (?P<name>\S+)")
_NO_CERTIFICATE = (
    "a client sent no client certificate, which this port (the API port) asks for: "
    "a client pointed at the wrong port, or a Sielum client checking which port it reached"
)
_NOT_TLS = "a client spoke plain HTTP or another protocol to this TLS port"
_UNTRUSTED_SERVER = (
    "a client does not accept this server's certificate (it trusts another CA, or "
    "dialled a name the certificate lacks)"
)
_UNTRUSTED_CLIENT = (
    "a client certificate this server does not accept (not from the Sielum CA, or expired)"
)
_NO_COMMON_GROUND = "a client offers no TLS version, cipher or protocol (HTTP/2) this server speaks"
# BoringSSL's reason codes, in the operator's words.
_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": _NO_CERTIFICATE,
    "WRONG_VERSION_NUMBER": _NOT_TLS,
    "HTTP_REQUEST": _NOT_TLS,
    "HTTPS_PROXY_REQUEST": _NOT_TLS,
    "BAD_PACKET_LENGTH": _NOT_TLS,
    "TLSV1_ALERT_UNKNOWN_CA": _UNTRUSTED_SERVER,
    "SSLV3_ALERT_BAD_CERTIFICATE": _UNTRUSTED_SERVER,
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": _UNTRUSTED_SERVER,
    "CERTIFICATE_VERIFY_FAILED": _UNTRUSTED_CLIENT,
    "NO_SHARED_CIPHER": _NO_COMMON_GROUND,
    "UNSUPPORTED_PROTOCOL": _NO_COMMON_GROUND,
    "TLSV1_ALERT_PROTOCOL_VERSION": _NO_COMMON_GROUND,
    "NO_APPLICATION_PROTOCOL": _NO_COMMON_GROUND,
}
# One line per reason (or name) per window; the others are counted into the next.
WINDOW_SECONDS = 60.0
_MAX_KEYS = 1024


@dataclass
class _Throttle:
    """Says whether a line for key may be logged now, and how many were held back before it."""

    clock: Callable[[], float] = time.monotonic
    last: dict[str, float] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)

    def admit(self, key: str) -> int | None:
        """None: hold this one back; else how many like it were held back since the last."""
        now = self.clock()
        last = self.last.get(key)
        if last is not None and now - last < WINDOW_SECONDS:
            self.held[key] = self.held.get(key, 0) + 1
            return None
        if len(self.last) >= _MAX_KEYS:
            # Names come from clients: forget the quiet ones rather than grow without end.
            for old in [k for k, t in self.last.items() if now - t >= WINDOW_SECONDS]:
                del self.last[old]
                self.held.pop(old, None)
        self.last[key] = now
        return self.held.pop(key, 0)


_throttle = _Throttle()


def _plain(text: str, source: str) -> bool:
    """Logs a daily kind of core line in plain words; False for any other line."""
    failed = _HANDSHAKE_FAILED.match(text)
    if failed is not None:
        found = _OPENSSL_REASON.search(failed.group("detail"))
        code = found.group("reason") if found else failed.group("detail")
        reason = _REASONS.get(code, f"TLS handshake failed: {code.lower().replace('_', ' ')}")
        held = _throttle.admit(f"handshake:{code}")
        if held is not None:
            fields = {"reason": reason, "tls_error": code, "held_back": held, "source": source}
            log.info("tls_handshake_failed", extra={"sielum_fields": fields})
        return True
    unknown = _UNKNOWN_NAME.match(text)
    if unknown is not None:
        name = unknown.group("name")
        held = _throttle.admit(f"name:{name}")
        if held is not None:
            fields = {
                "name": name,
                "reason": (
                    "a client dialled a name the server certificate lacks; if clients "
                    f"should use it: sielum-server renew-server-cert --data-dir DIR --san {name}"
                ),
                "held_back": held,
                "source": source,
            }
            log.warning("unknown_server_name", extra={"sielum_fields": fields})
        return True
    return False


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
    if _plain(match.group("text"), match.group("source")):
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
