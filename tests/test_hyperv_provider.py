"""HyperVProvider against the stateful fake host: converge, idempotence, faults, down,
pre-flight guards. Invariant: after apply, a second plan is empty."""

from __future__ import annotations

import copy

import pytest

from labctl.app import lab as app
from labctl.core.errors import (
    AuthError,
    ConnectTimeout,
    ConvergenceError,
    PreflightError,
    RemoteCommandError,
)
from labctl.hyperv.provider import HyperVProvider
from tests.helpers.fake_hyperv import SENSOR_ISO, FakeHyperVHost
from tests.helpers.hyperv_lab import loaded, reference_data


def _provider(host: FakeHyperVHost, data=None) -> HyperVProvider:
    return HyperVProvider(loaded(data).model, host)


def _ctx(host: FakeHyperVHost, data=None) -> app.LabContext:
    return app.LabContext(loaded=loaded(data),
                          provider_factory=lambda ctx: HyperVProvider(ctx.loaded.model, host))


def _up(host: FakeHyperVHost, data=None) -> app.UpReport:
    return app.up(_ctx(host, data), confirm=lambda p: True)


def _lab_state(host: FakeHyperVHost) -> dict:
    return {
        "switches": sorted((s["name"], s["type"]) for s in host.switches),
        "vms": sorted(v["name"] for v in host.vms),
        "nats": sorted((n["name"], n["prefix"]) for n in host.nats),
        "files": sorted(host.files),
        "adapters": sorted((v["name"], a["name"]) for v in host.vms for a in v["adapters"]),
    }


def test_up_builds_the_reference_lab_then_second_plan_is_empty():
    host = FakeHyperVHost.reference()
    rep = _up(host)
    assert rep.applied and rep.converged
    core = [s for s in host.switches if s["name"] == "Core"][0]
    assert core["type"] == "Internal" and "managed-by: labctl lab=homelab" in core["notes"]
    vnic = [v for v in host.vnics if v["switch"] == "Core"][0]
    assert {"address": "192.168.0.1", "prefix_length": 24, "origin": "Manual"} in vnic["ips"]
    assert vnic["dns"] == ["8.8.8.8"]
    assert ("Core", "192.168.0.0/24") in [(n["name"], n["prefix"]) for n in host.nats]
    az = [s for s in host.switches if s["name"] == "Azkaban"][0]
    assert az["type"] == "External" and az["net_adapter"] == "Ethernet 2"
    assert az["monitor_mode"] == 2
    assert any(e["name"] == "Microsoft NDIS Capture" and e["enabled"] for e in az["extensions"])
    vm = [v for v in host.vms if v["name"] == "d4iot-sensor"][0]
    assert (vm["generation"], vm["cpu"], vm["memory_startup_mb"], vm["dynamic_memory"]) == \
        (2, 4, 8192, False)
    assert vm["first_boot"] == "dvd" and vm["secure_boot"] and \
        vm["secure_boot_template"] == "MicrosoftUEFICertificateAuthority"
    assert vm["dvd"] == [SENSOR_ISO] and vm["state"] == "Running"
    assert [a["name"] for a in vm["adapters"]] == ["Management", "Monitor"]  # management first
    mon = vm["adapters"][1]
    assert (mon["switch"], mon["port_mirroring"], mon["vmq_weight"]) == \
        ("Azkaban", "Destination", 0)
    assert mon["vlan"]["mode"] == "Trunk" and mon["vlan"]["native"] == 0
    assert vm["vhds"][0]["type"] == "Fixed" and vm["vhds"][0]["size_gb"] == 100
    p = _provider(host)
    assert p.plan_up(p.read_facts()).empty


def test_converged_up_makes_exactly_one_call_and_no_writes():
    host = FakeHyperVHost.reference()
    _up(host)
    host.calls.clear()
    rep = _up(host)
    assert not rep.applied and rep.converged
    assert [c.name for c in host.calls] == ["facts/read"]


def test_up_order_follows_dependencies():
    host = FakeHyperVHost.reference()
    _up(host)
    names = [c.name for c in host.writes]
    assert names.index("vmswitch/create") < names.index("hostnet/ip_set") < \
        names.index("netnat/create")
    assert names.index("vhd/create") < names.index("vm/create") < names.index("vmnic/add")
    assert names.index("vm/dvd") < names.index("vm/firmware")
    assert names[-1] == "vm/start"




def _n_steps() -> int:
    host = FakeHyperVHost.reference()
    p = _provider(host)
    return len(p.plan_up(p.read_facts()).steps)


N_STEPS = _n_steps()


@pytest.mark.parametrize("fault,exc", [("error", RemoteCommandError), ("auth", AuthError),
                                        ("timeout", ConnectTimeout)])
