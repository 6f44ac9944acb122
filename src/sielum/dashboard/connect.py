"""The Connect protocol's unary JSON form: requests checked and parsed, errors in Connect's words.

https://connectrpc.com/docs/protocol: a unary call is `POST /<service>/<method>`
with `Content-Type: application/json` and `Connect-Protocol-Version: 1`; the
answer is the response message's JSON, or an error object `{"code", "message"}`
with the HTTP status Connect assigns to the code. Browsers reach the dashboard
this way, so the same checks refuse cross-site requests (CSRF): only the
dashboard's own pages can send a request with these headers and its Origin.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from sielum.errors import SielumError
from sielum.logs import log_event

log = logging.getLogger("sielum.dashboard")

PROTOCOL_VERSION_HEADER = "Connect-Protocol-Version"
JSON = "application/json"

# Connect's code names and HTTP statuses (connectrpc.com/docs/protocol#error-codes).
CONNECT_CODES: Mapping[grpc.StatusCode, tuple[str, int]] = {
    grpc.StatusCode.CANCELLED: ("canceled", 499),
    grpc.StatusCode.UNKNOWN: ("unknown", 500),
    grpc.StatusCode.INVALID_ARGUMENT: ("invalid_argument", 400),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("deadline_exceeded", 504),
    grpc.StatusCode.NOT_FOUND: ("not_found", 404),
    grpc.StatusCode.ALREADY_EXISTS: ("already_exists", 409),
    grpc.StatusCode.PERMISSION_DENIED: ("permission_denied", 403),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("resource_exhausted", 429),
    grpc.StatusCode.FAILED_PRECONDITION: ("failed_precondition", 400),
    grpc.StatusCode.ABORTED: ("aborted", 409),
    grpc.StatusCode.OUT_OF_RANGE: ("out_of_range", 400),
    grpc.StatusCode.UNIMPLEMENTED: ("unimplemented", 501),
    grpc.StatusCode.INTERNAL: ("internal", 500),
    grpc.StatusCode.UNAVAILABLE: ("unavailable", 503),
    grpc.StatusCode.DATA_LOSS: ("data_loss", 500),
    grpc.StatusCode.UNAUTHENTICATED: ("unauthenticated", 401),
}


class ConnectError(Exception):
    """An error as the dashboard answers it: Connect's code, its HTTP status, a safe message.

    http_status overrides Connect's status for the code where HTTP has a better
    word (415 for a content type the server does not take).
    """

    def __init__(self, code: grpc.StatusCode, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status

    @classmethod
    def of(cls, error: SielumError) -> ConnectError:
        return cls(error.code, error.message)

    @property
    def status(self) -> int:
        return self.http_status or CONNECT_CODES[self.code][1]

    def body(self) -> bytes:
        return json.dumps({"code": CONNECT_CODES[self.code][0], "message": self.message}).encode()


def media_type(content_type: str) -> str:
    """'application/json; charset=utf-8' -> 'application/json'."""
    return content_type.split(";", 1)[0].strip().lower()


def check_browser_request(
    headers: Mapping[str, str], allowed_origins: Collection[str], *, connect: bool
) -> None:
    """Refuse, as ConnectError, a request the dashboard's own pages would not send.

    - Origin must be one of ours: a page on any other site that posts here is
      refused, whatever cookies its browser would attach (SameSite=Strict
      keeps them home as well).
    - Content-Type must be application/json: an HTML form can only send
      urlencoded, multipart or text/plain bodies, and a cross-site fetch with
      JSON needs a CORS preflight, which the dashboard never grants.
    - Connect-Protocol-Version: 1 on Connect calls, as the protocol asks.
    """
    origin = headers.get("Origin")
    if origin is None or origin not in allowed_origins:
        raise ConnectError(
            grpc.StatusCode.PERMISSION_DENIED,
            "requests must come from the dashboard's own pages (Origin "
            f"{'missing' if origin is None else 'not allowed'})",
        )
    fetch_site = headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise ConnectError(
            grpc.StatusCode.PERMISSION_DENIED,
            "requests must come from the dashboard's own pages (Sec-Fetch-Site)",
        )
    if media_type(headers.get("Content-Type", "")) != JSON:
        raise ConnectError(
            grpc.StatusCode.INVALID_ARGUMENT, f"Content-Type must be {JSON}", http_status=415
        )
    if connect and headers.get(PROTOCOL_VERSION_HEADER) != "1":
        raise ConnectError(
            grpc.StatusCode.INVALID_ARGUMENT, f"{PROTOCOL_VERSION_HEADER}: 1 is required"
        )


def load_json_object(body: bytes, method: str, peer: str) -> dict[str, Any]:
    """The JSON object in body (empty means {}), or INVALID_ARGUMENT and one log line.

    Every JSON body the dashboard takes is decoded here. Deep nesting ("[[[...") makes
    the parser raise RecursionError rather than ValueError: that is the caller's
    malformed body too, not a server error with a traceback
    (tests/rpc/test_dashboard.py::test_fail_deeply_nested_json_makes_a_500_and_a_traceback).
    """
    try:
        document = json.loads(body.decode("utf-8")) if body.strip() else {}
    except (ValueError, RecursionError) as error:
        too_deep = isinstance(error, RecursionError)
        reason = "the body is nested too deeply" if too_deep else "the body is not UTF-8 JSON"
        raise _malformed(reason, method, peer) from None
    if not isinstance(document, dict):
        raise _malformed("the body is not a JSON object", method, peer)
    return document


def _malformed(reason: str, method: str, peer: str) -> ConnectError:
    log_event(
        log, "malformed request", level=logging.WARNING, method=method, peer=peer, reason=reason
    )
    return ConnectError(grpc.StatusCode.INVALID_ARGUMENT, reason)


def parse_request(body: bytes, request_class: type[Message], method: str, peer: str) -> Message:
    """The request message in body's JSON (empty means {}), or INVALID_ARGUMENT saying why."""
    message = request_class()
    name = message.DESCRIPTOR.full_name
    try:
        document = load_json_object(body, method, peer)
        json_format.ParseDict(document, message)
    except ConnectError as error:
        raise ConnectError(
            error.code, f"request is not a valid {name} message: {error.message}"
        ) from None
    except (json_format.ParseError, RecursionError) as error:
        reason = "the body is nested too deeply"
        if isinstance(error, json_format.ParseError):
            # The parser's words are about the caller's own JSON (a field name, a
            # type), so they help and reveal nothing of the server.
            reason = str(error).splitlines()[0][:200]
        _malformed(reason, method, peer)
        raise ConnectError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request is not a valid {name} message: {reason}",
        ) from None
    return message


def to_json(message: Message) -> dict[str, Any]:
    """A response in protobuf's canonical JSON (the field names buf curl and grpcurl show)."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
