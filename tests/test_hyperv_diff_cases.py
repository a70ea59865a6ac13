"""Diff cases as data (tests/cases/hyperv/*.yaml): desired + facts in, steps or noop reasons
or pre-flight blockers out. The diff is pure: no host, no runner.

A case names a facts file (recorded from the fake host) and patches it with
``[path, value]`` pairs; a path segment ``name=X`` picks a list item by name, ``+`` appends,
and the value ``@reverse`` reverses a list. ``playbook_patch`` edits the reference playbook.

The facts files are snapshots of a host labctl built, so by default the lab's record names
what labctl created there (every NetNat and every existing VHDX of the facts, after the
patches); a case's ``recorded: {nats: [[name, prefix]], vhds: [path]}`` replaces that.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from labctl.hyperv.diff import Recorded, nat_entry, plan_up, scope_of, vhd_entry
from labctl.hyperv.facts import parse_facts
from tests.helpers.hyperv_lab import loaded, reference_data

CASES = Path(__file__).parent / "cases" / "hyperv"


def _patch(doc: Any, path: str, value: Any) -> None:
    parts = path.split("/")
    node = doc
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if part == "+":
                assert last
                node.append(value)
                return
            if part.startswith("name="):
                matches = [j for j, x in enumerate(node) if x.get("name") == part[5:]]
                assert matches, f"no item named {part[5:]} at {path}"
                key: Any = matches[0]
            else:
                key = int(part)
        else:
            key = part
            assert last or key in node, f"{path}: {key} not found"
        if last:
            node[key] = list(reversed(node[key])) if value == "@reverse" else value
            return
        node = node[key]


def _cases() -> list[Path]:
    return sorted(p for p in CASES.glob("*.yaml"))


@pytest.mark.parametrize("path", _cases(), ids=lambda p: p.stem)
def test_diff_case(path: Path):
    case = yaml.safe_load(path.read_text())
    facts_doc = json.loads((CASES / case["facts"]).read_text())
    for p, v in case.get("patch", []):
        _patch(facts_doc, p, copy.deepcopy(v))
    pb_data = reference_data()
    for p, v in case.get("playbook_patch", []):
        _patch(pb_data, p, v)
    pb = loaded(pb_data).model
    facts = parse_facts(facts_doc)
    scope = scope_of(pb)
    rec = case.get("recorded")
    if rec is None:
        entries = [nat_entry(scope, n.name, n.prefix) for n in facts.nats] + \
            [vhd_entry(scope, f.path) for f in facts.vhd_files if f.exists]
    else:
        entries = [nat_entry(scope, n, p) for n, p in rec.get("nats", [])] + \
            [vhd_entry(scope, v) for v in rec.get("vhds", [])]
    d = plan_up(pb, facts, Recorded.of(scope, entries))
    expect = case["expect"]
    got = [[s.resource, s.name] for s in d.plan.steps]
    if "steps" in expect:
        assert got == expect["steps"], case["description"]
    for name in expect.get("absent", []):
        assert name not in [s.name for s in d.plan.steps]
    for name, params in expect.get("params", []):
        matching = [s for s in d.plan.steps if s.name == name]
        assert matching, f"no {name} step"
        assert any(all(s.params.get(k) == v for k, v in params.items()) for s in matching), \
            f"{name}: {[dict(s.params) for s in matching]} lacks {params}"
    if "requires_vm_off" in expect:
        assert sorted({s.name for s in d.plan.steps if s.requires_vm_off}) == \
            sorted(expect["requires_vm_off"])
    changes = {c.resource: c for c in d.plan.changes}
    for res, reason in expect.get("noop", {}).items():
        assert changes[res].is_noop, f"{res} is {changes[res].action}"
        assert reason in changes[res].reason, changes[res].reason
    for res, action in expect.get("actions", {}).items():
        assert changes[res].action == action
    messages = [b.message for b in d.blockers]
    if "blockers" in expect:
        for want in expect["blockers"]:
            assert any(want in m for m in messages), messages
        assert all(b.hint for b in d.blockers)
    else:
        assert not messages, messages
    for want in expect.get("warnings", []):
        assert any(want in w for w in d.plan.warnings), d.plan.warnings


def test_every_step_template_is_covered_by_some_case_or_the_fake_tests():
    seen = set()
    for path in _cases():
        case = yaml.safe_load(path.read_text())
        seen.update(s[1] for s in case["expect"].get("steps", []))
    # removals and rare repairs are exercised by test_hyperv_provider (down, faults)
    assert {"vmswitch/create", "vmswitch/span", "hostnet/ip_set", "hostnet/dns_set",
            "netnat/create", "netnat/remove", "vhd/create", "vm/create", "vm/memory",
            "vm/processor", "vm/dvd", "vm/firmware", "vm/disk_attach", "vm/start",
            "vmnic/add", "vmnic/connect", "vmnic/set", "vmnic/vlan"} <= seen
