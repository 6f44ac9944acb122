"""sielum-server's command line: every command, option and help text."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import TYPE_CHECKING

from sielum.ca.profile import DEFAULT_DEVICE_TTL
from sielum.cli import conventions
from sielum.cli.durations import parse_duration
from sielum.devices.policy import DEFAULT_HEARTBEAT_INTERVAL, check_heartbeat_interval
from sielum.errors import InvalidArgumentError
from sielum.server.workers import (
    default_workers,
)

if TYPE_CHECKING:
    pass
from sielum.cli.server.common import DATABASE_ENV, PROG
from sielum.cli.server.datadir import (
    cmd_fingerprint,
    cmd_init,
    cmd_issue_admin_cert,
    cmd_renew_server_cert,
)
from sielum.cli.server.serve import cmd_serve

_DESCRIPTION = """\
Sielum enrollment server.

  init                  make the CA, the server certificate and a first admin certificate
  serve                 serve EnrollService (server-only TLS), the admin/agent API (mTLS)
                        and the web dashboard (HTTPS)
  fingerprint           print the CA fingerprint agents pin with --ca-fingerprint
  issue-admin-cert      write a new admin client certificate bundle
  renew-server-cert     new server key and certificate from the same CA (keeps its names)

The CA key may be encrypted: set SIELUM_CA_PASSPHRASE for init, serve,
issue-admin-cert and renew-server-cert. It is read from the environment only,
never from a flag.

init and issue-admin-cert register the admin they make in the database that
serve uses (--database URL or SIELUM_DATABASE_URL; default SQLite in the data dir).
For an existing admin, issue-admin-cert makes a new certificate: their previous one
is refused once the new one is first used.

A running server takes a renewed server certificate on SIGHUP, or by itself
within 10 seconds of the files changing.

--json (before or after the command; not for serve, which logs with
--log-format json) prints the result as one JSON document, and a failure as
{"error": {"code", "message", "exit_code"}} on stdout as well as the line on
stderr.

exit codes:
  0  success
  1  failure: a file cannot be read or written, the database or the server failed
  2  bad arguments: a bad --san, a missing or wrong passphrase, no data directory
