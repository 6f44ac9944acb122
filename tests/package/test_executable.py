"""dist/sielum-agent: one file that runs with no Python around it and carries no server code."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    ServerProcess,
    admin,
    ca_fingerprint,
    create_token,
    init_data_dir,
    server_factory,
    start_server,
)

from .conftest import ROOT, Artifacts

__all__ = ["server_factory"]  # the fixture, used by name below
pytestmark = pytest.mark.package

# Never in the executable: the server's dependencies, and the server's code.
SERVER_ONLY = (
    "peewee",
    "playhouse",
    "psycopg2",
    "aiohttp",
    "prometheus_client",
    "grpc_health",
    "grpc_reflection",
    "sielum.server",
    "sielum.store",
    "sielum.dashboard",
    "sielum.rpc",
    "sielum.core",
    "sielum.admin",
    "sielum.identities",
    "sielum.devices",
    "sielum.directory",
    "sielum.verify",
    "sielum.ca.authority",
    "sielum.cli.server",
    "sielum.cli.admin",
)
MAX_BYTES = 40_000_000
DEADLINE = 120.0  # seconds for the run test's waits: far beyond need, for a loaded machine


def bare(
    executable: Path, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The executable as `env -i` would start it: no PATH, no venv, no PYTHONPATH."""
    return subprocess.run(
        [str(executable), *args],
        cwd=cwd,
        env=env or {},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def archive_names(executable: Path) -> list[str]:
    """Every entry of the PyInstaller archive, the embedded module archive's included."""
    result = subprocess.run(
        [
            str(ROOT / ".venv-build" / "bin" / "python"),
            "-m",
            "PyInstaller.utils.cliutils.archive_viewer",
            "--brief",
            "--recursive",
            str(executable),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line.strip() for line in result.stdout.splitlines() if line.startswith(" ")]


def agent_imports() -> set[str]:
    """The Sielum modules `import sielum.cli.agent` loads, in the project's venv."""
    code = (
        "import sys, sielum.cli.agent; "
        "print('\\n'.join(m for m in sys.modules if m.split('.')[0] == 'sielum'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def test_one_executable_file_under_40_mb(built: Artifacts) -> None:
    assert built.executable.is_file()
    assert built.executable.stat().st_mode & 0o777 == 0o755
    assert built.executable.read_bytes()[:4] == b"\x7fELF"
    assert built.executable.stat().st_size <= MAX_BYTES


def test_version_and_help_without_python(built: Artifacts, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    version = bare(built.executable, "--version", cwd=empty)
    assert (version.returncode, version.stdout, version.stderr) == (
        0,
        f"sielum-agent {built.version}\n",
        "",
    )
    usage = bare(built.executable, "--help", cwd=empty)
    assert usage.returncode == 0, usage.stderr
    for command in ("enroll", "status", "renew", "run", "unenroll"):
        assert command in usage.stdout
    # onefile unpacks into a temporary directory and removes it at exit: nothing is left
    # in the working directory.
    assert list(empty.iterdir()) == []


def test_the_archive_holds_no_server_module(built: Artifacts) -> None:
    names = archive_names(built.executable)
    assert "sielum.cli.agent" in names and "grpc" in names and "cryptography" in names
    for name in names:
        module = name.removesuffix(".pyc").replace("/", ".")
        for banned in SERVER_ONLY:
            assert not (module == banned or module.startswith(f"{banned}.")), name
    # Of Sielum, exactly what the agent imports; of its metadata, the version alone
    # (no RECORD or direct_url.json with the build machine's paths).
    ours = {n for n in names if n == "sielum" or n.startswith("sielum.")}
    assert ours == agent_imports()
    metadata = [n for n in names if n.startswith("sielum-")]
    assert metadata == [f"sielum-{built.version}.dist-info/METADATA"]


def test_the_agent_imports_no_server_module() -> None:
    """In the venv too: packaging/sielum-agent.spec's AGENT_MODULES is this set."""
    imported = agent_imports()
    for banned in SERVER_ONLY:
        assert not {m for m in imported if m == banned or m.startswith(f"{banned}.")}
    spec = (ROOT / "packaging" / "sielum-agent.spec").read_text()
    block = spec.split("AGENT_MODULES = {", 1)[1].split("}", 1)[0]
    assert set(re.findall(r'"([a-z0-9_.]+)"', block)) == imported


@pytest.fixture
def server(tmp_path: Path, server_factory: list[ServerProcess]) -> ServerProcess:
    started = start_server(init_data_dir(tmp_path))
    server_factory.append(started)
    return started


def test_enroll_status_renew_and_run_against_a_real_server(
    built: Artifacts, server: ServerProcess, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    cert_dir = tmp_path / "sielum"
    _, secret = create_token(server)
    enrolled = bare(
        built.executable,
        "enroll",
        "--server",
        f"https://127.0.0.1:{server.enroll_port}",
        "--ca-fingerprint",
        ca_fingerprint(server.data_dir),
        "--cert-dir",
        str(cert_dir),
        "--json",
        cwd=empty,
        env={"SIELUM_ENROLLMENT_TOKEN": secret},
    )
    assert enrolled.returncode == 0, enrolled.stderr
    device_id = json.loads((cert_dir / "agent.json").read_text())["device_id"]
    assert json.loads(enrolled.stdout)["deviceId"] == device_id
    assert {p.name for p in cert_dir.iterdir()} >= {"device.key", "device.pem", "ca.pem"}
    assert (cert_dir / "device.key").stat().st_mode & 0o777 == 0o600

    status = bare(built.executable, "status", "--cert-dir", str(cert_dir), "--json", cwd=empty)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert (report["deviceId"], report["server"]) == (device_id, f"127.0.0.1:{server.api_port}")

    before = (cert_dir / "device.pem").read_bytes()
    renewed = bare(built.executable, "renew", "--cert-dir", str(cert_dir), "--json", cwd=empty)
    assert renewed.returncode == 0, renewed.stderr
    assert json.loads(renewed.stdout)["renewed"] is True
    assert (cert_dir / "device.pem").read_bytes() != before

    log_path = tmp_path / "run.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(built.executable), "run", "--cert-dir", str(cert_dir), "--log-format", "json"],
            cwd=empty,
            env={},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + DEADLINE
        while '"connected"' not in log_path.read_text():
            assert process.poll() is None, (
                f"run exited {process.returncode}\n{log_path.read_text()}"
            )
            assert time.monotonic() < deadline, f"never connected\n{log_path.read_text()}"
            time.sleep(0.1)
        time.sleep(2)  # a few seconds of service, waiting for its next heartbeat
        assert process.poll() is None, log_path.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEADLINE) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    events = [json.loads(line)["event"] for line in log_path.read_text().splitlines()]
    assert events[0] == "agent_started" and "connected" in events
    assert events[-1] == "agent_stopped"

    # The exit code the unit's RestartPreventExitStatus=9 relies on comes through the
    # onefile bootloader (a parent process) unchanged.
    assert admin(server, "devices", "revoke", device_id).returncode == 0
    refused = bare(built.executable, "run", "--cert-dir", str(cert_dir), cwd=empty)
    assert refused.returncode == 9, refused.stderr
    assert "device_refused" in refused.stderr
    # Decommissioning a device revoked already: ended, nothing to do.
    ended = bare(built.executable, "unenroll", "--cert-dir", str(cert_dir), "--json", cwd=empty)
    assert ended.returncode == 0, ended.stderr
    assert json.loads(ended.stdout) == {"deviceId": device_id, "alreadyRevoked": True}


def test_exit_codes_and_errors_come_through(built: Artifacts, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    usage = bare(built.executable, "enroll", cwd=empty)
    assert usage.returncode == 2
    assert usage.stderr.startswith("sielum-agent: ")
    not_enrolled = bare(built.executable, "status", "--cert-dir", str(tmp_path / "none"), cwd=empty)
    assert not_enrolled.returncode == 8
    assert "holds no enrollment" in not_enrolled.stderr


CHROOT = shutil.which("chroot") or shutil.which("chroot", path="/usr/sbin:/sbin")
# What the system must provide (tests/package/test_deb.py checks that it is all): glibc's
# libraries and the dynamic loader, and zlib for the bootloader.
SYSTEM_LIBS = (
    "libc.so.6",
    "libdl.so.2",
    "libpthread.so.0",
    "libm.so.6",
    "librt.so.1",
    "libutil.so.1",
    "libz.so.1",
)


@pytest.mark.skipif(os.geteuid() != 0 or CHROOT is None, reason="chroot needs root")
def test_enrolls_from_a_root_with_glibc_and_zlib_alone(
    built: Artifacts, server: ServerProcess, tmp_path: Path
) -> None:
    """No Python, no OpenSSL, no /proc, no /etc: a root with the executable, glibc, zlib
    and /dev/urandom."""
    assert CHROOT is not None
    root = tmp_path / "root"
    libs = root / "lib" / "x86_64-linux-gnu"
    libs.mkdir(parents=True)
    for name in SYSTEM_LIBS:
        shutil.copy(Path("/lib/x86_64-linux-gnu") / name, libs / name)  # follows links
    (root / "lib64").mkdir()
    shutil.copy("/lib64/ld-linux-x86-64.so.2", root / "lib64")
    # gRPC seeds its random generators from /dev/urandom, which every system has.
    (root / "dev").mkdir()
    try:
        os.mknod(root / "dev" / "urandom", 0o666 | stat.S_IFCHR, os.makedev(1, 9))
    except PermissionError:
        pytest.skip("cannot make /dev/urandom in the scratch root here (mknod refused)")
    (root / "tmp").mkdir(mode=0o1777)
    (root / "tmp").chmod(0o1777)
    shutil.copy(built.executable, root / "sielum-agent")
    assert not list(root.rglob("*python*")) and not list(root.rglob("libssl*"))

    def chrooted(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CHROOT, str(root), "/sielum-agent", *args],
            env=env or {},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    version = chrooted("--version")
    assert (version.returncode, version.stdout) == (0, f"sielum-agent {built.version}\n")
    _, secret = create_token(server)
    enrolled = chrooted(
        "enroll",
        "--server",
        f"https://127.0.0.1:{server.enroll_port}",
        "--ca-fingerprint",
        ca_fingerprint(server.data_dir),
        "--cert-dir",
        "/sielum",
        env={"SIELUM_ENROLLMENT_TOKEN": secret},
    )
    assert enrolled.returncode == 0, enrolled.stderr
    status = chrooted("status", "--cert-dir", "/sielum", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["deviceId"]
    # onefile cleaned up after itself each time.
    assert list((root / "tmp").iterdir()) == []
