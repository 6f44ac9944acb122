"""sielum-server: make the CA (init), serve, print the fingerprint, issue admin certs."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from sielum.ca.authority import PASSPHRASE_ENV, CertificateAuthority, load_ca_certificate
from sielum.ca.datadir import init_data_dir, write_admin_bundle
from sielum.ca.profile import DEFAULT_DEVICE_TTL, fingerprint
from sielum.cli.durations import parse_duration
from sielum.enroll.ratelimit import FailureLimit
from sielum.errors import SielumError
from sielum.server.logs import configure_logging

EXIT_USAGE = 2
EXIT_FAILED = 1

_DESCRIPTION = """\
Sielum enrollment server.

  init                  make the CA, the server certificate and a first admin certificate
  serve                 serve EnrollService (server-only TLS) and the admin/agent API (mTLS)
  fingerprint           print the CA fingerprint agents pin with --ca-fingerprint
  issue-admin-cert      write a new admin client certificate bundle

The CA key may be encrypted: set SIELUM_CA_PASSPHRASE for init, serve and
issue-admin-cert. It is read from the environment only, never from a flag.
"""


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def _cmd_init(args: argparse.Namespace) -> int:
    result = init_data_dir(Path(args.data_dir), sans=args.san, passphrase=_passphrase())
    paths = result.paths
    print(f"CA fingerprint: {result.fingerprint}")
    print(f"data dir:       {paths.root}")
    print(f"admin bundle:   {paths.admin_dir}  (admin.pem, admin.key, ca.pem)")
    print()
    print("Next:")
    print(f"  sielum-server serve --data-dir {paths.root}")
    print(f"  sielum-admin --cert-dir {paths.admin_dir} tokens create --label first-rollout")
    return 0


def _cmd_fingerprint(args: argparse.Namespace) -> int:
    print(fingerprint(load_ca_certificate(Path(args.data_dir))))
    return 0


def _cmd_issue_admin_cert(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.load(Path(args.data_dir), passphrase=_passphrase())
    out = write_admin_bundle(ca, args.name, Path(args.out))
    print(f"admin certificate for {args.name!r} written to {out}")
    print(f"  sielum-admin --cert-dir {out} tokens list")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from sielum.server.app import ServerConfig, SielumServer

    configure_logging(args.log_format)
    config = ServerConfig(
        data_dir=Path(args.data_dir),
        enroll_addr=args.enroll_addr,
        api_addr=args.api_addr,
        database_url=args.database or os.environ.get("SIELUM_DATABASE_URL", ""),
        device_ttl=args.device_cert_ttl,
        advertise_api=args.advertise_api_addr,
        threads=args.threads,
        failure_limit=FailureLimit(
            burst=args.enroll_failure_burst, rate_per_second=args.enroll_failure_rate
        ),
        ca_passphrase=_passphrase(),
    )
    server = SielumServer(config).start()
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("sielum.server").info(
            "%s received: finishing calls in flight", signal.Signals(signum).name
        )
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop_requested.wait(1.0):
        pass
    server.stop(grace=args.grace)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sielum-server",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    init.set_defaults(run=_cmd_init)

    serve = commands.add_parser("serve", help="run the server until SIGTERM or SIGINT")
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
        "--database",
        default="",
        metavar="URL",
        help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB "
        "(default sqlite:///DATA_DIR/sielum.db; also SIELUM_DATABASE_URL)",
    )
    serve.add_argument(
        "--device-cert-ttl",
        type=parse_duration,
        default=DEFAULT_DEVICE_TTL,
        metavar="DURATION",
        help="device certificate lifetime, like 90d (default 90d)",
    )
    serve.add_argument(
        "--advertise-api-addr",
        default="",
        metavar="HOST:PORT",
        help="API address told to enrolled agents (default: --api-addr; "
        "with a wildcard host, the host the agent enrolled with)",
    )
    serve.add_argument(
        "--threads", type=int, default=32, help="RPC worker threads (default %(default)s)"
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
    serve.set_defaults(run=_cmd_serve)

    fp = commands.add_parser("fingerprint", help="print the CA fingerprint (sha256:<hex>)")
    fp.add_argument("--data-dir", required=True)
    fp.set_defaults(run=_cmd_fingerprint)

    issue = commands.add_parser("issue-admin-cert", help="write a new admin certificate bundle")
    issue.add_argument("--data-dir", required=True)
    issue.add_argument("--name", required=True, help="the admin's name: letters, digits, . _ -")
    issue.add_argument(
        "--out", required=True, metavar="DIR", help="directory for admin.pem, admin.key, ca.pem"
    )
    issue.set_defaults(run=_cmd_issue_admin_cert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except SielumError as error:
        print(f"sielum-server: {error.message}", file=sys.stderr)
        return EXIT_USAGE if error.code.name == "INVALID_ARGUMENT" else EXIT_FAILED
    except OSError as error:
        print(f"sielum-server: {error}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
