"""examples/ansible run for real: local hosts, the agent's .deb by checksum, a real server.

Each inventory host has `ansible_connection=local` and its own root file system
(`sielum_root`) under the test's temp dir: dpkg installs the .deb that
scripts/build-agent.sh built into it (`dpkg --root`, the package's maintainer
scripts run chrootless), and `systemctl --root` enables the unit there. The
executables that enroll are the package's own, unpacked in each root.
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
    Artifacts,
    admin_args,
    admin_json,
    create_token,
    devices,
    enroll_url,
    files_with,
    fingerprint,
    host_root,
    installed_version,
    leaks,
    sha256,
    token,
    watched_run,
)
from tests.e2e.conftest import free_port
from tests.robust.conftest import Serve

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
ANSIBLE = EXAMPLES / "ansible"
PLAYBOOK = ANSIBLE / "enroll.yml"
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


LOCAL = {
    "ansible_connection": "local",
    # The hosts' modules run on this test's interpreter, never the system Python.
    "ansible_python_interpreter": sys.executable,
    # The test user runs everything itself: no sudo.
    "ansible_become": False,
}


def _inventory(
    tmp_path: Path, serve: Serve, hosts: dict[str, dict[str, Any]], **group: Any
) -> Path:
    """endpoints (each host with its own root) and the controller, as JSON (which is YAML)."""
    for name, host in hosts.items():
        host.setdefault("sielum_root", str(host_root(tmp_path / "hosts" / name)))
    inventory = {
        "endpoints": {
            "hosts": hosts,
            "vars": {
                **LOCAL,
                "sielum_enroll_server": enroll_url(serve),
                "sielum_ca_fingerprint": fingerprint(serve),
                # No running systemd here: enable the unit under each host's root.
                "sielum_service_state": "enabled",
                **group,
            },
        },
        "controller": {
            "hosts": {
                "localhost": {
                    **LOCAL,
                    "sielum_api_server": f"127.0.0.1:{serve.api_port}",
                    "sielum_admin_cert_dir": str(serve.data_dir / "admin"),
                    "sielum_admin_command": str(BIN / "sielum-admin"),
                }
            }
        },
    }
    path = tmp_path / "ansible" / "inventory.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(inventory, indent=2))
    return path


def _deb_from_controller(built: Artifacts) -> dict[str, str]:
    return {"sielum_package_src": str(built.deb), "sielum_package_sha256": sha256(built.deb)}


def _make_vault(workdir: Path, secret: str, env: dict[str, str]) -> Path:
    """group_vars/endpoints/vault.yml as the examples' README makes it: secret on stdin."""
    vault = workdir / "group_vars" / "endpoints" / "vault.yml"
    vault.parent.mkdir(parents=True, exist_ok=True)
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


def _setup(tmp_path: Path, serve: Serve, secret: str) -> tuple[dict[str, str], Path]:
    """Ansible's environment (a vault password file, forks, a log) and its working dir."""
    workdir = tmp_path / "ansible"
    workdir.mkdir(exist_ok=True)
    password_file = workdir / "vault-password"
    password_file.write_text(VAULT_PASSWORD)
    env = {
        **ansible_env(tmp_path / "ansible-tmp"),
        "ANSIBLE_VAULT_PASSWORD_FILE": str(password_file),
        "ANSIBLE_FORKS": "10",
        "ANSIBLE_LOG_PATH": str(tmp_path / "ansible.log"),
    }
    _make_vault(workdir, secret, env)
    return env, workdir


