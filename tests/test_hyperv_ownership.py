"""`down` removes only what this lab can prove it created, one resource kind at a time,
against the stateful fake Hyper-V host. Each test plants a foreign look-alike (a user's
NetNat, VHDX, VM or switch that resembles the lab's) and checks that `down` issues no write
for it and that the host still holds it afterwards; `up` refuses to adopt one.

What proves ownership (docs/hyperv-host.md, "Ownership"): switch and VM, a Notes line that is
exactly the marker; host IP, being on a switch of ours; NetNat, the lab's record with the same
name and prefix; VHDX, the record, or being the planned disk of a marked VM of ours that no
kept VM shares.
"""

from __future__ import annotations

import copy
import json
import os

import pytest

from labctl.app import lab as app
from labctl.core.errors import LabctlError, PreflightError, RemoteCommandError
from labctl.core.state import CreatedRecord
from labctl.hyperv.facts import owned_by
from labctl.hyperv.provider import HyperVProvider
from tests.helpers.fake_hyperv import FakeHyperVHost, _owned
from tests.helpers.hyperv_lab import loaded, reference_data

PLANNED = r"D:\Hyper-V\Virtual Hard Disks\d4iot-sensor.vhdx"


def _ctx(host: FakeHyperVHost, data=None) -> app.LabContext:
    return app.LabContext(loaded=loaded(data),
                          provider_factory=lambda ctx: HyperVProvider(ctx.loaded.model, host))


def _up(host, data=None):
    return app.up(_ctx(host, data), confirm=lambda p: True)


def _down(host, data=None):
    return app.down(_ctx(host, data), confirm=lambda p: True)


def _record() -> CreatedRecord:
    return CreatedRecord.of_lab("homelab")


def _write_names(host: FakeHyperVHost) -> list[tuple[str, dict]]:
    return [(c.name, c.params) for c in host.writes]


def _user_disk(host: FakeHyperVHost, path: str = PLANNED, size: float = 100.0) -> None:
    host.files[path.lower()] = {"path": path, "type": "Fixed", "size_gb": size}


def test_planned_path_is_where_the_reference_playbook_puts_the_sensor_disk():
    from labctl.hyperv.diff import vhd_path_of

    pb = loaded().model
    assert vhd_path_of(pb, pb.vms[0]) == PLANNED


# -- NetNat -------------------------------------------------------------------------------------
def test_down_leaves_a_users_netnat_when_the_switch_is_not_ours():
    host = FakeHyperVHost.reference()
    host._new_switch("Core", "Internal", None, False, "built by hand")
    host.nats.append({"name": "Core", "prefix": "192.168.0.0/24"})
    before = copy.deepcopy(host._state())
    rep = _down(host)
    assert not rep.applied and host.writes == []
    assert host._state() == before
    nat = {c.resource: c for c in rep.plan.changes}["hyperv.netnat:Core"]
    assert nat.foreign and "not created by this lab" in nat.reason


def test_a_users_netnat_with_the_lab_prefix_survives_up_and_down():
    # The switch is ours, the NAT with the same name and prefix was the user's before `up`.
    host = FakeHyperVHost.reference()
    host.nats.append({"name": "Core", "prefix": "192.168.0.0/24"})
    rep = _up(host)
    assert rep.converged
    assert "netnat/create" not in [n for n, _ in _write_names(host)]
    assert _record().entries(kind="netnat") == []
    host.calls.clear()
    assert _down(host).converged
    assert ("Core", "192.168.0.0/24") in [(n["name"], n["prefix"]) for n in host.nats]
    assert "netnat/remove" not in [n for n, _ in _write_names(host)]
    assert "Core" not in [s["name"] for s in host.switches]  # the switch was ours: removed


def test_up_refuses_to_replace_a_users_netnat_of_the_same_name():
    host = FakeHyperVHost.reference()
    host.nats.append({"name": "Core", "prefix": "10.99.0.0/24"})
    with pytest.raises(PreflightError) as ei:
        _up(host)
    assert "NetNat 'Core' exists with prefix 10.99.0.0/24" in ei.value.message
    assert host.writes == []


def test_recorded_netnat_is_removed_even_after_the_playbook_dropped_it():
    host = FakeHyperVHost.reference()
    _up(host)
    data = reference_data()
    data["switches"][0].pop("nat")
    rep = _down(host, data)
    assert rep.converged
    assert [n["name"] for n in host.nats] == ["DefaultSwitchNat"]
    assert _record().entries(kind="netnat") == []


