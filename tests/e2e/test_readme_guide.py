"""The README's first hour, rollout and day 2, run as written against a real server.

Each block of "Your first hour" runs in bash as the README prints it, with only the
example server's name, ports and directories replaced by a test server's (the
substitutions are listed below, nothing else is changed). So a flag renamed, a
command that no longer exists or an output that moved makes this test fail. The
rollout block and the commands of "Day 2" run the same way, as far as one machine
can; what cannot run here (a build, Ansible) is checked for the names it uses.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from tests.package.conftest import Artifacts, built, project_version  # noqa: F401 - a fixture

from .conftest import BIN, ca_fingerprint, free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = (
    "### 1. Start a server",
    "### 2. Make a token",
    "### 3. Enroll a machine",
    "### 4. Open the dashboard",
    "### 5. Roll out to a fleet",
)
# The commands the Day 2 list names, in its order; each runs below.
DAY_2 = [
    "sielum-admin devices revoke ID [--reason key_compromise]",
    "sielum-agent run",
    "sielum-admin audit list --since 24h --actor admin/alice",
    "sielum-server renew-server-cert --data-dir /var/lib/sielum",
]


def guide_blocks() -> dict[str, list[str]]:
    """The shell blocks of each step of the README's first hour, by its heading."""
    text = (ROOT / "README.md").read_text()
    guide = text.split("## Your first hour", 1)[1].split("\n## ", 1)[0]
    found: dict[str, list[str]] = {}
    for heading in SECTIONS:
        body = guide.split(heading, 1)[1].split("\n### ", 1)[0]
        found[heading] = re.findall(r"^```sh\n(.*?)^```$", body, re.MULTILINE | re.DOTALL)
    return found


def section(title: str) -> str:
    return (ROOT / "README.md").read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def day_2_commands() -> list[str]:
    """The commands of the Day 2 list: its code spans that start with a program's name."""
    spans = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", section("Day 2"))]
    return [span for span in spans if span.startswith("sielum-")]


def test_the_guide_has_its_steps() -> None:
    blocks = guide_blocks()
    assert [len(blocks[h]) for h in SECTIONS] == [1, 1, 1, 1, 1]
    assert day_2_commands() == DAY_2


def _run(block: str, env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kw,  # type: ignore[arg-type]
    )


def _served_names(port: int, ca_pem: Path) -> list[str]:
    """The DNS names of the certificate the server serves on port now."""
    context = ssl.create_default_context(cafile=str(ca_pem))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    names = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    return [str(name) for name in names.value.get_values_for_type(x509.DNSName)]