def _recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines: host -> {ok, changed, unreachable, failed, skipped, ...}."""
    recap = {}
    for line in output.split("PLAY RECAP")[-1].splitlines():
        match = re.match(r"^(\S+)\s*:\s*(.*)$", line.strip())
        if match:
            recap[match[1]] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match[2])}
    return recap


def _failed(output: str) -> list[str]:
    return sorted(h for h, r in _recap(output).items() if r["failed"])


def _device_id(root: Path) -> str:
    return str(json.loads((root / "etc" / "sielum" / "agent.json").read_text())["device_id"])


def _assert_deb_installed(root: Path, built: Artifacts, version: str) -> None:
    """dpkg's record, the package's executable, the cert dir 0700, the unit enabled."""
    assert installed_version(root) == f"ii {version}"
    assert (root / "usr" / "bin" / "sielum-agent").read_bytes() == built.executable.read_bytes()
    assert (root / "etc" / "sielum").stat().st_mode & 0o777 == 0o700
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants"
    assert os.readlink(wants / "sielum-agent.service") == "/lib/systemd/system/sielum-agent.service"
    # The package's unit, not one the role wrote over it.
    assert not (root / "etc" / "systemd" / "system" / "sielum-agent.service").exists()


def _run_exec_start(root: Path, enrolled: list[dict[str, Any]]) -> None:
    """The installed unit's ExecStart, run as systemd would: it heartbeats, then stops on TERM.

    This is what no test here can ask systemd to do: it shows that the command line
    of the unit the package installed works on the enrollment the rollout made.
    """
    unit = (root / "lib" / "systemd" / "system" / "sielum-agent.service").read_text()
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv == ["/usr/bin/sielum-agent", "run", "--cert-dir", "/etc/sielum"]
    # Inside this host's root, which is not this machine's /.
    argv = [str(root) + argv[0], *argv[1:3], str(root) + argv[3]]
    device_id = _device_id(root)
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
def test_ansible_rollout_of_20_hosts_from_the_deb(
    tmp_path: Path, server: Serve, built: Artifacts
) -> None:
    token_id, secret = create_token(server, max_uses=30)
    env, _ = _setup(tmp_path, server, secret)
    hosts: dict[str, dict[str, Any]] = {f"host{i:02d}": {} for i in range(1, HOSTS + 2)}
    # Down during the rollout: nothing listens on its enroll port.
    hosts[STRAGGLER]["sielum_enroll_server"] = f"https://127.0.0.1:{free_port()}"
    inventory = _inventory(tmp_path, server, hosts, **_deb_from_controller(built))
    playbook = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(PLAYBOOK)]

    # 20 hosts enroll and the straggler fails with the agent's reason (a rerun changing
    # nothing, and -vvv, are shown on fewer hosts by test_the_fleet_s_lifecycle).
    first, watch = watched_run(playbook, secret, env=env)
    output = first.stdout + first.stderr
    (tmp_path / "first-run.log").write_text(output)
    assert first.returncode == 2, output[-5000:]  # 2: some host failed
    assert _failed(first.stdout) == [STRAGGLER], output[-5000:]
    assert "sielum-agent enroll exited 5:" in output  # 5: server unreachable
    enrolled = devices(server, token_id)
    assert sorted(d["hostname"] for d in enrolled) == [f"host{i:02d}" for i in range(1, 21)]
    assert token(server, token_id)["uses"] == "20"
    # The watch saw the agents run, so "no leak" below means something.
    assert watch.saw("sielum-agent enroll"), sorted(watch.seen)[:20]
    assert watch.leaks() == []
    assert leaks(secret, output=output) == []

    # Every enrolled host: the package, its cert dir, the unit enabled.
    for i in range(1, HOSTS + 1):
        root = tmp_path / "hosts" / f"host{i:02d}"
        _assert_deb_installed(root, built, built.version)
        assert _device_id(root) in {d["id"] for d in enrolled}
    _run_exec_start(tmp_path / "hosts" / "host01", enrolled)
    straggler = tmp_path / "hosts" / STRAGGLER
    assert not (straggler / "etc" / "sielum" / "agent.json").exists()
    assert not (straggler / "etc" / "systemd" / "system" / "multi-user.target.wants").exists()

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


def _flip(digest: str) -> str:
    """The same checksum with its last digit changed."""
    return digest[:-1] + ("0" if digest[-1] != "0" else "1")


@pytest.mark.timeout(300)
def test_a_wrong_checksum_stops_the_play_before_anything(
    tmp_path: Path, server: Serve, built: Artifacts, package_server: str
) -> None:
    token_id, secret = create_token(server, max_uses=5)
    env, _ = _setup(tmp_path, server, secret)
    hosts: dict[str, dict[str, Any]] = {"deb1": {}, "deb2": {}, "deb3": {}}
    inventory = _inventory(
        tmp_path,
        server,
        hosts,
        sielum_package_src=str(built.deb),
        sielum_package_sha256=_flip(sha256(built.deb)),
    )
    before = {
        n: sorted(p.relative_to(tmp_path) for p in (tmp_path / "hosts" / n).rglob("*"))
        for n in hosts
    }
    result, _ = watched_run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(PLAYBOOK)], secret, env=env
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-5000:]
    # The check runs once, on the controller, for the batch's first host; its failure
    # is fatal to the play (any_errors_fatal): no host gets a file or runs anything.
    assert _failed(result.stdout) == ["deb1"], output[-5000:]
    assert f"{built.deb}: SHA-256 {sha256(built.deb)}, not sielum_package_sha256" in output
    assert "nothing was installed on any host" in output
    # deb1: the settings and the controller's stat; the others: the settings alone.
    assert {h: r["ok"] for h, r in _recap(result.stdout).items()} == {
        "deb1": 2,
        "deb2": 1,
        "deb3": 1,
    }
    for name in hosts:
        after = sorted(p.relative_to(tmp_path) for p in (tmp_path / "hosts" / name).rglob("*"))
        assert after == before[name]
    assert token(server, token_id)["uses"] == "0"

    # From a URL: get_url refuses the download, and nothing is staged or installed.
    url_inventory = _inventory(
        tmp_path / "url",
        server,
        {"file1": {}},
        sielum_install="file",
        sielum_package_url=f"{package_server}/sielum-agent",
        sielum_package_sha256=_flip(sha256(built.executable)),
    )
    result, _ = watched_run(
        [str(BIN / "ansible-playbook"), "-i", str(url_inventory), str(PLAYBOOK)], secret, env=env
    )
    assert result.returncode == 2, result.stdout[-5000:]
    assert _failed(result.stdout) == ["file1"]
    assert "did not match" in result.stdout, result.stdout[-3000:]
    root = tmp_path / "url" / "hosts" / "file1"
    assert list((root / "var" / "cache" / "sielum").iterdir()) == []
    assert list((root / "usr" / "local" / "bin").iterdir()) == []
    assert token(server, token_id)["uses"] == "0"


def _playbook(
    inventory: Path, name: str, *args: str, secret: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    result, watch = watched_run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(ANSIBLE / name), *args],
        secret,
        env=env,
    )
    assert watch.leaks() == []
    assert leaks(secret, output=result.stdout + result.stderr) == []
    return result


def _state(serve: Serve, device_id: str) -> str:
    return str(admin_json(serve, "devices", "get", device_id)["device"]["state"])


@pytest.mark.timeout(600)
def test_the_fleet_s_lifecycle(
    tmp_path: Path, server: Serve, built: Artifacts, newer_deb: Path, package_server: str
) -> None:
    """Enroll (the .deb from the controller, the file from a URL), a revoked host refused
    and then re-enrolled with a new token, an upgrade in batches, a decommission."""
    token_id, secret = create_token(server, max_uses=5)
    env, workdir = _setup(tmp_path, server, secret)
    hosts: dict[str, dict[str, Any]] = {
        "deb1": {},
        "deb2": {},
        "file1": {
            "sielum_install": "file",
            "sielum_package_src": "",
            "sielum_package_url": f"{package_server}/sielum-agent",
            "sielum_package_sha256": sha256(built.executable),
        },
    }
    inventory = _inventory(tmp_path, server, hosts, **_deb_from_controller(built))
    roots = {name: tmp_path / "hosts" / name for name in hosts}

    # Enroll all three; -vvv, and still no secret anywhere.
    first = _playbook(inventory, "enroll.yml", "-vvv", secret=secret, env=env)
    assert first.returncode == 0, first.stdout[-5000:]
    ids = {name: _device_id(root) for name, root in roots.items()}
    assert sorted(d["hostname"] for d in devices(server, token_id)) == sorted(hosts)
    for name in ("deb1", "deb2"):
        _assert_deb_installed(roots[name], built, built.version)
    agent = roots["file1"] / "usr" / "local" / "bin" / "sielum-agent"
    assert agent.read_bytes() == built.executable.read_bytes()
    assert agent.stat().st_mode & 0o777 == 0o755
    unit = roots["file1"] / "etc" / "systemd" / "system" / "sielum-agent.service"
    assert unit.read_text() == UNIT.read_text().replace(
        "/opt/sielum/venv/bin/sielum-agent", "/usr/local/bin/sielum-agent"
    )
    assert installed_version(roots["file1"]) == ""

    # deb1's device is revoked: the next run says so for deb1, and changes nothing on
    # any host (a rerun asks the server about each enrolled host, and installs nothing).
    admin_json(server, "devices", "revoke", ids["deb1"])
    refused = _playbook(inventory, "enroll.yml", secret=secret, env=env)
    assert refused.returncode == 2, refused.stdout[-5000:]
    assert _failed(refused.stdout) == ["deb1"]
    assert "the server refuses this device (sielum-agent status exited 9:" in refused.stdout
    assert "-e sielum_reenroll=true" in refused.stdout
    assert {h: r["changed"] for h, r in _recap(refused.stdout).items()} == {
        "deb1": 0,
        "deb2": 0,
        "file1": 0,
    }
    assert _device_id(roots["deb1"]) == ids["deb1"]

    # A new token in the vault and sielum_reenroll: deb1 enrolls again with --force.
    new_token_id, new_secret = create_token(server, max_uses=1, label="reenroll")
    _make_vault(workdir, new_secret, env)
    again = _playbook(
        inventory,
        "enroll.yml",
        "--limit",
        "deb1",
        "-e",
        "sielum_reenroll=true",
        secret=new_secret,
        env=env,
    )
    assert again.returncode == 0, again.stdout[-5000:]
    assert _recap(again.stdout)["deb1"]["changed"] == 1
    reenrolled = _device_id(roots["deb1"])
    assert reenrolled != ids["deb1"]
    assert [d["id"] for d in devices(server, new_token_id)] == [reenrolled]
    assert (_state(server, ids["deb1"]), _state(server, reenrolled)) == (
        "DEVICE_STATE_REVOKED",
        "DEVICE_STATE_ACTIVE",
    )
    ids["deb1"] = reenrolled

    # An upgrade of the .deb hosts, in batches (one host, then the next), enrollments kept.
    upgraded = _playbook(
        inventory,
        "upgrade.yml",
        "--limit",
        "deb1,deb2",
        "-e",
        f"sielum_package_src={newer_deb}",
        "-e",
        f"sielum_package_sha256={sha256(newer_deb)}",
        secret=new_secret,
        env=env,
    )
    assert upgraded.returncode == 0, upgraded.stdout[-5000:]
    assert upgraded.stdout.count("PLAY [Upgrade the Sielum agent, batch by batch]") == 2
    for name in ("deb1", "deb2"):
        assert installed_version(roots[name]) == f"ii {built.version}.1"
        assert _device_id(roots[name]) == ids[name]
        assert _state(server, ids[name]) == "DEVICE_STATE_ACTIVE"
    assert token(server, new_token_id)["uses"] == "1"
    assert token(server, token_id)["uses"] == "3"

    # Decommission deb2 and file1: each device ends its own enrollment, then its files go.
    nobody = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(ANSIBLE / "decommission.yml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert nobody.returncode != 0
    assert "'sielum_decommission_hosts' is undefined" in nobody.stdout + nobody.stderr
    gone = _playbook(
        inventory,
        "decommission.yml",
        "-e",
        "sielum_decommission_hosts=deb2,file1",
        secret=new_secret,
        env=env,
    )
    assert gone.returncode == 0, gone.stdout[-5000:]
    for name in ("deb2", "file1"):
        assert _state(server, ids[name]) == "DEVICE_STATE_REVOKED"
        root = roots[name]
        assert not (root / "etc" / "sielum").exists()
        assert not (root / "var" / "cache" / "sielum").exists()
        assert not (
            root / "etc" / "systemd" / "system" / "multi-user.target.wants" / "sielum-agent.service"
        ).exists()
    assert installed_version(roots["deb2"]) == ""
    assert not (roots["deb2"] / "usr" / "bin" / "sielum-agent").exists()
    assert not (roots["file1"] / "usr" / "local" / "bin" / "sielum-agent").exists()
    assert not (roots["file1"] / "etc" / "systemd" / "system" / "sielum-agent.service").exists()
    assert "device.unenroll" in {e["action"] for e in admin_json(server, "audit", "list")["events"]}
    # deb1 is untouched and still heartbeats.
    assert _state(server, ids["deb1"]) == "DEVICE_STATE_ACTIVE"
    assert installed_version(roots["deb1"]) == f"ii {built.version}.1"
    assert leaks(secret, server_log=server.log) == []
    assert files_with(secret, tmp_path) == []
    assert files_with(new_secret, tmp_path) == []


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
