"""What the three console scripts share, run as a user would: --version, --json, errors, pipes."""

from __future__ import annotations

import json
import os
import subprocess
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
    create_token,
    init_data_dir,
    run,
    script,
    start_server,
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
