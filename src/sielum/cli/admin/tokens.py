"""sielum-admin tokens: create, list, show and revoke enrollment tokens."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sielum.admin.v1 import admin_pb2
from sielum.cli import conventions
from sielum.cli.admin.arguments import _page_size_option, _positive_int, leaf, parse_rfc3339
from sielum.cli.admin.client import (
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    AdminBundle,
    AdminError,
    Api,
    _table,
    _to_dict,
    _when,
)
from sielum.cli.durations import parse_duration
from sielum.endpoint.address import ServerAddress, parse_server
from sielum.endpoint.errors import UsageError
from sielum.errors import InvalidArgumentError
from sielum.tokens import PREFIX as SECRET_PREFIX
from sielum.tokens import parse_secret

DEFAULT_ENROLL_PORT = 8443
AGENT_CERT_DIR = "/etc/sielum"

_TOKEN_STATES = {
    "active": admin_pb2.TOKEN_STATE_ACTIVE,
    "expired": admin_pb2.TOKEN_STATE_EXPIRED,
    "exhausted": admin_pb2.TOKEN_STATE_EXHAUSTED,
    "revoked": admin_pb2.TOKEN_STATE_REVOKED,
}


# --- output ---------------------------------------------------------------------


def _token_state(token: admin_pb2.EnrollmentToken) -> str:
    name: str = admin_pb2.TokenState.Name(token.state)
    return name.removeprefix("TOKEN_STATE_").lower()


def uses_text(token: admin_pb2.EnrollmentToken) -> str:
    limit = str(token.max_uses) if token.HasField("max_uses") else "unlimited"
    return f"{token.uses}/{limit}"


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
    fields += policy_fields(token)
    return _table(("", ""), fields).split("\n", 1)[1]


def policy_fields(token: admin_pb2.EnrollmentToken) -> list[tuple[str, str]]:
    """The token's policy, one line per rule it sets."""
    fields = []
    if token.tags:
        fields.append(("tags", ", ".join(token.tags)))
    if token.allowed_networks:
        fields.append(("allowed networks", ", ".join(token.allowed_networks)))
    if token.hostname_pattern:
        fields.append(("hostname pattern", token.hostname_pattern))
    fields += [(f"required fact {k}", v) for k, v in sorted(token.required_facts.items())]
    if token.HasField("ephemeral_after"):
        fields.append(("ephemeral after", f"{token.ephemeral_after.seconds}s without a call"))
    if token.requires_approval:
        fields.append(("approval", "manual: each enrollment waits for an admin"))
    return fields


def _required_fact(text: str) -> tuple[str, str]:
    name, sep, pattern = text.partition("=")
    if not sep or not name.strip() or not pattern:
        raise argparse.ArgumentTypeError(f"expected NAME=GLOB, like os=linux*, got {text!r}")
    return name.strip(), pattern


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
    request.tags.extend(args.tag)
    request.allowed_networks.extend(args.allow_network)
    request.hostname_pattern = args.hostname_pattern
    facts = dict(args.require_fact)
    if len(facts) != len(args.require_fact):
        raise AdminError("--require-fact names one fact at most once", EXIT_USAGE)
    request.required_facts.update(facts)
    if args.ephemeral_after is not None:
        request.ephemeral_after.FromTimedelta(args.ephemeral_after)
    request.requires_approval = args.approval == "manual"
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
        conventions.print_json(
            {**_to_dict(reply), "caFingerprint": ca_fingerprint, "enrollCommand": command}
        )
        return EXIT_OK
    token = reply.token
    print(
        f"created token {token.id} (label {token.label!r}, uses {uses_text(token)}, "
        f"expires {_when(token.expires_at, 'never')})"
    )
    print()
    print("secret (shown this once: store it now, e.g. in a vault):")
    print(f"  {reply.secret}")
    for name, value in policy_fields(token):
        print(f"  {name}: {value}")
    print()
    print("enroll an agent with it:")
    print(f"  {command}")
    if token.requires_approval:
        print()
        print(f"each enrollment then waits: {PROG} requests list --state pending, ")
        print(f"  {PROG} requests approve ID  (or deny ID)")
    return EXIT_OK


def _cmd_tokens_list(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    state = _TOKEN_STATES[args.state] if args.state else admin_pb2.TOKEN_STATE_UNSPECIFIED
    tokens = list(api.tokens(state, args.limit, args.page_size))
    if args.json:
        conventions.print_json({"tokens": [_to_dict(t) for t in tokens]})
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
        conventions.print_json(_to_dict(reply))
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
        conventions.print_json({**_to_dict(reply), "alreadyRevoked": already})
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


# --- parser ---------------------------------------------------------------------


def register(groups: argparse._SubParsersAction[conventions.Parser]) -> None:
    """Adds `tokens` and its commands to sielum-admin's parser."""
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
    policy = create.add_argument_group(
        "policy", "rules checked at every enrollment with the token (each optional)"
    )
    policy.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="T",
        help="a tag every device of the token carries (Device.tags, and sielum://tag/T in its "
        "certificate); a-z 0-9 . _ -; repeat for more",
    )
    policy.add_argument(
        "--allow-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="enroll only from this network (IPv4 or IPv6, like 10.0.0.0/8); repeat for more",
    )
    policy.add_argument(
        "--hostname-pattern",
        default="",
        metavar="GLOB",
        help="the host name must match this shell glob (like 'web-*')",
    )
    policy.add_argument(
        "--require-fact",
        action="append",
        default=[],
        type=_required_fact,
        metavar="NAME=GLOB",
        help="the agent's fact NAME must be present and match GLOB; repeat for more",
    )
    policy.add_argument(
        "--approval",
        choices=("auto", "manual"),
        default="auto",
        help="manual: each enrollment waits until an admin approves it (`requests approve`)",
    )
    policy.add_argument(
        "--ephemeral-after",
        type=parse_duration,
        metavar="DURATION",
        help="revoke a device of this token once it has not called for this long (like 1h); "
        "make it longer than the agents' heartbeat interval",
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
