"""Rendering the Hyper-V PowerShell templates into :class:`RenderedScript` objects.

Templates render structure only: the one variable they get is ``name`` (the template's own
name, a labctl constant used in the header comment). Every playbook value travels in
``params`` and is bound by the script's ``param(...)`` block, so nothing from the playbook is
ever spliced into script text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from labctl.core.model import Action, Step, StepKind
from labctl.core.render import render
from labctl.transport.powershell import RenderedScript

#: Every step template labctl ships (facts/read is the batched fact reader).
SCRIPT_NAMES: tuple[str, ...] = (
    "facts/read",
    "vmswitch/create", "vmswitch/update", "vmswitch/span", "vmswitch/remove",
    "hostnet/ip_set", "hostnet/ip_remove", "hostnet/dns_set",
    "netnat/create", "netnat/remove", "netnat/static-add", "netnat/static-remove",
    "vhd/create", "vhd/remove",
    "vm/create", "vm/memory", "vm/processor", "vm/dvd", "vm/firmware", "vm/disk_attach",
    "vm/start", "vm/stop", "vm/remove",
    "vmnic/add", "vmnic/connect", "vmnic/set", "vmnic/vlan",
)

_PARAM_RE = re.compile(r"\[(?P<type>[A-Za-z0-9\[\]]+)\]\$(?P<name>[A-Za-z][A-Za-z0-9]*)")


@lru_cache(maxsize=64)
def script_body(name: str) -> str:
    """The rendered body of one template (cached: bodies do not depend on values)."""
    return render("hyperv", f"templates/{name}.ps1.j2", script=name)


@lru_cache(maxsize=64)
def declared_params(name: str) -> dict[str, bool]:
    """Parameter names of a script's ``param(...)`` block -> whether it is Mandatory.

    Used by the fake host and by tests to prove every step passes exactly the parameters its
    script declares (a typo would otherwise only show up on a real host).
    """
    body = script_body(name)
    start = body.index("param(")
    depth = 0
    end = start
    for i in range(start + len("param"), len(body)):
        if body[i] == "(":
            depth += 1
        elif body[i] == ")":
            depth -= 1
            if depth == 0:
                end = i
                break
    block = body[start:end]
    out: dict[str, bool] = {}
    for line in block.splitlines():
        matches = list(_PARAM_RE.finditer(line))
        if matches:
            m = matches[-1]
            out[m.group("name")] = "Mandatory = $true" in line
    return out


def rendered(name: str, params: Mapping[str, Any]) -> RenderedScript:
    return RenderedScript(name=name, body=script_body(name), params=dict(params))


def step(name: str, resource: str, action: Action | str, params: Mapping[str, Any], *,
         description: str = "", requires_vm_off: bool = False) -> Step:
    """A plan step running template ``name`` with ``params``."""
    return Step(resource=resource, action=Action(action), script=script_body(name),
                params=dict(params), kind=StepKind.POWERSHELL, description=description, name=name,
                requires_vm_off=requires_vm_off)


def step_script(s: Step) -> RenderedScript:
    return RenderedScript(name=s.name, body=s.script, params=s.params)
