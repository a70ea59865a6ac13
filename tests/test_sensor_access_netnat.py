"""``sensor.access.mode: netnat``: the Hyper-V provider publishes a host port to the sensor's
management address, port 443, with Add-NetNatStaticMapping. A planned, diffed, owned
resource, driven through the stateful fake Hyper-V host: it shows in the plan, is read back in
facts, a second plan is empty, `down` removes it, and a mapping this lab did not create is
left alone (or refused when it holds the wanted port)."""

from __future__ import annotations

import json

import pytest

from labctl.app import lab as app
from labctl.core.errors import PreflightError
from labctl.core.model import Action, Ownership
from labctl.core.state import CreatedRecord
from labctl.hyperv.diff import facts_params, plan_up
from labctl.hyperv.facts import parse_facts
from labctl.hyperv.provider import HyperVProvider
from tests.helpers.fake_hyperv import FakeHyperVHost
from tests.helpers.hyperv_lab import loaded, reference_data

RES = "hyperv.netnat-mapping:8443"


def _data(mode: str = "netnat", port: int = 8443) -> dict:
    data = reference_data(keep_sensor=True)
    data["sensor"]["access"] = {"mode": mode, "host_port": port}
    return data


def _ctx(host: FakeHyperVHost, data: dict) -> app.LabContext:
    return app.LabContext(loaded=loaded(data),
                          provider_factory=lambda ctx: HyperVProvider(ctx.loaded.model, host))


def _core_nat(data: dict) -> str:
    return next(s["nat"]["name"] for s in data["switches"] if s.get("nat"))


def _mapping_calls(host: FakeHyperVHost) -> list[str]:
    return [c.name for c in host.writes if c.name.startswith("netnat/static")]


def test_plan_shows_the_mapping_with_its_values_as_parameters():
    data = _data()
    plan = app.plan(_ctx(FakeHyperVHost.reference(), data))
    change = next(c for c in plan.changes if c.resource == RES)
    assert change.action is Action.CREATE
    (s,) = change.steps
    assert s.name == "netnat/static-add"
    assert s.params == {"NatName": _core_nat(data), "Protocol": "TCP",
                        "ExternalIPAddress": "0.0.0.0", "ExternalPort": 8443,
                        "InternalIPAddress": "192.168.0.101", "InternalPort": 443}
    assert "8443" not in s.script and "192.168.0.101" not in s.script
    # the mapping comes after the NAT it lives in
    names = [st.name for st in plan.steps]
    assert names.index("netnat/create") < names.index("netnat/static-add")


def test_direct_mode_plans_no_mapping():
    plan = app.plan(_ctx(FakeHyperVHost.reference(), _data("direct")))
    assert not any(c.resource.startswith("hyperv.netnat-mapping") for c in plan.changes)


def test_apply_reads_back_then_second_plan_is_empty_and_down_removes_it():
    data = _data()
    host = FakeHyperVHost.reference()
    app.up(_ctx(host, data), confirm=lambda p: True)
    assert host.nat_mappings == [{
        "id": host.nat_mappings[0]["id"], "nat": _core_nat(data), "protocol": "TCP",
        "external_ip": "0.0.0.0", "external_port": 8443, "internal_ip": "192.168.0.101",
        "internal_port": 443}]
    pb = loaded(data).model
    facts = parse_facts(host._do_facts_read(facts_params(pb)))
    assert [(m.nat, m.external_port, m.internal_ip, m.internal_port)
            for m in facts.nat_mappings] == [(_core_nat(data), 8443, "192.168.0.101", 443)]
    rec = CreatedRecord.of_lab(pb.lab).entries(kind="netnat-mapping")
    assert [e.get("external_port") for e in rec] == ["8443"]
    again = app.plan(_ctx(host, data))
    assert again.empty, [c.resource for c in again.changes if not c.is_noop]
    before = len(host.writes)
    app.up(_ctx(host, data), confirm=lambda p: True)
    assert len(host.writes) == before
    down = app.plan(_ctx(host, data), down=True)
    names = [s.name for s in down.steps]
    assert names.index("netnat/static-remove") < names.index("netnat/remove")
    app.down(_ctx(host, data), confirm=lambda p: True)
    assert host.nat_mappings == []
    assert CreatedRecord.of_lab(pb.lab).entries(kind="netnat-mapping") == []


