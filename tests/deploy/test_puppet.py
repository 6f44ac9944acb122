"""examples/puppet run for real: `puppet apply` of sielum::agent against a real server.

Puppet runs as the test user with its own confdir, vardir, codedir, log, run, ssl
and public dirs in a temp dir (as root, Debian's defaults are the system's), the
module path pointing at examples/puppet, and the class's parameters from Hiera, as
a site would bind them (the token converted to Sensitive by lookup_options). The
node's paths (virtualenv, cert dir, systemd root) are under the temp dir too, and
there is no running systemd here, so the class only enables the unit in the file
system (service => enabled).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import (
    EXAMPLES,
    UNIT,
    ProcWatch,
    create_token,
    devices,
    enroll_url,
    files_with,
    fingerprint,
    leaks,
    token_uses,
    venv_command,
    watched_run,
)
from tests.robust.conftest import Serve

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("puppet") is None, reason="needs Debian's puppet package"),
]

PUPPET_MODULE = EXAMPLES / "puppet" / "sielum"


def _hiera(puppet: Path, data: dict[str, object]) -> Path:
    """hiera.yaml and one data file; JSON is YAML, so no YAML writer is needed."""
    (puppet / "data").mkdir(parents=True)
    (puppet / "data" / "common.yaml").write_text(json.dumps(data, indent=2))
    config = puppet / "hiera.yaml"
    config.write_text(
        json.dumps(
            {
                "version": 5,
                "defaults": {"datadir": str(puppet / "data"), "data_hash": "yaml_data"},
                "hierarchy": [{"name": "common", "path": "common.yaml"}],
            }
        )
    )
    return config


def _apply(
    puppet: Path, hiera: Path, secret: str, level: str
) -> tuple[subprocess.CompletedProcess[str], ProcWatch]:
    """One `puppet apply` at --verbose or --debug, sampled under /proc."""
    argv = [
        "puppet",
        "apply",
        "--detailed-exitcodes",
        level,
        "--color=false",
        "--confdir",
        str(puppet / "conf"),
        "--vardir",
        str(puppet / "var"),
        "--codedir",
        str(puppet / "code"),
        "--logdir",
        str(puppet / "log"),
        "--rundir",
        str(puppet / "run"),
        "--ssldir",
        str(puppet / "ssl"),
        "--publicdir",
        str(puppet / "public"),
        "--hiera_config",
        str(hiera),
        "--modulepath",
        str(EXAMPLES / "puppet"),
        "--logdest",
        "console",
        "--logdest",
        str(puppet / "log" / "apply.log"),
        "--reports",
        "store",
        "-e",
        "include sielum::agent",
    ]
    env = {**os.environ, "HOME": str(puppet / "home")}
    return watched_run(argv, secret, env=env, timeout=300)


def _node(tmp_path: Path, server: Serve, wheel: Path, deps: Path, name: str) -> dict[str, object]:
    root = tmp_path / name
    # What every node has: /opt, and systemd's unit directory.
    (root / "opt").mkdir(parents=True)
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    return {
        "sielum::agent::server": enroll_url(server),
        "sielum::agent::ca_fingerprint": fingerprint(server),
        "sielum::agent::wheel": str(wheel),
        "sielum::agent::home": str(root / "opt" / "sielum"),
        "sielum::agent::cert_dir": str(root / "etc" / "sielum"),
        "sielum::agent::hostname": name,
        "sielum::agent::virtualenv_command": venv_command(deps),
        "sielum::agent::pip_options": "--disable-pip-version-check --no-index",
        "sielum::agent::service": "enabled",
        "sielum::agent::systemd_root": str(root),
    }


def _assert_installed(root: Path) -> None:
    home, cert_dir = root / "opt" / "sielum", root / "etc" / "sielum"
    assert (cert_dir / "agent.json").is_file()
    assert (home / "venv" / "bin" / "sielum-agent").is_file()
    unit = root / "etc" / "systemd" / "system" / "sielum-agent.service"
    expected = UNIT.read_text().replace("/opt/sielum", str(home))
    assert unit.read_text() == expected.replace("/etc/sielum", str(cert_dir))
    wants = unit.parent / "multi-user.target.wants" / "sielum-agent.service"
    assert os.readlink(wants) == "/etc/systemd/system/sielum-agent.service"


def test_puppet_module_ships_the_agent_unit() -> None:
    """The module's copy of the unit is examples/systemd/sielum-agent.service, unchanged."""
    assert (PUPPET_MODULE / "files" / "sielum-agent.service").read_text() == UNIT.read_text()


