"""The agent's executable and .deb, built once per test run by scripts/build-agent.sh."""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_LOG = ROOT / "build" / "agent" / "build-agent.log"
# Written after a build that succeeded: the id of the test run that made it, and when
# the build started.
STAMP = ROOT / "build" / "agent" / "tests-built-by"


@dataclass(frozen=True)
class Artifacts:
    """What scripts/build-agent.sh left in dist/."""

    executable: Path
    deb: Path
    sums: Path
    version: str
    glibc: str
    built_after: float  # time.time() before the build of this run started


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return str(tomllib.load(file)["project"]["version"])


@pytest.fixture(scope="session")
def built() -> Iterator[Artifacts]:
    """Runs the build once per test run, even with two xdist workers.

    The workers of one run share PYTEST_XDIST_TESTRUNUID: the first to take the lock
    builds, the second finds the stamp of this run and uses what is in dist/.
    """
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID", f"single-{os.getpid()}")
    lock_path = ROOT / "build" / "agent" / ".tests.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = STAMP.read_text().split() if STAMP.exists() else []
        if stamp[:1] == [run_id]:
            built_after = float(stamp[1])
        else:
            STAMP.unlink(missing_ok=True)
            built_after = time.time() - 1  # file systems round times
            with BUILD_LOG.open("w") as log:
                result = subprocess.run(
                    ["bash", "scripts/build-agent.sh"],
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=600,
                    check=False,
                )
            if result.returncode != 0:
                pytest.fail(
                    f"scripts/build-agent.sh exited {result.returncode}:\n{BUILD_LOG.read_text()}"
                )
            STAMP.write_text(f"{run_id} {built_after}")
    version = project_version()
    yield Artifacts(
        executable=ROOT / "dist" / "sielum-agent",
        deb=ROOT / "dist" / f"sielum-agent_{version}_amd64.deb",
        sums=ROOT / "dist" / "SHA256SUMS",
        version=version,
        glibc=(ROOT / "build" / "agent" / "glibc-version").read_text().strip(),
        built_after=built_after,
    )