def test_down_leaves_a_foreign_mapping_alone():
    data = _data()
    host = FakeHyperVHost.reference()
    app.up(_ctx(host, data), confirm=lambda p: True)
    # a user's own mapping in the lab's NAT and one in the Default Switch's NAT
    host.add_static_mapping(_core_nat(data), "TCP", "0.0.0.0", 2222, "192.168.0.50", 22)
    host.add_static_mapping("DefaultSwitchNat", "UDP", "0.0.0.0", 8443, "172.23.112.9", 53)
    plan = app.plan(_ctx(host, data))
    assert plan.empty
    # down removes only the lab's mapping by name; the user's 2222 mapping lives in the lab's
    # NAT and goes with it (as on Windows); the Default Switch's mapping stays
    app.down(_ctx(host, data), confirm=lambda p: True)
    removes = [c.params for c in host.writes if c.name == "netnat/static-remove"]
    assert removes == [{"NatName": _core_nat(data), "Protocol": "TCP", "ExternalPort": 8443,
                        "InternalIPAddress": "192.168.0.101", "InternalPort": 443}]
    assert [(m["nat"], m["external_port"]) for m in host.nat_mappings] == [
        ("DefaultSwitchNat", 8443)]


def test_foreign_mapping_on_the_wanted_port_blocks_up_and_nothing_is_written():
    data = _data()
    host = FakeHyperVHost.reference()
    host.add_static_mapping("DefaultSwitchNat", "TCP", "0.0.0.0", 8443, "172.23.112.9", 443)
    before = len(host.writes)
    with pytest.raises(PreflightError, match="host port TCP 8443 is already mapped") as e:
        app.up(_ctx(host, data), confirm=lambda p: True)
    assert "sensor.access.host_port" in (e.value.hint or "")
    assert len(host.writes) == before
    assert len(host.nat_mappings) == 1


def test_foreign_exact_mapping_is_used_and_left_by_down():
    data = _data()
    host = FakeHyperVHost.reference()
    app.up(_ctx(host, _data("direct")), confirm=lambda p: True)
    host.add_static_mapping(_core_nat(data), "TCP", "0.0.0.0", 8443, "192.168.0.101", 443)
    plan = app.plan(_ctx(host, data))
    change = next(c for c in plan.changes if c.resource == RES)
    assert change.is_noop and change.state is Ownership.FOREIGN
    down = app.plan(_ctx(host, data), down=True)
    assert "netnat/static-remove" not in [s.name for s in down.steps]


def test_changed_host_port_replaces_the_lab_mapping_and_direct_removes_it():
    host = FakeHyperVHost.reference()
    app.up(_ctx(host, _data(port=8443)), confirm=lambda p: True)
    app.up(_ctx(host, _data(port=9443)), confirm=lambda p: True)
    assert [m["external_port"] for m in host.nat_mappings] == [9443]
    assert app.plan(_ctx(host, _data(port=9443))).empty
    app.up(_ctx(host, _data("direct")), confirm=lambda p: True)
    assert host.nat_mappings == []
    assert app.plan(_ctx(host, _data("direct"))).empty


def test_a_mapping_removed_by_hand_is_dropped_from_the_record_and_planned_again():
    data = _data()
    host = FakeHyperVHost.reference()
    app.up(_ctx(host, data), confirm=lambda p: True)
    host.nat_mappings.clear()
    plan = app.plan(_ctx(host, data))
    assert [c.action for c in plan.changes if c.resource == RES] == [Action.CREATE]
    assert CreatedRecord.of_lab("homelab").entries(kind="netnat-mapping") == []


def test_no_nat_covering_the_sensor_is_a_blocker():
    data = _data()
    for s in data["switches"]:
        s.pop("nat", None)
    pb = loaded(data).model
    host = FakeHyperVHost.reference()
    d = plan_up(pb, parse_facts(host._do_facts_read(facts_params(pb))))
    assert any("netnat but no switch's nat covers" in b.message for b in d.blockers)


def test_labctl_plan_and_status_show_the_mapping(cli_run, tmp_path):
    from tests.helpers.hyperv_lab import fake_factory, write_playbook

    host = FakeHyperVHost.reference()
    pb = write_playbook(tmp_path, _data())
    r = cli_run("plan", "-f", str(pb), "--json",
                overrides={"provider_factory": fake_factory(host)})
    assert r.exit_code == 0, r.stderr
    doc = r.json()
    text = json.dumps(doc)
    assert RES in text and "Add-NetNatStaticMapping" in text
    app.up(_ctx(host, _data()), confirm=lambda p: True)
    r = cli_run("plan", "-f", str(pb), "--exit-code",
                overrides={"provider_factory": fake_factory(host)})
    assert r.exit_code == 0, r.stdout + r.stderr  # nothing pending
    r = cli_run("status", "-f", str(pb), "--json",
                overrides={"provider_factory": fake_factory(host)})
    rows = [x for x in r.json()["resources"] if x["resource"] == RES]
    assert rows == [{"resource": RES, "state": "ok", "details": [
        "TCP 0.0.0.0:8443 -> 192.168.0.101:443 on NetNat Core is published"]}]
    host.nat_mappings.clear()  # removed by hand: status says it is missing
    r = cli_run("status", "-f", str(pb), "--json",
                overrides={"provider_factory": fake_factory(host)})
    assert [x["state"] for x in r.json()["resources"] if x["resource"] == RES] == ["missing"]
