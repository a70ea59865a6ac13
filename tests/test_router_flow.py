"""The full `labctl router` flow against the ASUS router emulator over real HTTP and HTTPS."""

from __future__ import annotations

import json

import pytest

from labctl.router.asus import codec
from tests.helpers.router_emulator import IOT_PASSPHRASE, ROUTER_PASSWORD, emulator_lab


def _net(lab, ssid="Azkaban"):
    from labctl.router.asus import sdn

    return sdn.find_network(lab.emulator.nvram, ssid)


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
def test_create_noop_change_vlan_delete(tmp_path, cli_run, https):
    with emulator_lab(tmp_path, https=https) as lab:
        initial = lab.emulator.sdn_snapshot()
        env = lab.env()

        r = cli_run("router", "iot-net", "-f", lab.playbook, "-y", "--json", env=env)
        assert r.exit_code == 0, r
        doc = r.json()
        assert doc["action"] == "create" and doc["applied"] and doc["verified"]
        assert {"field": "vlan", "old": None, "new": 52} in doc["diff"]
        net = _net(lab)
        assert net["vlan"] == 52 and net["subnet"] == "172.16.1.0/24"
        assert net["gateway"] == "172.16.1.1" and net["dns"] == ["9.9.9.9", "149.112.112.112"]
        assert net["auth"] == "wpa-wpa2-personal" and net["band"] == "2.4"
        assert net["ap_isolation"] is False
        # lowest free indexes next to the Guest network (sdn 1, apg 1, vlan 1, subnet 1)
        assert (net["idx"], net["apg_idx"], net["vlan_idx"], net["subnet_idx"]) == ("2",) * 4
        assert lab.emulator.nvram["sdn_access_rl"] == "<0>1<0>2"
        # the Guest network is untouched, its 3006 subnet tail included
        for k in ("apg1_ssid", "apg1_security"):
            assert lab.emulator.nvram[k] == initial[k]
        assert codec.parse_subnet(lab.emulator.nvram["subnet_rl"]).rows[0].fields == \
            codec.parse_subnet(initial["subnet_rl"]).rows[0].fields
        apply_posts = lab.count("applyapp.cgi")
        assert apply_posts == 1
        assert lab.paths()[-1] == "Logout.asp"

        # a second run changes nothing and posts nothing
        r = cli_run("router", "iot-net", "-f", lab.playbook, "-y", "--json", env=env)
        assert r.exit_code == 0, r
        assert r.json()["action"] == "noop" and r.json()["changed_keys"] == []
        assert lab.count("applyapp.cgi") == apply_posts

        # change the VLAN: same profile, only the vlan row (and bridge name) change
        before = lab.emulator.sdn_snapshot()
        r = cli_run("router", "iot-net", "-f", lab.playbook, "--vlan", "60", "-y", "--json",
                    env=env)
        assert r.exit_code == 0, r
        doc = r.json()
        assert doc["action"] == "update"
        assert {"field": "vlan", "old": 52, "new": 60} in doc["diff"]
        assert set(doc["changed_keys"]) == {"vlan_rl", "subnet_rl"}
        assert _net(lab)["vlan"] == 60 and _net(lab)["idx"] == "2"
        after = lab.emulator.sdn_snapshot()
        assert {k for k in before if before[k] != after[k]} == {"vlan_rl", "subnet_rl"}

        # show: decoded, secrets masked
        r = cli_run("router", "show", "-f", lab.playbook, "--json", env=env)
        assert r.exit_code == 0, r
        names = {n["name"]: n for n in r.json()["networks"]}
        assert names["Azkaban"]["vlan"] == 60 and names["Azkaban"]["passphrase"] == "********"
        assert "Hogwarts_Guest" in names
        human = cli_run("router", "show", "-f", lab.playbook, env=env)
        assert "Azkaban" in human.stdout and "172.16.1.0/24" in human.stdout
        for out in (r.stdout + r.stderr, human.stdout + human.stderr):
            assert IOT_PASSPHRASE not in out and ROUTER_PASSWORD not in out
            assert "GuestPass2026" not in out

        # delete: the SDN keys are byte-identical to the factory state again
        r = cli_run("router", "delete-net", "Azkaban", "-f", lab.playbook, "-y", env=env)
        assert r.exit_code == 0, r
        assert lab.emulator.sdn_snapshot() == initial


