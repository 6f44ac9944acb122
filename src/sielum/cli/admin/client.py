"""What every sielum-admin command shares: the bundle, mTLS calls, output, and failures as exits."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar

import grpc
from cryptography import x509
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from sielum.admin.v1 import admin_pb2, admin_pb2_grpc
from sielum.ca.profile import fingerprint
from sielum.cli.conventions import CommandError
from sielum.endpoint import reach
from sielum.endpoint.address import ServerAddress
from sielum.endpoint.errors import NameMismatchError, WrongPortError

PROG = "sielum-admin"
CERT_DIR_ENV = "SIELUM_ADMIN_CERT_DIR"
# The admin bundle scripts/serve-dev.sh's `init` writes, relative to the repository.
DEFAULT_CERT_DIR = "sielum-data/admin"
PAGE_SIZE = 500
_Item = TypeVar("_Item")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CREDENTIALS = 3
EXIT_NOT_FOUND = 4
EXIT_UNREACHABLE = 5
EXIT_DENIED = 6
EXIT_NAME_MISMATCH = 7
# The word for each exit code in the --json error object (sielum/cli/conventions.py).
_CODES = {
    EXIT_FAILED: "failed",
    EXIT_USAGE: "usage",
    EXIT_CREDENTIALS: "credentials",
    EXIT_NOT_FOUND: "not_found",
    EXIT_UNREACHABLE: "unreachable",
    EXIT_DENIED: "denied",
    EXIT_NAME_MISMATCH: "name_mismatch",
}

_EPILOG = f"""\
exit codes:
  {EXIT_OK}  success
  {EXIT_FAILED}  the server failed the request
  {EXIT_USAGE}  bad arguments (here or as judged by the server: INVALID_ARGUMENT)
  {EXIT_CREDENTIALS}  the admin certificate bundle is missing or unreadable
  {EXIT_NOT_FOUND}  no token, device, admin or service has that id or name
  {EXIT_UNREACHABLE}  the server is unreachable, or --server is another of Sielum's ports
     (the enroll or dashboard port, not the API port)
  {EXIT_DENIED}  the server refused this certificate (not an admin, a revoked admin, or not
     from its CA)
  {EXIT_NAME_MISMATCH}  the server's certificate does not name the host in --server (the fix:
     sielum-server renew-server-cert --data-dir DIR --san HOST)

Every failure prints one line on stderr. --json (before or after the command)
prints the API's JSON (the field names buf curl and grpcurl show) for scripts,
and on failure {{"error": {{"code", "message", "exit_code"}}}} on stdout as well as
the line on stderr.
"""


class AdminError(CommandError):
    """A failure with its exit code; the message is one line, safe to print."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED, code: str = "") -> None:
        super().__init__(message, exit_code, code or _CODES.get(exit_code, "failed"))


@dataclass(frozen=True)
class AdminBundle:
    directory: Path
    ca_pem: bytes
    key_pem: bytes
    certificate_pem: bytes

    @classmethod
    def load(cls, directory: Path) -> AdminBundle:
        contents = []
        for name in ("ca.pem", "admin.key", "admin.pem"):
            path = directory / name
            try:
                contents.append(path.read_bytes())
            except FileNotFoundError:
                raise AdminError(
                    f"no admin certificate bundle in {directory} ({name} is missing): "
                    f"pass --cert-dir or set {CERT_DIR_ENV}",
                    EXIT_CREDENTIALS,
                ) from None
            except OSError as error:
                raise AdminError(
                    f"cannot read {path}: {(error.strerror or str(error)).lower()}",
                    EXIT_CREDENTIALS,
                ) from None
        return cls(directory, contents[0], contents[1], contents[2])

    def ca_fingerprint(self) -> str:
        try:
            return fingerprint(x509.load_pem_x509_certificate(self.ca_pem))
        except ValueError:
            raise AdminError(
                f"{self.directory / 'ca.pem'} is not a PEM certificate", EXIT_CREDENTIALS
            ) from None


# --- output ---------------------------------------------------------------------


