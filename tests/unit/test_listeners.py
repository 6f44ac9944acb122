"""The HTTP listeners' bounds: the connection cap scales with the open-files limit, and
serve's flags reach the server's configuration."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sielum.cli.server import build_parser
from sielum.cli.server.serve import _server_config
from sielum.core.listeners import connection_cap


@pytest.mark.parametrize(
    ("open_files", "cap"),
    [(20, 8), (220, 27), (400, 50), (1024, 128), (4096, 512), (1_048_576, 512)],
)
def test_each_listener_holds_an_eighth_of_the_open_files_limit(open_files: int, cap: int) -> None:
    assert connection_cap(open_files) == cap


def test_serve_flags_reach_the_configuration() -> None:
    args = build_parser().parse_args(
        [
            "serve", "--data-dir", "/nonexistent", "--metrics-addr", "off",
            "--idle-timeout", "4.5", "--metrics-host", "enroll-1", "--metrics-host", "prom.example",
        ]
    )  # fmt: skip
    config = _server_config(args)
    assert config.idle_timeout == timedelta(seconds=4.5)
    assert config.metrics_hosts == ("enroll-1", "prom.example")
    limits = config.http_limits()
    assert limits.idle_timeout == 4.5
    assert limits.max_connections == connection_cap()