def test_the_first_hour_rollout_and_day_2_as_written(tmp_path: Path) -> None:
    data, cert_dir = tmp_path / "var-lib-sielum", tmp_path / "etc-sielum"
    enroll, api = free_port(), free_port()
    metrics, dashboard, revocation = free_port(), free_port(), free_port()
    substitutions = [
        ("0.0.0.0:8443", f"127.0.0.1:{enroll}"),
        ("0.0.0.0:8444", f"127.0.0.1:{api}"),
        ("https://enroll.example.com:8443", f"https://127.0.0.1:{enroll}"),
        ("enroll.example.com:8444", f"127.0.0.1:{api}"),
        ("/var/lib/sielum", str(data)),
        ("/etc/sielum", str(cert_dir)),
    ]

    def as_run(block: str) -> str:
        for example, real in substitutions:
            block = block.replace(example, real)
        return block

    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    blocks = guide_blocks()

    # 1. init as written; serve as written, in the background, with the test's ports.
    init_line, serve_command = as_run(blocks[SECTIONS[0]][0]).split("\n", 1)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", init_line], env=env,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    serve_words = serve_command.replace("\\\n", " ").split("#", 1)[0]
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        ["bash", "-c", "exec " + serve_words
         + f" --metrics-addr 127.0.0.1:{metrics} --dashboard-addr 127.0.0.1:{dashboard}"
         + f" --revocation-addr 127.0.0.1:{revocation}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_ready(enroll, (data / "ca.pem").read_bytes(), process)

        # 2. The token, as written; the secret comes out of its output.
        token_block = as_run(blocks[SECTIONS[1]][0])
        made = subprocess.run(["bash", "-euo", "pipefail", "-c", token_block], env=env,
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert made.returncode == 0, made.stderr
        secret = re.search(r"slm_[A-Za-z0-9_]+", made.stdout)
        assert secret is not None, made.stdout

        # 3. Enroll as written: the secret typed at the prompt, the fingerprint the
        # server prints; systemd is not here, so its line is left out.
        fingerprint = ca_fingerprint(data)
        enroll_block = as_run(blocks[SECTIONS[2]][0]).replace("sha256:...", fingerprint)
        lines = [line for line in enroll_block.splitlines() if "systemctl" not in line]
        enrolled = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)],
                                  input=secret.group(0) + "\n", env=env, capture_output=True,
                                  text=True, timeout=120, check=False)  # fmt: skip
        assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr
        assert (cert_dir / "agent.json").exists()
        assert secret.group(0) not in enrolled.stdout + enrolled.stderr

        # 4. dashboard open, as written, with a browser that only records what it got.
        browser = tmp_path / "browser"
        record = tmp_path / "opened"
        browser.write_text(
            f"#!{sys.executable}\nimport sys\nopen({str(record)!r}, 'w').write(sys.argv[-1])\n"
        )
        browser.chmod(0o700)
        opened = subprocess.run(["bash", "-euo", "pipefail", "-c", as_run(blocks[SECTIONS[3]][0])],
                                env={**env, "BROWSER": str(browser)}, capture_output=True,
                                text=True, timeout=60, check=False)  # fmt: skip
        assert opened.returncode == 0, opened.stderr
        assert record.read_text().startswith("file://")

        # 5. Roll out to a fleet, line by line: `sielum-admin ...` is step 2's options.
        admin = f"sielum-admin --server 127.0.0.1:{api} --cert-dir {data}/admin"
        rollout = blocks[SECTIONS[4]][0].replace("sielum-admin ...", admin).splitlines()
        build, create, playbook, variables, revoke = rollout
        # The build takes minutes and is run by tests/package (and the install by
        # checksum below, on what it built): here, that the files this line promises
        # are the ones the script says it makes.
        assert build.startswith("bash scripts/build-agent.sh ")
        usage = _run("bash scripts/build-agent.sh --help", env, cwd=ROOT)
        assert usage.returncode == 0, usage.stderr
        promised = build.split("#", 1)[1].replace(",", " ").split()
        assert promised == [
            "dist/sielum-agent", "dist/sielum-agent_<version>_amd64.deb", "dist/SHA256SUMS"
        ]  # fmt: skip
        for name in promised:
            assert name.removeprefix("dist/") in usage.stdout, name
        made = _run(create, env)
        assert made.returncode == 0, made.stderr
        fleet = re.search(r"slm_[A-Za-z0-9_]+", made.stdout)
        assert fleet is not None, made.stdout
        fleet_id = fleet.group(0).split("_")[1]
        # No Ansible here: the playbook and the variables the line names exist, and the
        # package it names is this version's. The agent the playbook would run, with
        # the fleet's token, is step 3's command.
        assert playbook.startswith("ansible-playbook -i inventory examples/ansible/enroll.yml ")
        assert (ROOT / "examples/ansible/enroll.yml").is_file()
        roles = "".join(p.read_text() for p in (ROOT / "examples/ansible").rglob("*.yml"))
        for name in re.findall(r"(sielum_\w+)", variables):
            assert f"{name} " in roles or f"{name}:" in roles, name
        assert f"dist/sielum-agent_{project_version()}_amd64.deb" in variables
        fleet_dir = tmp_path / "fleet-machine"
        fleet_lines = [line.replace(str(cert_dir), str(fleet_dir)) for line in lines]
        joined = _run("\n".join(fleet_lines), env, input=fleet.group(0) + "\n")
        assert joined.returncode == 0, joined.stdout + joined.stderr
        fleet_device = re.search(r"^device:\s+(\S+)$", joined.stdout, re.MULTILINE)
        assert fleet_device is not None, joined.stdout
        revoked = _run(revoke.replace("TOKEN_ID", fleet_id), env)
        assert revoked.returncode == 0, revoked.stderr
        assert f"revoked token {fleet_id}" in revoked.stdout, revoked.stdout
        # "devices already enrolled keep working":
        still = _run(f"sielum-agent status --cert-dir {fleet_dir}", env)
        assert still.returncode == 0, still.stderr

        # Day 2, each command as the list names it, with step 2's admin options.
        day_2 = [command.replace("sielum-admin", admin) for command in map(as_run, DAY_2)]
        revoke_device, run_agent, audit, renew = day_2
        # Revoke the first machine: `status` (step 3) and `run` are refused from the next call.
        device = re.search(r"^device:\s+(\S+)$", enrolled.stdout, re.MULTILINE)
        assert device is not None, enrolled.stdout
        done = _run(revoke_device.replace(" ID [", f" {device.group(1)} [").replace("[", "")
                    .replace("]", ""), env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"revoked device {device.group(1)}" in done.stdout, done.stdout
        refused = _run(f"sielum-agent status --cert-dir {cert_dir}", env)
        assert refused.returncode == 9, refused.stderr
        stopped = _run(f"{run_agent} --cert-dir {cert_dir}", env)
        assert stopped.returncode == 9, stopped.stderr
        assert "revoked" in stopped.stderr
        # The fleet machine's agent runs until it is told to stop.
        agent = subprocess.Popen(
            ["bash", "-c", f"exec {run_agent} --cert-dir {fleet_dir}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            assert agent.stdout is not None
            said = agent.stdout.readline()  # it says it is up, having heard the server
            assert agent.poll() is None, said + agent.stdout.read()
        finally:
            agent.send_signal(signal.SIGTERM)
            code = agent.wait(timeout=30)
        assert code == 0, said
        # The audit trail: as written (no admin alice here), then for this server's admin.
        nobody = _run(audit, env)
        assert nobody.returncode == 0, nobody.stderr
        assert "device.revoke" not in nobody.stdout
        trail = _run(audit.replace("admin/alice", "admin/admin"), env)
        assert trail.returncode == 0, trail.stderr
        assert re.search(rf"device\.revoke\s+device/{device.group(1)}", trail.stdout), trail.stdout
        # The server's certificate renewed with a new name, picked up without a restart.
        assert "enroll2.example.com" not in _served_names(enroll, data / "ca.pem")
        renewed = _run(f"{renew} --san enroll2.example.com", env)
        assert renewed.returncode == 0, renewed.stderr
        deadline = time.monotonic() + 30
        while "enroll2.example.com" not in _served_names(enroll, data / "ca.pem"):
            assert time.monotonic() < deadline, "the renewed certificate was not served"
            time.sleep(0.5)
        # Watch: the metrics the Prometheus examples scrape.
        assert (ROOT / "examples/prometheus").is_dir()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as page:
            assert "sielum_" in page.read().decode()
        # Backups name no command: the data directory and the database are files to copy.
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.mark.package
def test_the_agent_installs_by_checksum_as_written(built: Artifacts, tmp_path: Path) -> None:  # noqa: F811
    """The install block of "Installing the agent without Python", on the endpoint's copy
    of what scripts/build-agent.sh built: the .deb and SHA256SUMS, nothing else."""
    block = re.findall(r"^```sh\n(.*?)^```$", section("Installing the agent without Python"),
                       re.MULTILINE | re.DOTALL)  # fmt: skip
    check, install = block[0].splitlines()
    endpoint = tmp_path / "endpoint"
    endpoint.mkdir()
    for artifact in (built.deb, built.sums):
        shutil.copy(artifact, endpoint)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    command, said = (part.strip() for part in check.split("#", 1))
    verified = _run(command, env, cwd=endpoint)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.strip() == said  # "sielum-agent_<version>_amd64.deb: OK"
    # A package changed on the way is refused.
    with (endpoint / built.deb.name).open("ab") as deb:
        deb.write(b"\0")
    assert _run(command, env, cwd=endpoint).returncode != 0
    # dpkg -i would install into this machine (tests/package/test_deb.py installs the
    # .deb into a root of its own); its alternative, with /usr/local/bin under tmp_path.
    dpkg, alternative = (part.strip() for part in install.split("# or:", 1))
    assert dpkg == f"dpkg -i {built.deb.name}"
    shutil.copy(built.executable, endpoint)
    bin_dir = tmp_path / "usr" / "local" / "bin"
    bin_dir.mkdir(parents=True)
    placed = _run(alternative.replace("/usr/local/bin/", f"{bin_dir}/"), env, cwd=endpoint)
    assert placed.returncode == 0, placed.stderr
    version = _run(f"{bin_dir}/sielum-agent --version", env)
    assert version.returncode == 0, version.stderr
    assert built.version in version.stdout