"""


def _heartbeat_interval(text: str) -> timedelta:
    try:
        return check_heartbeat_interval(parse_duration(text))
    except InvalidArgumentError as error:
        raise argparse.ArgumentTypeError(error.message) from None


def _database_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--database",
        default="",
        metavar="URL",
        help=f"{what}: sqlite:///PATH or postgresql://USER@HOST:PORT/DB "
        f"(default sqlite:///DATA_DIR/sielum.db; also {DATABASE_ENV})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = conventions.Parser(
        prog=PROG,
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    conventions.add_version_option(parser)
    conventions.add_json_option(parser, top=True, help=conventions.JSON_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def json_option(command: argparse.ArgumentParser) -> None:
        conventions.add_json_option(command, top=False, help=conventions.JSON_HELP)

    init = commands.add_parser("init", help="make the CA, server and first admin certificates")
    init.add_argument(
        "--data-dir", required=True, help="directory for keys, certificates and the SQLite database"
    )
    init.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS name or IP address for the server certificate (repeatable); "
        "localhost, 127.0.0.1 and ::1 are always included",
    )
    _database_option(init, "the database serve will use, where the first admin is registered")
    json_option(init)
    init.set_defaults(run=cmd_init)

    serve = commands.add_parser(
        "serve", help="run the server until SIGTERM or SIGINT; SIGHUP reloads its certificate"
    )
    serve.add_argument("--data-dir", required=True, help="the directory `init` made")
    serve.add_argument(
        "--enroll-addr",
        default="127.0.0.1:8443",
        metavar="HOST:PORT",
        help="EnrollService, server-only TLS (default %(default)s)",
    )
    serve.add_argument(
        "--api-addr",
        default="127.0.0.1:8444",
        metavar="HOST:PORT",
        help="AdminService and AgentService, mTLS (default %(default)s)",
    )
    serve.add_argument(
        "--dashboard-addr",
        default="127.0.0.1:8445",
        metavar="HOST:PORT",
        help="the web dashboard (HTTPS) and AdminService over the Connect protocol; "
        "'off' disables it (default %(default)s)",
    )
    serve.add_argument(
        "--dashboard-url",
        default="",
        metavar="URL",
        help="the dashboard's public URL, for login links, e.g. behind a reverse proxy "
        "(default: https://HOST:PORT of --dashboard-addr)",
    )
    serve.add_argument(
        "--dashboard-cert",
        default="",
        metavar="PEM",
        help="certificate chain for the dashboard (default: the server certificate and CA)",
    )
    serve.add_argument("--dashboard-key", default="", metavar="PEM", help="its private key")
    serve.add_argument(
        "--advertise-enroll-url",
        default="",
        metavar="URL",
        help="the enroll URL the dashboard puts in agent command lines (default: "
        "https://<the host the browser used>:<the enroll port>)",
    )
    _database_option(serve, "the database")
    serve.add_argument(
        "--device-cert-ttl",
        type=parse_duration,
        default=DEFAULT_DEVICE_TTL,
        metavar="DURATION",
        help="device certificate lifetime, like 90d (default 90d)",
    )
    serve.add_argument(
        "--heartbeat-interval",
        type=_heartbeat_interval,
        default=DEFAULT_HEARTBEAT_INTERVAL,
        metavar="DURATION",
        help="how often agents are asked to heartbeat, 10s to 1d (default 5m): "
        "`sielum-agent run` follows it unless given --interval; longer means less load "
        "on the server, shorter that a silent device is noticed sooner",
    )
    serve.add_argument(
        "--advertise-api-addr",
        default="",
        metavar="HOST:PORT",
        help="API address told to enrolled agents (default: --api-addr; "
        "with a wildcard host, the host the agent enrolled with)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        metavar="N",
        help="server processes sharing the ports through SO_REUSEPORT (default: one per "
        "core, here %(default)s); each keeps its own --enroll-failure-burst counts",
    )
    serve.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="threads per server process that run the calls; 0 runs them on the event loop, "
        "which costs the least CPU when the database is on this host (default: 0 with "
        "SQLite or a PostgreSQL on a Unix socket or loopback address; 16 with a database "
        "on another host, whose round trips would otherwise hold up every other call)",
    )
    serve.add_argument(
        "--metrics-addr",
        default="127.0.0.1:9464",
        metavar="HOST:PORT",
        help="plain HTTP /metrics in the Prometheus format, summed over all workers; "
        "'off' disables (default %(default)s)",
    )
    serve.add_argument(
        "--metrics-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name Prometheus scrapes /metrics through (repeatable); /metrics answers "
        "only a Host that is the listener's own address, localhost on loopback, or one "
        "of these, so that no web page reads it through DNS rebinding",
    )
    serve.add_argument(
        "--revocation-addr",
        default="127.0.0.1:8446",
        metavar="HOST:PORT",
        help="plain HTTP revocation port for relying parties: GET /crl (the CA-signed DER "
        "CRL) and OCSP at /ocsp (RFC 6960/5019, POST and GET); 'off' disables "
        "(default %(default)s)",
    )
    serve.add_argument(
        "--crl-url",
        default="",
        metavar="URL",
        help="public http:// or https:// URL of /crl, written as CRL Distribution Points "
        "into device certificates issued from now on (default: none)",
    )
    serve.add_argument(
        "--ocsp-url",
        default="",
        metavar="URL",
        help="public http:// or https:// URL of /ocsp, written as Authority Information "
        "Access (OCSP) into device certificates issued from now on (default: none)",
    )
    # Set by the supervisor on the workers it starts; not for people.
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--metrics-fd", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--revocation-fd", type=int, default=None, help=argparse.SUPPRESS)
    # How often the server certificate's files are checked; tests shorten it.
    serve.add_argument(
        "--certificate-check-interval", type=float, default=10.0, help=argparse.SUPPRESS
    )
    serve.add_argument(
        "--enroll-failure-burst",
        type=int,
        default=20,
        metavar="N",
        help="failed enrollments allowed from one address before RESOURCE_EXHAUSTED; "
        "0 disables the limit (default %(default)s)",
    )
    serve.add_argument(
        "--enroll-failure-rate",
        type=float,
        default=0.2,
        metavar="PER_SECOND",
        help="failed enrollments regained per second (default %(default)s)",
    )
    serve.add_argument(
        "--handshake-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="close a connection that has not finished its TLS handshake by then "
        "(default %(default)g)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on the dashboard and metrics ports: close a connection that has not sent a "
        "whole request's headers this long after it opened or after its last answer, and "
        "answer 408 to a request body that has not arrived within it (default %(default)g)",
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM, time given to calls in flight (default %(default)s)",
    )
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines for people (text) or machines (json)",
    )
    serve.set_defaults(run=cmd_serve)

    fp = commands.add_parser("fingerprint", help="print the CA fingerprint (sha256:<hex>)")
    fp.add_argument("--data-dir", required=True)
    json_option(fp)
    fp.set_defaults(run=cmd_fingerprint)

    issue = commands.add_parser(
        "issue-admin-cert", help="register an admin and write a certificate bundle for them"
    )
    issue.add_argument("--data-dir", required=True)
    issue.add_argument("--name", required=True, help="the admin's name: letters, digits, . _ -")
    issue.add_argument(
        "--out", required=True, metavar="DIR", help="directory for admin.pem, admin.key, ca.pem"
    )
    _database_option(issue, "the database serve uses, where the admin is registered")
    json_option(issue)
    issue.set_defaults(run=cmd_issue_admin_cert)

    renew = commands.add_parser(
        "renew-server-cert",
        help="new server key and certificate from the same CA; a running server takes it",
        description="Make a new key and server certificate signed by the same CA, keeping "
        "every name the certificate had, plus each --san. Agents' CA pins stay valid. A "
        "running server serves it to new connections on SIGHUP, or by itself within 10 "
        "seconds; connections already open go on.",
    )
    renew.add_argument("--data-dir", required=True)
    renew.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name or IP address to add to the certificate's names (repeatable)",
    )
    json_option(renew)
    renew.set_defaults(run=cmd_renew_server_cert)
    return parser