@pytest.mark.parametrize("after_effect", [False, True])
def test_fault_at_every_step_then_rerun_converges_without_duplicates(fault, exc, after_effect):
    clean = FakeHyperVHost.reference()
    _up(clean)
    want = _lab_state(clean)
    assert N_STEPS >= 15
    for k in range(1, N_STEPS + 1):
        host = FakeHyperVHost.reference()
        host.fail_at, host.fault, host.fault_after_effect = k, fault, after_effect
        with pytest.raises(exc) as ei:
            _up(host)
        assert ei.value.hint  # says what was applied and that a re-run resumes
        assert len(host.writes) == k
        host.fail_at = None
        rep = _up(host)
        assert rep.converged, k
        assert _lab_state(host) == want, f"fault {fault} at step {k}"
        p = _provider(host)
        assert p.plan_up(p.read_facts()).empty


def test_down_removes_everything_of_the_lab_and_nothing_else():
    host = FakeHyperVHost.reference()
    before = copy.deepcopy(_lab_state(host))
    kali = copy.deepcopy([v for v in host.vms if v["name"] == "kali"][0])
    _up(host)
    rep = app.down(_ctx(host), confirm=lambda p: True)
    assert rep.applied and rep.converged
    assert _lab_state(host) == before
    assert [v for v in host.vms if v["name"] == "kali"][0] == kali
    names = [c.name for c in host.writes][-7:]
    assert names == ["vm/stop", "vm/remove", "vhd/remove", "netnat/remove", "hostnet/ip_remove",
                     "vmswitch/remove", "vmswitch/remove"]
    host.calls.clear()
    assert not app.down(_ctx(host), confirm=lambda p: True).applied
    assert [c.name for c in host.calls] == ["facts/read"]


def test_down_after_interrupted_up_cleans_the_orphan_vhdx():
    host = FakeHyperVHost.reference()
    before = _lab_state(host)
    plan_names = [s.name for s in _provider(host).plan_up(_provider(host).read_facts()).steps]
    host.fail_at = plan_names.index("vm/create") + 1  # VHDX exists, VM does not
    with pytest.raises(RemoteCommandError):
        _up(host)
    assert any("d4iot-sensor.vhdx" in f for f in host.files)
    app.down(_ctx(host), confirm=lambda p: True)
    assert _lab_state(host) == before


def test_down_leaves_a_preexisting_unowned_switch_and_vm_with_lab_names():
    host = FakeHyperVHost.reference()
    host._new_switch("Core", "Internal", None, False, "built by hand")
    host.files[r"d:\x.vhdx"] = {"path": r"D:\x.vhdx", "type": "Fixed", "size_gb": 100}
    host._new_vm("d4iot-sensor", 2, 8192, r"D:\x.vhdx", "someone else's")
    before = copy.deepcopy(host._state())
    rep = app.down(_ctx(host), confirm=lambda p: True)
    assert not rep.applied
    assert host._state() == before
    reasons = {c.resource: c.reason for c in rep.plan.changes}
    assert "left alone" in reasons["hyperv.vmswitch:Core"]
    assert "left alone" in reasons["hyperv.vm:d4iot-sensor"]


def test_up_refuses_an_unowned_switch_with_the_same_name():
    host = FakeHyperVHost.reference()
    host._new_switch("Core", "Internal", None, False, "")
    with pytest.raises(PreflightError) as ei:
        _up(host)
    assert "not managed by lab homelab" in ei.value.message and "Notes" in ei.value.hint
    assert not host.writes


def _block(host: FakeHyperVHost, data=None) -> PreflightError:
    with pytest.raises(PreflightError) as ei:
        _up(host, data)
    assert not host.writes, "a pre-flight refusal must come before any change"
    assert ei.value.hint
    return ei.value


def test_preflight_external_switch_on_the_management_adapter():
    data = reference_data()
    data["switches"][1]["adapter"] = "Ethernet"
    e = _block(FakeHyperVHost.reference(), data)
    assert "default route" in e.message


def test_preflight_management_adapter_behind_a_shared_external_switch():
    host = FakeHyperVHost.reference()
    host.net_adapters.append({"name": "Ethernet 3", "description": "x", "status": "Up"})
    host._new_switch("Uplink", "External", "Ethernet 3", True, "")
    host.default_route_alias = "vEthernet (Uplink)"
    data = reference_data()
    data["switches"][1]["adapter"] = "Ethernet 3"
    e = _block(host, data)
    assert "default route" in e.message


def test_preflight_overlapping_netnat():
    host = FakeHyperVHost.reference()
    host.nats.append({"name": "OldLab", "prefix": "192.168.0.0/16"})
    e = _block(host)
    assert "OldLab" in e.message and "overlaps" in e.message


def test_preflight_missing_iso():
    host = FakeHyperVHost.reference()
    host.isos.clear()
    e = _block(host)
    assert "ISO" in e.message and "Azure portal" in e.hint


def test_preflight_not_enough_disk_for_the_fixed_vhdx():
    host = FakeHyperVHost.reference()
    host.free_gb["D:"] = 42.0
    e = _block(host)
    assert "42.0 GB free" in e.message and "100 GB" in e.message


def test_preflight_missing_hyperv_module():
    host = FakeHyperVHost.reference()
    host.hyperv_module = False
    e = _block(host)
    assert "Hyper-V PowerShell module" in e.message and "Install-WindowsFeature" in e.hint


