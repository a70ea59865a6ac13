"""Bad input is refused by the model: exit 2, the file, the key and the line in the message,
and nothing contacted (the fake Hyper-V host sees no call).

One test per class of hole found by the attack run: YAML that expands or nests without
bound, numbers out of range, silent type coercion, address rules, control characters,
TLS with credentials, asset names that are paths, and URLs in place of a host.
"""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from labctl.core.errors import ConfigError, ExitCode
from tests.helpers.fake_hyperv import FakeHyperVHost
from tests.helpers.hyperv_lab import fake_factory, reference_data

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def host() -> FakeHyperVHost:
    return FakeHyperVHost.reference()


@pytest.fixture
def run(cli_run, host):
    def _run(*args: str):
        return cli_run(*args, overrides={"provider_factory": fake_factory(host)})
    return _run


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    p = tmp_path / "lab.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=False, width=200))
    return p


def _line_of(path: Path, needle: str) -> int:
    """The 1-based line of the one line of ``path`` that contains ``needle``; with
    ``anchor>>needle``, the first line containing ``needle`` after the anchor's line."""
    lines = path.read_text().splitlines()
    start = 0
    if ">>" in needle:
        anchor, needle = needle.split(">>")
        start = _line_of(path, anchor)
        return next(i for i, ln in enumerate(lines, 1) if i > start and needle in ln)
    hits = [i for i, ln in enumerate(lines, 1) if needle in ln]
    assert len(hits) == 1, (needle, hits, path.read_text())
    return hits[0]


def refused(run, host: FakeHyperVHost, path: Path, key: str, needle: str | None,
            words: str) -> str:
    """``plan --assume-empty`` and ``up -y`` against the fake host: exit 2, FILE:LINE: KEY,
    the words of the message, and the host saw nothing."""
    for cmd in (("plan", "-f", str(path), "--assume-empty"), ("up", "-f", str(path), "-y")):
        r = run(*cmd)
        assert r.exit_code == ExitCode.USAGE, (cmd, r)
        err = r.stderr
        m = re.search(rf"{re.escape(str(path))}:(\d+): (\S+): ", err)
        assert m, err
        assert m.group(2) == key, err
        if needle is not None:
            assert int(m.group(1)) == _line_of(path, needle), err
        assert re.search(words, err), err
        assert "unexpected" not in err.lower() and "Traceback" not in err
    assert host.calls == []
    return err


def mutate(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """``data`` with the value at ``a.b[0].c`` set (a deep copy)."""
    out = copy.deepcopy(data)
    node: Any = out
    parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", dotted)]
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value
    return out


def twin_data() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "playbooks" / "twin.yaml").read_text())
    data.pop("scanner", None)
    return data


# -- 1. YAML that expands or nests without bound ----------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n"
    for i in range(8))


@pytest.mark.parametrize("text,line,words", [
    ("version: 1\nlab: x\n" + BOMB, 3, r"anchors \(&name\) are not supported"),
    ("version: 1\nlab: x\ndescription: *nowhere\n", 3, r"alias|YAML"),
    ("version: 1\nlab: x\nswitches: " + "[" * 10000 + "]" * 10000 + "\n", 3,
     r"nested deeper than 64"),
    ("version: 1\nlab: x\ntwin: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", 3,
     r"nested deeper than 64"),
    ("version: 1\nlab: x\nbase: &b {lab: y}\n<<: *b\n", 3, r"anchors"),
], ids=["alias-bomb", "alias", "brackets", "braces", "merge"])
def test_yaml_alias_bomb_and_deep_nesting_are_refused(run, host, tmp_path, text, line, words):
    p = tmp_path / "lab.yaml"
    p.write_text(text)
    t0 = time.monotonic()
    for cmd in (("plan", "-f", str(p), "--assume-empty"), ("up", "-f", str(p), "-y")):
        r = run(*cmd)
        assert r.exit_code == ExitCode.USAGE, r
        assert f"{p}:{line}:" in r.stderr and re.search(words, r.stderr), r.stderr
        assert "RecursionError" not in r.stderr and "unexpected" not in r.stderr.lower()
    assert time.monotonic() - t0 < 10  # an expanded bomb takes minutes and gigabytes
    assert host.calls == []


