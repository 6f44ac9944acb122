"""sielum-server: make the CA (init), serve, print the fingerprint, issue admin certs.

One module per part: the data directory's commands (datadir.py), serve (serve.py),
the command line and its help (parser.py), and what they share (common.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sielum.cli import conventions
from sielum.cli.server.common import PROG, translate_error
from sielum.cli.server.parser import build_parser

__all__ = ["build_parser", "main"]


def _command(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    return int(args.run(args))


def main(argv: Sequence[str] | None = None) -> int:
    return conventions.run_main(
        PROG, sys.argv[1:] if argv is None else argv, _command, translate_error
    )