def _to_dict(message: Message) -> dict[str, Any]:
    # Canonical proto3 JSON: the names and shapes buf curl and grpcurl print.
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def _when(stamp: Timestamp, unset: str) -> str:
    if stamp.seconds == 0 and stamp.nanos == 0:
        return unset
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)
    ]
    lines = []
    for row in (headers, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# --- the API --------------------------------------------------------------------


class Api:
    """One mTLS channel to AdminService; every call becomes an AdminError on failure."""

    def __init__(self, server: ServerAddress, bundle: AdminBundle, timeout: float) -> None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=bundle.ca_pem,
            private_key=bundle.key_pem,
            certificate_chain=bundle.certificate_pem,
        )
        self.server = server
        self.ca_pem = bundle.ca_pem
        self.timeout = timeout
        self.channel = grpc.secure_channel(server.target, credentials)
        self.stub = admin_pb2_grpc.AdminServiceStub(self.channel)

    def call(self, method: Callable[..., Any], request: Message) -> Any:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise self.error(error) from None

    def error(self, error: grpc.RpcError) -> AdminError:
        return _rpc_error(error, self.server, self.ca_pem)

    def pages(
        self,
        fetch: Callable[[int, str], tuple[Sequence[_Item], str]],
        limit: int | None,
        page_size: int,
    ) -> Iterator[_Item]:
        """Every item of a listing, following next_page_token, stopping at limit."""
        page_token = ""
        count = 0
        while limit is None or count < limit:
            size = page_size if limit is None else min(page_size, limit - count)
            items, page_token = fetch(size, page_token)
            for item in items[: None if limit is None else limit - count]:
                count += 1
                yield item
            if not page_token:
                return

    def tokens(
        self, state: admin_pb2.TokenState.ValueType, limit: int | None, page_size: int
    ) -> Iterator[admin_pb2.EnrollmentToken]:
        def fetch(size: int, page_token: str) -> tuple[Sequence[admin_pb2.EnrollmentToken], str]:
            request = admin_pb2.ListEnrollmentTokensRequest(
                page_size=size, page_token=page_token, state=state
            )
            reply = self.call(self.stub.ListEnrollmentTokens, request)
            return reply.tokens, reply.next_page_token

        return self.pages(fetch, limit, page_size)

    def devices(
        self,
        token_id: str,
        limit: int | None,
        page_size: int,
        *,
        state: admin_pb2.DeviceState.ValueType = admin_pb2.DEVICE_STATE_UNSPECIFIED,
        hostname: str = "",
        tag: str = "",
        hostname_prefix: str = "",
        facts: Mapping[str, str] | None = None,
    ) -> Iterator[admin_pb2.Device]:
        def fetch(size: int, page_token: str) -> tuple[Sequence[admin_pb2.Device], str]:
            while True:
                request = admin_pb2.ListDevicesRequest(
                    page_size=size,
                    page_token=page_token,
                    token_id=token_id,
                    state=state,
                    hostname=hostname,
                    tag=tag,
                    hostname_prefix=hostname_prefix,
                    facts=facts or {},
                )
                try:
                    reply = self.stub.ListDevices(request, timeout=self.timeout)
                except grpc.RpcError as error:
                    # A page above the 4 MB reply limit (from a server that does not
                    # end its pages by size): ask again for half as many devices.
                    code = error.code() if isinstance(error, grpc.Call) else None
                    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and size > 1:
                        size //= 2
                        continue
                    raise self.error(error) from None
                return reply.devices, reply.next_page_token

        return self.pages(fetch, limit, page_size)

    def requests(
        self, state: admin_pb2.EnrollmentRequestState.ValueType, limit: int | None, page_size: int
    ) -> Iterator[admin_pb2.EnrollmentRequest]:
        def fetch(size: int, page_token: str) -> tuple[Sequence[admin_pb2.EnrollmentRequest], str]:
            request = admin_pb2.ListEnrollmentRequestsRequest(
                page_size=size, page_token=page_token, state=state
            )
            reply = self.call(self.stub.ListEnrollmentRequests, request)
            return reply.requests, reply.next_page_token

        return self.pages(fetch, limit, page_size)

    def admins(self, limit: int | None, page_size: int) -> Iterator[admin_pb2.Admin]:
        def fetch(size: int, page_token: str) -> tuple[Sequence[admin_pb2.Admin], str]:
            request = admin_pb2.ListAdminsRequest(page_size=size, page_token=page_token)
            reply = self.call(self.stub.ListAdmins, request)
            return reply.admins, reply.next_page_token

        return self.pages(fetch, limit, page_size)

    def services(self, limit: int | None, page_size: int) -> Iterator[admin_pb2.Service]:
        def fetch(size: int, page_token: str) -> tuple[Sequence[admin_pb2.Service], str]:
            request = admin_pb2.ListServicesRequest(page_size=size, page_token=page_token)
            reply = self.call(self.stub.ListServices, request)
            return reply.services, reply.next_page_token

        return self.pages(fetch, limit, page_size)

    def events(
        self, template: admin_pb2.ListAuditEventsRequest, limit: int | None, page_size: int
    ) -> Iterator[admin_pb2.AuditEvent]:
        def fetch(size: int, page_token: str) -> tuple[Sequence[admin_pb2.AuditEvent], str]:
            request = admin_pb2.ListAuditEventsRequest()
            request.CopyFrom(template)
            request.page_size, request.page_token = size, page_token
            reply = self.call(self.stub.ListAuditEvents, request)
            return reply.events, reply.next_page_token

        return self.pages(fetch, limit, page_size)


def _rpc_error(error: grpc.RpcError, server: ServerAddress, ca_pem: bytes) -> AdminError:
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    raw = error.details() if isinstance(error, grpc.Call) else ""
    details = re.sub(r"\s+", " ", raw or "").strip() or code.name.lower()
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return AdminError(reach.cannot_reach(server.target, "no answer in time"), EXIT_UNREACHABLE)
    if code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    ):
        # gRPC's text does not tell a closed port from a refused handshake, and the
        # enroll port refuses admin calls as if the certificate were wrong (it asks
        # for none): look again, and say what it is, as the agent does.
        try:
            ca: x509.Certificate | None = x509.load_pem_x509_certificate(ca_pem)
        except ValueError:
            ca = None
        found = reach.explain_failure(server, ca, "api", details)
        if isinstance(found, WrongPortError):
            return AdminError(found.message, EXIT_UNREACHABLE, found.code)
        if isinstance(found, NameMismatchError):
            return AdminError(found.message, EXIT_NAME_MISMATCH)
        if code is grpc.StatusCode.UNAVAILABLE:
            message = (found or reach.unreachable(server, details)).message
            return AdminError(message, EXIT_UNREACHABLE)
    exit_code = {
        grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT: EXIT_USAGE,
        grpc.StatusCode.PERMISSION_DENIED: EXIT_DENIED,
        grpc.StatusCode.UNAUTHENTICATED: EXIT_DENIED,
    }.get(code, EXIT_FAILED)
    return AdminError(f"{details} ({code.name})", exit_code)
