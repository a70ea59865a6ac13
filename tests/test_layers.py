"""Architecture rules from DEVELOPERS.md, checked on the source: imports only go downward
(type-only imports included), there is no import cycle, Click stays in the CLI, and nothing
below the CLI exits the process or prints. import-linter checks the same layers contract
from pyproject.toml."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
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


def _all_imports(tree: ast.Module):
    """Every import, those under `if TYPE_CHECKING:` and inside functions included: a
    type-only import upward still couples a lower layer to a higher one."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_only_go_downward(path):
    mine = _layer(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for line, module in _all_imports(tree):
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


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported when ``path`` is imported (module level, TYPE_CHECKING included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    nodes: list[ast.stmt] = list(tree.body)
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.If | ast.Try):
            nodes.extend(node.body + node.orelse + getattr(node, "handlers", []))
            nodes.extend(getattr(node, "finalbody", []))
        elif isinstance(node, ast.ExceptHandler):
            nodes.extend(node.body)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("labctl")}


def test_no_import_cycle():
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {m: {i for i in _top_level_imports(p) if i in modules and i != m}
             for m, p in modules.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_import_linter_layers_contract():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe is not None, "import-linter is missing: pip install -e '.[test]'"
    r = subprocess.run([exe], cwd=PKG.parent, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
