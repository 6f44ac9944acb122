"""sielum-admin: tokens, devices, admins, services, the audit trail and dashboard links.

One module per command group registers its commands (`register`); they share
client.py (the bundle, the calls, output and exit codes) and arguments.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sielum.cli import quietgrpc  # noqa: F401  (first: before anything imports grpc)

# isort: split

from sielum.cli import conventions
from sielum.cli.admin import admins, audit, dashboard, devices, requests, services, tokens
from sielum.cli.admin.arguments import _global_options
from sielum.cli.admin.client import _EPILOG, CERT_DIR_ENV, DEFAULT_CERT_DIR, PROG, AdminBundle, Api

_DESCRIPTION = """\
Sielum administration over mutual TLS with an admin certificate.

  tokens create --label L [--max-uses N] [--expires-in 7d | --expires-at RFC3339]
      [--tag T]... [--allow-network CIDR]... [--hostname-pattern GLOB]
      [--require-fact NAME=GLOB]... [--approval manual] [--ephemeral-after 1h]
  tokens list [--state active|expired|exhausted|revoked] [--limit N]
  tokens get ID | tokens revoke ID          (ID: the token id, or its whole secret)
  devices list [--state active|expired|revoked] [--hostname NAME] [--hostname-prefix P]
      [--token ID] [--tag T] [--fact NAME=VALUE]... [--limit N]
  devices get ID | devices revoke ID
  requests list [--state pending|approved|denied|expired] | requests approve ID | requests deny ID
  admins create NAME --out DIR | admins list | admins revoke NAME
  services create NAME --out DIR [--csr FILE] | services list | services revoke NAME
  audit list [--since 1h] [--actor admin/NAME] [--resource token/ID] [--action A] [--limit N]
  dashboard open       open the web dashboard in this machine's browser, signed in
  dashboard login      print a one-time link that signs you in (paste it into a browser,
                       never into a command line: a process list would show it)

The admin certificate bundle (admin.pem, admin.key, ca.pem) is read from
--cert-dir, else $SIELUM_ADMIN_CERT_DIR, else ./sielum-data/admin (what
scripts/serve-dev.sh makes). `admins create NAME --out DIR` makes one for a new
admin; `admins revoke NAME` refuses it from the admin's next call. `services
create NAME --out DIR` makes service.pem, service.key and ca.pem for another
system that calls Sielum as sielum://service/NAME.
"""


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
        dest="group",
        required=True,
        metavar="{tokens,devices,requests,admins,services,audit,dashboard}",
    )

    tokens.register(groups)
    devices.register(groups)
    requests.register(groups)
    admins.register(groups)
    services.register(groups)
    audit.register(groups)
    dashboard.register(groups)
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
