"""What the three console scripts share, run as a user would: --version, --json, errors, pipes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from sielum.tokens import make_secret, new_token_id

from .conftest import (
    ServerProcess,
    admin,
    agent,
    agent_enroll,
    ca_fingerprint,
    create_token,
    enroll_args,
    free_port,
    init_data_dir,
    run,
    script,
    start_server,
    token_uses,
)

pytestmark = pytest.mark.e2e

TOOLS = ("sielum-server", "sielum-agent", "sielum-admin")
# A well-formed token (its checksum holds) that no server knows: for runs that never
# reach a server.
_A_TOKEN = make_secret(new_token_id()).reveal()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(init_data_dir(tmp_path_factory.mktemp("conventions")))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def cert_dir(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An enrolled agent's cert dir, shared by the tests that only read it."""
    directory = tmp_path_factory.mktemp("conventions-agent") / "agent"
    _, secret = create_token(server, "--label", "conventions", "--expires-in", "1h")
    result = agent_enroll(server, secret, directory)
    assert result.returncode == 0, result.stderr
    return directory


def _error(result: subprocess.CompletedProcess[str], prog: str) -> dict[str, object]:
    """The JSON error object on stdout, checked against the exit code and the stderr line."""
    document = json.loads(result.stdout)
    assert set(document) == {"error"}
    error = document["error"]
    assert set(error) == {"code", "message", "exit_code"}
    assert error["exit_code"] == result.returncode != 0
    assert result.stderr.splitlines() == [f"{prog}: {error['message']}"]
    return error  # type: ignore[no-any-return]


def test_version_on_every_cli() -> None:
    expected = metadata.version("sielum")
    for tool in TOOLS:
        result = run(tool, "--version")
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{tool} {expected}\n"