def test_https_pin_is_stored_and_enforced(tmp_path, cli_run, _isolated_state):
    with emulator_lab(tmp_path, https=True) as lab:
        r = cli_run("router", "show", "-f", lab.playbook, "--json", env=lab.env())
        assert r.exit_code == 0, r
        pins = json.loads((_isolated_state / "pins.json").read_text())
        assert list(pins) == [f"127.0.0.1:{lab.server.port}"]
        # a different certificate on the same address is refused before any login
        (_isolated_state / "pins.json").write_text(json.dumps({f"127.0.0.1:{lab.server.port}":
                                                               "ab" * 32}))
        logins = lab.count("login.cgi")
        r = cli_run("router", "show", "-f", lab.playbook, env=lab.env())
        assert r.exit_code == 5
        assert "changed" in r.stderr and "pins.json" in r.stderr
        assert lab.count("login.cgi") == logins


def test_plain_http_refused_unless_playbook_allows(tmp_path, cli_run):
    with emulator_lab(tmp_path) as lab:
        r = cli_run("router", "show", "-f", lab.playbook, "--url",
                    lab.url, env=lab.env())
        assert r.exit_code == 0, r
        text = open(lab.playbook).read().replace("allow_http: true", "allow_http: false")
        open(lab.playbook, "w").write(text)
        n = len(lab.emulator.log)
        r = cli_run("router", "show", "-f", lab.playbook, env=lab.env())
        assert r.exit_code == 2 and "allow_http" in r.stderr
        r = cli_run("router", "show", "-f", str(tmp_path / "nope.yaml"), "--url", lab.url,
                    env=lab.env())
        assert r.exit_code == 2
        assert len(lab.emulator.log) == n


def test_backup_and_restore_byte_for_byte(tmp_path, cli_run):
    with emulator_lab(tmp_path) as lab:
        env = lab.env()
        initial = lab.emulator.sdn_snapshot()
        out = tmp_path / "b.json"
        r = cli_run("router", "backup", "-f", lab.playbook, "-o", str(out), env=env)
        assert r.exit_code == 0, r
        saved = json.loads(out.read_text())["keys"]
        assert all(saved[k] == initial[k] for k in saved)
        assert saved["subnet_rl"] == initial["subnet_rl"]
        assert cli_run("router", "iot-net", "-f", lab.playbook, "-y", env=env).exit_code == 0
        assert lab.emulator.sdn_snapshot() != initial
        r = cli_run("router", "restore", str(out), "-f", lab.playbook, "-y", "--json", env=env)
        assert r.exit_code == 0, r
        assert r.json()["verified"]
        assert lab.emulator.sdn_snapshot() == initial
        # a second restore has nothing to do
        n = lab.count("applyapp.cgi")
        r = cli_run("router", "restore", str(out), "-f", lab.playbook, "-y", env=env)
        assert r.exit_code == 0 and "nothing to restore" in r.stdout
        assert lab.count("applyapp.cgi") == n
        # a broken backup file is refused before any request
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"kind": "asus-sdn-nvram", "keys": {"http_passwd": "x"}}))
        m = len(lab.emulator.log)
        r = cli_run("router", "restore", str(bad), "-f", lab.playbook, "-y", env=env)
        assert r.exit_code == 2 and "http_passwd" in r.stderr
        assert len(lab.emulator.log) == m


def test_dry_run_and_human_diff_change_nothing(tmp_path, cli_run):
    with emulator_lab(tmp_path) as lab:
        before = lab.emulator.sdn_snapshot()
        r = cli_run("router", "iot-net", "-f", lab.playbook, "--dry-run", env=lab.env())
        assert r.exit_code == 0, r
        assert "vlan" in r.stdout and "52" in r.stdout and "Dry run" in r.stdout
        assert lab.emulator.sdn_snapshot() == before and lab.count("applyapp.cgi") == 0
        # without -y and without a terminal: refused, nothing changed
        r = cli_run("router", "iot-net", "-f", lab.playbook, env=lab.env())
        assert r.exit_code == 2 and "-y" in r.stderr
        assert lab.emulator.sdn_snapshot() == before
        assert lab.paths()[-1] == "Logout.asp"


