"""Generated stubs are committed: regenerating them must change nothing."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
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
