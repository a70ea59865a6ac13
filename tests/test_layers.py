"""Architecture rules from DEVELOPERS.md, checked on the source: imports only go downward,
Click stays in the CLI, and nothing below the CLI exits the process or prints."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "labctl"
DRIVERS = ("hyperv", "netns", "router", "sensor", "scans", "traffic")
RANK = {"cli": 4, "app": 3, **{d: 2 for d in DRIVERS}, "transport": 1, "core": 0}


def _layer(path: Path) -> str | None:
    parts = path.relative_to(PKG).parts
    return parts[0] if len(parts) > 1 and parts[0] in RANK else None


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if _layer(p) is not None)


def _runtime_imports(tree: ast.Module):
    """Imports that run (those under `if TYPE_CHECKING:` are type hints only)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                skip.add(id(child))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_only_go_downward(path):
    mine = _layer(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for line, module in _runtime_imports(tree):
        parts = module.split(".")
        if parts[0] == "click":
            assert mine == "cli", f"{path}:{line} imports click below the CLI"
        if parts[0] != "labctl" or len(parts) < 2 or parts[1] not in RANK:
            continue
        theirs = parts[1]
        assert RANK[theirs] <= RANK[mine], f"{path}:{line}: {mine} imports upward from {module}"


@pytest.mark.parametrize("path", [p for p in _modules() if _layer(p) != "cli"],
                         ids=lambda p: str(p.relative_to(PKG)))
def test_no_exit_or_print_below_the_cli(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            assert name not in ("sys.exit", "exit", "quit", "print"), \
                f"{path}:{node.lineno} calls {name}"
