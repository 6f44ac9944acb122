"""sielum-admin: create, list and revoke enrollment tokens and devices over mTLS."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
from cryptography import x509
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from sielum.admin.v1 import admin_pb2, admin_pb2_grpc
from sielum.agent.address import ServerAddress, parse_server
from sielum.agent.errors import UsageError
from sielum.ca.profile import fingerprint
from sielum.cli.durations import parse_duration
from sielum.errors import InvalidArgumentError
from sielum.tokens import PREFIX as SECRET_PREFIX
from sielum.tokens import parse_secret

PROG = "sielum-admin"
CERT_DIR_ENV = "SIELUM_ADMIN_CERT_DIR"
# The admin bundle scripts/serve-dev.sh's `init` writes, relative to the repository.
DEFAULT_CERT_DIR = "sielum-data/admin"
DEFAULT_SERVER = "127.0.0.1:8444"
DEFAULT_API_PORT = 8444
DEFAULT_ENROLL_PORT = 8443
DEFAULT_TIMEOUT = 30.0
AGENT_CERT_DIR = "/etc/sielum"
PAGE_SIZE = 500
_Item = TypeVar("_Item")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CREDENTIALS = 3
EXIT_NOT_FOUND = 4
EXIT_UNREACHABLE = 5
EXIT_DENIED = 6

_TOKEN_STATES = {
    "active": admin_pb2.TOKEN_STATE_ACTIVE,
    "expired": admin_pb2.TOKEN_STATE_EXPIRED,
    "exhausted": admin_pb2.TOKEN_STATE_EXHAUSTED,
    "revoked": admin_pb2.TOKEN_STATE_REVOKED,
}

_DEVICE_STATES = {
    "active": admin_pb2.DEVICE_STATE_ACTIVE,
    "expired": admin_pb2.DEVICE_STATE_EXPIRED,
    "revoked": admin_pb2.DEVICE_STATE_REVOKED,
}

_DESCRIPTION = """\
Sielum administration over mutual TLS with an admin certificate.

  tokens create --label L [--max-uses N] [--expires-in 7d | --expires-at RFC3339]
  tokens list [--state active|expired|exhausted|revoked] [--limit N]
  tokens get ID | tokens revoke ID          (ID: the token id, or its whole secret)
  devices list [--state active|expired|revoked] [--hostname NAME] [--token ID] [--limit N]
  devices get ID | devices revoke ID

The admin certificate bundle (admin.pem, admin.key, ca.pem) is read from
--cert-dir, else $SIELUM_ADMIN_CERT_DIR, else ./sielum-data/admin (what
scripts/serve-dev.sh makes). `sielum-server issue-admin-cert` writes more.
"""

_EPILOG = f"""\
exit codes:
  {EXIT_OK}  success
  {EXIT_FAILED}  the server failed the request
  {EXIT_USAGE}  bad arguments (here or as judged by the server: INVALID_ARGUMENT)
  {EXIT_CREDENTIALS}  the admin certificate bundle is missing or unreadable
  {EXIT_NOT_FOUND}  no token or device has that id
  {EXIT_UNREACHABLE}  the server is unreachable
  {EXIT_DENIED}  the server refused this certificate (not an admin, or not from its CA)

Every failure prints one line on stderr. --json prints the API's JSON (the
field names buf curl and grpcurl show) for scripts.
"""


class AdminError(Exception):
    """A failure with its exit code; the message is one line, safe to print."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: {message} (see {self.prog} --help)\n")


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


# --- arguments ------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_rfc3339(text: str) -> datetime:
    """'2026-12-31T23:59:59Z' or with an offset; a time without a zone is refused."""
    value = text.strip()
    if not re.fullmatch(
        r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:\d{2})", value
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an RFC 3339 time with a zone, like 2026-12-31T23:59:59Z"
        )
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None
    return moment.astimezone(UTC)


def _server(text: str) -> ServerAddress:
    try:
        return parse_server(text, default_port=DEFAULT_API_PORT)
    except UsageError as error:
        raise argparse.ArgumentTypeError(error.message.replace("--server ", "")) from None


