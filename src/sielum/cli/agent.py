"""sielum-agent: enroll this machine with a token, then report status and renew over mTLS."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sielum.cli import quietgrpc  # noqa: F401  (first: before anything imports grpc)

# isort: split

from sielum.ca.profile import parse_fingerprint
from sielum.cli import conventions
from sielum.cli.conventions import CommandError, print_json
from sielum.cli.durations import parse_duration
from sielum.endpoint import errors
from sielum.endpoint.address import parse_server
from sielum.endpoint.certdir import CertDir
from sielum.endpoint.daemon import DaemonOptions, serve
from sielum.endpoint.enrollment import (
    DEFAULT_TIMEOUT,
    EnrollOptions,
    default_facts,
    enroll,
    renew,
    status,
    unenroll,
)
from sielum.endpoint.errors import AgentError, UsageError
from sielum.errors import InvalidArgumentError
from sielum.logs import configure_logging
from sielum.tokens import Secret, parse_secret

PROG = "sielum-agent"
TOKEN_ENV = "SIELUM_ENROLLMENT_TOKEN"  # noqa: S105 - the variable's name, not a secret
DEFAULT_CERT_DIR = "/etc/sielum"

_DESCRIPTION = """\
Sielum agent: exchanges an enrollment token for a device certificate, once, then
talks to the Sielum API over mutual TLS with it.

  enroll    pin the CA, make a key, enroll with the token, store the certificate
  status    heartbeat with the stored certificate; says when renewal is due
  renew     new key and certificate; the old ones stay if anything fails
  run       stay up as a service: heartbeat, renew when due, ride out outages
  unenroll  end this device's enrollment on the server (decommissioning)
"""

_EXIT_CODES = f"""\
exit codes:
  {errors.EXIT_OK}  success
  {errors.EXIT_FAILED}  the server failed the request or sent an answer that fails our checks
  {errors.EXIT_USAGE}  bad arguments: --server, --ca-fingerprint, or a malformed/mistyped token
  {errors.EXIT_PIN_MISMATCH}  CA fingerprint mismatch: the server is not the pinned one
  {errors.EXIT_TOKEN_REFUSED}  token refused: invalid, expired, exhausted or revoked, refused by
     its policy ("token policy: ..."), or "enrollment denied" by an admin
  {errors.EXIT_UNREACHABLE}  server unreachable (refused, timed out, name not found, TLS failed),
     or another Sielum port: enroll on the enroll port, status/renew on the API port
     (the dashboard port is for a browser)
  {errors.EXIT_CERT_DIR}  cert dir cannot be created, written or read
  {errors.EXIT_ALREADY_ENROLLED}  already enrolled: the cert dir holds an enrollment (see --force)
  {errors.EXIT_NOT_ENROLLED}  not enrolled: no enrollment in the cert dir (status, renew, unenroll)
  {errors.EXIT_DEVICE_REFUSED}  device refused: revoked, unknown, or its certificate expired
  {errors.EXIT_NAME_MISMATCH}  name mismatch: the server's certificate (from the pinned CA) does not
     name the host in --server; fix with sielum-server renew-server-cert --data-dir DIR
     --san HOST

Every failure prints one line on stderr. The token is never printed. With
--json (before or after the command), enroll, status and renew print one JSON
document on stdout, and a failure prints {{"error": {{"code", "message",
"exit_code"}}}} there as well as the line on stderr.
`run` exits 0 on SIGTERM or SIGINT and 9 only when the server refuses the device.
"""

_ENROLL_EPILOG = f"""\
The token is read from --token, --token-file PATH ('-' for stdin) or the
{TOKEN_ENV} environment variable, in that order. Prefer the last two: a
command line is visible to every user of the machine. Surrounding whitespace is
ignored; a token that fails its checksum is refused before the server is dialled.

With a token that requires approval, enroll prints the request id on stderr and
waits, asking again with the same key (backing off to every 30 s), until an
admin approves it (`sielum-admin requests approve ID`) or denies it (exit 4,
"enrollment denied"; the denied key is dropped, so a later run asks anew). Stopped
meanwhile, it resumes as the same request when run again with the same --cert-dir.

--server accepts https://HOST, https://HOST:PORT (default port 443), HOST:PORT,
and IPv6 in brackets: https://[2001:db8::1]:8443.

