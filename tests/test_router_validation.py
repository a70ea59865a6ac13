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


@pytest.mark.parametrize("args", [
    ["--ssid", "Az\nkaban"], ["--ssid", "Az\x00kaban"], ["--ssid", "Az\x1bkaban"],
    ["--ssid", "Az\x85kaban"], ["--name", "Az\u2028kaban"], ["--name", "Az\x7fkaban"],
], ids=["ssid-newline", "ssid-nul", "ssid-esc", "ssid-c1", "name-line-separator", "name-del"])
def test_control_characters_never_reach_the_router(tmp_path, cli_run, args):
    with emulator_lab(tmp_path) as lab:
        r = cli_run("router", "iot-net", "-f", lab.playbook, "-y", *args, env=lab.env())
        assert r.exit_code == 2, r
        assert "control characters" in r.stderr
        assert lab.emulator.log == []


@pytest.mark.parametrize("psk", ["pass\nword123", "pass\tword123", "pass\x85word123"])
def test_control_characters_in_the_passphrase_are_refused(tmp_path, cli_run, psk):
    with emulator_lab(tmp_path) as lab:
        r = cli_run("router", "iot-net", "-f", lab.playbook, "-y",
                    env=lab.env(LABCTL_IOT_PASSPHRASE=psk))
        assert r.exit_code == 2 and "printable" in r.stderr
        assert lab.emulator.log == []


def test_control_characters_in_a_playbook_ssid_name_the_file_and_key(tmp_path, cli_run):
    with emulator_lab(tmp_path, ssid="Az\tkaban") as lab:
        r = cli_run("router", "iot-net", "-f", lab.playbook, "-y", env=lab.env())
        assert r.exit_code == 2
        assert "lab.yaml" in r.stderr and "ssid" in r.stderr and "control" in r.stderr
        assert lab.emulator.log == []


def test_delete_net_refuses_a_name_with_control_characters(tmp_path, cli_run):
    with emulator_lab(tmp_path) as lab:
        r = cli_run("router", "delete-net", "Guest\n", "-f", lab.playbook, "-y", env=lab.env())
        assert r.exit_code == 2 and "control characters" in r.stderr
        assert lab.emulator.log == []


URLS = [
    ("port-too-big", "https://127.0.0.1:99999", "outside 1-65535"),
    ("port-zero", "https://127.0.0.1:0", "outside 1-65535"),
    ("credentials", "https://admin:Url-Secret-991@127.0.0.1:8443", "must not carry credentials"),
    ("user-only", "https://admin@127.0.0.1:8443", "must not carry credentials"),
    ("bad-ipv6", "https://[::1", "not a valid URL"),
    ("bad-ipv6-with-pw", "https://admin:Url-Secret-991@[::1", "not a valid URL"),
    ("no-host", "https://:8443", "no host"),
    ("query", "https://127.0.0.1:8443/?x=1", "query or fragment"),
]


@pytest.mark.parametrize("url,says", [u[1:] for u in URLS], ids=[u[0] for u in URLS])
def test_bad_router_urls_exit_2_naming_the_key_and_never_the_password(tmp_path, cli_run, url,
                                                                      says):
    import yaml

    with emulator_lab(tmp_path) as lab:
        doc = yaml.safe_load(open(lab.playbook))
        doc["router"]["url"] = url
        with open(lab.playbook, "w") as f:
            yaml.safe_dump(doc, f)
        r = cli_run("router", "show", "-f", lab.playbook, env=lab.env())
        assert r.exit_code == 2, r
        assert says in r.stderr and "router.url" in r.stderr and "lab.yaml" in r.stderr
        assert "Url-Secret-991" not in r.stderr + r.stdout
        assert "unexpected" not in r.stderr
        # the same rules for --url
        r = cli_run("router", "show", "--url", url, env=lab.env())
        assert r.exit_code == 2, r
        assert says in r.stderr and "--url" in r.stderr
        assert "Url-Secret-991" not in r.stderr + r.stdout
        assert lab.emulator.log == []
