"""sielum-admin's shared options and argument types, and `leaf`, which adds a command."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import UTC, datetime

from sielum.cli import conventions
from sielum.cli.admin.client import (
    _EPILOG,
    CERT_DIR_ENV,
    DEFAULT_CERT_DIR,
    PAGE_SIZE,
    AdminBundle,
    Api,
)
from sielum.endpoint.address import ServerAddress, parse_server
from sielum.endpoint.errors import UsageError

DEFAULT_SERVER = "127.0.0.1:8444"
DEFAULT_API_PORT = 8444
DEFAULT_TIMEOUT = 30.0


# --- arguments ------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_rfc3339(text: str) -> datetime:
    """'2026-12-31T23:59:59Z' or with an offset; a time without a zone is refused."""
    value = text.strip()
    if not re.fullmatch(
        r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:\d{2})", value
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an RFC 3339 time with a zone, like 2026-12-31T23:59:59Z"
        )
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None
    return moment.astimezone(UTC)


def _server(text: str) -> ServerAddress:
    try:
        return parse_server(text, default_port=DEFAULT_API_PORT)
    except UsageError as error:
        raise argparse.ArgumentTypeError(error.message.replace("--server ", "")) from None


# --- parser ---------------------------------------------------------------------


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # The same options are accepted before and after the command. Below the top
    # level their default is SUPPRESS, so a subcommand never overwrites a value
    # given before it with its own default.
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--server",
        type=_server,
        default=default(_server(DEFAULT_SERVER)),
        metavar="HOST:PORT",
        help=f"the API port (mTLS), default {DEFAULT_SERVER}",
    )
    parser.add_argument(
        "--cert-dir",
        default=default(None),
        metavar="DIR",
        help=f"admin.pem, admin.key, ca.pem (default ${CERT_DIR_ENV}, else ./{DEFAULT_CERT_DIR})",
    )
    conventions.add_json_option(parser, top=top, help=conventions.JSON_HELP)
    parser.add_argument(
        "--timeout",
        type=float,
        default=default(DEFAULT_TIMEOUT),
        metavar="SECONDS",
        help=f"per call (default {DEFAULT_TIMEOUT:g})",
    )


def _page_size_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--page-size",
        type=_positive_int,
        default=PAGE_SIZE,
        metavar="N",
        help="items asked for per call; every page is fetched (default %(default)s)",
    )


def leaf(
    sub: argparse._SubParsersAction[conventions.Parser],
    name: str,
    help_text: str,
    run: Callable[[argparse.Namespace, Api, AdminBundle], int],
) -> argparse.ArgumentParser:
    """Adds one command to a group: its help, the options every command takes, and its `run`."""
    command = sub.add_parser(
        name,
        help=help_text,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(command, top=False)
    command.set_defaults(run=run)
    return command