--ca-fingerprint accepts sha256:<hex> (sielum-server fingerprint), bare hex, and
the AB:CD:... form of `openssl x509 -noout -fingerprint -sha256 -in ca.pem`.

{_EXIT_CODES}"""


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("timeout must be between 0 and 3600 seconds")
    return value


def read_token(args: argparse.Namespace) -> Secret:
    """The token from --token, --token-file or the environment; checked, never echoed."""
    if args.token is not None:
        text = args.token
    elif args.token_file is not None:
        try:
            if args.token_file == "-":  # noqa: S105 - stdin, not a password
                text = sys.stdin.read()
            else:
                text = Path(args.token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or "not UTF-8 text"
            raise UsageError(f"cannot read --token-file {args.token_file}: {reason}") from None
    elif os.environ.get(TOKEN_ENV, "").strip():
        text = os.environ[TOKEN_ENV]
    else:
        raise UsageError(
            f"no enrollment token: set {TOKEN_ENV}, or pass --token-file PATH or --token"
        )
    try:
        parse_secret(text)
    except InvalidArgumentError as error:
        raise UsageError(error.message) from None
    return Secret(text.strip())


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _announce_pending(request_id: str) -> None:
    """The enrollment waits for an admin: say which request, and how to decide it."""
    print(
        f"{PROG}: enrollment is waiting for approval: request {request_id}\n"
        f"  an admin approves it with: sielum-admin requests approve {request_id}\n"
        "  (or in the dashboard: Devices -> Pending); this agent keeps its key and asks "
        "again until then",
        file=sys.stderr,
        flush=True,
    )


def _fact(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, like role=web, got {text!r}")
    return name, value


def _cmd_enroll(args: argparse.Namespace) -> int:
    server = parse_server(args.server)
    try:
        pin = parse_fingerprint(args.ca_fingerprint)
    except InvalidArgumentError as error:
        raise UsageError(f"--ca-fingerprint: {error.message}") from None
    token = read_token(args)
    options = EnrollOptions(
        server=server,
        token=token,
        pin=pin,
        cert_dir=CertDir(Path(args.cert_dir)),
        force=args.force,
        timeout=args.timeout,
        on_pending=_announce_pending,
        hostname=args.hostname or platform.node(),
        facts={**default_facts(), **dict(args.fact)},
    )
    result = enroll(options)
    previous = result.previous
    if args.json:
        print_json(
            {
                "deviceId": result.device_id,
                "certDir": args.cert_dir,
                "notAfter": _when(result.not_after),
                "apiEndpoint": result.api_endpoint,
                "previous": None
                if previous is None
                else {
                    "deviceId": previous.device_id,
                    "ended": previous.ended,
                    "reason": previous.reason,
                },
            }
        )
    else:
        print(f"enrolled as device {result.device_id}")
        print(f"  cert dir:    {args.cert_dir}")
        print(f"  certificate: expires {_when(result.not_after)}")
        print(f"  api:         {result.api_endpoint}")
        if previous is not None and previous.ended:
            note = f" ({previous.reason})" if previous.reason else ""
            print(f"ended the previous enrollment, device {previous.device_id}{note}")
    if previous is not None and not previous.ended:
        # The new enrollment stands; the old device stays active on the server
        # until an admin revokes it, so say exactly which one (on stderr, with
        # --json too).
        revoke = (
            f"revoke it with `sielum-admin devices revoke {previous.device_id}`"
            if previous.device_id
            else f"find it with `sielum-admin devices list --hostname {options.hostname}` "
            "and revoke it with `sielum-admin devices revoke ID`"
        )
        which = f", device {previous.device_id}" if previous.device_id else ""
        print(
            f"{PROG}: could not end the previous enrollment{which}: {previous.reason}; {revoke}",
            file=sys.stderr,
        )
    return errors.EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    report = status(CertDir(Path(args.cert_dir)), timeout=args.timeout)
    if args.json:
        document = {
            "deviceId": report.device_id,
            "server": report.api_endpoint,
            "serverTime": _when(report.server_time),
            "notAfter": _when(report.not_after),
            "renewAfter": _when(report.renew_after),
            "renewalDue": report.renewal_due,
        }
        print_json(document)
        return errors.EXIT_OK
    days_left = (report.not_after - report.server_time).days
    print(f"device:      {report.device_id}")
    print(f"server:      {report.api_endpoint}")
    print(f"certificate: expires {_when(report.not_after)} ({days_left} days left)")
    if report.renewal_due:
        print(f"renewal:     due since {_when(report.renew_after)}: run `{PROG} renew`")
    else:
        print(f"renewal:     not due until {_when(report.renew_after)}")
    return errors.EXIT_OK


def _cmd_renew(args: argparse.Namespace) -> int:
    cert_dir = CertDir(Path(args.cert_dir))
    if args.if_due:
        report = status(cert_dir, timeout=args.timeout)
        if not report.renewal_due:
            if args.json:
                print_json(
                    {
                        "renewed": False,
                        "deviceId": report.device_id,
                        "renewAfter": _when(report.renew_after),
                    }
                )
            else:
                print(f"renewal not due until {_when(report.renew_after)}: nothing done")
            return errors.EXIT_OK
    result = renew(cert_dir, timeout=args.timeout)
    if args.json:
        print_json(
            {
                "renewed": True,
                "deviceId": result.device_id,
                "serial": result.serial,
                "notAfter": _when(result.not_after),
            }
        )
        return errors.EXIT_OK
    print(f"renewed the certificate of device {result.device_id}")
    print(f"  serial:      {result.serial}")
    print(f"  certificate: expires {_when(result.not_after)}")
    return errors.EXIT_OK


def _cmd_unenroll(args: argparse.Namespace) -> int:
    result = unenroll(CertDir(Path(args.cert_dir)), timeout=args.timeout)
    if args.json:
        print_json({"deviceId": result.device_id, "alreadyRevoked": result.already_revoked})
        return errors.EXIT_OK
    if result.already_revoked:
        print(f"device {result.device_id} was revoked already: nothing to end")
    else:
        print(f"unenrolled: the server revoked device {result.device_id}")
    print(f"  the cert dir is left in place; remove it: rm -r {args.cert_dir}")
    return errors.EXIT_OK


_UNENROLL_DESCRIPTION = """\
Decommissioning: end this device's enrollment with its own certificate
(AgentService.Unenroll, audited as device.unenroll). The server revokes the device
at once; a device revoked already counts as ended (exit 0). The cert dir is left as
it is: remove it (and stop the service) once this has succeeded. Any failure (the
server unreachable, exit 5) leaves the device active on the server.
"""

_STATUS_DESCRIPTION = """\
Heartbeat over mTLS with the stored certificate; print the device id, the server,
the certificate's expiry and when renewal is due (--json for check scripts).

