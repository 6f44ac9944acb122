"""sielum-admin audit: list the audit trail, newest first."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sielum.admin.v1 import admin_pb2
from sielum.cli import conventions
from sielum.cli.admin.arguments import _page_size_option, _positive_int, leaf, parse_rfc3339
from sielum.cli.admin.client import EXIT_OK, AdminBundle, Api, _table, _to_dict, _when
from sielum.cli.durations import parse_duration

AUDIT_LIMIT = 100


# --- arguments ------------------------------------------------------------------


def parse_since(text: str) -> datetime:
    """--since: a duration back from now (1h, 7d) or an RFC 3339 time."""
    if re.fullmatch(r"\s*\d+\s*[smhdw]\s*", text):
        since: timedelta = parse_duration(text)
        return datetime.now(UTC) - since
    try:
        return parse_rfc3339(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (like 1h or 7d) nor an RFC 3339 time "
            "(like 2026-12-31T23:59:59Z)"
        ) from None


# --- output ---------------------------------------------------------------------


def event_rows(events: Sequence[admin_pb2.AuditEvent]) -> str:
    return _table(
        ("AT", "ACTOR", "ACTION", "RESOURCE", "PEER", "DETAIL"),
        [
            (
                _when(e.at, "-"),
                e.actor,
                e.action,
                e.resource,
                e.peer or "-",
                re.sub(r"\s+", " ", e.detail).strip() or "-",
            )
            for e in events
        ],
    )


# --- commands -------------------------------------------------------------------


def _cmd_audit_list(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    template = admin_pb2.ListAuditEventsRequest(
        actor=args.actor or "", resource=args.resource or "", action=args.action or ""
    )
    if args.since is not None:
        template.since.FromDatetime(args.since)
    events = list(api.events(template, args.limit, args.page_size))
    if args.json:
        conventions.print_json({"events": [_to_dict(e) for e in events]})
    elif events:
        print(event_rows(events))
    else:
        print("no events")
    return EXIT_OK


# --- parser ---------------------------------------------------------------------


def register(groups: argparse._SubParsersAction[conventions.Parser]) -> None:
    """Adds `audit` and its commands to sielum-admin's parser."""
    audit = groups.add_parser("audit", help="the audit trail: who changed what, when")
    audit_commands = audit.add_subparsers(dest="command", required=True, metavar="COMMAND")
    elist = leaf(audit_commands, "list", "list audit events, newest first", _cmd_audit_list)
    elist.add_argument(
        "--since",
        type=parse_since,
        metavar="WHEN",
        help="only events since then: a duration back from now (1h, 7d) or an RFC 3339 time",
    )
    elist.add_argument("--actor", metavar="KIND/NAME", help="only events by admin/NAME, ...")
    elist.add_argument("--resource", metavar="KIND/ID", help="only events about token/ID, ...")
    elist.add_argument("--action", metavar="ACTION", help="only events like token.create")
    elist.add_argument(
        "--limit",
        type=_positive_int,
        default=AUDIT_LIMIT,
        metavar="N",
        help="at most N events (default %(default)s)",
    )
    _page_size_option(elist)
