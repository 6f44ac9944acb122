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
    enroll_port, api_port, metrics_port = free_port(), free_port(), free_port()
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
        assert sorted(steps) == ["1", "2", "3"], out_path.read_text()
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
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
