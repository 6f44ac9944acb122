"""Generated stubs are committed: regenerating them must change nothing."""

from __future__ import annotations

import filecmp
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_stubs_match_proto(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "generate.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*"))
    assert generated, "the generator produced nothing"
    committed = sorted(p.relative_to(ROOT / "src") for p in (ROOT / "src").rglob("*_pb2*"))
    assert generated == committed, "stub files differ: run scripts/generate.sh and commit"
    stale = [
        str(p) for p in generated if not filecmp.cmp(tmp_path / p, ROOT / "src" / p, shallow=False)
    ]
    assert not stale, f"stale generated files, run scripts/generate.sh: {stale}"


def test_buf_lint_passes() -> None:
    buf = ROOT / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        if os.environ.get("CI"):
            pytest.fail("buf is not installed: scripts/bootstrap.sh --test installs it")
        pytest.skip("buf not installed (run scripts/bootstrap.sh --test)")
    result = subprocess.run(
        [str(buf), "lint"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert shutil.which("node") is not None


# The tools whose output is committed (the stubs) or compared (lint, format, types). An
# upstream release of any of them must not change CI's verdict: scripts/pins.txt holds
# each at one version, and scripts/bootstrap.sh --test installs from it.
PINNED_TOOLS = (
    "grpcio-tools",
    "mypy-protobuf",
    "ruff",
    "mypy",
    "types-protobuf",
    "types-grpcio",
)


def read_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "scripts" / "pins.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"scripts/pins.txt: {line!r} is not an exact pin (NAME==VERSION)"
            pins[name.strip().lower()] = version.strip()
    return pins


def test_a_new_upstream_release_of_a_code_writing_tool_cannot_change_ci() -> None:
    pins = read_pins()
    assert set(PINNED_TOOLS) <= set(pins), "a tool whose output is compared is not pinned"
    for tool in PINNED_TOOLS:
        installed = importlib.metadata.version(tool)
        assert installed == pins[tool], (
            f"{tool} {installed} is installed but scripts/pins.txt pins {pins[tool]}: "
            "run scripts/bootstrap.sh --test"
        )
    package = json.loads((ROOT / "package.json").read_text())
    buf = package["devDependencies"]["@bufbuild/buf"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", buf), f"buf is not pinned exactly: {buf!r}"


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def runtime_floor(requirement_name: str) -> tuple[int, ...]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)(,<[0-9.]+)?", requirement)
        if match and match.group(1).lower() == requirement_name:
            return version_tuple(match.group(2))
    raise AssertionError(f"pyproject.toml has no '{requirement_name}>=X' dependency")


def test_the_runtime_ranges_admit_only_versions_the_committed_stubs_import_with() -> None:
    # The stubs check at import time that grpcio and protobuf are at least the versions
    # that generated them, and raise otherwise: a floor below that is a dishonest range.
    grpc_stubs = sorted((ROOT / "src").rglob("*_pb2_grpc.py"))
    pb_stubs = sorted((ROOT / "src").rglob("*_pb2.py"))
    assert grpc_stubs and pb_stubs
    for stub in grpc_stubs:
        match = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", stub.read_text())
        assert match, stub
        for name in ("grpcio", "grpcio-reflection", "grpcio-health-checking"):
            assert runtime_floor(name) >= version_tuple(match.group(1)), (
                f"{stub.name} needs grpcio>={match.group(1)}; raise the floor of {name}"
            )
    for stub in pb_stubs:
        match = re.search(r"# Protobuf Python Version: ([0-9.]+)", stub.read_text())
        assert match, stub
        assert runtime_floor("protobuf") >= version_tuple(match.group(1)), (
            f"{stub.name} needs protobuf>={match.group(1)}; raise the floor in pyproject.toml"
        )
