"""examples/cloud-init: valid cloud-config, and its first boot's enrollment run for real.

`cloud-init schema` checks both parts. The enroll script user-data.yaml writes is
the tested examples/mdm/enroll.sh, byte for byte, and the runcmd entry that
installs the .deb by checksum and enrolls is run here as cloud-init would run it on
first boot, with this test's server, package URL and host root in place of the
example's.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from sielum.cli.admin import build_parser as admin_parser
from tests.deploy.conftest import (
    EXAMPLES,
    Artifacts,
    create_token,
    devices,
    host_root,
    installed_version,
    leaks,
    sha256,
    token_uses,
    watched_run,
)
from tests.deploy.test_mdm import script_env
from tests.robust.conftest import Serve

pytestmark = pytest.mark.skipif(
    shutil.which("cloud-init") is None, reason="needs Debian's cloud-init package"
)

USER_DATA = EXAMPLES / "cloud-init" / "user-data.yaml"
TOKEN_PART = EXAMPLES / "cloud-init" / "token.yaml"
ENROLL_SCRIPT = "/usr/local/sbin/sielum-enroll"


def _schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def _written(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["path"]: entry for entry in config["write_files"]}


def _enroll_entry(config: dict[str, Any]) -> list[str]:
    """The runcmd entry that runs the enroll script."""
    (entry,) = [e for e in config["runcmd"] if ENROLL_SCRIPT in e]
    return list(entry)


@pytest.mark.parametrize("path", [USER_DATA, TOKEN_PART], ids=["user-data", "token-part"])
def test_cloud_config_is_valid(path: Path, tmp_path: Path) -> None:
    result = _schema(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout
    # The check can fail: the same file with one key of the wrong type is refused.
    broken = tmp_path / "broken.yaml"
    broken.write_text(path.read_text().replace("write_files:", "write_files: 5\nold_files:", 1))
    assert _schema(broken).returncode != 0


def test_user_data_writes_the_tested_files() -> None:
    user_data, token_part = _load(USER_DATA), _load(TOKEN_PART)
    written = _written(user_data)
    assert written[ENROLL_SCRIPT]["content"] == (EXAMPLES / "mdm" / "enroll.sh").read_text(), (
        "user-data.yaml must embed examples/mdm/enroll.sh unchanged"
    )
    assert written[ENROLL_SCRIPT]["permissions"] == "0755"
    # The .deb brings the unit: user-data writes none.
    assert not [path for path in written if path.endswith(".service")]
    # The token part writes the file the enroll entry reads, root-only, and is merged
    # by appending (so it does not replace user-data.yaml's write_files).
    (token_file,) = _written(token_part)
    entry = _enroll_entry(user_data)
    assert f"SIELUM_TOKEN_FILE={token_file}" in entry
    assert _written(token_part)[token_file]["permissions"] == "0600"
    assert {"name": "list", "settings": ["append"]} in token_part["merge_how"]
    # The package: a .deb by URL and its SHA-256, no package index, no Python.
    settings = dict(item.split("=", 1) for item in entry[1:-1])
    assert settings["SIELUM_PACKAGE_URL"].startswith("https://")
    assert settings["SIELUM_PACKAGE_URL"].endswith("_amd64.deb")
    assert len(settings["SIELUM_PACKAGE_SHA256"]) == 64
    text = USER_DATA.read_text()
    assert "pip" not in text.split("\nwrite_files:", 1)[1].replace(ENROLL_SCRIPT, "")
    assert "packages:" not in text and "python3" not in text


def test_first_boot_enrolls_once(
    tmp_path: Path, server: Serve, built: Artifacts, package_server: str
) -> None:
    """The enroll entry of runcmd, as on first boot (the .deb fetched, checked, installed,
    then the enrollment), then again (a re-run changes nothing)."""
    user_data = _load(USER_DATA)
    token_id, secret = create_token(server, max_uses=3)
    script = tmp_path / "sielum-enroll"
    script.write_text(_written(user_data)[ENROLL_SCRIPT]["content"])
    script.chmod(0o755)
    token_file = tmp_path / "run" / "sielum" / "enroll.token"
    token_file.parent.mkdir(parents=True)
    content = _written(_load(TOKEN_PART))["/run/sielum/enroll.token"]["content"]
    token_file.write_text(content.replace("SLM_TOKEN_PLACEHOLDER", secret))
    token_file.chmod(0o600)
    root = host_root(tmp_path / "vm1")
    # The entry is `env NAME=VALUE ... SCRIPT`; this test's values replace the example's.
    entry = _enroll_entry(user_data)
    assert entry[0] == "env" and entry[-1] == ENROLL_SCRIPT
    names = {item.split("=", 1)[0] for item in entry[1:-1]}
    assert names == {
        "SIELUM_PACKAGE_URL",
        "SIELUM_PACKAGE_SHA256",
        "SIELUM_SERVER",
        "SIELUM_CA_FINGERPRINT",
        "SIELUM_TOKEN_FILE",
    }
    env = script_env(
        server,
        root / "etc" / "sielum",
        token_file,
        SIELUM_PACKAGE_URL=f"{package_server}/{built.deb.name}",
        SIELUM_PACKAGE_SHA256=sha256(built.deb),
        # The VM's root is a directory here: dpkg --root, the agent and cert dir in it.
        SIELUM_ROOT=str(root),
        SIELUM_AGENT=str(root / "usr" / "bin" / "sielum-agent"),
        SIELUM_HOSTNAME="vm1",
    )
    argv = ["env", *(f"{name}={env[name]}" for name in sorted(names)), str(script)]

    first, watch = watched_run(argv, secret, env=env, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.splitlines()[-1] == "sielum-enroll: OK: enrolled"
    assert installed_version(root) == f"ii {built.version}"
    assert (root / "lib" / "systemd" / "system" / "sielum-agent.service").is_file()
    assert not token_file.exists()
    assert [d["hostname"] for d in devices(server, token_id)] == ["vm1"]
    assert token_uses(server, token_id) == 1
    assert watch.saw("sielum-agent enroll")
    assert watch.leaks() == []

    second, watch = watched_run(argv, secret, env=env, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already enrolled" in second.stdout.splitlines()[-1]
    assert token_uses(server, token_id) == 1
    assert len(devices(server, token_id)) == 1
    assert leaks(secret, output=first.stdout + first.stderr + second.stdout + second.stderr) == []


FORGET_SCRIPT = "/var/lib/cloud/scripts/per-boot/sielum-forget-user-data"


def test_fail_cloud_init_keeps_the_token_on_disk(tmp_path: Path) -> None:
    """cloud-init keeps the raw user-data, token part included, in /var/lib/cloud/instance
    for good (and writes it again at every boot), so it reaches snapshots and images.

    The example says so instead of "never on the VM's disk", removes the text copies
    after enrolling and at every boot (keeping cloud-init's cache, without which the VM
    could be taken for a new instance), and asks for a single-use, short-lived token.
    """
    user_data = _load(USER_DATA)
    header = USER_DATA.read_text().split("\npackage_update:", 1)[0]
    assert "never on the VM's disk" not in header
    for copy in ("user-data.txt", "user-data.txt.i", "cloud-config.txt", "obj.pkl"):
        assert copy in header, copy
    # The token it recommends is single-use per VM and short-lived, in words the CLI takes.
    (recommended,) = [line for line in header.splitlines() if "sielum-admin tokens create" in line]
    argv = recommended.split("sielum-admin", 1)[1].split()
    args = admin_parser().parse_args(argv)
    assert (args.max_uses, args.expires_in) == (20, timedelta(hours=2)), args
    assert "single-use" in TOKEN_PART.read_text() and "short-lived" in TOKEN_PART.read_text()

    # The script that forgets the user-data: root's alone, run after the enroll entry
    # on first boot and by cloud-init at every boot after.
    forget = _written(user_data)[FORGET_SCRIPT]
    assert (forget["owner"], forget["permissions"]) == ("root:root", "0700")
    runcmd = [list(e) if isinstance(e, list) else [e] for e in user_data["runcmd"]]
    assert runcmd[-1] == [FORGET_SCRIPT]
    assert runcmd.index(_enroll_entry(user_data)) < len(runcmd) - 1

    # Run as cloud-init would, on a copy of its instance directory.
    secret = "slm_planted-token-secret"
    instance = tmp_path / "instance"
    (instance / "sem").mkdir(parents=True)
    (instance / "sem" / "config_runcmd").write_text("done")
    for name in ("user-data.txt", "user-data.txt.i", "cloud-config.txt", "obj.pkl"):
        (instance / name).write_text(f"write_files: [{{content: {secret}}}]")
    (instance / "vendor-data.txt").write_text("#cloud-config\n")
    script = tmp_path / "sielum-forget-user-data"
    script.write_text(forget["content"])
    script.chmod(0o700)
    result = subprocess.run(
        [str(script)],
        env={"SIELUM_CLOUD_INSTANCE_DIR": str(instance), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    left = sorted(str(p.relative_to(instance)) for p in instance.rglob("*"))
    assert left == ["obj.pkl", "sem", "sem/config_runcmd", "vendor-data.txt"]
    # A second boot's run, with the files already gone, is quiet too.
    again = subprocess.run(
        [str(script)],
        env={"SIELUM_CLOUD_INSTANCE_DIR": str(instance), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (again.returncode, again.stderr) == (0, "")