def test_preflight_missing_adapter():
    data = reference_data()
    data["switches"][1]["adapter"] = "Ethernet 9"
    e = _block(FakeHyperVHost.reference(), data)
    assert "Ethernet 9" in e.message and "Ethernet 2" in e.hint


def test_running_vm_needing_a_vm_off_change_is_refused_and_plan_says_so():
    host = FakeHyperVHost.reference()
    _up(host)
    vm = [v for v in host.vms if v["name"] == "d4iot-sensor"][0]
    vm["cpu"] = 2
    p = _provider(host)
    plan = p.plan_up(p.read_facts())
    cpu_steps = [s for s in plan.steps if s.name == "vm/processor"]
    assert cpu_steps and cpu_steps[0].requires_vm_off
    host.calls.clear()
    e = _block(host)
    assert "Running" in e.message and "Set-VMProcessor" in e.message and "Stop-VM" in e.hint
    vm["state"] = "Off"
    rep = _up(host)
    assert rep.applied and vm["cpu"] == 4 and vm["state"] == "Running"


def test_drift_on_a_running_vm_that_can_change_live_is_applied():
    host = FakeHyperVHost.reference()
    _up(host)
    vm = [v for v in host.vms if v["name"] == "d4iot-sensor"][0]
    vm["adapters"][1]["vmq_weight"] = 100
    vm["adapters"][1]["vlan"] = {"mode": "Untagged", "access_id": 0, "allowed": [], "native": 0}
    host.calls.clear()
    rep = _up(host)
    assert [c.name for c in host.writes] == ["vmnic/set", "vmnic/vlan"]
    assert rep.converged and vm["adapters"][1]["vmq_weight"] == 0


def test_status_reports_drift_per_resource():
    host = FakeHyperVHost.reference()
    ctx = _ctx(host)
    items = {s.resource: s for s in app.status(ctx)}
    assert items["hyperv.vmswitch:Core"].state == "missing"
    _up(host)
    items = {s.resource: s for s in app.status(ctx)}
    assert not any(s.drifted for s in items.values())
    assert items["hyperv.vmstate:d4iot-sensor"].state == "running"
    [v for v in host.vnics if v["switch"] == "Core"][0]["dns"] = ["1.1.1.1"]
    items = {s.resource: s for s in app.status(ctx)}
    assert items["hyperv.dns:Core"].state == "drift"
    assert any("1.1.1.1" in d for d in items["hyperv.dns:Core"].details)


def test_convergence_failure_is_reported(monkeypatch):
    host = FakeHyperVHost.reference()
    monkeypatch.setattr(host, "_do_vmswitch_span", lambda p: {"changed": True})  # a no-op host
    with pytest.raises(ConvergenceError) as ei:
        _up(host)
    assert "hyperv.span:Azkaban" in ei.value.message


def test_assume_empty_never_builds_a_runner():
    calls = []

    def factory():
        calls.append(1)
        raise AssertionError("must not connect")

    p = HyperVProvider(loaded().model, runner_factory=factory)
    plan = p.plan_up(p.empty_facts())
    assert len(plan.steps) == N_STEPS and not calls
    p.close()


def test_vlan_drift_text_shows_ranges_not_the_hosts_int_array():
    host = FakeHyperVHost.reference()
    _up(host)
    mon = [v for v in host.vms if v["name"] == "d4iot-sensor"][0]["adapters"][1]
    assert mon["vlan"]["allowed"] == list(range(1, 4095))  # what Get-VMNetworkAdapterVlan gives
    mon["vlan"]["native"] = 7  # the full list stays: only the native VLAN drifted
    items = {s.resource: s for s in app.status(_ctx(host))}
    detail = " ".join(items["hyperv.vmnic:d4iot-sensor/Monitor"].details)
    assert "trunk allowed=1-4094 native=7" in detail and "1,2,3" not in detail
    assert len(detail) < 200
    mon["vlan"]["allowed"] = list(range(1, 52)) + list(range(53, 4095))
    mon["vlan"]["native"] = 0
    p = _provider(host)
    change = {c.resource: c for c in p.plan_up(p.read_facts()).changes}[
        "hyperv.vmnic:d4iot-sensor/Monitor"]
    assert change.before == {"vlan": "trunk allowed=1-51,53-4094 native=0"}
    assert change.after == {"vlan": "trunk allowed=1-4094 native=0"}
    assert _up(host).converged and mon["vlan"]["allowed"] == list(range(1, 4095))


def test_the_fake_refuses_an_allowed_list_the_cmdlet_refuses():
    host = FakeHyperVHost.reference()
    _up(host)
    from labctl.hyperv.scripts import rendered

    for bad in ("0-10", "1-4095", "ten", "5-"):
        with pytest.raises(RemoteCommandError):
            host.run(rendered("vmnic/vlan", {"VMName": "d4iot-sensor", "Name": "Monitor",
                                             "Mode": "Trunk", "AllowedVlanIdList": bad}))
