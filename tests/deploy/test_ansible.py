"""examples/ansible run for real: 21 local hosts, a vault, a real server, no secret anywhere.

Each inventory host has `ansible_connection=local` and its own install prefix,
virtualenv, cert dir and systemd root under the test's temp dir. Twenty of them
enroll; the twenty-first points at a closed port, as a host that is down during a
rollout would, so the end-of-rollout report has a host to find.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sielum.tokens import make_secret, new_token_id
from tests.deploy.conftest import (
    EXAMPLES,
    REPO,
    UNIT,
    admin_args,
    create_token,
    devices,
    enroll_url,
    files_with,
    fingerprint,
    leaks,
    token,
    venv_command,
    watched_run,
)
from tests.e2e.conftest import free_port
from tests.robust.conftest import Serve

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
PLAYBOOK = EXAMPLES / "ansible" / "enroll.yml"
HOSTS = 20
STRAGGLER = "host21"
VAULT_PASSWORD = "vault password of the test"  # a throwaway vault


def ansible_env(tmp: Path) -> dict[str, str]:
    """Ansible with pipelining (as the README asks), its files under tmp, this venv's tools."""
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_LOCAL_TEMP": str(tmp / "local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp / "remote"),
        "ANSIBLE_HOME": str(tmp / "home"),
    }


def _inventory(tmp_path: Path, serve: Serve, wheel: Path, deps: Path) -> dict[str, Any]:
    hosts: dict[str, Any] = {}
    for i in range(1, HOSTS + 2):
        name = f"host{i:02d}"
        root = tmp_path / "hosts" / name
        # What every systemd host has; the playbook installs the unit into it.
        (root / "etc" / "systemd" / "system").mkdir(parents=True)
        hosts[name] = {
            "sielum_home": str(root / "opt" / "sielum"),
            "sielum_cert_dir": str(root / "etc" / "sielum"),
            "sielum_systemd_root": str(root),
        }
    # Down during the rollout: nothing listens on its enroll port.
    hosts[STRAGGLER]["sielum_enroll_server"] = f"https://127.0.0.1:{free_port()}"
    local = {
        "ansible_connection": "local",
        # The hosts' modules run on this test's interpreter, never the system Python.
        "ansible_python_interpreter": sys.executable,
        # The test user runs everything itself: no sudo.
        "ansible_become": False,
    }
    return {
        "endpoints": {
            "hosts": hosts,
            "vars": {
                **local,
                "sielum_enroll_server": enroll_url(serve),
                "sielum_ca_fingerprint": fingerprint(serve),
                "sielum_virtualenv_command": venv_command(deps),
                # Offline: the wheel from its directory; each venv finds the
                # dependencies already there.
                "sielum_pip_extra_args": (
                    f"--disable-pip-version-check --no-index --find-links {wheel.parent}"
                ),
                "sielum_install_os_packages": False,
                # No running systemd here: enable the unit under each host's root.
                "sielum_service_state": "enabled",
            },
        },
        "controller": {
            "hosts": {
                "localhost": {
                    **local,
                    "sielum_api_server": f"127.0.0.1:{serve.api_port}",
                    "sielum_admin_cert_dir": str(serve.data_dir / "admin"),
                    "sielum_admin_command": str(BIN / "sielum-admin"),
                }
            }
        },
    }


