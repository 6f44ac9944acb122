"""sielum-admin devices: list, show and revoke enrolled devices."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from sielum.admin.v1 import admin_pb2
from sielum.cli import conventions
from sielum.cli.admin.arguments import _page_size_option, _positive_int, leaf
from sielum.cli.admin.client import EXIT_OK, AdminBundle, Api, _table, _to_dict, _when

_DEVICE_STATES = {
    "active": admin_pb2.DEVICE_STATE_ACTIVE,
    "expired": admin_pb2.DEVICE_STATE_EXPIRED,
    "revoked": admin_pb2.DEVICE_STATE_REVOKED,
}

# --reason: RFC 5280's reasons an admin may give (superseded is Sielum's own).
_REASONS = {
    "unspecified": admin_pb2.REVOCATION_REASON_UNSPECIFIED,
    "key_compromise": admin_pb2.REVOCATION_REASON_KEY_COMPROMISE,
    "ca_compromise": admin_pb2.REVOCATION_REASON_CA_COMPROMISE,
    "affiliation_changed": admin_pb2.REVOCATION_REASON_AFFILIATION_CHANGED,
    "cessation_of_operation": admin_pb2.REVOCATION_REASON_CESSATION_OF_OPERATION,
    "privilege_withdrawn": admin_pb2.REVOCATION_REASON_PRIVILEGE_WITHDRAWN,
}


def _fact(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, like os=linux, got {text!r}")
    return name.strip(), value


# --- output ---------------------------------------------------------------------


def _device_state(device: admin_pb2.Device) -> str:
    name: str = admin_pb2.DeviceState.Name(device.state)
    return name.removeprefix("DEVICE_STATE_").lower()


def device_rows(devices: Sequence[admin_pb2.Device]) -> str:
    return _table(
        ("ID", "HOSTNAME", "STATE", "TOKEN", "CERT EXPIRES", "LAST SEEN", "PEER"),
        [
            (
                d.id,
                d.hostname or "-",
                _device_state(d),
                d.token_id,
                _when(d.not_after, "-"),
                _when(d.last_seen_at, "never"),
                d.peer or "-",
            )
            for d in devices
        ],
    )


def _device_details(device: admin_pb2.Device) -> str:
    fields = [
        ("id", device.id),
        ("hostname", device.hostname or "-"),
        ("state", _device_state(device)),
        ("token", device.token_id),
        ("serial", device.serial),
        ("cert expires", _when(device.not_after, "-")),
        ("enrolled", _when(device.enrolled_at, "-")),
        ("last seen", _when(device.last_seen_at, "never")),
        ("revoked", _when(device.revoked_at, "no")),
        ("peer", device.peer or "-"),
        ("tags", ", ".join(device.tags) or "-"),
    ]
    fields += [(f"fact {key}", value) for key, value in sorted(device.facts.items())]
    return _table(("", ""), fields).split("\n", 1)[1]


# --- commands -------------------------------------------------------------------


def _cmd_devices_list(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    state = _DEVICE_STATES[args.state] if args.state else admin_pb2.DEVICE_STATE_UNSPECIFIED
    devices = list(
        api.devices(
            args.token or "",
            args.limit,
            args.page_size,
            state=state,
            hostname=args.hostname,
            tag=args.tag,
            hostname_prefix=args.hostname_prefix,
            facts=dict(args.fact),
        )
    )
    if args.json:
        conventions.print_json({"devices": [_to_dict(d) for d in devices]})
    elif devices:
        print(device_rows(devices))
    else:
        print("no devices")
    return EXIT_OK


def _cmd_devices_get(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    reply = api.call(api.stub.GetDevice, admin_pb2.GetDeviceRequest(id=args.id))
    if args.json:
        conventions.print_json(_to_dict(reply))
    else:
        print(_device_details(reply.device))
    return EXIT_OK


def _cmd_devices_revoke(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    # As for tokens: read first, then revoke (a repeat changes nothing but is audited).
    before = api.call(api.stub.GetDevice, admin_pb2.GetDeviceRequest(id=args.id)).device
    already = before.HasField("revoked_at")
    request = admin_pb2.RevokeDeviceRequest(id=args.id, reason=_REASONS[args.reason])
    reply = api.call(api.stub.RevokeDevice, request)
    if args.json:
        conventions.print_json({**_to_dict(reply), "alreadyRevoked": already})
    elif already:
        print(
            f"device {reply.device.id} was already revoked at "
            f"{_when(reply.device.revoked_at, '-')}: nothing changed"
        )
        print(_device_details(reply.device))
    else:
        print(f"revoked device {reply.device.id}: the server refuses its certificate from now on")
        print(_device_details(reply.device))
    return EXIT_OK


# --- parser ---------------------------------------------------------------------


def register(groups: argparse._SubParsersAction[conventions.Parser]) -> None:
    """Adds `devices` and its commands to sielum-admin's parser."""
    devices = groups.add_parser("devices", help="enrolled devices")
    device_commands = devices.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dlist = leaf(device_commands, "list", "list devices (every page)", _cmd_devices_list)
    dlist.add_argument("--state", choices=sorted(_DEVICE_STATES), help="only devices in this state")
    dlist.add_argument(
        "--hostname", default="", metavar="NAME", help="only devices with exactly this host name"
    )
    dlist.add_argument(
        "--hostname-prefix",
        default="",
        metavar="P",
        help="only devices whose host name starts with P (case counts; no wildcards)",
    )
    dlist.add_argument("--token", metavar="ID", help="only devices enrolled with this token")
    dlist.add_argument("--tag", default="", metavar="T", help="only devices carrying this tag")
    dlist.add_argument(
        "--fact",
        action="append",
        default=[],
        type=_fact,
        metavar="NAME=VALUE",
        help="only devices whose agent reported fact NAME with exactly VALUE;"
        " repeat for more (all must hold)",
    )
    dlist.add_argument("--limit", type=_positive_int, metavar="N", help="at most N devices")
    _page_size_option(dlist)
    dget = leaf(device_commands, "get", "show one device", _cmd_devices_get)
    dget.add_argument("id")
    drevoke = leaf(
        device_commands,
        "revoke",
        "refuse the device's certificate from now on",
        _cmd_devices_revoke,
    )
    drevoke.add_argument("id")
    drevoke.add_argument(
        "--reason",
        choices=list(_REASONS),
        default="unspecified",
        metavar="REASON",
        help="why, as the CRL and OCSP will say it (RFC 5280); one of: "
        + ", ".join(_REASONS)
        + " (default %(default)s; a first revocation's reason stays)",
    )
