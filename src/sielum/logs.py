"""Logging set-up: one line per event, as text for people or JSON for machines."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

_FIELDS = "sielum_fields"


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event with structured fields. Callers pass ids and outcomes, never secrets.

    The record is made without looking up the caller's file and line (Logger.log walks
    the stack for them): no line Sielum writes shows them, and the walk was a tenth of
    the cost of an enrollment's line.
    """
    if logger.isEnabledFor(level):
        logger.handle(
            logger.makeRecord(logger.name, level, "", 0, event, (), None, extra={_FIELDS: fields})
        )


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, _FIELDS, None)
    return dict(fields) if isinstance(fields, dict) else {}


# A value written as it is in a text line: no space, quote or '=' (others are quoted).
_PLAIN = re.compile(r'[^\s"=]+')


class _Seconds:
    """The time of a record to the second, formatted once per second (not once per line)."""

    def __init__(self, fmt: str) -> None:
        self._fmt = fmt
        self._second = -1
        self._text = ""

    def text(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # a race of two threads here only formats twice
            self._text = datetime.fromtimestamp(second, UTC).strftime(self._fmt)
            self._second = second
        return self._text


class TextFormatter(logging.Formatter):
    """'2026-11-27T20:00:00Z INFO enroll outcome=ok device=... peer=...'"""

    def __init__(self) -> None:
        super().__init__()
        self._seconds = _Seconds("%Y-%m-%dT%H:%M:%SZ")

    def format(self, record: logging.LogRecord) -> str:
        parts = [self._seconds.text(record.created), record.levelname, record.getMessage()]
        for key, value in _fields(record).items():
            text = str(value)
            if not _PLAIN.fullmatch(text):
                text = json.dumps(text)
            parts.append(f"{key}={text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(
    fmt: str = "text", level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """One handler on the root logger, writing to stream (default stderr) in fmt.

    Python's warnings become log records too, so that with fmt "json" every line
    on the stream is a JSON object.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
