"""sielum-admin dashboard: links into the web dashboard."""

from __future__ import annotations

import argparse
import sys

from sielum.admin.v1 import admin_pb2
from sielum.cli import browser, conventions
from sielum.cli.admin.arguments import leaf
from sielum.cli.admin.client import EXIT_OK, AdminBundle, AdminError, Api, _to_dict, _when

# --- commands -------------------------------------------------------------------


def _cmd_dashboard_login(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    reply: admin_pb2.CreateDashboardLoginResponse = api.call(
        api.stub.CreateDashboardLogin, admin_pb2.CreateDashboardLoginRequest()
    )
    if args.json:
        conventions.print_json(_to_dict(reply))
        return EXIT_OK
    # The link alone on stdout, to copy into a browser (on another machine, say).
    # Never into a command line: `xdg-open "$(...)"` would show it to every local
    # user in the process list; `dashboard open` is the way to do that here.
    print(reply.url)
    print(
        f"one-time link, valid until {_when(reply.expires_at, 'unknown')}: paste it into "
        "your browser's address bar, never into a command; anyone who has it can sign in "
        "as you until then (`sielum-admin dashboard open` opens it here for you)",
        file=sys.stderr,
    )
    return EXIT_OK


def _cmd_dashboard_open(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    # Before asking for a link: without a browser there is nothing to open it with.
    try:
        found = browser.find_browser()
    except browser.NoBrowserError:
        raise AdminError(
            "no web browser found here: run `sielum-admin dashboard login` and paste the "
            "link it prints into your browser's address bar (never into a command)"
        ) from None
    reply: admin_pb2.CreateDashboardLoginResponse = api.call(
        api.stub.CreateDashboardLogin, admin_pb2.CreateDashboardLoginRequest()
    )
    try:
        read = browser.open_privately(reply.url, found)
    except browser.NoBrowserError as error:
        raise AdminError(
            f"{error}: run `sielum-admin dashboard login` and paste the link it prints into "
            "your browser's address bar (never into a command)"
        ) from None
    expires = _when(reply.expires_at, "unknown")
    if args.json:
        conventions.print_json(
            {"opened": True, "read": read, "expiresAt": _to_dict(reply)["expiresAt"]}
        )
        return EXIT_OK
    print(
        "opened a one-time login link in your browser (through a private file, now removed; "
        f"the link was on no command line), valid until {expires}"
        + (
            ""
            if read
            else ": if no dashboard page appeared, run `sielum-admin dashboard open` again"
        )
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
        "print a one-time link that signs you in to the dashboard (valid 5 minutes), to "
        "paste into a browser",
        _cmd_dashboard_login,
    )
    opener = leaf(
        dashboard_commands,
        "open",
        "open the dashboard in this machine's browser, signed in, without putting the link "
        "on any command line ($BROWSER, else the desktop's browser)",
        _cmd_dashboard_open,
    )
    opener.description = (
        "Ask for a one-time login link and open it in this machine's browser ($BROWSER, "
        "else the desktop's default). The link goes on no command line, where every local "
        "user could read it in the process list: the browser is given a file of yours "
        "alone (mode 0600, in a new 0700 directory under $TMPDIR) that redirects to the "
        "link, and the file is removed once the browser has read it (30 seconds at most). "
        "Without a browser here, use `dashboard login` and paste the link it prints."
    )