def _make_vault(workdir: Path, secret: str, env: dict[str, str]) -> Path:
    """group_vars/endpoints/vault.yml as the examples' README makes it: secret on stdin."""
    vault = workdir / "group_vars" / "endpoints" / "vault.yml"
    vault.parent.mkdir(parents=True)
    result = subprocess.run(
        [
            str(BIN / "ansible-vault"),
            "encrypt_string",
            "--stdin-name",
            "vault_sielum_enrollment_token",
        ],
        input=secret,
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "$ANSIBLE_VAULT" in result.stdout
    vault.write_text(result.stdout)
    return vault


def _recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines: host -> {ok, changed, unreachable, failed, skipped, ...}."""
    recap = {}
    for line in output.split("PLAY RECAP")[-1].splitlines():
        match = re.match(r"^(\S+)\s*:\s*(.*)$", line.strip())
        if match:
            recap[match[1]] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match[2])}
    return recap


def _run_exec_start(root: Path, enrolled: list[dict[str, Any]]) -> None:
    """The installed unit's ExecStart, run as systemd would: it heartbeats, then stops on TERM.

    This is what no test here can ask systemd to do: it shows that the command line
    the rollout wrote (the agent's path in the host's venv, its cert dir) works.
    """
    unit = (root / "etc" / "systemd" / "system" / "sielum-agent.service").read_text()
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[0] == str(root / "opt" / "sielum" / "venv" / "bin" / "sielum-agent")
    assert argv[1:4] == ["run", "--cert-dir", str(root / "etc" / "sielum")]
    device_id = json.loads((root / "etc" / "sielum" / "agent.json").read_text())["device_id"]
    assert device_id in {d["id"] for d in enrolled}
    log = root / "agent-run.log"
    with log.open("w") as stderr, subprocess.Popen(argv, stderr=stderr) as agent:
        deadline = time.monotonic() + 120
        while " connected " not in log.read_text() and agent.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=60) == 0, log.read_text()
    lines = log.read_text().splitlines()
    assert any(f"device={device_id}" in line for line in lines if " connected " in line), lines
    assert " agent_stopped reason=SIGTERM" in lines[-1], lines


@pytest.mark.timeout(900)
@pytest.mark.long
def test_ansible_rollout_of_20_hosts(
    tmp_path: Path, server: Serve, wheel: Path, shared_deps: Path
) -> None:
    workdir = tmp_path / "ansible"
    workdir.mkdir()
    ansible_tmp = tmp_path / "ansible-tmp"
    password_file = workdir / "vault-password"
    password_file.write_text(VAULT_PASSWORD)
    env = {
        **ansible_env(ansible_tmp),
        "ANSIBLE_VAULT_PASSWORD_FILE": str(password_file),
        "ANSIBLE_FORKS": "10",
        "ANSIBLE_LOG_PATH": str(tmp_path / "ansible.log"),
    }
    token_id, secret = create_token(server, max_uses=30)
    _make_vault(workdir, secret, env)
    inventory = workdir / "inventory.json"
    inventory.write_text(json.dumps(_inventory(tmp_path, server, wheel, shared_deps), indent=2))
    playbook = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(PLAYBOOK)]

    # First run, at -vvv: 20 hosts enroll and the straggler fails with the agent's reason.
    first, watch = watched_run([*playbook, "-vvv"], secret, env=env)
    output = first.stdout + first.stderr
    (tmp_path / "first-run.log").write_text(output)
    recap = _recap(first.stdout)
    assert first.returncode == 2, output[-5000:]  # 2: some host failed
    assert sorted(h for h, r in recap.items() if r["failed"]) == [STRAGGLER], output[-5000:]
    assert "sielum-agent enroll exited 5:" in output  # 5: server unreachable
    enrolled = devices(server, token_id)
    assert sorted(d["hostname"] for d in enrolled) == [f"host{i:02d}" for i in range(1, 21)]
    assert token(server, token_id)["uses"] == "20"
    # The watch saw the agents run, so "no leak" below means something.
    assert watch.saw("sielum-agent enroll"), sorted(watch.seen)[:20]
    assert watch.leaks() == []
    assert leaks(secret, output=output) == []

    # Every enrolled host: its own venv, its cert dir, the unit and its enablement.
    for i in range(1, HOSTS + 1):
        root = tmp_path / "hosts" / f"host{i:02d}"
        home, cert_dir = root / "opt" / "sielum", root / "etc" / "sielum"
        agent_json = json.loads((cert_dir / "agent.json").read_text())
        assert agent_json["device_id"] in {d["id"] for d in enrolled}
        assert (home / "venv" / "bin" / "sielum-agent").is_file()
        unit = root / "etc" / "systemd" / "system" / "sielum-agent.service"
        expected = UNIT.read_text().replace("/opt/sielum", str(home))
        assert unit.read_text() == expected.replace("/etc/sielum", str(cert_dir))
        wants = unit.parent / "multi-user.target.wants" / "sielum-agent.service"
        assert os.readlink(wants) == "/etc/systemd/system/sielum-agent.service"
    _run_exec_start(tmp_path / "hosts" / "host01", enrolled)
    straggler = tmp_path / "hosts" / STRAGGLER
    assert not (straggler / "etc" / "sielum" / "agent.json").exists()
    assert list((straggler / "etc" / "systemd" / "system").iterdir()) == []

    # Second run: nothing changes; the straggler fails again, the same way.
    second, watch = watched_run(playbook, secret, env=env)
    recap = _recap(second.stdout)
    assert len(recap) == HOSTS + 1, second.stdout[-5000:]
    assert {h: r["changed"] for h, r in recap.items() if r["changed"]} == {}
    assert sorted(h for h, r in recap.items() if r["failed"]) == [STRAGGLER]
    assert token(server, token_id)["uses"] == "20"
    assert len(devices(server, token_id)) == HOSTS
    assert watch.leaks() == []
    assert leaks(secret, output=second.stdout + second.stderr) == []

    # The end of the rollout: the report names the straggler, then the token is revoked.
    revoke, watch = watched_run([*playbook, "--tags", "revoke", "-vvv"], secret, env=env)
    output = revoke.stdout + revoke.stderr
    assert revoke.returncode == 0, output[-5000:]
    assert _recap(revoke.stdout)["localhost"]["changed"] == 1
    assert re.search(r'"enrolled": "?20"?', output), output[-3000:]
    assert re.search(r'"not_enrolled": \[\s*"host21"\s*\]', output), output[-3000:]
    assert token(server, token_id)["state"] == "TOKEN_STATE_REVOKED"
    assert token(server, token_id)["uses"] == "20"
    assert watch.leaks() == []
    assert leaks(secret, output=output) == []

    # Nor in Ansible's log, the server's log, or any file the runs left behind
    # (temp dirs, facts, the hosts' trees); the vault holds it encrypted only.
    assert leaks(secret, ansible_log=(tmp_path / "ansible.log").read_text()) == []
    assert leaks(secret, server_log=server.log) == []
    assert files_with(secret, tmp_path) == []


@pytest.mark.parametrize(
    "readme", [REPO / "README.md", EXAMPLES / "README.md"], ids=["README", "examples"]
)
def test_hosts_not_enrolled_one_liner(tmp_path: Path, server: Serve, readme: Path) -> None:
    """The READMEs' one-liner: hosts of the inventory that the token's devices do not name."""
    token_id, secret = create_token(server, max_uses=5)
    for name in ("web1", "web3"):
        result = subprocess.run(
            [
                str(BIN / "sielum-agent"),
                "enroll",
                "--server",
                enroll_url(server),
                "--ca-fingerprint",
                fingerprint(server),
                "--cert-dir",
                str(tmp_path / name),
                "--hostname",
                name,
                "--token-file",
                "-",
            ],
            input=secret,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    (tmp_path / "inventory").write_text("[endpoints]\nweb1\nweb2\nweb3\nweb4\n\n[db]\ndb1\n")
    # The README's command, run as it is, with this server's admin options.
    block = re.search(r"comm -23 .*?\| sort\)\n", readme.read_text(), re.DOTALL)
    assert block is not None, f"{readme.name} lost its not-enrolled one-liner"
    assert block[0].count("--token ID") == 1
    command = block[0].replace("sielum-admin", " ".join(admin_args(server)))
    command = command.replace("--token ID", f"--token {token_id}")
    result = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=ansible_env(tmp_path / "ansible-tmp"),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["web2", "web4"]


def test_environment_keyword_would_leak_the_token(tmp_path: Path) -> None:
    """Why the role uses stdin: Ansible's `environment:` puts the value on a command line.

    Also shows that the /proc watch catches a secret in argv when there is one.
    """
    secret = make_secret(new_token_id()).reveal()
    (tmp_path / "vars.yml").write_text(f"token: {secret}\n")
    (tmp_path / "play.yml").write_text(
        "- hosts: all\n"
        "  gather_facts: false\n"
        "  vars_files: [vars.yml]\n"
        "  tasks:\n"
        "    - ansible.builtin.command: sleep 1\n"
        "      environment: {SIELUM_ENROLLMENT_TOKEN: '{{ token }}'}\n"
    )
    result, watch = watched_run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(tmp_path / "play.yml"),
        ],
        secret,
        env=ansible_env(tmp_path / "ansible-tmp"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert watch.leaks("argv") != []
    assert any(
        "/bin/sh -c SIELUM_ENROLLMENT_TOKEN=" in c for s in watch.leaking_commands() for c in s
    )
