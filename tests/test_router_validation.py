"""Every validation error exits 2 before the router is contacted (the emulator logs no request)."""

from __future__ import annotations

import pytest

from tests.helpers.router_emulator import IOT_PASSPHRASE, ROUTER_PASSWORD, emulator_lab

# (id, extra CLI args, env overrides, text expected on stderr)
STATIC = [
    ("ssid-empty", ["--ssid", ""], {}, "1-32 bytes"),
    ("ssid-33-bytes", ["--ssid", "x" * 33], {}, "1-32 bytes"),
    ("ssid-multibyte-33", ["--ssid", "é" * 17], {}, "1-32 bytes"),
    ("psk-short", [], {"LABCTL_IOT_PASSPHRASE": "short7!"}, "8-63 printable"),
    ("psk-64-not-hex", [], {"LABCTL_IOT_PASSPHRASE": "g" * 64}, "8-63 printable"),
    ("psk-nonascii", [], {"LABCTL_IOT_PASSPHRASE": "pässwörter"}, "8-63 printable"),
    ("ssid-angle", ["--ssid", "Az<kaban"], {}, "< or >"),
    ("name-angle", ["--name", "Az>kaban"], {}, "< or >"),
    ("psk-angle", [], {"LABCTL_IOT_PASSPHRASE": "pass<word>123"}, "< or >"),
    ("vlan-1", ["--vlan", "1"], {}, "2-4094"),
    ("vlan-4095", ["--vlan", "4095"], {}, "2-4094"),
    ("subnet-main-lan", ["--subnet", "192.168.50.128/25"], {}, "overlaps the main LAN"),
    ("subnet-bad", ["--subnet", "172.16.1.1/24"], {}, "not an IPv4 network"),
    ("dns-three", ["--dns", "9.9.9.9,1.1.1.1,8.8.8.8"], {}, "at most two DNS"),
    ("dns-bad", ["--dns", "9.9.9"], {}, "--dns"),
    ("6ghz-wpa2", ["--band", "6", "--auth", "wpa2-personal"], {}, "6 GHz needs WPA3"),
    ("6ghz-mixed", ["--band", "2.4+6", "--auth", "wpa2-wpa3-personal"], {}, "6 GHz needs WPA3"),
]


@pytest.mark.parametrize("args,env,says", [c[1:] for c in STATIC], ids=[c[0] for c in STATIC])
def test_static_validation_exit_2_and_zero_requests(tmp_path, cli_run, args, env, says):
    with emulator_lab(tmp_path) as lab:
        r = cli_run("router", "iot-net", "-f", lab.playbook, "-y", *args, env=lab.env(**env))
        assert r.exit_code == 2, r
        assert says in r.stderr, r.stderr
        assert lab.emulator.log == []  # not one request reached the router
        assert ROUTER_PASSWORD not in r.stderr and IOT_PASSPHRASE not in r.stderr


@pytest.mark.parametrize("iot,says", [
    ({"dhcp_range": ["172.16.2.2", "172.16.2.254"]}, "outside subnet"),
    ({"ssid": "y" * 40}, "1-32 bytes"),
    ({"vlan": 0}, "outside 1-4094"),
    ({"dns": ["9.9.9.9", "1.1.1.1", "8.8.8.8"]}, "at most two DNS"),
], ids=["dhcp-range-outside", "ssid-long", "vlan-0", "dns-three"])
def test_playbook_validation_exit_2_and_zero_requests(tmp_path, cli_run, iot, says):
    with emulator_lab(tmp_path, **iot) as lab:
        r = cli_run("router", "iot-net", "-f", lab.playbook, "-y", env=lab.env())
        assert r.exit_code == 2, r
        assert says in r.stderr and "lab.yaml" in r.stderr
        assert lab.emulator.log == []


def test_64_hex_passphrase_is_accepted(tmp_path, cli_run):
    with emulator_lab(tmp_path) as lab:
        r = cli_run("router", "iot-net", "-f", lab.playbook, "-y", "--dry-run",
                    env=lab.env(LABCTL_IOT_PASSPHRASE="aB" * 32))
        assert r.exit_code == 0, r


@pytest.mark.parametrize("args,says", [
    (["--vlan", "53"], "VLAN 53 is already used by the network 'Hogwarts_Guest'"),
    (["--subnet", "192.168.53.0/25"], "overlaps 192.168.53.0/24"),
], ids=["vlan-in-use", "subnet-overlaps-guest"])
def test_router_state_conflicts_exit_2_without_any_write(tmp_path, cli_run, args, says):
    with emulator_lab(tmp_path) as lab:
        before = lab.emulator.sdn_snapshot()
        r = cli_run("router", "iot-net", "-f", lab.playbook, "-y", *args, env=lab.env())
        assert r.exit_code == 2, r
        assert says in r.stderr
        assert lab.count("applyapp.cgi") == 0
        assert lab.emulator.sdn_snapshot() == before
        assert lab.paths()[-1] == "Logout.asp"


def test_ap_isolation_warns_about_the_sensor(tmp_path, cli_run):
    with emulator_lab(tmp_path) as lab:
        r = cli_run("router", "iot-net", "-f", lab.playbook, "-y", "--ap-isolation",
                    env=lab.env())
        assert r.exit_code == 0, r
        assert "sensor loses sight of device-to-device traffic" in r.stderr
        assert lab.emulator.nvram["apg2_ap_isolate"] == "1"


def test_secret_canaries_never_printed(tmp_path, cli_run):
    with emulator_lab(tmp_path) as lab:
        outs = []
        for args in (["iot-net", "-y"], ["iot-net", "-y", "--json"], ["iot-net", "--dry-run",
                     "--vlan", "61"], ["show"], ["show", "--json"], ["backup", "--json"],
                     ["delete-net", "Azkaban", "-y", "--json"]):
            r = cli_run("router", *args, "-f", lab.playbook, env=lab.env())
            assert r.exit_code == 0, (args, r)
            outs.append(r.stdout + r.stderr)
        text = "\n".join(outs)
        assert ROUTER_PASSWORD not in text
        assert IOT_PASSPHRASE not in text
        assert "GuestPass2026" not in text
        # and the password never travels in clear on the wire log either
        assert all(ROUTER_PASSWORD not in str(e) for e in lab.emulator.log)
