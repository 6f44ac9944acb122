"""The client commands import grpc with its core's lines off, and leave the environment as found."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = "import os, sielum.cli.{module}; print(os.environ.get('GRPC_VERBOSITY', '<unset>'))"


def _probe(module: str, given: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    if given is not None:
        env["GRPC_VERBOSITY"] = given
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


@pytest.mark.parametrize("module", ["agent", "admin"])
def test_importing_a_command_leaves_no_verbosity_behind_for_children(module: str) -> None:
    # A server or helper the process starts must get the core's lines, as before.
    assert _probe(module, None) == "<unset>"


@pytest.mark.parametrize("module", ["agent", "admin"])
def test_an_operator_verbosity_is_kept(module: str) -> None:
    assert _probe(module, "info") == "info"


def test_the_core_prints_nothing_of_its_own_when_a_handshake_fails() -> None:
    # A plain TCP listener answering garbage: the TLS handshake fails, and with the
    # verbosity left at grpc's default the core would log "Handshake failed" lines.
    script = """
import socket, threading
import sielum.cli.agent
import grpc
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
def serve():
    while True:
        c, _ = s.accept(); c.sendall(b"not tls\\r\\n\\r\\n"); c.close()
threading.Thread(target=serve, daemon=True).start()
channel = grpc.secure_channel("127.0.0.1:%d" % s.getsockname()[1], grpc.ssl_channel_credentials())
try:
    grpc.channel_ready_future(channel).result(timeout=1.5)
except grpc.FutureTimeoutError:
    print("refused")
"""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.stdout.strip() == "refused"
    assert "Handshake failed" not in result.stderr, result.stderr
