"""The build's inputs (pins, the script's help) and what it must leave alone (src/)."""

from __future__ import annotations

import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement

from .conftest import ROOT, Artifacts

REQUIREMENTS = ROOT / "scripts" / "agent-build-requirements.txt"


def pins() -> dict[str, str]:
    found = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{REQUIREMENTS.name}: {line!r} is not an exact pin (NAME==VERSION)"
            found[name.lower().replace("_", "-")] = version
    return found


def test_every_build_input_is_pinned_and_the_agent_s_within_pyproject() -> None:
    pinned = pins()
    assert {"pyinstaller", "pyinstaller-hooks-contrib"} <= set(pinned)
    with (ROOT / "pyproject.toml").open("rb") as file:
        dependencies = [Requirement(r) for r in tomllib.load(file)["project"]["dependencies"]]
    agent = {"grpcio", "protobuf", "cryptography"}
    for requirement in dependencies:
        if requirement.name in agent:
            assert requirement.specifier.contains(pinned[requirement.name]), requirement
    # No server dependency is installed where the executable is built.
    for server_only in ("peewee", "psycopg2-binary", "aiohttp", "prometheus-client"):
        assert server_only not in pinned


def test_help_explains_the_build() -> None:
    result = subprocess.run(
        ["bash", "scripts/build-agent.sh", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    for word in ("dist/", "sielum-agent_<version>_amd64.deb", "SHA256SUMS", ".venv-build"):
        assert word in result.stdout
    wrong = subprocess.run(
        ["bash", "scripts/build-agent.sh", "--frobnicate"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong.returncode == 2
    assert "unknown argument" in wrong.stderr


@pytest.mark.package
def test_the_build_writes_nothing_into_src(built: Artifacts) -> None:
    """PyInstaller's analysis would leave __pycache__ in src/ (which
    tests/test_generated.py compares with the generator's output): the script stops it."""
    # sielum.egg-info is pip's: other tests of the run install the project meanwhile.
    written = [
        p
        for p in (ROOT / "src").rglob("*")
        if p.stat().st_mtime >= built.built_after and ".egg-info" not in str(p)
    ]
    assert written == []
