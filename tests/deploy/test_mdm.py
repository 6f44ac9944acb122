"""examples/mdm/enroll.sh run for real: enrolls once, then does nothing; failures map to codes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sielum.tokens import make_secret
from tests.deploy.conftest import (
    EXAMPLES,
    Artifacts,
    create_token,
    devices,
    enroll_url,
    fingerprint,
    host_root,
    installed_version,
    leaks,
    sha256,
    token_uses,
    watched_run,
)
from tests.e2e.conftest import free_port
from tests.robust.conftest import Serve, make_data_dir

pytestmark = pytest.mark.e2e

SCRIPT = EXAMPLES / "mdm" / "enroll.sh"
BIN = Path(sys.executable).parent


def script_env(serve: Serve, cert_dir: Path, token_file: Path, **extra: str) -> dict[str, str]:
    """The script's settings for a test machine; the agent is this checkout's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIELUM_")}
    return {
        **env,
        "SIELUM_SERVER": enroll_url(serve),
        "SIELUM_CA_FINGERPRINT": fingerprint(serve),
        "SIELUM_AGENT": str(BIN / "sielum-agent"),
        "SIELUM_CERT_DIR": str(cert_dir),
        "SIELUM_TOKEN_FILE": str(token_file),
        "SIELUM_HOSTNAME": cert_dir.parent.name,
        **extra,
    }