@pytest.mark.timeout(600)
def test_puppet_enrolls_once_with_a_sensitive_token(
    tmp_path: Path, server: Serve, wheel: Path, shared_deps: Path
) -> None:
    token_id, secret = create_token(server, max_uses=5)
    puppet = tmp_path / "puppet"
    data = _node(tmp_path, server, wheel, shared_deps, "node1")
    hiera = _hiera(
        puppet,
        {
            **data,
            "sielum::agent::token": secret,
            "lookup_options": {"sielum::agent::token": {"convert_to": "Sensitive"}},
        },
    )

    # --verbose, not --debug: at --debug, Puppet prints every Hiera lookup with its
    # value before lookup_options makes it Sensitive (README, Mass deployment).
    first, watch = _apply(puppet, hiera, secret, "--verbose")
    output = first.stdout + first.stderr
    assert first.returncode == 2, output[-5000:]  # 2: changes, no failure
    assert [d["hostname"] for d in devices(server, token_id)] == ["node1"]
    assert token_uses(server, token_id) == 1
    _assert_installed(tmp_path / "node1")
    assert watch.saw("sielum-agent enroll"), sorted(watch.seen)[:20]
    # The token is in no command line; in an environment only the agent's own,
    # where the class puts it (readable by its user and root alone).
    assert watch.leaks("argv") == []
    for commands in watch.leaking_commands():
        assert any("sielum-agent enroll" in c for c in commands), watch.leaks()

    second, watch = _apply(puppet, hiera, secret, "--verbose")
    output += second.stdout + second.stderr
    assert second.returncode == 0, second.stdout[-5000:]  # 0: nothing changed
    assert token_uses(server, token_id) == 1
    assert len(devices(server, token_id)) == 1
    assert watch.leaks() == []  # the enroll exec did not run

    # Not in Puppet's output, its log, its reports, its state or cache: nowhere
    # but the Hiera data it came from.
    assert leaks(secret, output=output) == []
    (puppet / "data" / "common.yaml").unlink()
    assert files_with(secret, tmp_path) == []
    assert list((puppet / "var" / "reports").rglob("*.yaml")) != []


@pytest.mark.timeout(600)
def test_puppet_enrolls_once_with_a_token_file(
    tmp_path: Path, server: Serve, wheel: Path, shared_deps: Path
) -> None:
    """The provisioner wrote the token to a file on the node; Puppet never reads it."""
    token_id, secret = create_token(server, max_uses=5)
    token_file = tmp_path / "enroll.token"
    token_file.write_text(secret + "\n")
    token_file.chmod(0o600)
    puppet = tmp_path / "puppet"
    data = _node(tmp_path, server, wheel, shared_deps, "node2")
    hiera = _hiera(puppet, {**data, "sielum::agent::token_file": str(token_file)})

    # At --debug, the most Puppet says: it never holds the token.
    first, watch = _apply(puppet, hiera, secret, "--debug")
    assert first.returncode == 2, (first.stdout + first.stderr)[-5000:]
    assert [d["hostname"] for d in devices(server, token_id)] == ["node2"]
    _assert_installed(tmp_path / "node2")
    second, _ = _apply(puppet, hiera, secret, "--debug")
    assert second.returncode == 0, second.stdout[-5000:]
    assert token_uses(server, token_id) == 1
    assert watch.saw("sielum-agent enroll")
    assert watch.leaks() == []
    assert leaks(secret, output=first.stdout + first.stderr + second.stdout + second.stderr) == []
    token_file.unlink()
    assert files_with(secret, tmp_path) == []
