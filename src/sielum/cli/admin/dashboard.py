"""sielum-admin dashboard: links into the web dashboard."""

from __future__ import annotations

import argparse
import sys

from sielum.admin.v1 import admin_pb2
from sielum.cli import conventions
from sielum.cli.admin.arguments import leaf
from sielum.cli.admin.client import EXIT_OK, AdminBundle, Api, _to_dict, _when

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


def register(groups: argparse._SubParsersAction[conventions.Parser]) -> None:
    """Adds `dashboard` and its commands to sielum-admin's parser."""
    dashboard = groups.add_parser("dashboard", help="the web dashboard")
    dashboard_commands = dashboard.add_subparsers(dest="command", required=True, metavar="COMMAND")
    leaf(
        dashboard_commands,
        "login",
        "print a one-time link that signs you in to the dashboard (valid 5 minutes)",
        _cmd_dashboard_login,
    )