# --- output ---------------------------------------------------------------------


def _to_dict(message: Message) -> dict[str, Any]:
    # Canonical proto3 JSON: the names and shapes buf curl and grpcurl print.
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2, sort_keys=False))


def _when(stamp: Timestamp, unset: str) -> str:
    if stamp.seconds == 0 and stamp.nanos == 0:
        return unset
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _token_state(token: admin_pb2.EnrollmentToken) -> str:
    name: str = admin_pb2.TokenState.Name(token.state)
    return name.removeprefix("TOKEN_STATE_").lower()


def _device_state(device: admin_pb2.Device) -> str:
    name: str = admin_pb2.DeviceState.Name(device.state)
    return name.removeprefix("DEVICE_STATE_").lower()


def uses_text(token: admin_pb2.EnrollmentToken) -> str:
    limit = str(token.max_uses) if token.HasField("max_uses") else "unlimited"
    return f"{token.uses}/{limit}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)
    ]
    lines = []
    for row in (headers, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def token_rows(tokens: Sequence[admin_pb2.EnrollmentToken]) -> str:
    return _table(
        ("ID", "LABEL", "STATE", "USES", "EXPIRES", "LAST USED"),
        [
            (
                t.id,
                t.label,
                _token_state(t),
                uses_text(t),
                _when(t.expires_at, "never"),
                _when(t.last_used_at, "never"),
            )
            for t in tokens
        ],
    )


def device_rows(devices: Sequence[admin_pb2.Device]) -> str:
    return _table(
        ("ID", "HOSTNAME", "STATE", "TOKEN", "CERT EXPIRES", "LAST SEEN", "PEER"),
        [
            (
                d.id,
                d.hostname or "-",
                _device_state(d),
                d.token_id,
                _when(d.not_after, "-"),
                _when(d.last_seen_at, "never"),
                d.peer or "-",
            )
            for d in devices
        ],
    )


def _token_details(token: admin_pb2.EnrollmentToken) -> str:
    fields = [
        ("id", token.id),
        ("label", token.label),
        ("state", _token_state(token)),
        ("uses", uses_text(token)),
        ("expires", _when(token.expires_at, "never")),
        ("last used", _when(token.last_used_at, "never")),
        ("created", f"{_when(token.created_at, '-')} by {token.created_by or '-'}"),
        ("revoked", _when(token.revoked_at, "no")),
    ]
    return _table(("", ""), fields).split("\n", 1)[1]


def _device_details(device: admin_pb2.Device) -> str:
    fields = [
        ("id", device.id),
        ("hostname", device.hostname or "-"),
        ("state", _device_state(device)),
        ("token", device.token_id),
        ("serial", device.serial),
        ("cert expires", _when(device.not_after, "-")),
        ("enrolled", _when(device.enrolled_at, "-")),
        ("last seen", _when(device.last_seen_at, "never")),
        ("revoked", _when(device.revoked_at, "no")),
        ("peer", device.peer or "-"),
    ]
    fields += [(f"fact {key}", value) for key, value in sorted(device.facts.items())]
    return _table(("", ""), fields).split("\n", 1)[1]


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
        self.timeout = timeout
        self.channel = grpc.secure_channel(server.target, credentials)
        self.stub = admin_pb2_grpc.AdminServiceStub(self.channel)

    def call(self, method: Callable[..., Any], request: Message) -> Any:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise _rpc_error(error, self.server) from None

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
    ) -> Iterator[admin_pb2.Device]:
        def fetch(size: int, page_token: str) -> tuple[Sequence[admin_pb2.Device], str]:
            while True:
                request = admin_pb2.ListDevicesRequest(
                    page_size=size,
                    page_token=page_token,
                    token_id=token_id,
                    state=state,
                    hostname=hostname,
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
                    raise _rpc_error(error, self.server) from None
                return reply.devices, reply.next_page_token

        return self.pages(fetch, limit, page_size)


def _rpc_error(error: grpc.RpcError, server: ServerAddress) -> AdminError:
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    raw = error.details() if isinstance(error, grpc.Call) else ""
    details = re.sub(r"\s+", " ", raw or "").strip() or code.name.lower()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return AdminError(
            f"cannot reach the Sielum API at {server.target}: {details}", EXIT_UNREACHABLE
        )
    exit_code = {
        grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT: EXIT_USAGE,
        grpc.StatusCode.PERMISSION_DENIED: EXIT_DENIED,
        grpc.StatusCode.UNAUTHENTICATED: EXIT_DENIED,
    }.get(code, EXIT_FAILED)
    return AdminError(f"{details} ({code.name})", exit_code)


# --- commands -------------------------------------------------------------------


def enroll_command(enroll_server: str, ca_fingerprint: str, secret: str) -> str:
    """The exact agent command line; the token travels in the environment, not in argv."""
    return (
        f"SIELUM_ENROLLMENT_TOKEN={shlex.quote(secret)} sielum-agent enroll"
        f" --server {shlex.quote(enroll_server)}"
        f" --ca-fingerprint {ca_fingerprint} --cert-dir {AGENT_CERT_DIR}"
    )


def _enroll_server(args: argparse.Namespace) -> str:
    if args.enroll_server:
        try:
            parse_server(args.enroll_server)
        except UsageError as error:
            raise AdminError(
                error.message.replace("--server", "--enroll-server"), EXIT_USAGE
            ) from None
        return str(args.enroll_server).strip()
    api: ServerAddress = args.server
    return ServerAddress(api.host, DEFAULT_ENROLL_PORT).url


def _cmd_tokens_create(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    request = admin_pb2.CreateEnrollmentTokenRequest(label=args.label)
    if args.max_uses is not None:
        request.max_uses = args.max_uses
    expires_at: datetime | None = args.expires_at
    if args.expires_in is not None:
        expires_in: timedelta = args.expires_in
        expires_at = datetime.now(UTC) + expires_in
    if expires_at is not None:
        request.expires_at.FromDatetime(expires_at)
    enroll_server = _enroll_server(args)
    ca_fingerprint = bundle.ca_fingerprint()
    reply: admin_pb2.CreateEnrollmentTokenResponse = api.call(
        api.stub.CreateEnrollmentToken, request
    )
    command = enroll_command(enroll_server, ca_fingerprint, reply.secret)
    if args.max_uses is None and expires_at is None:
        # Allowed, as the API allows it, but rarely meant: such a token is a standing
        # credential that enrolls any number of machines until someone revokes it.
        print(
            f"{PROG}: warning: token {reply.token.id} never expires and has no use limit: "
            "anyone who gets hold of it can enroll any number of devices until it is revoked; "
            "pass --expires-in DURATION (like 7d) or --expires-at RFC3339, and --max-uses N",
            file=sys.stderr,
        )
    if args.json:
        _print_json({**_to_dict(reply), "caFingerprint": ca_fingerprint, "enrollCommand": command})
        return EXIT_OK
    token = reply.token
    print(
        f"created token {token.id} (label {token.label!r}, uses {uses_text(token)}, "
        f"expires {_when(token.expires_at, 'never')})"
    )
    print()
    print("secret (shown this once: store it now, e.g. in a vault):")
    print(f"  {reply.secret}")
    print()
    print("enroll an agent with it:")
    print(f"  {command}")
    return EXIT_OK


def _cmd_tokens_list(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    state = _TOKEN_STATES[args.state] if args.state else admin_pb2.TOKEN_STATE_UNSPECIFIED
    tokens = list(api.tokens(state, args.limit, args.page_size))
    if args.json:
        _print_json({"tokens": [_to_dict(t) for t in tokens]})
    elif tokens:
        print(token_rows(tokens))
    else:
        print("no tokens")
    return EXIT_OK


def token_id_of(text: str) -> str:
    """A token id as given, or the id inside a whole secret; the secret goes no further.

    Only the id is sent to the server, and no message repeats what was given, so a
    secret pasted here ends up in no log and on no screen.
    """
    value = text.strip()
    if not value.startswith(SECRET_PREFIX):
        return value
    try:
        return parse_secret(value).id
    except InvalidArgumentError as error:
        raise AdminError(
            f"that looks like a token secret, but {error.message.removeprefix('enrollment token ')}"
            "; pass the token id or the whole secret",
            EXIT_USAGE,
        ) from None


def _cmd_tokens_get(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    request = admin_pb2.GetEnrollmentTokenRequest(id=token_id_of(args.id))
    reply = api.call(api.stub.GetEnrollmentToken, request)
    if args.json:
        _print_json(_to_dict(reply))
    else:
        print(_token_details(reply.token))
    return EXIT_OK


def _cmd_tokens_revoke(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    token_id = token_id_of(args.id)
    # Read first, to tell "revoked now" from "was revoked already". The revoke is
    # still sent: it changes nothing then, and the audit trail records the attempt.
    before = api.call(
        api.stub.GetEnrollmentToken, admin_pb2.GetEnrollmentTokenRequest(id=token_id)
    ).token
    already = before.HasField("revoked_at")
    reply = api.call(
        api.stub.RevokeEnrollmentToken, admin_pb2.RevokeEnrollmentTokenRequest(id=token_id)
    )
    if args.json:
        _print_json({**_to_dict(reply), "alreadyRevoked": already})
    elif already:
        print(
            f"token {reply.token.id} was already revoked at "
            f"{_when(reply.token.revoked_at, '-')}: nothing changed"
        )
        print(_token_details(reply.token))
    else:
        print(f"revoked token {reply.token.id}: it enrolls no more devices")
        print("(devices already enrolled with it keep working; revoke them one by one)")
        print(_token_details(reply.token))
    return EXIT_OK


def _cmd_devices_list(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    state = _DEVICE_STATES[args.state] if args.state else admin_pb2.DEVICE_STATE_UNSPECIFIED
    devices = list(
        api.devices(
            args.token or "", args.limit, args.page_size, state=state, hostname=args.hostname
        )
    )
    if args.json:
        _print_json({"devices": [_to_dict(d) for d in devices]})
    elif devices:
        print(device_rows(devices))
    else:
        print("no devices")
    return EXIT_OK


def _cmd_devices_get(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    reply = api.call(api.stub.GetDevice, admin_pb2.GetDeviceRequest(id=args.id))
    if args.json:
        _print_json(_to_dict(reply))
    else:
        print(_device_details(reply.device))
    return EXIT_OK


def _cmd_devices_revoke(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    # As for tokens: read first, then revoke (a repeat changes nothing but is audited).
    before = api.call(api.stub.GetDevice, admin_pb2.GetDeviceRequest(id=args.id)).device
    already = before.HasField("revoked_at")
    reply = api.call(api.stub.RevokeDevice, admin_pb2.RevokeDeviceRequest(id=args.id))
    if args.json:
        _print_json({**_to_dict(reply), "alreadyRevoked": already})
    elif already:
        print(
            f"device {reply.device.id} was already revoked at "
            f"{_when(reply.device.revoked_at, '-')}: nothing changed"
        )
        print(_device_details(reply.device))
    else:
        print(f"revoked device {reply.device.id}: the server refuses its certificate from now on")
        print(_device_details(reply.device))
    return EXIT_OK


# --- parser ---------------------------------------------------------------------


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # The same options are accepted before and after the command. Below the top
    # level their default is SUPPRESS, so a subcommand never overwrites a value
    # given before it with its own default.
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--server",
        type=_server,
        default=default(_server(DEFAULT_SERVER)),
        metavar="HOST:PORT",
        help=f"the API port (mTLS), default {DEFAULT_SERVER}",
    )
    parser.add_argument(
        "--cert-dir",
        default=default(None),
        metavar="DIR",
        help=f"admin.pem, admin.key, ca.pem (default ${CERT_DIR_ENV}, else ./{DEFAULT_CERT_DIR})",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default(DEFAULT_TIMEOUT),
        metavar="SECONDS",
        help=f"per call (default {DEFAULT_TIMEOUT:g})",
    )


def _page_size_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--page-size",
        type=_positive_int,
        default=PAGE_SIZE,
        metavar="N",
        help="items asked for per call; every page is fetched (default %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser, top=True)
    groups = parser.add_subparsers(dest="group", required=True, metavar="{tokens,devices}")

    def leaf(
        sub: argparse._SubParsersAction[_Parser],
        name: str,
        help_text: str,
        run: Callable[[argparse.Namespace, Api, AdminBundle], int],
    ) -> argparse.ArgumentParser:
        command = sub.add_parser(
            name,
            help=help_text,
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _global_options(command, top=False)
        command.set_defaults(run=run)
        return command

    tokens = groups.add_parser("tokens", help="enrollment tokens")
    token_commands = tokens.add_subparsers(dest="command", required=True, metavar="COMMAND")
    create = leaf(
        token_commands, "create", "make a token; prints its secret once", _cmd_tokens_create
    )
    create.add_argument("--label", required=True, help="what the token is for, shown in lists")
    create.add_argument(
        "--max-uses",
        type=_positive_int,
        metavar="N",
        help="enrollments allowed (default unlimited)",
    )
    expiry = create.add_mutually_exclusive_group()
    expiry.add_argument(
        "--expires-in", type=parse_duration, metavar="DURATION", help="like 7d, 12h, 30m"
    )
    expiry.add_argument(
        "--expires-at", type=parse_rfc3339, metavar="RFC3339", help="like 2026-12-31T23:59:59Z"
    )
    create.add_argument(
        "--enroll-server",
        default="",
        metavar="URL",
        help=f"enroll URL to print in the agent command (default: --server's host, port "
        f"{DEFAULT_ENROLL_PORT})",
    )
    listing = leaf(token_commands, "list", "list tokens (every page)", _cmd_tokens_list)
    listing.add_argument("--state", choices=sorted(_TOKEN_STATES), help="only tokens in this state")
    listing.add_argument("--limit", type=_positive_int, metavar="N", help="at most N tokens")
    _page_size_option(listing)
    id_help = "the token id, or the whole secret (slm_...): only its id is sent, never shown"
    get = leaf(token_commands, "get", "show one token", _cmd_tokens_get)
    get.add_argument("id", metavar="ID", help=id_help)
    revoke = leaf(
        token_commands, "revoke", "stop a token from enrolling more devices", _cmd_tokens_revoke
    )
    revoke.add_argument("id", metavar="ID", help=id_help)

    devices = groups.add_parser("devices", help="enrolled devices")
    device_commands = devices.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dlist = leaf(device_commands, "list", "list devices (every page)", _cmd_devices_list)
    dlist.add_argument("--state", choices=sorted(_DEVICE_STATES), help="only devices in this state")
    dlist.add_argument(
        "--hostname", default="", metavar="NAME", help="only devices with exactly this host name"
    )
    dlist.add_argument("--token", metavar="ID", help="only devices enrolled with this token")
    dlist.add_argument("--limit", type=_positive_int, metavar="N", help="at most N devices")
    _page_size_option(dlist)
    dget = leaf(device_commands, "get", "show one device", _cmd_devices_get)
    dget.add_argument("id")
    drevoke = leaf(
        device_commands,
        "revoke",
        "refuse the device's certificate from now on",
        _cmd_devices_revoke,
    )
    drevoke.add_argument("id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cert_dir = Path(args.cert_dir or os.environ.get(CERT_DIR_ENV) or DEFAULT_CERT_DIR)
    try:
        bundle = AdminBundle.load(cert_dir)
        api = Api(args.server, bundle, args.timeout)
        with api.channel:
            return int(args.run(args, api, bundle))
    except AdminError as error:
        print(f"{PROG}: {error.message}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