def test_a_file_larger_than_the_limit_is_refused_unread(run, host, tmp_path):
    from labctl.core.yamlfile import MAX_BYTES

    p = tmp_path / "lab.yaml"
    p.write_text("version: 1\nlab: x\n" + ("# padding\n" * (MAX_BYTES // 10 + 1)))
    r = run("plan", "-f", str(p), "--assume-empty")
    assert r.exit_code == ExitCode.USAGE and f"{p}: file is larger than" in r.stderr, r
    assert host.calls == []


def _every_loader() -> list[tuple[str, Any]]:
    from labctl.core.expectations import load_expectations
    from labctl.core.playbook import load_playbook
    from labctl.router.asus.emulator.state import EmulatorNvram
    from labctl.scans.diff import load_baseline
    from labctl.scans.profiles import load_profile_file
    from labctl.sensor.config import load_config, load_rules_file
    from labctl.traffic.persona import load_persona

    def nvram(path: str) -> object:
        from labctl.core.yamlfile import load_yaml, validate
        return validate(EmulatorNvram, load_yaml(path))

    return [("playbook", load_playbook), ("scan profile", load_profile_file),
            ("baseline", load_baseline), ("engines", load_config),
            ("rules", load_rules_file), ("expectations", load_expectations),
            ("persona", load_persona), ("emulator nvram", nvram)]


@pytest.mark.parametrize("kind,loader", _every_loader(), ids=lambda x: str(x)[:20])
def test_every_yaml_labctl_loads_refuses_aliases_and_depth(tmp_path, kind, loader):
    for i, text in enumerate((BOMB, "x: " + "[" * 5000 + "]" * 5000 + "\n")):
        p = tmp_path / f"f{i}.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError) as e:
            loader(str(p))
        assert e.value.exit_code == ExitCode.USAGE
        assert str(p) in str(e.value), (kind, str(e.value))
        assert re.search(r"anchors|nested deeper", str(e.value)), (kind, str(e.value))


#: modules that still parse YAML themselves: labctl/traffic/ports.py reads only the shipped
#: sensor/ports.yaml with yaml.safe_load (no alias or depth limit, no line numbers); it
#: moves to load_yaml in the traffic slice, and then leaves this set
STILL_OWN_LOADER: set[str] = set()


def test_no_module_of_labctl_parses_yaml_on_its_own():
    """Every YAML goes through labctl.core.yamlfile (its limits hold only there)."""
    offenders = set()
    for f in (ROOT / "labctl").rglob("*.py"):
        if f.name == "yamlfile.py" and f.parent.name == "core":
            continue
        text = f.read_text()
        if re.search(r"\byaml\.(safe_load|load|full_load|unsafe_load|compose|parse|"
                     r"load_all|safe_load_all|compose_all)\b|\b(Safe|C|Full|Unsafe)?Loader\b",
                     text):
            offenders.add(str(f.relative_to(ROOT)))
    assert offenders <= STILL_OWN_LOADER, offenders - STILL_OWN_LOADER


# -- 2. numbers out of range ------------------------------------------------------------

@pytest.mark.parametrize("dotted,value,words", [
    ("twin.irc_port", 70000, r"70000 is outside 1-65535"),
    ("twin.irc_port", -1, r"-1 is outside 1-65535"),
    ("twin.irc_port", 0, r"0 is outside 1-65535"),
    ("hyperv.port", 99999, r"outside 1-65535"),
    ("hyperv.timeout", 0, r"outside 5-3600"),
    ("vms[0].cpu", 241, r"outside 1-240"),
    ("vms[0].memory_mb", 256, r"outside 512-"),
    ("vms[0].disk_gb", 10 ** 9, r"outside 1-65536"),
    ("vms[0].generation", 3, r"outside 1-2"),
    ("switches[1].vlan", 4095, r"outside 1-4094"),
    ("vms[0].nics[1].vlan.native", 5000, r"outside 0-4094"),
], ids=lambda x: str(x))
def test_numbers_out_of_range(run, host, tmp_path, dotted, value, words):
    data = twin_data() if dotted.startswith("twin") else reference_data()
    if dotted.startswith("twin"):
        data["provider"] = "hyperv"
        data["hyperv"] = reference_data()["hyperv"]
    p = _write(tmp_path, mutate(data, dotted, value))
    leaf = dotted.rsplit(".", 1)[-1]
    refused(run, host, p, dotted, f"{leaf}: {value}", words)


def test_lists_have_a_length_bound(run, host, tmp_path):
    data = reference_data()
    data["devices"] = [{"name": f"d{i}", "ip": f"10.{i // 250}.{i % 250}.1"}
                       for i in range(4097)]
    p = _write(tmp_path, data)
    refused(run, host, p, "devices", "devices:", r"at most 4096")


# -- 3. strict types, no silent coercion ------------------------------------------------

@pytest.mark.parametrize("dotted,value,words", [
    ("switches[1].vlan", "\u0665\u0662", r"whole number 1-4094 written as a YAML integer"),
    ("switches[1].vlan", "5_2", r"YAML integer"),
    ("switches[1].vlan", "52", r"YAML integer"),
    ("switches[1].vlan", 52.0, r"YAML integer"),
    ("switches[1].vlan", True, r"YAML integer"),
    ("vms[0].cpu", "4", r"YAML integer"),
    ("vms[0].cpu", 4.0, r"YAML integer"),
    ("vms[0].generation", True, r"YAML integer"),
    ("hyperv.timeout", "1_20", r"YAML integer"),
    ("vms[0].nics[1].vlan.allowed", "1-4\u0660\u0669\u0664", r"ASCII digits"),
    ("vms[0].nics[1].vlan.allowed", "5_2", r"ASCII digits"),
    ("vms[0].nics[1].vlan.allowed", 1.5, r"VLAN list"),
    ("hyperv.ssl", "false", r"valid boolean"),
    ("vms[0].start", 1, r"valid boolean"),
    ("switches[1].subnet", "172.16.1.0", r"needs a prefix length"),
    ("switches[0].host_ip", "192.168.0.1", r"needs a prefix length"),
    ("switches[0].nat.prefix", "192.168.0.0", r"needs a prefix length"),
    ("vms[0].nics[0].gateway", "\uff11\uff19\uff12.168.0.1", r"ASCII dotted decimal"),
    ("devices[0].ip", "\u0661\u0667\u0662.16.1.21", r"ASCII dotted decimal"),
    ("devices[0].ip", 2886729985, r"must be a string"),
    ("version", True, r"version must be the YAML integer 1"),
], ids=lambda x: repr(x))
def test_strict_types(run, host, tmp_path, dotted, value, words):
    p = _write(tmp_path, mutate(reference_data(), dotted, value))
    refused(run, host, p, dotted, None, words)


# -- 4. address rules -------------------------------------------------------------------

def _add_device(data: dict[str, Any], **kw: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    out.setdefault("devices", []).append(kw)
    return out


@pytest.mark.parametrize("case", [
    "host_ip-network", "host_ip-broadcast", "nic-network", "nic-broadcast", "gateway-broadcast",
    "gateway-self", "device-broadcast", "device-network", "dns-zero", "dns-broadcast",
    "gateway-without-ip", "twin-device-broadcast",
    "same-subnet", "overlapping-subnet", "dup-device-ip", "dup-twin-vs-lab-ip",
    "dup-nic-vs-device", "dup-mac", "device-on-iot-gateway", "device-on-host-vnic",
    "iot-gateway-network-address",
])
def test_address_rules(run, host, tmp_path, case):
    ref = reference_data(keep_router=True)
    twin = twin_data()
    twin["provider"] = "hyperv"
    twin["hyperv"] = ref["hyperv"]
    cases: dict[str, tuple[dict[str, Any], str, str | None, str]] = {
        "host_ip-network": (mutate(ref, "switches[0].host_ip", "192.168.0.0/24"),
                            "switches[0].host_ip", "host_ip: 192.168.0.0/24",
                            r"network address of 192.168.0.0/24"),
        "host_ip-broadcast": (mutate(ref, "switches[0].host_ip", "192.168.0.255/24"),
                              "switches[0].host_ip", "host_ip: 192.168.0.255/24",
                              r"broadcast address"),
        "nic-network": (mutate(ref, "vms[0].nics[0].ip", "192.168.0.0/24"),
                        "vms[0].nics[0].ip", "ip: 192.168.0.0/24", r"network address"),
        "nic-broadcast": (mutate(ref, "vms[0].nics[0].ip", "192.168.0.255/24"),
                          "vms[0].nics[0].ip", "ip: 192.168.0.255/24", r"broadcast address"),
        "gateway-broadcast": (mutate(ref, "vms[0].nics[0].gateway", "192.168.0.255"),
                              "vms[0].nics[0].gateway", "gateway: 192.168.0.255",
                              r"192.168.0.255 is the broadcast"),
        "gateway-self": (mutate(ref, "vms[0].nics[0].gateway", "192.168.0.101"),
                         "vms[0].nics[0].gateway", "gateway: 192.168.0.101",
                         r"the NIC's own address"),
        "device-broadcast": (mutate(ref, "devices[1].ip", "172.16.1.255"), "devices[1].ip",
                             "172.16.1.255", r"device feeder2: 172.16.1.255 is the broadcast"),
        "device-network": (mutate(ref, "devices[1].ip", "172.16.1.0"), "devices[1].ip",
                           "ip: 172.16.1.0", r"network address of 172.16.1.0/24"),
        "dns-zero": (mutate(ref, "switches[0].dns", ["0.0.0.0"]), "switches[0].dns[0]",
                     "- 0.0.0.0", r"DNS server: 0.0.0.0 is not a host address"),
        "dns-broadcast": (mutate(ref, "switches[0].dns", ["8.8.8.8", "192.168.0.255"]),
                          "switches[0].dns[1]", "- 192.168.0.255",
                          r"DNS server: 192.168.0.255 is the broadcast address"),
        "gateway-without-ip": (mutate(ref, "vms[0].nics[0].ip", None),
                               "vms[0].nics[0].gateway", "gateway: 192.168.0.1",
                               r"gateway needs ip"),
        "twin-device-broadcast": (mutate(twin, "twin.devices[0].ip", "172.16.1.255/24"),
                                  "twin.devices[0].ip", "172.16.1.255/24",
                                  r"broadcast address"),
        "same-subnet": (mutate(ref, "switches[1].subnet", "192.168.0.0/24"),
                        "switches[1].subnet", "subnet: 192.168.0.0/24",
                        r"overlaps switches\[0\] \(192.168.0.0/24\)"),
        "overlapping-subnet": (mutate(ref, "switches[1].subnet", "192.168.0.128/25"),
                               "switches[1].subnet", "subnet: 192.168.0.128/25",
                               r"two switches cannot share a subnet"),
        "dup-device-ip": (mutate(ref, "devices[1].ip", "172.16.1.21"), "devices[1].ip",
                          "name: feeder2>>ip:", r"device feeder2 and device feeder1 \(devices\[0\]"
                          r"\.ip\) both use 172.16.1.21"),
        "dup-twin-vs-lab-ip": (_add_device(twin, name="plug", ip="172.16.1.40"),
                               "devices[0].ip", "name: plug>>ip:",
                               r"device plug and twin device google-home"),
        "dup-nic-vs-device": (_add_device(ref, name="thief", ip="192.168.0.101"),
                              "devices[5].ip", "name: thief>>ip:",
                              r"device thief and VM d4iot-sensor NIC Management"),
        "dup-mac": (mutate(twin, "twin.devices[1].mac", "10:D5:61:A1:00:21"),
                    "twin.devices[1].mac", "10:D5:61:A1:00:21",
                    r"both use MAC 10:d5:61:a1:00:21"),
        "device-on-iot-gateway": (mutate(ref, "devices[0].ip", "172.16.1.1"), "devices[0].ip",
                                  "name: feeder1>>ip:", r"172.16.1.1, the IoT network's gateway"),
        "device-on-host-vnic": (_add_device(ref, name="plug", ip="192.168.0.1"),
                                "devices[5].ip", "name: plug>>ip:",
                                r"device plug and switch Core's host vNIC"),
        "iot-gateway-network-address": (mutate(ref, "router.iot_network.gateway", "172.16.1.0"),
                                        "router.iot_network.gateway", "gateway: 172.16.1.0",
                                        r"172.16.1.0 is the network address"),
    }
    data, key, needle, words = cases[case]
    p = _write(tmp_path, data)
    refused(run, host, p, key, needle, words)


def test_the_reference_playbooks_pass_the_address_rules(cli_run, repo_root):
    for name in ("home-lab.yaml", "twin.yaml"):
        r = cli_run("plan", "-f", str(repo_root / "playbooks" / name), "--assume-empty")
        assert r.exit_code == 0, (name, r)


# -- 5. control characters and malformed strings ----------------------------------------

CONTROL = ["\n", "\r", "\x00", "\x1b", "\t", "\x7f", "\x85", "\x9b", "\u2028", "\u2029"]


@pytest.mark.parametrize("ch", CONTROL, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("dotted,value", [
    ("description", "lab{}x"),
    ("hyperv.vhd_path", "D:\\VMs{}\\Disks"),
    ("hyperv.vm_path", "D:\\VMs\\{}"),
    ("hyperv.user", "LAB\\admin{}"),
    ("hyperv.ca_trust_path", "/etc/labctl/ca{}.pem"),
    ("hyperv.ssh_key", "~/.ssh/id{}"),
    ("vms[0].iso", "D:\\ISO\\sensor{}.iso"),
    ("vms[0].notes", "note{}more"),
    ("switches[1].adapter", "Ethernet{}2"),
    ("switches[0].notes", "x{}y"),
    ("devices[0].description", "feeder{}"),
    ("devices[0].name", "feeder1{}"),
    ("switches[0].name", "Core{}"),
])
def test_control_characters_are_refused(run, host, tmp_path, dotted, value, ch):
    p = _write(tmp_path, mutate(reference_data(), dotted, value.format(ch)))
    refused(run, host, p, dotted, None,
            rf"control characters \(found U\+{ord(ch):04X}\)|not a valid name|not an absolute")


@pytest.mark.parametrize("dotted,value,words", [
    ("hyperv.vhd_path", "Disks\\lab", r"not an absolute Windows path"),
    ("vms[0].iso", "/srv/iso/sensor.iso", r"not an absolute Windows path"),
    ("vms[0].iso", "D:\\ISO\\a|b.iso", r"cannot contain \|"),
    ("vms[0].iso", "D:\\ISO\\a:b.iso", r"cannot contain :"),
    ("vms[0].iso", "D:\\" + "x" * 300, r"more than 260"),
    ("hyperv.host", "hyper v01", r"not a host name"),
    ("hyperv.host", "hyperv01.lab.example\n", r"control characters"),
    ("hyperv.host", "h\u0131perv.example", r"not a host name"),
    ("devices[0].mac", "01:00:5e:00:00:01", r"multicast MAC"),
    ("devices[0].mac", "10:d5:61:a1:00:21\n", r"not a MAC address"),
], ids=lambda x: repr(x)[:30])
def test_malformed_paths_hosts_and_macs(run, host, tmp_path, dotted, value, words):
    p = _write(tmp_path, mutate(reference_data(), dotted, value))
    refused(run, host, p, dotted, None, words)


# -- 6. TLS with credentials ------------------------------------------------------------

@pytest.mark.parametrize("auth", ["basic", "credssp"])
def test_cert_validation_off_is_refused_with_basic_and_credssp(run, host, tmp_path, auth):
    data = mutate(mutate(reference_data(), "hyperv.auth", auth), "hyperv.cert_validation",
                  False)
    p = _write(tmp_path, data)
    refused(run, host, p, "hyperv", "hyperv:", rf"cert_validation: false with auth: {auth}.*"
            r"ca_trust_path")


def test_basic_auth_without_tls_is_refused(run, host, tmp_path):
    data = mutate(mutate(reference_data(), "hyperv.auth", "basic"), "hyperv.ssl", False)
    p = _write(tmp_path, data)
    refused(run, host, p, "hyperv", "hyperv:", r"auth: basic sends the password in clear")


def test_cert_validation_off_with_negotiate_carries_a_warning(tmp_path):
    from labctl.core.playbook import load_playbook

    p = _write(tmp_path, mutate(reference_data(), "hyperv.cert_validation", False))
    hv = load_playbook(str(p)).model.hyperv
    assert hv is not None and hv.tls_warning is not None
    assert "not authenticated" in hv.tls_warning and "ca_trust_path" in hv.tls_warning
    ok = load_playbook(str(_write(tmp_path, reference_data()))).model.hyperv
    assert ok is not None and ok.tls_warning is None


# -- 7. asset names that are paths, URLs in place of a host ------------------------------

@pytest.mark.parametrize("persona", ["../../etc/passwd", "/etc/passwd", "a/b", "..", "x.yaml",
                                     "pet-feeder\n", "pet\\feeder", ""])
def test_persona_names_cannot_be_paths(run, host, tmp_path, persona):
    data = twin_data()
    data["provider"] = "hyperv"
    data["hyperv"] = reference_data()["hyperv"]
    p = _write(tmp_path, mutate(data, "twin.devices[0].persona", persona))
    refused(run, host, p, "twin.devices[0].persona", None, r"is not an asset name")


def test_persona_file_stays_inside_its_folder(tmp_path):
    from labctl.traffic.persona import persona_file

    folder = tmp_path / "devices"
    folder.mkdir()
    (tmp_path / "secret.yaml").write_text("name: x\n")
    (folder / "ok.yaml").write_text("name: ok\n")
    (folder / "link.yaml").symlink_to(tmp_path / "secret.yaml")
    assert persona_file(folder, "ok") == (folder / "ok.yaml").resolve()
    for bad in ("../secret", "link", "/etc/passwd"):
        with pytest.raises(ConfigError) as e:
            persona_file(folder, bad)
        assert e.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize("value", ["https://[::1", "https://hyperv01:5986/wsman", "[::1",
                                   "::1]", "admin:pw@hyperv01"])
def test_a_url_as_host_is_a_clear_error(run, host, tmp_path, value):
    p = _write(tmp_path, mutate(reference_data(), "hyperv.host", value))
    err = refused(run, host, p, "hyperv.host", None, r"not a (host name|valid IPv6)")
    assert "pw@" not in err or value != "admin:pw@hyperv01" or "not a" in err


def test_persona_files_are_strict(tmp_path):
    from labctl.traffic.persona import load_persona

    cases = [
        ("listeners: [{port: 70000}]", "listeners[0].port", r"outside 1-65535"),
        ("listeners: [{port: '80'}]", "listeners[0].port", r"YAML integer"),
        ("outbound: [{port: 0}]", "outbound[0].port", r"outside 1-65535"),
        ("outbound: [{every_seconds: 0.1}]", "outbound[0].every_seconds", r"outside 0.5-3600"),
        ("outbound: [{every_seconds: '10'}]", "outbound[0].every_seconds", r"YAML number"),
        ("outbound: [{to: '\u0661.2.3.4'}]", "outbound[0].to", r"neither 'wan'"),
        ("outbound: [{lines: ['{name.__class__}']}]", "outbound[0].lines",
         r"only the \{name\} placeholder"),
        ("outbound: [{lines: ['{0}']}]", "outbound[0].lines", r"only the \{name\}"),
        ('outbound: [{lines: ["PRIVMSG\\nQUIT"]}]', "outbound[0].lines[0]",
         r"control characters"),
    ]
    for body, key, words in cases:
        p = tmp_path / "p.yaml"
        p.write_text(f"name: test\n{body}\n")
        with pytest.raises(ConfigError) as e:
            load_persona(p)
        msg = str(e.value)
        assert f"{p}:2: {key}:" in msg and re.search(words, msg), (body, msg)
    for shipped in (ROOT / "playbooks" / "devices").glob("*.yaml"):
        load_persona(shipped)


# -- the classes hold for every field of these models -----------------------------------

def _models_owned_here() -> list[type]:
    from labctl.core.playbook import VM, HyperVHost, LabDevice, Nic, Playbook, Switch
    from labctl.core.playbook.common import SecretRef
    from labctl.core.playbook.hyperv import Nat, VlanAccess, VlanTrunk
    from labctl.core.playbook.profiles import HardwareProfile
    from labctl.core.playbook.twin import TwinDevice, TwinScanner, TwinSection
    from labctl.traffic.persona import Listener, Outbound, Persona

    return [Playbook, HyperVHost, Switch, Nat, VM, Nic, VlanTrunk, VlanAccess, TwinSection,
            TwinDevice, TwinScanner, LabDevice, SecretRef, HardwareProfile, Listener,
            Outbound, Persona]


#: strings that are protocol bytes a persona sends to a scanner's socket, by design
BINARY_PAYLOADS = {("Listener", "banner"), ("Listener", "reply")}


def _leaf_types(ann: Any) -> set[Any]:
    import typing

    args = typing.get_args(ann)
    if typing.get_origin(ann) is typing.Annotated:
        return _leaf_types(args[0])
    if args and typing.get_origin(ann) in (typing.Union, __import__("types").UnionType):
        out: set[Any] = set()
        for a in args:
            out |= _leaf_types(a)
        return out
    return {ann}


def _adapter(field: Any) -> Any:
    from typing import Annotated

    from pydantic import TypeAdapter

    ann = field.annotation
    return TypeAdapter(Annotated[(ann, *field.metadata)] if field.metadata else ann)


def test_every_scalar_field_is_strict_bounded_and_free_of_control_characters():
    from pydantic import ValidationError

    checked = 0
    accepted: list[str] = []
    for model in _models_owned_here():
        for name, field in model.model_fields.items():
            leaves = _leaf_types(field.annotation)
            ta = _adapter(field)
            bad: list[Any] = []
            if str in leaves and (model.__name__, name) not in BINARY_PAYLOADS:
                bad += ["x\ny", "x\x00", "x\x1b[31m", "x\x85", "x\u2028"]
            if int in leaves:
                bad += ["5", "\u0665", "5_0", 5.0, True, 10 ** 12, -(10 ** 12)]
            if bool in leaves:
                bad += ["true", "no", 1, 0]
            if float in leaves:
                bad += ["10", True, float("nan"), float("inf"), 1e12]
            for value in bad:
                try:
                    ta.validate_python(value)
                except ValidationError:
                    checked += 1
                else:
                    accepted.append(f"{model.__name__}.{name} = {value!r}")
    assert accepted == [], "\n".join(accepted)
    assert checked > 150


@pytest.mark.parametrize("dotted,value,words", [
    ("router.iot_network.vlan", "\u0665\u0662", r"must be a YAML integer"),
    ("router.iot_network.vlan", "5_2", r"must be a YAML integer"),
    ("router.iot_network.vlan", " 52", r"must be a YAML integer"),
    ("router.iot_network.vlan", 52.0, r"must be a YAML integer"),
    ("router.iot_network.lease_seconds", "86400", r"must be a YAML integer"),
    ("router.iot_network.dhcp", "true", r"must be true or false"),
    ("router.iot_network.ap_isolation", 0, r"must be true or false"),
], ids=lambda x: repr(x))
def test_strict_types_in_the_iot_network(run, host, tmp_path, dotted, value, words):
    p = _write(tmp_path, mutate(reference_data(keep_router=True), dotted, value))
    refused(run, host, p, dotted, None, words)
