"""The facts script and the facts parser agree on the JSON shape, and the parser copes with
what Windows PowerShell 5.1's ConvertTo-Json really prints."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel

from labctl.core.errors import RemoteCommandError
from labctl.hyperv import facts as F
from labctl.hyperv.scripts import script_body


def _model_fields(model: type[BaseModel], seen: set | None = None) -> set[str]:
    out: set[str] = set()
    for name, f in model.model_fields.items():
        out.add(name)
        ann = f.annotation
        for sub in getattr(ann, "__args__", ()) + (ann,):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                out |= _model_fields(sub)
    return out


def test_facts_script_keys_match_the_parser():
    body = script_body("facts/read").split("param(", 1)[1]
    # keys of the [ordered]@{ ... } hashtables the script emits
    keys = set()
    for block in re.findall(r"\[ordered\]@\{(.*?)\n\s*\}|\[ordered\]@\{([^\n]*?)\}", body, re.S):
        text = block[0] or block[1]
        keys |= set(re.findall(r"(?:^|[;{\s])([a-z_]+) = ", text, re.M))
    fields = _model_fields(F.HostFacts) - {"assumed"}
    assert keys - fields == set(), "script emits keys the parser ignores"
    assert fields - keys == set(), "parser expects keys the script never emits"


def test_parser_accepts_ps51_quirks():
    # ConvertTo-Json on 5.1 turns a one-element array built by a pipeline into an object,
    # and $null lists into null.
    doc = {
        "hyperv_module": True, "default_route_alias": "Ethernet",
        "net_adapters": {"name": "Ethernet", "description": "x", "status": "Up"},
        "switches": {"name": "Core", "type": "Internal", "notes": None, "extensions": None,
                     "net_adapter": None, "allow_management_os": True, "monitor_mode": None},
        "host_vnics": [{"name": "Core", "switch": "Core", "alias": "vEthernet (Core)",
                        "ips": {"address": "192.168.0.1", "prefix_length": 24,
                                "origin": "Manual"}, "dns": "8.8.8.8"}],
        "nats": None,
        "vms": {"name": "v", "state": "Off", "adapters": {"name": "A", "switch": "Core",
                                                          "vlan": {"mode": "Untagged"}},
                "vhds": None, "dvd": "D:\\x.iso"},
        "disk": {"path": "D:\\", "exists": True, "free_gb": 12.5},
        "isos": None, "vhd_files": [],
    }
    f = F.parse_facts(doc)
    assert f.switches[0].name == "Core" and f.switches[0].extensions == []
    assert f.host_vnics[0].dns == ["8.8.8.8"] and f.host_vnics[0].ips[0].cidr == "192.168.0.1/24"
    assert f.vms[0].dvd == ["D:\\x.iso"] and f.vms[0].adapters[0].name == "A"
    assert f.nats == [] and f.net_adapters[0].name == "Ethernet"


def test_parser_rejects_a_wrong_shape_as_a_remote_error():
    with pytest.raises(RemoteCommandError, match="facts/read"):
        F.parse_facts(["not", "an", "object"])
    with pytest.raises(RemoteCommandError, match="switches"):
        F.parse_facts({"switches": [{"type": "Internal"}]})


def test_default_route_adapter_through_a_shared_external_switch():
    f = F.parse_facts({
        "default_route_alias": "vEthernet (Uplink)",
        "switches": [{"name": "Uplink", "type": "External", "net_adapter": "Ethernet"}],
        "host_vnics": [{"name": "Uplink", "switch": "Uplink", "alias": "vEthernet (Uplink)"}],
    })
    assert f.default_route_adapter == "Ethernet"
    assert F.parse_facts({"default_route_alias": "Wi-Fi"}).default_route_adapter == "Wi-Fi"


@pytest.mark.parametrize("notes,owned", [
    ("managed-by: labctl lab=homelab", True),
    ("my notes\r\nmanaged-by: labctl lab=homelab\r\n", True),
    ("managed-by: labctl lab=homelab2", False),
    ("managed-by: labctl lab=home", False),
    ("", False), (None, False),
])
def test_ownership_marker(notes, owned):
    assert F.owned_by(notes, "homelab") is owned
    assert F.owned_by(F.notes_with_marker("x", "homelab"), "homelab")


def test_vlan_list_from_the_host_in_either_form():
    from labctl.hyperv.diff import _vlan_matches

    want = {"Mode": "Trunk", "AllowedVlanIdList": "1-4094", "NativeVlanId": 0, "AccessVlanId": 0}
    long_form = F.VlanFacts(mode="Trunk", allowed=",".join(map(str, range(1, 4095))), native=0)
    assert _vlan_matches(want, long_form)
    assert _vlan_matches(want, F.VlanFacts(mode="Trunk", allowed="1-4094", native=0))
    assert not _vlan_matches(want, F.VlanFacts(mode="Trunk", allowed="1-51,53-4094", native=0))
    assert not _vlan_matches(want, F.VlanFacts(mode="Trunk", allowed="1-4094", native=52))
    assert not _vlan_matches(want, F.VlanFacts(mode="Access", access_id=52))


@pytest.mark.parametrize("wire,ids", [
    (list(range(1, 4095)), list(range(1, 4095))),  # Int32[] as ConvertTo-Json prints it
    ([52], [52]),
    (52, [52]),  # 5.1 unrolls a one-element array in some pipelines
    ({"value": [10, 20], "Count": 2}, [10, 20]),  # 5.1's PSObject-wrapped array
    (None, []),
    ([], []),
    ("1-10,52", list(range(1, 11)) + [52]),  # the cmdlet's string form (older readers)
])
def test_allowed_vlan_ids_are_read_as_the_int_array_the_cmdlet_returns(wire, ids):
    v = F.parse_facts({"vms": [{"name": "v", "adapters": [
        {"name": "Monitor", "vlan": {"mode": "Trunk", "allowed": wire, "native": 0}}]}]}) \
        .vms[0].adapters[0].vlan
    assert v.allowed == ids


def test_a_boolean_or_an_out_of_range_vlan_list_is_a_remote_error():
    for bad in (True, [0], [4095], "1-5000"):
        with pytest.raises(RemoteCommandError, match="allowed"):
            F.parse_facts({"vms": [{"name": "v", "adapters": [
                {"name": "M", "vlan": {"mode": "Trunk", "allowed": bad}}]}]})


def test_the_facts_script_emits_the_allowed_list_as_an_int_array():
    body = script_body("facts/read")
    line = [ln for ln in body.splitlines() if "allowed = " in ln][0]
    assert "[int[]]" in line and "-join" not in line
