"""Foundation: playbook validation, errors with file/key/line, secrets, assets, layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from labctl.core.errors import ConfigError
from labctl.core.playbook import load_playbook, parse_playbook
from labctl.core.yamlfile import parse_yaml

ROOT = Path(__file__).resolve().parent.parent


def test_reference_playbook_loads():
    pb = load_playbook(str(ROOT / "playbooks" / "home-lab.yaml")).model
    core = pb.switch("Core")
    assert str(core.host_ip) == "192.168.0.1/24"
    assert [str(d) for d in core.dns] == ["8.8.8.8"]
    assert core.nat.name == "Core" and str(core.nat.prefix) == "192.168.0.0/24"
    az = pb.switch("Azkaban")
    assert az.type == "external" and az.span_source and az.adapter
    vm = pb.vm("d4iot-sensor")
    assert vm.profile == "L100" and vm.generation == 2
    assert vm.resolved() == {"cpu": 4, "memory_mb": 8192, "disk_gb": 100}
    assert vm.vhd_type == "fixed" and not vm.dynamic_memory
    assert [n.name for n in vm.nics] == ["Management", "Monitor"]
    mon = vm.nics[1]
    assert mon.port_mirroring == "destination" and mon.vmq is False
    assert 52 in mon.vlan.allowed and mon.vlan.native == 0
    iot = pb.router.iot_network
    assert (iot.name, iot.ssid, iot.band, iot.auth, iot.vlan) == \
        ("Azkaban", "Azkaban", "2.4", "wpa-wpa2-personal", 52)
    assert str(iot.subnet) == "172.16.1.0/24" and iot.dhcp and not iot.ap_isolation
    assert [str(d) for d in iot.dns] == ["9.9.9.9", "149.112.112.112"]
    assert str(pb.sensor.management_ip) == "192.168.0.101"
    m = pb.sensor.monitored_subnets[0]
    assert (str(m.subnet), m.vlan, m.name) == ("172.16.1.0/24", 52, "IoT")
    assert pb.scanner is not None


BASE = (ROOT / "playbooks" / "home-lab.yaml").read_text()


def _err(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        parse_playbook(parse_yaml(text, "lab.yaml"))
    return ei.value


def _line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


@pytest.mark.parametrize(
    "old,new,key,words",
    [
        ("host_ip: 192.168.0.1/24", "host_ip: 192.168.0.1/33", "switches[0].host_ip",
         "not a valid"),
        ("prefix: 192.168.0.0/24}", "prefix: 192.168.0.0/99}", "switches[0].nat.prefix", "CIDR"),
        ("    vlan: 52\n", "    vlan: 5000\n", "switches[1].vlan", "outside 1-4094"),
        ("ip: 192.168.0.101/24", "ip: 192.168.1.101/24", "vms[0].nics[0].ip", "outside"),
        ("  - name: Azkaban             #", "  - name: Core             #", "switches[1].name",
         "duplicate"),
        ("    iso: D:\\ISO\\defender-for-iot-sensor.iso\n", "", "vms[0]", "no iso"),
        ("    adapter: Ethernet 2       # the physical NIC cabled to the IoT network\n", "",
         "switches[1]", "adapter"),
        ("        switch: Azkaban\n", "        switch: Nowhere\n", "vms[0].nics[1].switch",
         "unknown switch"),
        ("    cpu: 4\n", "    cpu: 2\n", "vms[0]", "smaller than profile L100"),
        ("  auth: negotiate\n", "  auth: negotiate\n  colour: blue\n", "hyperv.colour",
         "unknown key"),
        ("  token: {env: LABCTL_SENSOR_TOKEN}", "  token: hunter2", "sensor.token",
         "never written inline"),
    ],
)
def test_playbook_errors_name_file_key_line(old, new, key, words):
    assert old in BASE, old
    text = BASE.replace(old, new, 1)
    e = _err(text)
    assert e.file == "lab.yaml"
    assert e.key == key, str(e)
    assert words in str(e)
    assert e.line is not None
    assert int(e.exit_code) == 2


def test_yaml_syntax_error_has_line():
    e = _err("lab: x\nswitches: [\n  - a: 1\n  b\n")
    assert "YAML syntax error" in str(e) and e.line is not None


def test_unknown_key_line_points_at_key():
    text = BASE.replace("  auth: negotiate\n", "  auth: negotiate\n  colour: blue\n", 1)
    assert _err(text).line == _line_of(text, "colour: blue")


def test_secret_never_printed(monkeypatch):
    from labctl.core.secrets import REDACTOR, Secret

    s = Secret("canary-XYZ-123")
    assert "canary" not in str(s) and "canary" not in repr(s) and "canary" not in f"{s}"
    assert REDACTOR.scrub("pw=canary-XYZ-123!") == "pw=********!"


def test_no_python_outside_allowed_roots():
    out = subprocess.run(["git", "ls-files", "--others", "--cached", "--exclude-standard", "*.py"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    stray = [p for p in out if p.split("/")[0] not in ("labctl", "tests", "bench")]
    assert stray == []


def test_help_imports_no_heavy_modules():
    code = ("import sys; from labctl.cli import run; run(['--help']); "
            "bad=[m for m in ('scapy','pypsrp','paramiko','nmap','requests','pydantic',"
            "'azure','rich') "
            "if m in sys.modules]; print('HEAVY=' + ','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="


def test_plan_model_enums_serialise_to_the_same_strings_and_carry_verdicts():
    import json

    from labctl.core.model import Action, Change, Ownership, Plan, Step, StepKind

    step = Step("x:y", "create", "echo", {"P": 1}, kind="command", name="x/create")
    assert step.action is Action.CREATE and step.kind is StepKind.COMMAND
    assert step.to_dict()["action"] == "create" and step.to_dict()["kind"] == "command"
    assert Change("x:y", "create", "missing", steps=(step,)).state is Ownership.ABSENT
    assert Change("x:y", "noop", "in shape").state is Ownership.OWNED
    assert Change("x:y", "update", "differs", steps=(step,)).state is Ownership.DRIFTED
    foreign = Change("x:y", "noop", "left alone", state=Ownership.FOREIGN)
    assert foreign.foreign and foreign.is_noop
    plan = Plan("p", "lab", [Change("x:y", Action.CREATE, "missing", steps=(step,))])
    assert "blockers" not in plan.to_dict()
    plan.block("a switch of that name is not ours", "rename it")
    doc = json.loads(json.dumps(plan.to_dict()))
    assert doc["summary"] == {"create": 1} and doc["changes"][0]["state"] == "absent"
    assert doc["blockers"] == [{"message": "a switch of that name is not ours",
                                "hint": "rename it"}]


def test_netns_operations_render_run_and_serialise_as_plain_data(tmp_path):
    from labctl.core.model import Step
    from labctl.netns import ops

    run = ops.Run(("nft", "-f", "-"), netns="lab-host", input="table ip t\n")
    assert run.render() == "ip netns exec lab-host nft -f - <<'EOF'\ntable ip t\nEOF"
    assert ops.ip("lab-host", "link", "set", "lo", "up").render() == \
        "ip -n lab-host link set lo up"
    step = Step("netns.x:y", "create", ops.render([run, ops.Stop("wan")]),
                {"ops": [run, ops.Stop("wan")]}, kind="command")
    assert step.to_dict()["params"] == {"ops": [
        {"argv": ["nft", "-f", "-"], "netns": "lab-host", "input": "table ip t\n"},
        {"op": "stop", "name": "wan"}]}
    ctx = ops.OpContext(state_dir=tmp_path, playbook_path=tmp_path / "lab.yaml",
                        child_env=lambda name: {})
    ops.Mark("lab", ("lab-host",)).run(ctx)
    marker = (tmp_path / ops.MARKER).read_text()
    assert '"namespaces": [\n    "lab-host"\n  ]' in marker
    ops.Forget("lab").run(ctx)
    assert not (tmp_path / ops.MARKER).exists()
