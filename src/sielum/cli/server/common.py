"""What the commands of sielum-server share: exit codes, the passphrase, the database, errors."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sielum.ca.authority import PASSPHRASE_ENV, CertificateAuthority
from sielum.cli.conventions import CommandError
from sielum.errors import SielumError
from sielum.logs import configure_logging

if TYPE_CHECKING:
    from sielum.identities.admins import AdminRegistry
    from sielum.store.store import Store


PROG = "sielum-server"

EXIT_USAGE = 2

EXIT_FAILED = 1

DATABASE_ENV = "SIELUM_DATABASE_URL"


def read_passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def database_url(args: argparse.Namespace) -> str:
    """--database, else SIELUM_DATABASE_URL, else SQLite in the data dir: what serve uses."""
    url = args.database or os.environ.get(DATABASE_ENV, "")
    return url or f"sqlite:///{Path(args.data_dir).resolve() / 'sielum.db'}"


def open_store(args: argparse.Namespace) -> Store:
    from sielum.store.store import Store

    # The store logs why a database is unreachable; in the server's format, above
    # the one-line error.
    configure_logging("text", level=logging.WARNING)
    return Store.open(database_url(args))


def admin_registry(store: Store, ca: CertificateAuthority) -> AdminRegistry:
    from sielum.clock import SystemClock
    from sielum.identities.admins import AdminRegistry

    return AdminRegistry(store, ca, SystemClock())


def translate_error(error: Exception) -> CommandError | None:
    if isinstance(error, SielumError):
        if error.code.name == "INVALID_ARGUMENT":
            return CommandError(error.message, EXIT_USAGE, "usage")
        return CommandError(error.message, EXIT_FAILED, "failed")
    if isinstance(error, OSError):
        return CommandError(str(error), EXIT_FAILED, "failed")
    return None