def write_token(path: Path, secret: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


def test_mdm_script_enrolls_once(tmp_path: Path, server: Serve) -> None:
    token_id, secret = create_token(server, max_uses=5)
    cert_dir = tmp_path / "mac1" / "sielum"
    token_file = write_token(tmp_path / "mac1" / "enroll.token", secret)
    env = script_env(server, cert_dir, token_file)

    first, watch = watched_run(["/bin/sh", str(SCRIPT)], secret, env=env, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.splitlines()[-1] == "sielum-enroll: OK: enrolled"
    # No running systemd here: the script says so and does not fail.
    assert "systemd is not running here: sielum-agent.service not started" in first.stdout
    assert (cert_dir / "agent.json").is_file()
    assert not token_file.exists()  # spent: the script deletes it
    assert [d["hostname"] for d in devices(server, token_id)] == ["mac1"]
    assert token_uses(server, token_id) == 1
    assert watch.saw("sielum-agent enroll")
    assert watch.leaks() == []

    # An MDM runs it again (a policy "at every check-in", a retry): nothing happens.
    write_token(token_file, secret)
    second, watch = watched_run(["/bin/sh", str(SCRIPT)], secret, env=env, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.splitlines()[-1] == (
        f"sielum-enroll: OK: already enrolled ({cert_dir}/agent.json), nothing to do"
    )
    assert not watch.saw("sielum-agent enroll")
    assert not token_file.exists()
    assert token_uses(server, token_id) == 1
    assert len(devices(server, token_id)) == 1

    # The token in the environment instead of a file (a Workspace ONE variable).
    other = tmp_path / "mac2" / "sielum"
    env = script_env(server, other, tmp_path / "mac2" / "absent", SIELUM_ENROLLMENT_TOKEN=secret)
    third, watch = watched_run(["/bin/sh", str(SCRIPT)], secret, env=env, timeout=120)
    assert third.returncode == 0, third.stdout + third.stderr
    assert watch.leaks("argv") == []
    assert token_uses(server, token_id) == 2
    assert sorted(d["hostname"] for d in devices(server, token_id)) == ["mac1", "mac2"]

    output = "".join(r.stdout + r.stderr for r in (first, second, third))
    assert leaks(secret, output=output) == []


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """One server for the failure cases: each makes its own token."""
    serve = Serve(make_data_dir(tmp_path_factory.mktemp("mdm-server")))
    serve.start()
    yield serve
    serve.kill()


# (case, code, the end of the last line)
FAILURES = [
    (
        "wrong-token",
        4,
        "token refused (invalid, expired, exhausted or revoked); a new token is needed",
    ),
    ("mistyped-token", 2, "bad settings or a mistyped token; fix the script's settings"),
    ("pin-mismatch", 3, "CA fingerprint mismatch: not the pinned server; the token was not sent"),
    ("unreachable", 5, "server unreachable; retry later"),
    ("no-agent", 10, "sielum-agent is not installed at {agent}"),
    ("no-token", 11, "no token: {token_file} is missing and SIELUM_ENROLLMENT_TOKEN is unset"),
]


@pytest.mark.parametrize(("case", "code", "reason"), FAILURES, ids=[f[0] for f in FAILURES])
def test_mdm_script_failure_codes(
    tmp_path: Path, shared_server: Serve, case: str, code: int, reason: str
) -> None:
    server = shared_server
    token_id, secret = create_token(server, max_uses=5)
    cert_dir = tmp_path / "mac" / "sielum"
    token_file = tmp_path / "mac" / "enroll.token"
    given = {
        "wrong-token": make_secret(token_id).reveal(),  # well formed, wrong secret
        "mistyped-token": secret[:-1] + ("a" if secret[-1] != "a" else "b"),
    }.get(case, secret)
    if case != "no-token":
        write_token(token_file, given)
    extra = {
        "pin-mismatch": {"SIELUM_CA_FINGERPRINT": "sha256:" + "ab" * 32},
        "unreachable": {"SIELUM_SERVER": f"https://127.0.0.1:{free_port()}"},
        "no-agent": {"SIELUM_AGENT": str(tmp_path / "missing" / "sielum-agent")},
    }.get(case, {})
    env = script_env(server, cert_dir, token_file, **extra)

    result = subprocess.run(
        ["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == code, result.stdout + result.stderr
    last = result.stdout.splitlines()[-1]
    expected = reason.format(agent=env["SIELUM_AGENT"], token_file=token_file)
    assert last == f"sielum-enroll: FAILED ({code}): {expected}"
    assert not (cert_dir / "agent.json").exists()
    assert token_uses(server, token_id) == 0
    # A failed run keeps the token file, so the MDM's retry can use it.
    assert token_file.exists() == (case != "no-token")
    assert leaks(secret, output=result.stdout + result.stderr) == []
    assert leaks(given, output=result.stdout + result.stderr) == []


@pytest.mark.parametrize("kind", ["deb", "file"])
def test_mdm_script_installs_the_agent_by_checksum(
    tmp_path: Path, server: Serve, built: Artifacts, package_server: str, kind: str
) -> None:
    """SIELUM_PACKAGE_URL and _SHA256: downloaded, checked, installed, then enrolled."""
    token_id, secret = create_token(server, max_uses=5)
    root = host_root(tmp_path / "host")
    package = built.deb if kind == "deb" else built.executable
    agent = root / ("usr/bin" if kind == "deb" else "usr/local/bin") / "sielum-agent"
    env = script_env(
        server,
        root / "etc" / "sielum",
        write_token(root / "etc" / "enroll.token", secret),
        SIELUM_AGENT=str(agent),
        SIELUM_PACKAGE_URL=f"{package_server}/{package.name}",
        SIELUM_PACKAGE_SHA256=sha256(package),
        SIELUM_ROOT=str(root),
        SIELUM_HOSTNAME="host",
    )
    first, watch = watched_run(["/bin/sh", str(SCRIPT)], secret, env=env, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert (
        f"sielum-enroll: installed sielum-agent from {package_server}/{package.name} "
        "(SHA-256 checked)" in lines
    )
    assert lines[-1] == "sielum-enroll: OK: enrolled"
    assert agent.read_bytes() == built.executable.read_bytes()
    assert installed_version(root) == (f"ii {built.version}" if kind == "deb" else "")
    assert [d["hostname"] for d in devices(server, token_id)] == ["host"]
    assert watch.leaks() == []

    # Again (every check-in): the agent is there, so nothing is downloaded.
    second = subprocess.run(
        ["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert "installed sielum-agent" not in second.stdout
    assert "already enrolled" in second.stdout.splitlines()[-1]
    assert token_uses(server, token_id) == 1


def test_mdm_script_refuses_a_package_with_the_wrong_checksum(
    tmp_path: Path, shared_server: Serve, built: Artifacts, package_server: str
) -> None:
    token_id, secret = create_token(shared_server, max_uses=5)
    root = host_root(tmp_path / "host")
    before = sorted(root.rglob("*"))
    wrong = "0" * 64
    url = f"{package_server}/{built.deb.name}"
    env = script_env(
        shared_server,
        root / "etc" / "sielum",
        write_token(tmp_path / "enroll.token", secret),
        SIELUM_AGENT=str(root / "usr" / "bin" / "sielum-agent"),
        SIELUM_PACKAGE_URL=url,
        SIELUM_PACKAGE_SHA256=wrong,
        SIELUM_ROOT=str(root),
    )
    result = subprocess.run(
        ["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 13, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == (
        f"sielum-enroll: FAILED (13): {url} has SHA-256 {sha256(built.deb)}, "
        f"not {wrong}; nothing installed"
    )
    assert sorted(root.rglob("*")) == before
    assert installed_version(root) == ""
    assert token_uses(shared_server, token_id) == 0
    # Not a checksum at all: a settings error, before any download.
    env["SIELUM_PACKAGE_SHA256"] = "sha256:" + sha256(built.deb)
    result = subprocess.run(
        ["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "SIELUM_PACKAGE_SHA256 must be the package's SHA-256, 64 hex digits" in result.stdout
