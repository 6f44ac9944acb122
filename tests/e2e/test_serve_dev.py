"""scripts/serve-dev.sh: the commands it prints work as printed, run one after the other."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from .conftest import free_port, wait_ready

REPO = Path(__file__).resolve().parents[2]


def _printed_steps(out: str) -> dict[str, list[str]]:
    """The command lines under each numbered step of the "Next" list, by step number."""
    steps: dict[str, list[str]] = {}
    current = ""
    for line in out.splitlines():
        step = re.match(r"^  (\d)\. ", line)
        if step:
            current = step.group(1)
            steps[current] = []
        elif current and line.startswith(" " * 7) and line.strip():
            steps[current].append(line.strip())
        elif current and not line.strip():
            current = ""
    return steps


def _bash(lines: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    # A clean PATH: the printed lines must not rely on the virtualenv being active.
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    env.pop("SIELUM_ENROLLMENT_TOKEN", None)
    env.pop("SIELUM_ADMIN_CERT_DIR", None)
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(lines)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd="/",
    )


def test_the_printed_commands_work_as_printed(tmp_path: Path) -> None:
    data_dir = tmp_path / "sielum data"  # a space, so quoting is tested too
    enroll_port, api_port = free_port(), free_port()
    metrics_port, dashboard_port = free_port(), free_port()
    out_path = tmp_path / "serve-dev.out"
    with out_path.open("w") as out:
        process = subprocess.Popen(
            ["bash", str(REPO / "scripts" / "serve-dev.sh"), "--workers", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "SIELUM_SKIP_INSTALL": "1",
                "SIELUM_DATA_DIR": str(data_dir),
                "SIELUM_ENROLL_ADDR": f"127.0.0.1:{enroll_port}",
                "SIELUM_API_ADDR": f"127.0.0.1:{api_port}",
                "SIELUM_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
                "SIELUM_DASHBOARD_ADDR": f"127.0.0.1:{dashboard_port}",
            },
            text=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not (data_dir / "ca.pem").exists() and time.monotonic() < deadline:
            assert process.poll() is None, out_path.read_text()
            time.sleep(0.1)
        wait_ready(enroll_port, (data_dir / "ca.pem").read_bytes(), process)
        steps = _printed_steps(out_path.read_text())
        assert sorted(steps) == ["1", "2", "3", "4"], out_path.read_text()
        assert all(re.match(r"^(read|'?/)", line) for lines in steps.values() for line in lines)

        created = _bash(steps["1"])
        assert created.returncode == 0, created.stderr
        secret = re.search(r"^  (slm_\S+)$", created.stdout, re.MULTILINE).group(1)  # type: ignore[union-attr]
        # The endpoint command it prints names this enroll port too.
        assert f"--server https://127.0.0.1:{enroll_port} " in created.stdout

        enrolled = _bash(steps["2"], stdin=secret + "\n")
        assert enrolled.returncode == 0, enrolled.stderr
        device_id = re.search(r"^enrolled as device (\S+)$", enrolled.stdout, re.MULTILINE)
        assert device_id is not None, enrolled.stdout
        assert re.search(rf"^device:\s+{device_id.group(1)}$", enrolled.stdout, re.MULTILINE)
        assert secret not in enrolled.stdout + enrolled.stderr

        listed = _bash(steps["3"])
        assert listed.returncode == 0, listed.stderr
        assert device_id.group(1) in listed.stdout

        # The metrics address it prints answers, and counted that enrollment.
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        assert metrics_url in out_path.read_text()
        with urllib.request.urlopen(metrics_url, timeout=30) as reply:
            assert 'sielum_enrollments_total{result="ok"} 1.0' in reply.read().decode()
        link = _bash(steps["4"])
        assert link.returncode == 0, link.stderr
        assert re.fullmatch(
            rf"https://127\.0\.0\.1:{dashboard_port}/login#[A-Za-z0-9_-]{{43}}\n", link.stdout
        ), link.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


_FAKE_BOOTSTRAP = """#!/usr/bin/env bash
# Stands in for the real install: counts its runs, installs a fake .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
echo run >> bootstrap-runs
mkdir -p .venv/bin
printf '#!/bin/sh\\ncat "%s/.venv/version"\\n' "$PWD" > .venv/bin/python
printf '#!/bin/sh\\n[ "$1" = fingerprint ] && echo sha256:00 || true\\n' > .venv/bin/sielum-server
chmod +x .venv/bin/python .venv/bin/sielum-server
[ -f .venv/version ] || echo 0.1.0 > .venv/version
"""


def test_it_installs_only_when_something_changed(tmp_path: Path) -> None:
    """The script itself, in a copy of the repository whose install step is a stand-in."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "serve-dev.sh").write_text((REPO / "scripts" / "serve-dev.sh").read_text())
    (repo / "scripts" / "bootstrap.sh").write_text(_FAKE_BOOTSTRAP)
    (repo / "pyproject.toml").write_text('[project]\nname = "sielum"\n')
    (repo / "sielum-data").mkdir()
    (repo / "sielum-data" / "ca.pem").write_text("")  # no init: serve-dev.sh makes none

    def serve_dev(**env: str) -> str:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("SIELUM_")}
        result = subprocess.run(
            ["bash", str(repo / "scripts" / "serve-dev.sh")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**environment, **env},
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def installs() -> int:
        return len((repo / "bootstrap-runs").read_text().splitlines())

    serve_dev()
    assert installs() == 1  # the first run installs
    again = serve_dev()
    assert installs() == 1  # the second finds nothing changed
    assert "==> sielum is installed in .venv and nothing changed since" in again
    (repo / "pyproject.toml").write_text('[project]\nname = "sielum"\nversion = "2"\n')
    serve_dev()
    assert installs() == 2  # pyproject.toml changed
    serve_dev()
    assert installs() == 2
    (repo / ".venv" / "version").write_text("0.2.0\n")
    serve_dev()
    assert installs() == 3  # another version is installed (a pip install by hand)
    serve_dev(SIELUM_INSTALL="1")
    assert installs() == 4  # asked for
    serve_dev(SIELUM_SKIP_INSTALL="1")
    assert installs() == 4