def test_a_netnat_recreated_by_the_user_with_another_prefix_is_not_ours():
    host = FakeHyperVHost.reference()
    _up(host)
    core = [n for n in host.nats if n["name"] == "Core"][0]
    core["prefix"] = "192.168.0.0/25"  # user removed ours and made their own, same name
    host.calls.clear()
    _down(host)
    assert ("Core", "192.168.0.0/25") in [(n["name"], n["prefix"]) for n in host.nats]
    assert "netnat/remove" not in [n for n, _ in _write_names(host)]


# -- VHDX ---------------------------------------------------------------------------------------
def test_down_leaves_a_users_vhdx_at_the_planned_path_that_no_vm_uses():
    host = FakeHyperVHost.reference()
    _user_disk(host)
    rep = _down(host)
    assert not rep.applied and host.writes == []
    assert PLANNED.lower() in host.files
    vhd = {c.resource: c for c in rep.plan.changes}["hyperv.vhd:d4iot-sensor"]
    assert vhd.foreign and "not created by this lab" in vhd.reason


def test_up_refuses_to_attach_a_users_vhdx_at_the_planned_path():
    host = FakeHyperVHost.reference()
    _user_disk(host)
    with pytest.raises(PreflightError) as ei:
        _up(host)
    assert "this lab did not create it" in ei.value.message and "vhd_path" in ei.value.hint
    assert host.writes == []


@pytest.mark.parametrize("vm_name", ["d4iot-sensor", "someone-else"])
def test_down_never_issues_a_delete_for_the_disk_of_an_unmarked_vm(vm_name):
    host = FakeHyperVHost.reference()
    _user_disk(host)
    host._new_vm(vm_name, 2, 4096, PLANNED, "not labctl's")
    before = copy.deepcopy(host._state())
    rep = _down(host)
    assert host.writes == [] and host._state() == before
    assert not [s for s in rep.plan.steps if s.name == "vhd/remove"]


def test_a_recorded_vhdx_that_an_unmarked_vm_now_uses_is_left_alone():
    host = FakeHyperVHost.reference()
    names = [s.name for s in HyperVProvider(loaded().model, host).plan_up(
        HyperVProvider(loaded().model, host).read_facts()).steps]
    host.fail_at = names.index("vm/create") + 1  # VHDX created and recorded, VM never was
    with pytest.raises(RemoteCommandError):
        _up(host)
    host.fail_at = None
    assert [e.get("path") for e in _record().entries(kind="vhd")] == [PLANNED.lower()]
    host._new_vm("borrower", 2, 4096, PLANNED, "attached it by hand")
    host.calls.clear()
    _down(host)
    assert "vhd/remove" not in [n for n, _ in _write_names(host)]
    assert PLANNED.lower() in host.files


def test_a_users_disk_attached_to_our_vm_is_not_deleted_with_it():
    host = FakeHyperVHost.reference()
    _up(host)
    data_disk = r"E:\Data\evidence.vhdx"
    _user_disk(host, data_disk, 10.0)
    vm = [v for v in host.vms if v["name"] == "d4iot-sensor"][0]
    vm["vhds"].append({"path": data_disk, "type": "Fixed", "size_gb": 10.0})
    rep = _down(host)
    assert rep.converged
    deleted = [p["Path"] for n, p in _write_names(host) if n == "vhd/remove"]
    assert deleted == [PLANNED]
    assert data_disk.lower() in host.files and PLANNED.lower() not in host.files


def test_a_disk_shared_with_an_unmarked_vm_is_kept():
    host = FakeHyperVHost.reference()
    _up(host)
    host._new_vm("twin-of-sensor", 2, 4096, PLANNED, "shares the disk")
    host.calls.clear()
    rep = _down(host)
    assert "vhd/remove" not in [n for n, _ in _write_names(host)]
    assert PLANNED.lower() in host.files
    assert "d4iot-sensor" not in [v["name"] for v in host.vms]  # our VM itself went
    vhd = {c.resource: c for c in rep.plan.changes}["hyperv.vhd:d4iot-sensor"]
    assert vhd.foreign and "twin-of-sensor" in vhd.reason


# -- the marker ---------------------------------------------------------------------------------
MARKER_CASES = [
    ("managed-by: labctl lab=homelab", True),
    ("my notes\nmanaged-by: labctl lab=homelab", True),
    ("my notes\r\nmanaged-by: labctl lab=homelab\r\n", True),
    ("  managed-by: labctl lab=homelab\t", True),
    ("This VM is NOT managed-by: labctl lab=homelab, keep it", False),
    ("do not touch: managed-by: labctl lab=homelab", False),
    ("managed-by: labctl lab=homelab (no, it is mine)", False),
    ("managed-by: labctl lab=homelab2", False),
    ("managed-by: labctl lab=homela", False),
    ("Managed-By: labctl lab=homelab", False),
    ("managed-by:labctl lab=homelab", False),
    ("# managed-by: labctl lab=homelab", False),
    ("", False),
]


