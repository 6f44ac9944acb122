"""sielum-admin: tokens, devices, admins, the audit trail and dashboard links, over mTLS."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sielum.admin.v1 import admin_pb2
from sielum.cli import conventions
from sielum.cli.admin import admins, audit, devices, tokens
from sielum.cli.admin.arguments import _global_options, leaf
from sielum.cli.admin.client import (
    _EPILOG,
    CERT_DIR_ENV,
    DEFAULT_CERT_DIR,
    EXIT_OK,
    PROG,
    AdminBundle,
    Api,
    _to_dict,
    _when,
)

_DESCRIPTION = """\
Sielum administration over mutual TLS with an admin certificate.

  tokens create --label L [--max-uses N] [--expires-in 7d | --expires-at RFC3339]
  tokens list [--state active|expired|exhausted|revoked] [--limit N]
  tokens get ID | tokens revoke ID          (ID: the token id, or its whole secret)
  devices list [--state active|expired|revoked] [--hostname NAME] [--token ID] [--limit N]
  devices get ID | devices revoke ID
  admins create NAME --out DIR | admins list | admins revoke NAME
  audit list [--since 1h] [--actor admin/NAME] [--resource token/ID] [--action A] [--limit N]
  dashboard login      print a one-time link that signs you in to the web dashboard

The admin certificate bundle (admin.pem, admin.key, ca.pem) is read from
--cert-dir, else $SIELUM_ADMIN_CERT_DIR, else ./sielum-data/admin (what
scripts/serve-dev.sh makes). `admins create NAME --out DIR` makes one for a new
admin; `admins revoke NAME` refuses it from the admin's next call.
"""


# --- commands -------------------------------------------------------------------


def _cmd_dashboard_login(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    reply: admin_pb2.CreateDashboardLoginResponse = api.call(
        api.stub.CreateDashboardLogin, admin_pb2.CreateDashboardLoginRequest()
    )
    if args.json:
        conventions.print_json(_to_dict(reply))
        return EXIT_OK
    # The link alone on stdout, so that `xdg-open "$(sielum-admin dashboard login)"` works.
    print(reply.url)
    print(
        f"one-time link, valid until {_when(reply.expires_at, 'unknown')}: open it in your "
        "browser; anyone who has it can sign in as you until then",
        file=sys.stderr,
    )
    return EXIT_OK


# --- parser ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = conventions.Parser(
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    conventions.add_version_option(parser)
    _global_options(parser, top=True)
    groups = parser.add_subparsers(
        dest="group", required=True, metavar="{tokens,devices,admins,audit,dashboard}"
    )

    tokens.register(groups)
    devices.register(groups)
    admins.register(groups)
    audit.register(groups)

    dashboard = groups.add_parser("dashboard", help="the web dashboard")
    dashboard_commands = dashboard.add_subparsers(dest="command", required=True, metavar="COMMAND")
    leaf(
        dashboard_commands,
        "login",
        "print a one-time link that signs you in to the dashboard (valid 5 minutes)",
        _cmd_dashboard_login,
    )
    return parser


def _command(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    cert_dir = Path(args.cert_dir or os.environ.get(CERT_DIR_ENV) or DEFAULT_CERT_DIR)
    bundle = AdminBundle.load(cert_dir)
    api = Api(args.server, bundle, args.timeout)
    with api.channel:
        return int(args.run(args, api, bundle))


def main(argv: Sequence[str] | None = None) -> int:
    # AdminError is a CommandError: nothing else is the tool's to translate.
    return conventions.run_main(
        PROG, sys.argv[1:] if argv is None else argv, _command, lambda error: None
    )
