"""examples/puppet run for real: `puppet apply` of sielum::agent against a real server.

Puppet runs with its own confdir, vardir, codedir, log, run, ssl and public dirs
in a temp dir (as root, Debian's defaults are the system's), the module path
pointing at examples/puppet, and the class's parameters from Hiera, as a site would
bind them (the token converted to Sensitive by lookup_options). The node is a root
file system under the temp dir (`root`: dpkg --root installs the .deb that
scripts/build-agent.sh built into it), and there is no running systemd here, so
the class only enables the unit in the file system (service => enabled).
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
    Artifacts,
    ProcWatch,
    create_token,
    devices,
    enroll_url,
    files_with,
    fingerprint,
    host_root,
    installed_version,
    leaks,
    sha256,
    token_uses,
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


def _node(tmp_path: Path, server: Serve, name: str, **params: str) -> dict[str, object]:
    root = host_root(tmp_path / name)
    return {
        "sielum::agent::server": enroll_url(server),
        "sielum::agent::ca_fingerprint": fingerprint(server),
        "sielum::agent::hostname": name,
        "sielum::agent::service": "enabled",
        "sielum::agent::root": str(root),
        **{f"sielum::agent::{key}": value for key, value in params.items()},
    }


def _assert_deb_installed(root: Path, built: Artifacts) -> None:
    assert (root / "etc" / "sielum" / "agent.json").is_file()
    assert installed_version(root) == f"ii {built.version}"
    assert (root / "usr" / "bin" / "sielum-agent").read_bytes() == built.executable.read_bytes()
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants"
    assert os.readlink(wants / "sielum-agent.service") == "/lib/systemd/system/sielum-agent.service"


def _assert_file_installed(root: Path, built: Artifacts) -> None:
    assert (root / "etc" / "sielum" / "agent.json").is_file()
    agent = root / "usr" / "local" / "bin" / "sielum-agent"
    assert agent.read_bytes() == built.executable.read_bytes()
    assert agent.stat().st_mode & 0o777 == 0o755
    unit = root / "etc" / "systemd" / "system" / "sielum-agent.service"
    assert unit.read_text() == UNIT.read_text().replace(
        "/opt/sielum/venv/bin/sielum-agent", "/usr/local/bin/sielum-agent"
    )
    wants = unit.parent / "multi-user.target.wants" / "sielum-agent.service"
    assert os.readlink(wants) == "/etc/systemd/system/sielum-agent.service"
    assert installed_version(root) == ""


def test_puppet_module_ships_the_agent_unit() -> None:
    """The module's copy of the unit is examples/systemd/sielum-agent.service, unchanged."""
    assert (PUPPET_MODULE / "files" / "sielum-agent.service").read_text() == UNIT.read_text()


@pytest.mark.timeout(600)
def test_puppet_enrolls_once_with_a_sensitive_token(
    tmp_path: Path, server: Serve, built: Artifacts
) -> None:
    """The .deb from a path on the node, checked against its SHA-256, then dpkg."""
    token_id, secret = create_token(server, max_uses=5)
    puppet = tmp_path / "puppet"
    data = _node(
        tmp_path, server, "node1", package=str(built.deb), package_sha256=sha256(built.deb)
    )
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
    _assert_deb_installed(tmp_path / "node1", built)
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
    tmp_path: Path, server: Serve, built: Artifacts, package_server: str
) -> None:
    """The provisioner wrote the token to a file on the node; Puppet never reads it.

    The single executable, from an http URL, checked against its SHA-256."""
    token_id, secret = create_token(server, max_uses=5)
    token_file = tmp_path / "enroll.token"
    token_file.write_text(secret + "\n")
    token_file.chmod(0o600)
    puppet = tmp_path / "puppet"
    data = _node(
        tmp_path,
        server,
        "node2",
        install="file",
        package=f"{package_server}/sielum-agent",
        package_sha256=sha256(built.executable),
    )
    hiera = _hiera(puppet, {**data, "sielum::agent::token_file": str(token_file)})

    # At --debug, the most Puppet says: it never holds the token.
    first, watch = _apply(puppet, hiera, secret, "--debug")
    assert first.returncode == 2, (first.stdout + first.stderr)[-5000:]
    assert [d["hostname"] for d in devices(server, token_id)] == ["node2"]
    _assert_file_installed(tmp_path / "node2", built)
    second, _ = _apply(puppet, hiera, secret, "--debug")
    assert second.returncode == 0, second.stdout[-5000:]
    assert token_uses(server, token_id) == 1
    assert watch.saw("sielum-agent enroll")
    assert watch.leaks() == []
    assert leaks(secret, output=first.stdout + first.stderr + second.stdout + second.stderr) == []
    token_file.unlink()
    assert files_with(secret, tmp_path) == []


@pytest.mark.timeout(600)
def test_puppet_refuses_a_package_with_the_wrong_checksum(
    tmp_path: Path, server: Serve, built: Artifacts
) -> None:
    token_id, secret = create_token(server, max_uses=5)
    token_file = tmp_path / "enroll.token"
    token_file.write_text(secret + "\n")
    puppet = tmp_path / "puppet"
    wrong = "0" * 64
    data = _node(
        tmp_path,
        server,
        "node3",
        package=str(built.deb),
        package_sha256=wrong,
        token_file=str(token_file),
    )
    hiera = _hiera(puppet, data)
    root = tmp_path / "node3"
    result, _ = _apply(puppet, hiera, secret, "--verbose")
    output = result.stdout + result.stderr
    assert result.returncode in (4, 6), output[-5000:]  # 4 or 6: failures
    assert (
        "File written to disk did not match desired checksum; discarding changes "
        f"({{sha256}}{sha256(built.deb)} vs {{sha256}}{wrong})"
    ) in output, output[-5000:]
    # Nothing staged, nothing installed, nothing enrolled.
    assert list((root / "var" / "cache" / "sielum").iterdir()) == []
    assert installed_version(root) == ""
    assert not (root / "usr" / "bin" / "sielum-agent").exists()
    assert not (root / "etc" / "sielum").exists()
    assert token_uses(server, token_id) == 0
    assert "Skipping because of failed dependencies" in output