@pytest.mark.parametrize("notes,owned", MARKER_CASES)
def test_the_marker_is_a_whole_line_with_exact_syntax(notes, owned):
    assert owned_by(notes, "homelab") is owned
    assert _owned(notes, "homelab") is owned  # the fake host's restatement agrees


def test_the_prelude_states_the_same_rule():
    from labctl.hyperv.scripts import script_body

    body = script_body("vm/remove")
    fn = body[body.index("function Test-LabctlOwned"):body.index("# --- end of prelude")]
    assert "-ceq $want" in fn and "Split([char]10)" in fn and "[char]13" in fn
    assert "IsMatch" not in fn  # no substring/regex search that a sentence could satisfy


@pytest.mark.parametrize("notes", [n for n, owned in MARKER_CASES if not owned and n])
def test_down_leaves_a_vm_and_switch_whose_notes_only_quote_the_marker(notes):
    host = FakeHyperVHost.reference()
    _user_disk(host)
    host._new_vm("d4iot-sensor", 2, 8192, PLANNED, notes)
    host._new_switch("Core", "Internal", None, False, notes)
    before = copy.deepcopy(host._state())
    rep = _down(host)
    assert host.writes == [] and host._state() == before
    states = {c.resource: c.state for c in rep.plan.changes}
    assert states["hyperv.vm:d4iot-sensor"] == "foreign"
    assert states["hyperv.vmswitch:Core"] == "foreign"


# -- the record ---------------------------------------------------------------------------------
def test_up_records_what_it_created_and_down_clears_it():
    host = FakeHyperVHost.reference()
    _up(host)
    rec = _record()
    assert os.stat(rec.path).st_mode & 0o777 == 0o600
    doc = json.loads(rec.path.read_text())
    assert sorted((e["kind"], e.get("name") or e.get("path")) for e in doc["created"]) == \
        [("netnat", "core"), ("vhd", PLANNED.lower())]
    assert all(e["scope"] == "hyperv:hyperv01.lab.example" for e in doc["created"])
    _down(host)
    assert json.loads(rec.path.read_text())["created"] == []


def test_a_create_whose_answer_was_lost_is_still_owned():
    host = FakeHyperVHost.reference()
    p = HyperVProvider(loaded().model, host)
    names = [s.name for s in p.plan_up(p.read_facts()).steps]
    host.fail_at = names.index("netnat/create") + 1
    host.fault, host.fault_after_effect = "timeout", True  # the host made it, the answer was lost
    with pytest.raises(LabctlError):
        _up(host)
    host.fail_at = None
    assert ("Core", "192.168.0.0/24") in [(n["name"], n["prefix"]) for n in host.nats]
    _down(host)
    assert [n["name"] for n in host.nats] == ["DefaultSwitchNat"]


def test_a_create_that_never_took_effect_leaves_no_claim():
    host = FakeHyperVHost.reference()
    p = HyperVProvider(loaded().model, host)
    names = [s.name for s in p.plan_up(p.read_facts()).steps]
    host.fail_at = names.index("netnat/create") + 1
    host.fault = "timeout"  # before the effect
    with pytest.raises(LabctlError):
        _up(host)
    assert [e.get("name") for e in _record().entries(kind="netnat")] == ["core"]  # pending
    host.fail_at = None
    p.read_facts()  # the next read sees no such NAT: the pending claim goes
    assert _record().entries(kind="netnat") == []
    host.nats.append({"name": "Core", "prefix": "192.168.0.0/24"})  # now the user makes one
    host.calls.clear()
    _down(host)
    assert "netnat/remove" not in [n for n, _ in _write_names(host)]


def test_a_record_of_another_host_grants_nothing():
    host = FakeHyperVHost.reference()
    _up(host)
    data = reference_data()
    data["hyperv"]["host"] = "another-host.lab.example"
    host.calls.clear()
    _down(host, data)
    assert "netnat/remove" not in [n for n, _ in _write_names(host)]
    assert "Core" in [n["name"] for n in host.nats]
    # the VM's marker is on the host itself: the marked VM and its planned disk still go
    assert [p["Path"] for n, p in _write_names(host) if n == "vhd/remove"] == [PLANNED]


def test_an_unreadable_record_is_an_error_naming_the_file_and_nothing_is_removed():
    host = FakeHyperVHost.reference()
    _up(host)
    rec = _record()
    rec.path.write_text("{not json")
    host.calls.clear()
    with pytest.raises(LabctlError) as ei:
        _down(host)
    assert str(rec.path) in ei.value.message and ei.value.hint
    assert host.writes == []
