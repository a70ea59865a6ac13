"""ruff and mypy --strict stay clean (their configuration is in pyproject.toml).

They run as tests so that the README's one test command, which `.ci/run` runs, checks
them too."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = str(Path(sys.executable).parent)


def _tool(name: str) -> str:
    exe = shutil.which(name, path=BIN) or shutil.which(name)
    assert exe is not None, f"{name} is missing: pip install -e '.[test]'"
    return exe


def test_ruff_is_clean():
    r = subprocess.run([_tool("ruff"), "check", "--no-cache", "labctl", "tests", "bench"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def test_mypy_strict_is_clean(tmp_path):
    r = subprocess.run([_tool("mypy"), "--cache-dir", str(tmp_path / "mypy-cache")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
