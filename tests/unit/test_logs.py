"""The log line: one per event, its fields quoted only when they must be."""

from __future__ import annotations

import io
import json
import logging

from sielum.logs import TextFormatter, configure_logging, log_event


def one_line(fmt: str, **fields: object) -> str:
    stream = io.StringIO()
    configure_logging(fmt, stream=stream)
    try:
        log_event(logging.getLogger("sielum.enroll"), "enroll", **fields)
    finally:
        logging.getLogger().handlers[:] = []
        logging.getLogger().setLevel(logging.WARNING)  # the root logger's default
    return stream.getvalue()


def test_ok_text_line_quotes_only_values_with_spaces_quotes_or_equals() -> None:
    line = one_line(
        "text", outcome="ok", device="d-1", reason='a "b" c', empty="", eq="a=b", tab="a\tb"
    )
    stamp, level, rest = line.split(" ", 2)
    assert stamp.endswith("Z") and len(stamp) == len("2026-11-27T20:00:00Z")
    assert level == "INFO"
    assert rest == (
        'enroll outcome=ok device=d-1 reason="a \\"b\\" c" empty="" eq="a=b" tab="a\\tb"\n'
    )


def test_ok_text_lines_of_one_second_share_its_stamp_and_the_next_has_its_own() -> None:
    formatter = TextFormatter()
    record = logging.LogRecord("x", logging.INFO, "", 0, "e", (), None)
    record.created = 1_780_000_000.25
    first = formatter.format(record)
    record.created = 1_780_000_000.75
    assert formatter.format(record) == first == "2026-05-28T20:26:40Z INFO e"
    record.created = 1_780_000_001.0
    assert formatter.format(record) == "2026-05-28T20:26:41Z INFO e"


def test_ok_json_line_carries_the_fields() -> None:
    entry = json.loads(one_line("json", outcome="ok", token="tok_1"))
    assert entry["event"] == "enroll"
    assert entry["logger"] == "sielum.enroll"
    assert (entry["outcome"], entry["token"]) == ("ok", "tok_1")


def test_ok_a_disabled_level_writes_nothing() -> None:
    stream = io.StringIO()
    configure_logging("text", level=logging.WARNING, stream=stream)
    try:
        log_event(logging.getLogger("sielum.enroll"), "enroll", outcome="ok")
    finally:
        logging.getLogger().handlers[:] = []
        logging.getLogger().setLevel(logging.WARNING)  # the root logger's default
    assert stream.getvalue() == ""
