"""gRPC C-core lines re-logged through Python logging, at warning level or above."""

from __future__ import annotations

import logging

import pytest

from sielum.server.corelog import relog


def _records(caplog: pytest.LogCaptureFixture, line: str) -> list[logging.LogRecord]:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="grpc"):
        relog(line)
    return list(caplog.records)


@pytest.mark.parametrize(
    ("line", "level", "severity", "source", "text"),
    [
        (
            "I1201 20:06:42.848557   23918 ssl_transport_security.cc:2563] Handshake failed "
            "with error SSL_ERROR_SSL: "
            "error:10000070:SSL routines:OPENSSL_internal:BAD_PACKET_LENGTH\n",
            logging.WARNING,
            "info",
            "ssl_transport_security.cc:2563",
            "Handshake failed with error SSL_ERROR_SSL: "
            "error:10000070:SSL routines:OPENSSL_internal:BAD_PACKET_LENGTH",
        ),
        (
            "E0102 03:04:05.000000000 140001 chttp2_server.cc:1234] bind failed",
            logging.ERROR,
            "error",
            "chttp2_server.cc:1234",
            "bind failed",
        ),
        ("F0102 03:04:05.1 7 x.cc:1] boom", logging.CRITICAL, "fatal", "x.cc:1", "boom"),
        ("W0102 03:04:05.1 7 x.cc:1] hm", logging.WARNING, "warning", "x.cc:1", "hm"),
    ],
)
def test_core_lines_keep_their_words_at_warning_or_above(
    caplog: pytest.LogCaptureFixture, line: str, level: int, severity: str, source: str, text: str
) -> None:
    [record] = _records(caplog, line)
    assert record.name == "grpc"
    assert record.levelno == level
    assert record.getMessage() == text
    assert record.sielum_fields == {"source": source, "grpc_severity": severity}  # type: ignore[attr-defined]


def test_other_lines_are_kept_whole_and_blank_ones_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notice = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
    )
    [record] = _records(caplog, notice + "\n")
    assert (record.levelno, record.getMessage()) == (logging.WARNING, notice)
    assert record.sielum_fields == {"source": "stderr"}  # type: ignore[attr-defined]
    assert _records(caplog, "  \n") == []