def test_agent_json_before_or_after_each_command(server: ServerProcess, tmp_path: Path) -> None:
    _, secret = create_token(server, "--label", "json-agent", "--expires-in", "1h")
    cert_dir = tmp_path / "agent"
    enrolled = agent_enroll(server, secret, cert_dir, "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    document = json.loads(enrolled.stdout)
    device_id = json.loads((cert_dir / "agent.json").read_text())["device_id"]
    assert document["deviceId"] == device_id
    assert document["apiEndpoint"] == f"127.0.0.1:{server.api_port}"
    assert document["previous"] is None

    before = agent("--json", "status", "--cert-dir", str(cert_dir))
    after = agent("status", "--cert-dir", str(cert_dir), "--json")
    assert before.returncode == after.returncode == 0, (before.stderr, after.stderr)
    assert json.loads(before.stdout)["deviceId"] == device_id
    assert json.loads(after.stdout)["deviceId"] == device_id

    not_due = agent("--json", "renew", "--if-due", "--cert-dir", str(cert_dir))
    assert not_due.returncode == 0, not_due.stderr
    assert json.loads(not_due.stdout)["renewed"] is False
    renewed = agent("renew", "--cert-dir", str(cert_dir), "--json")
    assert renewed.returncode == 0, renewed.stderr
    document = json.loads(renewed.stdout)
    assert document["renewed"] is True and document["deviceId"] == device_id
    assert int(document["serial"], 16) > 0

    # run logs instead of printing a result: --json is refused, as JSON.
    refused = agent("--json", "run", "--cert-dir", str(cert_dir))
    assert refused.returncode == 2
    assert "--log-format json" in str(_error(refused, "sielum-agent")["message"])


def test_admin_json_after_every_command(server: ServerProcess, tmp_path: Path) -> None:
    def ok(*args: str) -> dict[str, object]:
        result = admin(server, *args, "--json")
        assert result.returncode == 0, (args, result.stderr)
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    token = ok("tokens", "create", "--label", "json-admin", "--max-uses", "1")["token"]
    token_id = token["id"]  # type: ignore[index]
    assert ok("tokens", "get", token_id)["token"]["id"] == token_id  # type: ignore[index]
    assert token_id in [t["id"] for t in ok("tokens", "list")["tokens"]]  # type: ignore[attr-defined]
    assert ok("tokens", "revoke", token_id)["alreadyRevoked"] is False

    _, secret = create_token(server, "--label", "json-device", "--max-uses", "1")
    assert agent_enroll(server, secret, tmp_path / "device").returncode == 0
    device_id = json.loads((tmp_path / "device" / "agent.json").read_text())["device_id"]
    assert device_id in [d["id"] for d in ok("devices", "list")["devices"]]  # type: ignore[attr-defined]
    assert ok("devices", "get", device_id)["device"]["id"] == device_id  # type: ignore[index]
    assert ok("devices", "revoke", device_id)["alreadyRevoked"] is False

    created = ok("admins", "create", "json-erin", "--out", str(tmp_path / "erin"))
    assert created["admin"]["name"] == "json-erin"  # type: ignore[index]
    assert "json-erin" in [a["name"] for a in ok("admins", "list")["admins"]]  # type: ignore[attr-defined]
    assert ok("admins", "revoke", "json-erin")["admin"]["state"] == "ADMIN_STATE_REVOKED"  # type: ignore[index]

    events = ok("audit", "list", "--limit", "3")["events"]
    assert len(events) == 3  # type: ignore[arg-type]
    login = ok("dashboard", "login")
    assert str(login["url"]).startswith(f"https://127.0.0.1:{server.dashboard_port}/login#")

    # Before the command, the same document.
    before = admin(server, "--json", "tokens", "get", token_id)
    assert json.loads(before.stdout) == ok("tokens", "get", token_id)


def test_server_json_before_or_after_each_command(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    init = run("sielum-server", "init", "--data-dir", str(data_dir), "--json")
    assert init.returncode == 0, init.stderr
    document = json.loads(init.stdout)
    assert document["adminBundle"] == str(data_dir / "admin")

    fingerprint = run("sielum-server", "--json", "fingerprint", "--data-dir", str(data_dir))
    assert fingerprint.returncode == 0, fingerprint.stderr
    assert json.loads(fingerprint.stdout) == {"caFingerprint": document["caFingerprint"]}

    issued = run(
        "sielum-server", "--json", "issue-admin-cert", "--data-dir", str(data_dir),
        "--name", "frank", "--out", str(tmp_path / "frank"),
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    assert json.loads(issued.stdout)["registered"] is True
    assert (tmp_path / "frank" / "admin.pem").exists()

    renewed = run(
        "sielum-server", "renew-server-cert", "--data-dir", str(data_dir), "--san",
        "new.example.test", "--json",
    )  # fmt: skip
    assert renewed.returncode == 0, renewed.stderr
    document = json.loads(renewed.stdout)
    assert document["addedNames"] == ["new.example.test"]
    assert document["serial"] != document["previousSerial"]

    refused = run("sielum-server", "--json", "serve", "--data-dir", str(data_dir))
    assert refused.returncode == 2
    assert "--log-format json" in str(_error(refused, "sielum-server")["message"])


def test_one_error_shape_for_all_three(server: ServerProcess, tmp_path: Path) -> None:
    missing = admin(server, "tokens", "get", "aaaaaaaaaaaaaaaa", "--json")
    assert missing.returncode == 4
    assert _error(missing, "sielum-admin")["code"] == "not_found"

    empty = agent("--json", "status", "--cert-dir", str(tmp_path / "empty"))
    assert empty.returncode == 8
    assert _error(empty, "sielum-agent")["code"] == "not_enrolled"

    no_data = run("sielum-server", "fingerprint", "--data-dir", str(tmp_path / "none"), "--json")
    assert no_data.returncode == 2
    assert _error(no_data, "sielum-server")["code"] == "usage"

    # A bad argument, caught by argparse, is reported the same way.
    for tool, args in (
        ("sielum-server", ("--json", "init")),
        ("sielum-agent", ("status", "--json", "--timeout", "x")),
        ("sielum-admin", ("--json", "tokens", "list", "--limit", "0")),
    ):
        result = run(tool, *args)
        assert result.returncode == 2, (tool, result.stderr)
        error = _error(result, tool)
        assert error["code"] == "usage"
        assert str(error["message"]).endswith("--help)")

    # Without --json, stdout stays empty on failure.
    plain = admin(server, "tokens", "get", "aaaaaaaaaaaaaaaa")
    assert (plain.returncode, plain.stdout) == (4, "")


def _into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run with stdout a pipe nobody reads any more: what `| head -1` leaves behind."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [script(args[0]), *args[1:]],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


def test_a_closed_pipe_ends_quietly(server: ServerProcess, cert_dir: Path) -> None:
    for args in (
        ("sielum-admin", "--server", f"127.0.0.1:{server.api_port}",
         "--cert-dir", str(server.data_dir / "admin"), "tokens", "list"),
        ("sielum-agent", "status", "--cert-dir", str(cert_dir)),
        ("sielum-server", "fingerprint", "--data-dir", str(server.data_dir)),
    ):  # fmt: skip
        result = _into_closed_pipe(*args)
        assert (result.returncode, result.stderr) == (141, ""), args
    # argparse itself ignores a failed write of --help.
    assert _into_closed_pipe("sielum-admin", "--help").stderr == ""


def test_a_pipeline_into_head_keeps_the_first_line(server: ServerProcess) -> None:
    command = (
        f"set -o pipefail; {script('sielum-admin')} --server 127.0.0.1:{server.api_port} "
        f"--cert-dir {server.data_dir / 'admin'} tokens list | head -1"
    )
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.split() == ["ID", "LABEL", "STATE", "USES", "EXPIRES", "LAST", "USED"]
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr
    # 0 when the list fitted in the pipe before head left, 141 when it did not.
    assert result.returncode in (0, 141)


def _pointed_at(cert_dir: Path, tmp_path: Path, api_endpoint: str) -> Path:
    """A copy of an enrolled cert dir whose agent.json names another API endpoint."""
    copy = tmp_path / f"agent-{api_endpoint.rsplit(':', 1)[1]}"
    shutil.copytree(cert_dir, copy)
    state = json.loads((copy / "agent.json").read_text())
    state["api_endpoint"] = api_endpoint
    (copy / "agent.json").write_text(json.dumps(state))
    return copy


def test_an_unreachable_server_reads_the_same_from_every_command(
    server: ServerProcess, cert_dir: Path, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    expected = f"cannot reach 127.0.0.1:{port}: connection refused"
    down = _pointed_at(cert_dir, tmp_path, f"127.0.0.1:{port}")
    before = {p.name: p.read_bytes() for p in down.iterdir()}
    results = {
        "enroll": run(
            "sielum-agent", "enroll", "--server", f"https://127.0.0.1:{port}",
            "--ca-fingerprint", ca_fingerprint(server.data_dir),
            "--cert-dir", str(tmp_path / "new"), env={"SIELUM_ENROLLMENT_TOKEN": _A_TOKEN},
        ),
        "status": agent("status", "--cert-dir", str(down)),
        "renew": agent("renew", "--cert-dir", str(down)),
        "admin": run(
            "sielum-admin", "--server", f"127.0.0.1:{port}",
            "--cert-dir", str(server.data_dir / "admin"), "tokens", "list",
        ),
    }  # fmt: skip
    for name, result in results.items():
        prog = "sielum-admin" if name == "admin" else "sielum-agent"
        assert result.returncode == 5, (name, result.stderr)
        assert result.stderr.splitlines() == [f"{prog}: {expected}"], name
    # The failed renewal changed nothing.
    assert {p.name: p.read_bytes() for p in down.iterdir()} == before

    as_json = agent("status", "--cert-dir", str(down), "--json")
    assert _error(as_json, "sielum-agent") == {
        "code": "unreachable",
        "message": expected,
        "exit_code": 5,
    }


def test_an_agent_at_the_api_port_is_told_to_enroll_on_the_enroll_port(
    server: ServerProcess, tmp_path: Path
) -> None:
    token_id, secret = create_token(server, "--label", "wrong-port", "--max-uses", "1")
    args = enroll_args(server, tmp_path / "agent", "--json")
    args[args.index("--server") + 1] = f"https://127.0.0.1:{server.api_port}"
    result = run(*args, env={"SIELUM_ENROLLMENT_TOKEN": secret})
    assert result.returncode == 5, result.stderr
    error = _error(result, "sielum-agent")
    assert error["code"] == "wrong_port"
    assert error["message"] == (
        f"127.0.0.1:{server.api_port} is Sielum's API port (it asks for a client "
        "certificate); enroll on the enroll port instead, 8443 unless the server was "
        "started with another --enroll-addr"
    )
    assert token_uses(server, token_id) == 0


def test_admin_and_agent_calls_at_the_enroll_port_are_told_to_use_the_api_port(
    server: ServerProcess, cert_dir: Path, tmp_path: Path
) -> None:
    target = f"127.0.0.1:{server.enroll_port}"
    admin_result = run(
        "sielum-admin", "--server", target, "--cert-dir", str(server.data_dir / "admin"),
        "tokens", "list", "--json",
    )  # fmt: skip
    assert admin_result.returncode == 5, admin_result.stderr
    error = _error(admin_result, "sielum-admin")
    assert error["code"] == "wrong_port"
    assert error["message"] == (
        f"{target} is Sielum's enroll port (it asks for no client certificate); admin calls "
        "go to the API port, 8444 unless the server was started with another --api-addr"
    )

    misdirected = _pointed_at(cert_dir, tmp_path, target)
    for command in ("status", "renew"):
        result = agent(command, "--cert-dir", str(misdirected))
        assert result.returncode == 5, (command, result.stderr)
        assert result.stderr.splitlines() == [
            f"sielum-agent: {target} is Sielum's enroll port (it asks for no client "
            "certificate); device calls go to the API port, 8444 unless the server was "
            "started with another --api-addr"
        ]

    # At the right port a refusal is still the certificate's: a device is not an admin.
    device = run(
        "sielum-admin", "--server", f"127.0.0.1:{server.api_port}", "--cert-dir",
        str(_as_admin_bundle(cert_dir, tmp_path)), "tokens", "list", "--json",
    )  # fmt: skip
    assert device.returncode == 6, device.stderr
    assert _error(device, "sielum-admin")["code"] == "denied"


def _as_admin_bundle(cert_dir: Path, tmp_path: Path) -> Path:
    bundle = tmp_path / "device-as-admin"
    bundle.mkdir()
    shutil.copy(cert_dir / "device.pem", bundle / "admin.pem")
    shutil.copy(cert_dir / "device.key", bundle / "admin.key")
    shutil.copy(cert_dir / "ca.pem", bundle / "ca.pem")
    return bundle


def _as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    """A console script run as uid/gid 65534 with no other group: a monitoring user."""
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", script(args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "HOME": "/"},
    )


def _tree(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    return {
        p.name: (p.read_bytes(), p.stat().st_mode, p.stat().st_gid) for p in directory.iterdir()
    }


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_status_for_a_monitoring_user_and_a_read_only_cert_dir(server: ServerProcess) -> None:
    _, secret = create_token(server, "--label", "monitoring", "--expires-in", "1h")
    # Outside pytest's 0700 tmp dir, which uid 65534 could not enter.
    base = Path(tempfile.mkdtemp(prefix="sielum-monitoring-"))
    try:
        base.chmod(0o755)
        cert_dir = base / "agent"
        assert agent_enroll(server, secret, cert_dir).returncode == 0
        device_id = json.loads((cert_dir / "agent.json").read_text())["device_id"]
        # The README's recipe: the monitoring group may read the cert dir and the key.
        for path in (cert_dir, *cert_dir.iterdir()):
            os.chown(path, -1, 65534)
        cert_dir.chmod(0o750)
        (cert_dir / "device.key").chmod(0o640)

        def status_as_nobody() -> None:
            before = _tree(cert_dir)
            result = _as_nobody("sielum-agent", "status", "--cert-dir", str(cert_dir), "--json")
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["deviceId"] == device_id
            assert _tree(cert_dir) == before

        # The lock file is the agent's (0600): the monitoring user reads without it.
        status_as_nobody()
        renewed = agent("renew", "--cert-dir", str(cert_dir))
        assert renewed.returncode == 0, renewed.stderr
        key = (cert_dir / "device.key").stat()
        assert (key.st_mode & 0o777, key.st_gid) == (0o640, 65534)
        status_as_nobody()

        # Read-only, without a lock file: status makes none, even as root.
        (cert_dir / ".lock").unlink()
        subprocess.run(["chmod", "-R", "a-w", str(cert_dir)], check=True)
        status_as_nobody()
        before = _tree(cert_dir)
        as_root = agent("status", "--cert-dir", str(cert_dir))
        assert as_root.returncode == 0, as_root.stderr
        assert _tree(cert_dir) == before
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)
