"""Lint and type check as part of the suite (ruff, mypy), so CI runs them with the tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return str(path)


def test_ruff_lint_is_clean():
    out = subprocess.run(
        [_tool("ruff"), "check", "libs", "services", "tests", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_is_applied():
    out = subprocess.run(
        [_tool("ruff"), "format", "--check", "libs", "services", "tests", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, "run `ruff format libs services tests bench`:\n" + out.stdout + out.stderr


@pytest.mark.timeout(600)
def test_mypy_type_check_is_clean():
    out = subprocess.run([_tool("mypy"), "libs", "services"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
