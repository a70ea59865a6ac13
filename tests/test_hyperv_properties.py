"""Properties over many host states: whatever drift a human causes on a converged host,
`up` either refuses it in pre-flight (changing nothing) or converges it and the next plan is
empty; `down` with a fault at any step converges on a re-run."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labctl.app import lab as app
from labctl.core.errors import LabctlError, PreflightError
from labctl.core.state import CreatedRecord
from tests.helpers.fake_hyperv import FakeHyperVHost
from tests.helpers.hyperv_lab import fake_factory, loaded

_CONVERGED: FakeHyperVHost | None = None
_RECORD: str = ""


def _converged() -> FakeHyperVHost:
    """A host `up` converged, and the lab's record that `up` left (written into this test's
    state directory: the host and the record go together)."""
    global _CONVERGED, _RECORD
    record = CreatedRecord.of_lab(loaded().model.lab)
    if _CONVERGED is None:
        h = FakeHyperVHost.reference()
        app.up(app.LabContext(loaded(), provider_factory=fake_factory(h)), confirm=lambda p: True)
        _CONVERGED, _RECORD = h, record.path.read_text()
    record.path.parent.mkdir(parents=True, exist_ok=True)
    record.path.write_text(_RECORD)
    h = copy.deepcopy(_CONVERGED)
    h.calls = []
    return h


def _vm(h):
    return [v for v in h.vms if v["name"] == "d4iot-sensor"][0]


def _nic(h, name):
    return [a for a in _vm(h)["adapters"] if a["name"] == name][0]


DRIFTS = {
    "vm off": lambda h: _vm(h).update(state="Off"),
    "cpu": lambda h: _vm(h).update(cpu=2),
    "memory": lambda h: _vm(h).update(memory_startup_mb=4096),
    "dynamic memory": lambda h: _vm(h).update(dynamic_memory=True),
    "secure boot": lambda h: _vm(h).update(secure_boot=False),
    "boot order": lambda h: _vm(h).update(first_boot="disk"),
    "iso ejected": lambda h: _vm(h).update(dvd=[]),
    "vmq on": lambda h: _nic(h, "Monitor").update(vmq_weight=100),
    "mirroring off": lambda h: _nic(h, "Monitor").update(port_mirroring="None"),
    "vlan untagged": lambda h: _nic(h, "Monitor").update(
        vlan={"mode": "Untagged", "access_id": 0, "allowed": [], "native": 0}),
    "nic moved": lambda h: _nic(h, "Management").update(switch="Default Switch"),
    "nic removed": lambda h: _vm(h)["adapters"].remove(_nic(h, "Monitor")),
    "dns": lambda h: [v for v in h.vnics if v["switch"] == "Core"][0].update(dns=["1.1.1.1"]),
    "host ip": lambda h: [v for v in h.vnics if v["switch"] == "Core"][0].update(ips=[]),
    "nat removed": lambda h: h.nats.__setitem__(
        slice(None), [n for n in h.nats if n["name"] != "Core"]),
    "span reset": lambda h: [s for s in h.switches if s["name"] == "Azkaban"][0].update(
        monitor_mode=0),
    "switch notes edited": lambda h: [s for s in h.switches if s["name"] == "Core"][0].update(
        notes="edited by hand\nmanaged-by: labctl lab=homelab"),
    "vm removed": lambda h: h.vms.remove(_vm(h)),
    "switch removed": lambda h: (h.switches.remove(
        [s for s in h.switches if s["name"] == "Azkaban"][0]),
        [a.update(switch=None) for a in _vm(h)["adapters"] if a["switch"] == "Azkaban"]),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(sorted(DRIFTS)), min_size=1, max_size=4, unique=True))
def test_any_drift_is_refused_untouched_or_converged(drifts):
    h = _converged()
    for d in drifts:
        if d in ("switch removed",) and "vm removed" in drifts:
            continue
        try:
            DRIFTS[d](h)
        except (IndexError, ValueError):  # an earlier drift removed the thing
            pass
    ctx = app.LabContext(loaded(), provider_factory=fake_factory(h))
    before = copy.deepcopy(h._state())
    try:
        rep = app.up(ctx, confirm=lambda p: True)
    except PreflightError:
        assert h._state() == before and not h.writes
        _vm(h)["state"] = "Off"  # the documented way out: stop the VM, run up again
        rep = app.up(ctx, confirm=lambda p: True)
    assert rep.converged
    h.calls.clear()
    assert app.up(ctx, confirm=lambda p: True).converged
    assert [c.name for c in h.calls] == ["facts/read"]


def _n_down_steps() -> int:
    h = _converged()
    return len(app.plan(app.LabContext(loaded(), provider_factory=fake_factory(h)),
                        down=True).steps)


@pytest.mark.parametrize("fault", ["error", "timeout"])
def test_down_with_a_fault_at_every_step_converges_on_rerun(fault):
    n = _n_down_steps()
    assert n == 7
    for k in range(1, n + 1):
        h = _converged()  # the record too: a down interrupted earlier in the loop changed it
        h.fail_at, h.fault = k, fault
        ctx = app.LabContext(loaded(), provider_factory=fake_factory(h))
        with pytest.raises(LabctlError):
            app.down(ctx, confirm=lambda p: True)
        h.fail_at = None
        assert app.down(ctx, confirm=lambda p: True).converged
        assert sorted(s["name"] for s in h.switches) == ["Default Switch"]
        assert sorted(v["name"] for v in h.vms) == ["kali"]
        assert [n["name"] for n in h.nats] == ["DefaultSwitchNat"]
        assert sorted(h.files) == [r"d:\vms\kali.vhdx"]
