"""Shared fixtures. Tests that need root and network namespaces are marked `netns`."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _can_netns() -> bool:
    return sys.platform.startswith("linux") and os.geteuid() == 0 and bool(shutil.which("ip"))


def pytest_collection_modifyitems(config, items):
    if _can_netns():
        return
    skip = pytest.mark.skip(reason="needs root, Linux and iproute2 (network namespaces)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch):
    """Every test gets its own labctl state directory; nothing leaks into ~."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("LABCTL_STATE_DIR", str(state))
    return state


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def cli_run():
    """Run labctl in-process through the real entry point (labctl.cli.run).

    Returns a result with ``exit_code``, ``stdout``, ``stderr`` and ``json()``.
    ``overrides`` replaces LabContext fields (e.g. ``provider_factory``), as embedders do.
    """
    from click.testing import CliRunner

    from labctl.cli import run

    def _run(*args: str, input: str | None = None, env: dict[str, str] | None = None,
             overrides: dict | None = None):
        runner = CliRunner()
        with runner.isolation(input=input, env=env) as (out, err, _):
            code = run(list(args), overrides=overrides)
            return CliResult(code, out.getvalue().decode(), err.getvalue().decode())

    return _run


class CliResult:
    def __init__(self, exit_code: int, stdout: str, stderr: str) -> None:
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr

    def json(self):
        import json

        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return (f"CliResult(exit={self.exit_code}, stdout={self.stdout[-800:]!r}, "
                f"stderr={self.stderr[-800:]!r})")