def test_up_router_stage_applies_then_converges(tmp_path, monkeypatch):
    from labctl.app import router as app
    from labctl.core.context import LabContext
    from labctl.core.playbook import load_playbook

    with emulator_lab(tmp_path) as lab:
        for k, v in lab.env().items():
            monkeypatch.setenv(k, v)
        ctx = LabContext(load_playbook(lab.playbook))
        seen = []
        rep = app.iot_net_stage(ctx, confirm=lambda r: seen.append(r) or True, dry_run=True)
        assert rep.action == "create" and not rep.applied and seen == []
        rep = app.iot_net_stage(ctx, confirm=lambda r: seen.append(r) or True)
        assert rep.applied and rep.verified and seen and seen[0].diff
        rep = app.iot_net_stage(ctx, confirm=lambda r: False)
        assert rep.action == "noop" and not rep.applied
        assert lab.count("applyapp.cgi") == 1


def test_no_playbook_url_and_flags_only(tmp_path, cli_run, monkeypatch):
    monkeypatch.delenv("LABCTL_PLAYBOOK", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./labctl.yaml here
    with emulator_lab(tmp_path, https=True) as lab:
        env = lab.env()
        base = ["router", "iot-net", "--url", lab.url, "--ssid", "Sensors", "--vlan", "70",
                "--subnet", "10.70.0.0/24", "--dns", "9.9.9.9", "--no-dhcp", "-y", "--json"]
        r = cli_run(*base, env=env)
        assert r.exit_code == 0, r
        net = _net(lab, "Sensors")
        assert net["vlan"] == 70 and net["dhcp"] is False and net["dns"] == ["9.9.9.9"]
        assert net["auth"] == "wpa2-personal" and net["type"] == "IoT"
        # the router's own LAN is checked from the fresh read when there is no playbook
        r = cli_run("router", "iot-net", "--url", lab.url, "--ssid", "Other", "--vlan", "71",
                    "--subnet", "192.168.50.0/24", "-y", env=env)
        assert r.exit_code == 2 and "main LAN" in r.stderr
        assert lab.count("applyapp.cgi") == 1
        # plain HTTP is never allowed without a playbook saying so
        r = cli_run("router", "show", "--url", lab.url.replace("https", "http"), env=env)
        assert r.exit_code == 2
        # --user overrides: a wrong user is refused by the router (exit 5)
        r = cli_run("router", "show", "--url", lab.url, "--user", "mallory", env=env)
        assert r.exit_code == 5 and "user name or password" in r.stderr


def test_each_transaction_keeps_its_own_backup_file(tmp_path, cli_run):
    with emulator_lab(tmp_path) as lab:
        files = []
        for vlan in ("52", "60", "61"):
            r = cli_run("router", "iot-net", "-f", lab.playbook, "--vlan", vlan, "-y", "--json",
                        env=lab.env())
            assert r.exit_code == 0, r
            files.append(r.json()["transaction"]["backup_file"])
        assert len(set(files)) == 3
        vlans = [json.loads(open(f).read())["keys"]["vlan_rl"] for f in files]
        assert "52" not in vlans[0] and "<2>52>0>" in vlans[1] and "<2>60>0>" in vlans[2]


def test_backup_over_an_existing_0644_file_or_a_symlink_is_a_new_0600_file(tmp_path, cli_run):
    import os
    import stat

    with emulator_lab(tmp_path) as lab:
        out = tmp_path / "b.json"
        out.write_text("old")
        os.chmod(out, 0o644)
        old_inode = out.stat().st_ino
        r = cli_run("router", "backup", "-f", lab.playbook, "-o", str(out), env=lab.env())
        assert r.exit_code == 0, r
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        assert out.stat().st_ino != old_inode  # a new file, renamed over the old one
        assert json.loads(out.read_text())["kind"] == "asus-sdn-nvram"
        # a planted symlink is replaced, its target is not written
        victim = tmp_path / "victim.txt"
        victim.write_text("keep")
        link = tmp_path / "link.json"
        link.symlink_to(victim)
        r = cli_run("router", "backup", "-f", lab.playbook, "-o", str(link), env=lab.env())
        assert r.exit_code == 0, r
        assert victim.read_text() == "keep"
        assert not link.is_symlink() and stat.S_IMODE(link.stat().st_mode) == 0o600
        # no temporary files are left behind
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        # a directory is refused (exit 2, file named)
        r = cli_run("router", "backup", "-f", lab.playbook, "-o", str(tmp_path), env=lab.env())
        assert r.exit_code == 2 and str(tmp_path) in r.stderr