Writes nothing to the cert dir, not even its lock file: it runs on a read-only
mount, and as a monitoring user who may read the cert dir and device.key (give
one group read access, device.key mode 0640; renewals keep that group and bit).
"""

_RUN_DESCRIPTION = """\
Stay up as a service (examples/systemd/sielum-agent.service): a heartbeat every
--interval (by default the interval the server advises), a renewal at a random
moment soon after the server's renew_after, exponential backoff (up to the
interval) while the server is away; the stored key and certificate are only ever
replaced by a complete new pair. The cert dir is read again before every call, so
a renewal or re-enrollment done by hand is used without a restart. One log line
at the start (device, server, interval), per renewal and per change of state, and
once a day "alive" with the heartbeats answered since; --verbose adds one per
heartbeat.
"""


def _interval(text: str) -> timedelta:
    interval = parse_duration(text)
    if interval > timedelta(days=1):
        raise argparse.ArgumentTypeError("interval must be at most 1d")
    return interval


def _cmd_run(args: argparse.Namespace) -> int:
    if args.json:
        raise UsageError(
            "run logs one line per event instead of printing a result: use --log-format json"
        )
    configure_logging(args.log_format)
    options = DaemonOptions(
        cert_dir=CertDir(Path(args.cert_dir)),
        interval=args.interval,
        timeout=args.timeout,
        verbose=args.verbose,
    )
    return serve(options)


def build_parser() -> argparse.ArgumentParser:
    parser = conventions.Parser(
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    conventions.add_version_option(parser)
    conventions.add_json_option(parser, top=True, help=conventions.JSON_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser, *, json: bool = True) -> None:
        if json:
            conventions.add_json_option(sub, top=False, help=conventions.JSON_HELP)
        sub.add_argument(
            "--cert-dir",
            default=DEFAULT_CERT_DIR,
            metavar="DIR",
            help="where device.key, device.pem, ca.pem and agent.json live (default %(default)s)",
        )
        sub.add_argument(
            "--timeout",
            type=_timeout,
            default=DEFAULT_TIMEOUT,
            metavar="SECONDS",
            help="give up on the server after this long (default %(default)g)",
        )

    enroll_cmd = commands.add_parser(
        "enroll",
        help="exchange an enrollment token for a device certificate",
        description="Pin the CA from the server's TLS chain, make a P-256 key, enroll, store.",
        epilog=_ENROLL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    enroll_cmd.add_argument(
        "--server", required=True, metavar="URL", help="the enroll port: https://HOST[:PORT]"
    )
    enroll_cmd.add_argument(
        "--ca-fingerprint",
        required=True,
        metavar="FP",
        help="SHA-256 fingerprint of the Sielum CA (sielum-server fingerprint)",
    )
    source = enroll_cmd.add_mutually_exclusive_group()
    source.add_argument(
        "--token", metavar="TOKEN", help=f"the token itself (visible in ps; prefer {TOKEN_ENV})"
    )
    source.add_argument(
        "--token-file", metavar="PATH", help="read the token from this file ('-' for stdin)"
    )
    enroll_cmd.add_argument(
        "--force",
        action="store_true",
        help="replace an existing enrollment in the cert dir (with a new key); the old "
        "device is then ended with its own certificate, or named for an admin to revoke",
    )
    enroll_cmd.add_argument(
        "--hostname", default="", metavar="NAME", help="name shown to admins (default: this host)"
    )
    enroll_cmd.add_argument(
        "--fact",
        action="append",
        default=[],
        type=_fact,
        metavar="NAME=VALUE",
        help="a fact to report besides os, os.release, arch and agent.version (which it may "
        "override); a token may require facts; repeat for more",
    )
    common(enroll_cmd)
    enroll_cmd.set_defaults(run=_cmd_enroll)

    status_cmd = commands.add_parser(
        "status",
        help="heartbeat over mTLS; print device id, server, expiry, renewal",
        description=_STATUS_DESCRIPTION,
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(status_cmd)
    status_cmd.set_defaults(run=_cmd_status)

    renew_cmd = commands.add_parser(
        "renew",
        help="new key and certificate, swapped in atomically",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    renew_cmd.add_argument(
        "--if-due",
        action="store_true",
        help="renew only once the server says renewal is due; otherwise exit 0 (for cron)",
    )
    common(renew_cmd)
    renew_cmd.set_defaults(run=_cmd_renew)

    unenroll_cmd = commands.add_parser(
        "unenroll",
        help="end this device's enrollment on the server (decommissioning)",
        description=_UNENROLL_DESCRIPTION,
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(unenroll_cmd)
    unenroll_cmd.set_defaults(run=_cmd_unenroll)

    run_cmd = commands.add_parser(
        "run",
        help="stay up as a service: heartbeat, renew when due, back off through outages",
        description=_RUN_DESCRIPTION,
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run_cmd.add_argument(
        "--interval",
        type=_interval,
        default=None,
        metavar="DURATION",
        help="heartbeat every DURATION, jittered by 10%% (like 30s, 5m, 1h); default: what "
        "the server advises in each heartbeat's answer (serve --heartbeat-interval, 5m "
        "unless its operator changed it)",
    )
    run_cmd.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="one line per event on stderr, as text or JSON (default %(default)s)",
    )
    run_cmd.add_argument(
        "--verbose",
        action="store_true",
        help="log every heartbeat too (by default: the start, each renewal, each change of "
        "state, and once a day how many heartbeats were answered)",
    )
    common(run_cmd, json=False)
    run_cmd.set_defaults(run=_cmd_run)
    return parser


def _command(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


def _translate(error: Exception) -> CommandError | None:
    if isinstance(error, AgentError):
        return CommandError(error.message, error.exit_code, error.code)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    return conventions.run_main(PROG, sys.argv[1:] if argv is None else argv, _command, _translate)


if __name__ == "__main__":
    sys.exit(main())
