"""The systemd units in examples/: systemd accepts them, and their command lines are ours."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sielum.cli.agent import build_parser as agent_parser
from sielum.cli.server import build_parser as server_parser

UNITS = Path(__file__).resolve().parents[2] / "examples" / "systemd"
INSTALLED_BIN = "/opt/sielum/venv/bin/"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.e2e
needs_analyze = pytest.mark.skipif(
    ANALYZE is None,
    reason="systemd-analyze is not installed (Debian package systemd, scripts/test-packages.txt)",
)


def _directives(unit: Path) -> dict[str, list[str]]:
    """Key -> values, with backslash continuations joined, as systemd reads them."""
    text = unit.read_text().replace("\\\n", " ")
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def _here(unit: Path, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's scripts, which verify requires."""
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(INSTALLED_BIN, f"{Path(sys.executable).parent}/"))
    return copy


@needs_analyze
@pytest.mark.parametrize("name", ["sielum-agent.service", "sielum-server.service"])
def test_systemd_analyze_verify_accepts_the_unit(name: str, tmp_path: Path) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "verify", str(_here(UNITS / name, tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    # verify only warns (exit 0) about a misspelt value it ignores: the output must be empty.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_analyze
def test_the_agent_unit_is_sandboxed(tmp_path: Path) -> None:
    """systemd's own score of the sandbox: 1.6 today, on its 0 (locked) to 10 (open) scale."""
    assert ANALYZE is not None
    result = subprocess.run(
        [
            ANALYZE,
            "security",
            "--offline=yes",
            "--threshold=20",
            str(_here(UNITS / "sielum-agent.service", tmp_path)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _exposure(unit: Path) -> float:
    """systemd's overall exposure score of a unit, 0 (locked) to 10 (open)."""
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@needs_analyze
def test_the_server_unit_is_sandboxed(tmp_path: Path) -> None:
    """The server listens on the network and holds the CA key: 2.5 or below (it was 4.7)."""
    assert _exposure(_here(UNITS / "sielum-server.service", tmp_path)) <= 2.5


def test_the_server_unit_keeps_what_serve_needs() -> None:
    """The sandbox leaves serve what it uses: setrlimit, sockets of its families, its state dir."""
    unit = _directives(UNITS / "sielum-server.service")
    filters = unit["SystemCallFilter"]
    assert filters[0] == "@system-service"
    # serve raises its soft open-files limit (setrlimit is in @resources).
    assert not any("@resources" in f for f in filters[1:])
    assert unit["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert unit["StateDirectory"] == ["sielum"]
    assert unit["ProtectSystem"] == ["strict"]
    # PostgreSQL's peer authentication must see the real user; agents and the
    # database may be anywhere.
    for key in ("PrivateUsers", "PrivateNetwork", "IPAddressDeny", "MemoryDenyWriteExecute"):
        assert key not in unit
    assert int(unit["LimitNOFILE"][0]) >= 65536


def test_the_agent_unit_runs_the_contracts_command_and_stops_on_refusal() -> None:
    unit = _directives(UNITS / "sielum-agent.service")
    (exec_start,) = unit["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == f"{INSTALLED_BIN}sielum-agent"
    args = agent_parser().parse_args(argv[1:])
    assert args.command == "run"
    assert args.cert_dir == "/etc/sielum"
    assert unit["Type"] == ["simple"]
    assert unit["Restart"] == ["on-failure"]
    # Exit 9: the server refused the device; a restart would only call it again.
    assert unit["RestartPreventExitStatus"] == ["9"]
    # The agent writes its cert dir and nothing else.
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["ReadWritePaths"] == [f"-{args.cert_dir}"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["PrivateTmp"] == ["yes"]
    assert unit["CapabilityBoundingSet"] == [""]
    # A stop waits for the call in flight, which --timeout bounds.
    assert int(unit["TimeoutStopSec"][0]) > args.timeout


def test_the_server_unit_runs_the_contracts_command() -> None:
    (exec_start,) = _directives(UNITS / "sielum-server.service")["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == f"{INSTALLED_BIN}sielum-server"
    assert server_parser().parse_args(argv[1:]).command == "serve"


def test_the_server_unit_reloads_with_sighup() -> None:
    """`systemctl reload` sends SIGHUP, which makes serve take a renewed certificate."""
    (exec_reload,) = _directives(UNITS / "sielum-server.service")["ExecReload"]
    assert shlex.split(exec_reload) == ["/bin/kill", "-HUP", "$MAINPID"]
