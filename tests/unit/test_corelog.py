"""gRPC C-core lines re-logged through Python logging, at warning level or above."""

from __future__ import annotations

import logging

import pytest

from sielum.server import corelog
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
            "I1201 20:06:42.848557   23918 chttp2_transport.cc:2563] Something "
            "the core says at info\n",
            logging.WARNING,
            "info",
            "chttp2_transport.cc:2563",
            "Something the core says at info",
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


_NO_CERT = (
    "I1207 21:02:15.000000   11712 ssl_transport_security.cc:2563] Handshake failed with "
    "error SSL_ERROR_SSL: error:100000c0:SSL routines:OPENSSL_internal:"
    "PEER_DID_NOT_RETURN_A_CERTIFICATE: Invalid certificate verification context"
)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(corelog, "_throttle", corelog._Throttle(clock=lambda: now[0]))
    return now


def test_handshake_failures_in_plain_words_once_a_minute(
    caplog: pytest.LogCaptureFixture, clock: list[float]
) -> None:
    [record] = _records(caplog, _NO_CERT)
    assert (record.levelno, record.getMessage()) == (logging.INFO, "tls_handshake_failed")
    fields = record.sielum_fields  # type: ignore[attr-defined]
    assert fields["reason"].startswith("a client sent no client certificate")
    assert fields["tls_error"] == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert fields["held_back"] == 0
    # Within the minute: held back, and counted into the next line.
    assert _records(caplog, _NO_CERT) == []
    assert _records(caplog, _NO_CERT) == []
    # Another reason has its own minute.
    other = _NO_CERT.replace("PEER_DID_NOT_RETURN_A_CERTIFICATE", "WRONG_VERSION_NUMBER")
    [record] = _records(caplog, other)
    assert record.sielum_fields["reason"].startswith("a client spoke plain HTTP")  # type: ignore[attr-defined]
    clock[0] += corelog.WINDOW_SECONDS
    [record] = _records(caplog, _NO_CERT)
    assert record.sielum_fields["held_back"] == 2  # type: ignore[attr-defined]


def test_an_unknown_reason_keeps_its_code(
    caplog: pytest.LogCaptureFixture, clock: list[float]
) -> None:
    line = _NO_CERT.replace("PEER_DID_NOT_RETURN_A_CERTIFICATE", "SOMETHING_NEW")
    [record] = _records(caplog, line)
    assert record.sielum_fields["reason"] == "TLS handshake failed: something new"  # type: ignore[attr-defined]


def test_an_unknown_server_name_is_a_warning_with_the_fix(
    caplog: pytest.LogCaptureFixture, clock: list[float]
) -> None:
    line = (
        "E1207 21:02:27.0 11712 ssl_transport_security.cc:3238] No match found for server name: vm"
    )
    [record] = _records(caplog, line)
    assert (record.levelno, record.getMessage()) == (logging.WARNING, "unknown_server_name")
    fields = record.sielum_fields  # type: ignore[attr-defined]
    assert fields["name"] == "vm"
    # As the client says it: renew-server-cert needs --data-dir.
    assert "sielum-server renew-server-cert --data-dir DIR --san vm" in fields["reason"]
    assert _records(caplog, line) == []
    [record] = _records(caplog, line.replace(": vm", ": other"))
    assert record.sielum_fields["name"] == "other"  # type: ignore[attr-defined]
