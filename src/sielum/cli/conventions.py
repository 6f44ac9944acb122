"""What the three tools share: --version, --json anywhere, one error shape, quiet pipes.

Every failure prints one line on stderr, `PROG: message`; with --json it also
prints one JSON object on stdout, the same shape for all three tools:

    {"error": {"code": "unreachable", "message": "cannot reach ...", "exit_code": 5}}

`code` is a stable word a script may branch on (it can say more than the exit
code: "wrong_port" exits 5 like "unreachable"); `message` is the stderr line
without the program's name; `exit_code` is the process's exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import NoReturn

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# What a shell reports for a program killed by SIGPIPE (128 + 13), as `yes | head` does.
EXIT_BROKEN_PIPE = 141


class CommandError(Exception):
    """A failure reported the same way by every tool: one line, an exit code, a code word."""

    def __init__(self, message: str, exit_code: int, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.code = code


def version() -> str:
    """The installed package's version, as pip knows it."""
    try:
        return metadata.version("sielum")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


class Parser(argparse.ArgumentParser):
    """argparse whose errors are CommandErrors, so that --json reports them as JSON too."""

    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{message} (see {self.prog} --help)", EXIT_USAGE, "usage")


def add_version_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--version",
        action="version",
        version=f"{parser.prog} {version()}",
        help="print the program's name and version, and exit",
    )


def add_json_option(parser: argparse.ArgumentParser, *, top: bool, help: str) -> None:
    """--json on the top-level parser and on a command: it may come before or after the command.

    Below the top level the default is SUPPRESS, so a command never overwrites a
    --json given before it with its own default.
    """
    parser.add_argument(
        "--json", action="store_true", default=False if top else argparse.SUPPRESS, help=help
    )


JSON_HELP = (
    "machine-readable output: one JSON document on stdout; on failure "
    '{"error": {"code", "message", "exit_code"}} on stdout as well as the line on stderr'
)


def wants_json(argv: Sequence[str]) -> bool:
    """True if --json is among the options (anything after `--` is an operand)."""
    for arg in argv:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def print_json(document: object) -> None:
    print(json.dumps(document, indent=2))


def report(prog: str, error: CommandError, *, as_json: bool) -> int:
    """The one way a failure is shown: the line on stderr and, with --json, the object on stdout."""
    if as_json:
        print_json(
            {"error": {"code": error.code, "message": error.message, "exit_code": error.exit_code}}
        )
    print(f"{prog}: {error.message}", file=sys.stderr)
    return error.exit_code


def run_main(
    prog: str,
    argv: Sequence[str],
    command: Callable[[list[str]], int],
    translate: Callable[[Exception], CommandError | None],
) -> int:
    """Runs a tool's command and reports its failure; quiet when stdout's reader goes away.

    translate turns the tool's own exceptions into CommandErrors; what it returns
    None for is a bug, and keeps its traceback.
    """
    argv = list(argv)
    as_json = wants_json(argv)
    try:
        try:
            exit_code = command(argv)
        except CommandError as error:
            exit_code = report(prog, error, as_json=as_json)
        except KeyboardInterrupt:
            exit_code = report(
                prog,
                CommandError("interrupted", EXIT_INTERRUPTED, "interrupted"),
                as_json=as_json,
            )
        except SystemExit:
            # --help and --version print and exit through argparse: flushed here too.
            sys.stdout.flush()
            raise
        except BrokenPipeError:
            raise
        except Exception as error:
            failure = translate(error)
            if failure is None:
                raise
            exit_code = report(prog, failure, as_json=as_json)
        # Flushed here, so that a reader gone away (`| head -1`) is noticed here
        # and not at interpreter exit, where it would print a traceback.
        sys.stdout.flush()
    except BrokenPipeError:
        # Whatever is left in the buffer has nowhere to go: point stdout at
        # /dev/null so that the interpreter's last flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return exit_code
