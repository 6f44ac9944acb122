"""The README's first hour, run as written: its shell blocks against a real server.

Each block of "Your first hour" runs in bash as the README prints it, with only the
example server's name, ports and directories replaced by a test server's (the
substitutions are listed below, nothing else is changed). So a flag renamed, a
command that no longer exists or an output that moved makes this test fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .conftest import BIN, ca_fingerprint, free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = (
    "### 1. Start a server",
    "### 2. Make a token",
    "### 3. Enroll a machine",
    "### 4. Open the dashboard",
)


def guide_blocks() -> dict[str, list[str]]:
    """The shell blocks of each step of the README's first hour, by its heading."""
    text = (ROOT / "README.md").read_text()
    guide = text.split("## Your first hour", 1)[1].split("\n## ", 1)[0]
    found: dict[str, list[str]] = {}
    for heading in SECTIONS:
        body = guide.split(heading, 1)[1].split("\n### ", 1)[0]
        found[heading] = re.findall(r"^```sh\n(.*?)^```$", body, re.MULTILINE | re.DOTALL)
    return found


def test_the_guide_has_its_steps() -> None:
    blocks = guide_blocks()
    assert [len(blocks[h]) for h in SECTIONS] == [1, 1, 1, 1]


def test_the_first_hour_as_written(tmp_path: Path) -> None:
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
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
