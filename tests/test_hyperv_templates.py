"""The PowerShell templates: they parse (tree-sitter-powershell) with no ERROR/MISSING node,
render with StrictUndefined, follow the script contract (header, param block, prelude, one
JSON document), stay Windows PowerShell 5.1 compatible, and never carry a playbook value in
their text: hostile names and values travel only as parameters."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labctl.core.errors import TemplateError
from labctl.core.render import render
from labctl.hyperv.diff import facts_params, plan_down, plan_up
from labctl.hyperv.facts import empty_facts, parse_facts
from labctl.hyperv.scripts import SCRIPT_NAMES, declared_params, script_body
from tests.helpers.fake_hyperv import FakeHyperVHost
from tests.helpers.hyperv_lab import loaded

HOSTILE = [
    "it's \"quoted\"",
    "$(Remove-Item C:\\ -Recurse)",
    "`backtick`n",
    "a; Stop-Computer -Force",
    "line1\nline2\r\nline3",
    "Ünïcødé ☃ 名前",
    "@{x=1} | iex",
    "'; exit 1; '",
    "${env:USERPROFILE}",
]


def _parser():
    import tree_sitter_powershell as tsp
    from tree_sitter import Language, Parser

    return Parser(Language(tsp.language()))


def _bad_nodes(node, acc):
    if node.type == "ERROR" or node.is_missing:
        acc.append((node.type, node.start_point, node.text[:80]))
    for c in node.children:
        _bad_nodes(c, acc)
    return acc


PARSER = _parser()


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_script_parses_without_error_nodes(name):
    tree = PARSER.parse(script_body(name).encode("utf-8"))
    assert _bad_nodes(tree.root_node, []) == []


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_script_contract(name):
    body = script_body(name)
    head = body.split("param(", 1)[0]
    assert head.startswith(f"# labctl {name}:"), "header names the script"
    assert "# Params:" in head and "# Output JSON" in head
    assert body.count("param(") == 1 and body.lstrip().startswith("#")
    for line in ("Set-StrictMode -Version Latest", "$ErrorActionPreference = 'Stop'",
                 "$ProgressPreference = 'SilentlyContinue'"):
        assert line in body
    assert body.index("param(") < body.index("Set-StrictMode")
    assert body.count("ConvertTo-Json -Depth 10 -Compress") == 1
    assert body.rstrip().endswith("ConvertTo-Json -Depth 10 -Compress")
    declared = declared_params(name)
    assert declared, "every script takes its values as parameters"
    for p in declared:
        assert f"{p} " in head or f"{p}\n" in head, f"header documents {p}"


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_windows_powershell_51_compatible(name):
    body = "\n".join(line.split("#", 1)[0] if line.lstrip().startswith("#") else line
                     for line in script_body(name).splitlines())
    for bad in ("??", "?.", "-AsHashtable", " && ", " || ", "ForEach-Object -Parallel",
                "ConvertFrom-Json -Depth", "Get-Error", "$PSStyle", "clean {"):
        assert bad not in body, f"{bad!r} is PowerShell 7 only"
    assert not re.search(r"\$\w+\s*\?\s*[^:]+:", body), "no ternary operator in 5.1"
    assert not re.search(r"\b\d+(KB|MB|GB|TB)\b", body), "numeric suffixes confuse parsers"


def test_templates_render_with_strict_undefined():
    with pytest.raises(TemplateError, match="undefined"):
        render("hyperv", "templates/vm/start.ps1.j2")  # `script` missing


def _all_steps(pb):
    host = FakeHyperVHost.reference()
    up = plan_up(pb, empty_facts()).plan.steps
    host_facts = parse_facts(host._do_facts_read(facts_params(pb)))
    down = plan_down(pb, host_facts).steps
    return up + down


def test_every_step_passes_exactly_the_declared_parameters():
    pb = loaded().model
    host = FakeHyperVHost.reference()
    from labctl.app import lab as app
    from labctl.hyperv.provider import HyperVProvider

    app.up(app.LabContext(loaded(), provider_factory=lambda c: HyperVProvider(pb, host)),
           confirm=lambda p: True)
    recorded = HyperVProvider(pb, host).recorded()  # what `up` recorded creating
    steps = plan_up(pb, empty_facts()).plan.steps + \
        plan_down(pb, parse_facts(host._do_facts_read(facts_params(pb, recorded))),
                  recorded).steps
    names = {s.name for s in steps}
    assert {"vm/stop", "vm/remove", "vhd/remove", "netnat/remove", "hostnet/ip_remove",
            "vmswitch/remove"} <= names
    for s in steps:
        declared = declared_params(s.name)
        assert set(s.params) <= set(declared), (s.name, set(s.params) - set(declared))
        assert {k for k, m in declared.items() if m} <= set(s.params), s.name


def _hostile_playbook(value: str):
    pb = loaded().model
    sw = [s.model_copy(update={"name": f"sw {i} {value}", "notes": value,
                               "adapter": value if s.type == "external" else None})
          for i, s in enumerate(pb.switches)]
    nics = [n.model_copy(update={"name": f"nic {i} {value}", "switch": sw[i].name})
            for i, n in enumerate(pb.vms[0].nics)]
    vm = pb.vms[0].model_copy(update={"name": f"vm {value}", "iso": f"D:\\{value}.iso",
                                      "notes": value, "nics": nics})
    hv = pb.hyperv.model_copy(update={"vhd_path": f"D:\\{value}", "vm_path": value})
    return pb.model_copy(update={"switches": sw, "vms": [vm], "hyperv": hv})


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_values_travel_only_as_parameters(value):
    pb = _hostile_playbook(value)
    steps = plan_up(pb, empty_facts()).plan.steps
    assert len(steps) >= 15
    for s in steps:
        assert value not in s.script
        for part in value.split():
            if len(part) > 3:
                assert part not in s.script, (s.name, part)
        assert not _bad_nodes(PARSER.parse(s.script.encode()).root_node, [])
    flat = repr([dict(s.params) for s in steps])
    assert repr(value)[1:-1] in flat or value in flat  # the value did travel, as a parameter
    # facts/read too
    params = facts_params(pb)
    assert value not in script_body("facts/read")
    assert any(value in p for p in params["IsoPaths"])


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=4, max_size=30).filter(lambda s: s.strip() and "\x00" not in s))
def test_random_values_never_appear_in_script_text(value):
    pb = _hostile_playbook(value)
    bodies = {s.script for s in plan_up(pb, empty_facts()).plan.steps}
    for body in bodies:
        assert f"vm {value}" not in body and f"D:\\{value}" not in body
