"""sielum-admin requests: list enrollments waiting for approval, approve or deny one."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from sielum.admin.v1 import admin_pb2
from sielum.cli import conventions
from sielum.cli.admin.arguments import _page_size_option, _positive_int, leaf
from sielum.cli.admin.client import EXIT_OK, AdminBundle, Api, _table, _to_dict, _when
from sielum.cli.admin.devices import device_rows

_REQUEST_STATES = {
    "pending": admin_pb2.ENROLLMENT_REQUEST_STATE_PENDING,
    "approved": admin_pb2.ENROLLMENT_REQUEST_STATE_APPROVED,
    "denied": admin_pb2.ENROLLMENT_REQUEST_STATE_DENIED,
    "expired": admin_pb2.ENROLLMENT_REQUEST_STATE_EXPIRED,
}


def _state(request: admin_pb2.EnrollmentRequest) -> str:
    name: str = admin_pb2.EnrollmentRequestState.Name(request.state)
    return name.removeprefix("ENROLLMENT_REQUEST_STATE_").lower()


def request_rows(requests: Sequence[admin_pb2.EnrollmentRequest]) -> str:
    return _table(
        ("ID", "HOSTNAME", "STATE", "TOKEN", "REQUESTED", "PEER", "KEY SHA-256", "DECIDED BY"),
        [
            (
                r.id,
                r.hostname or "-",
                _state(r),
                r.token_id,
                _when(r.requested_at, "-"),
                r.peer or "-",
                r.public_key_sha256[:16],
                r.decided_by or "-",
            )
            for r in requests
        ],
    )


def _details(request: admin_pb2.EnrollmentRequest) -> str:
    fields = [
        ("id", request.id),
        ("hostname", request.hostname or "-"),
        ("state", _state(request)),
        ("token", request.token_id),
        ("requested", _when(request.requested_at, "-")),
        ("peer", request.peer or "-"),
        ("key sha-256", request.public_key_sha256),
        ("decided", f"{_when(request.decided_at, '-')} by {request.decided_by or '-'}"),
    ]
    if request.device_id:
        fields.append(("device", request.device_id))
    fields += [(f"fact {key}", value) for key, value in sorted(request.facts.items())]
    return _table(("", ""), fields).split("\n", 1)[1]


def _cmd_list(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    state = (
        _REQUEST_STATES[args.state]
        if args.state
        else admin_pb2.ENROLLMENT_REQUEST_STATE_UNSPECIFIED
    )
    requests = list(api.requests(state, args.limit, args.page_size))
    if args.json:
        conventions.print_json({"requests": [_to_dict(r) for r in requests]})
    elif requests:
        print(request_rows(requests))
    else:
        print("no enrollment requests")
    return EXIT_OK


def _cmd_approve(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    reply = api.call(
        api.stub.ApproveEnrollmentRequest,
        admin_pb2.ApproveEnrollmentRequestRequest(id=args.id.strip()),
    )
    if args.json:
        conventions.print_json(_to_dict(reply))
        return EXIT_OK
    print(
        f"approved request {reply.request.id}: device {reply.device.id} is enrolled; "
        "its agent receives the certificate on its next try"
    )
    print(device_rows([reply.device]))
    return EXIT_OK


def _cmd_deny(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    reply = api.call(
        api.stub.DenyEnrollmentRequest, admin_pb2.DenyEnrollmentRequestRequest(id=args.id.strip())
    )
    if args.json:
        conventions.print_json(_to_dict(reply))
        return EXIT_OK
    print(f"denied request {reply.request.id}: its agent stops with 'enrollment denied'")
    print(_details(reply.request))
    return EXIT_OK


def register(groups: argparse._SubParsersAction[conventions.Parser]) -> None:
    """Adds `requests` and its commands to sielum-admin's parser."""
    requests = groups.add_parser(
        "requests", help="enrollments waiting for approval (tokens created with --approval manual)"
    )
    commands = requests.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = leaf(commands, "list", "list enrollment requests (every page)", _cmd_list)
    listing.add_argument(
        "--state",
        choices=sorted(_REQUEST_STATES),
        help="only requests in this state (expired: undecided, and its token can no longer "
        "be used)",
    )
    listing.add_argument("--limit", type=_positive_int, metavar="N", help="at most N requests")
    _page_size_option(listing)
    approve = leaf(
        commands,
        "approve",
        "enroll the request's device (consumes a use of its token)",
        _cmd_approve,
    )
    approve.add_argument("id", metavar="ID", help="the request id the agent printed")
    deny = leaf(commands, "deny", "refuse the request; its agent stops", _cmd_deny)
    deny.add_argument("id", metavar="ID", help="the request id the agent printed")
