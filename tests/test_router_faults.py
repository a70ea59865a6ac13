"""Injected faults during apply: the transaction restores the backup and verifies it."""

from __future__ import annotations

import pytest

from tests.helpers.router_emulator import IOT_PASSPHRASE, ROUTER_PASSWORD, emulator_lab

CASES = [
    # fault, expected exit code, what the error says
    ("drop", 5, "dropped"),
    ("5xx", 1, "HTTP 500"),
    ("slow", 5, "no reply in time"),
    ("mangle", 4, "read-back mismatch"),
    ("badecho", 1, "echoed run_service"),
]


@pytest.mark.parametrize("fault,code,says", CASES, ids=[c[0] for c in CASES])
def test_fault_during_create_leaves_sdn_keys_byte_identical(tmp_path, cli_run, fault, code, says):
    with emulator_lab(tmp_path) as lab:
        before = lab.emulator.sdn_snapshot()
        lab.emulator.add_fault("apply", fault)
        r = cli_run("router", "iot-net", "-f", lab.playbook, "-y", "--timeout", "1", env=lab.env())
        assert r.exit_code == code, r
        assert says in r.stderr
        assert "restored and verified" in r.stderr
        assert lab.emulator.sdn_snapshot() == before
        # the failed apply really did change the router before the restore
        applies = lab.emulator.requests_to("applyapp.cgi")
        assert len(applies) == 2 and applies[0]["fault"] == fault
        if fault != "slow":
            assert applies[1]["changed"], "the restore had something to undo"
        assert lab.paths()[-1] == "Logout.asp"
        assert IOT_PASSPHRASE not in r.stderr + r.stdout
        assert ROUTER_PASSWORD not in r.stderr + r.stdout


@pytest.mark.parametrize("fault", ["drop", "5xx"])
def test_fault_during_vlan_change_restores_previous_network(tmp_path, cli_run, fault):
    with emulator_lab(tmp_path) as lab:
        assert cli_run("router", "iot-net", "-f", lab.playbook, "-y", env=lab.env()).exit_code == 0
        before = lab.emulator.sdn_snapshot()
        lab.emulator.add_fault("apply", fault)
        r = cli_run("router", "iot-net", "-f", lab.playbook, "--vlan", "70", "-y", "--json",
                    env=lab.env())
        assert r.exit_code != 0
        assert lab.emulator.sdn_snapshot() == before


def test_restore_that_cannot_be_verified_says_so_and_names_the_backup(tmp_path, cli_run):
    with emulator_lab(tmp_path) as lab:
        # the apply and all three restore attempts fail
        lab.emulator.add_fault("apply", "drop", count=4)
        r = cli_run("router", "iot-net", "-f", lab.playbook, "-y", env=lab.env())
        assert r.exit_code == 5
        assert "could not be verified" in r.stderr
        assert "labctl router restore" in r.stderr and "router-backups" in r.stderr


def test_slow_reads_are_retried_not_fatal(tmp_path, cli_run):
    with emulator_lab(tmp_path) as lab:
        lab.emulator.slow_seconds = 1.5
        lab.emulator.add_fault("appget", "slow")
        r = cli_run("router", "show", "-f", lab.playbook, "--timeout", "0.5", "--json",
                    env=lab.env())
        assert r.exit_code == 0, r
        assert lab.count("appGet.cgi") >= 2


def test_ctrl_c_mid_apply_restores_the_backup(tmp_path):
    from labctl.app import router as app
    from labctl.core.errors import Interrupted
    from labctl.core.playbook import load_playbook
    from labctl.router.asus.client import AsusClient
    from labctl.router.registry import get_router_driver

    with emulator_lab(tmp_path) as lab:
        before = lab.emulator.sdn_snapshot()
        loaded = load_playbook(lab.playbook)
        env = lab.env()
        target = app.resolve_target(loaded, environ=env)
        desired = app.desired_network(loaded, {}, environ=env)
        calls = []
        client = get_router_driver(target.kind).connect(target)
        assert isinstance(client, AsusClient)
        orig_apply = client.apply

        def apply(values, rc):
            calls.append(rc)
            out = orig_apply(values, rc)
            if len(calls) == 1:
                raise KeyboardInterrupt
            return out

        client.apply = apply  # type: ignore[method-assign]
        target.client_factory = lambda t: client
        with pytest.raises(Interrupted) as ei:
            app.iot_net(target, desired, confirm=lambda r: True)
        assert "restored and verified" in ei.value.message
        assert len(calls) == 2
        assert lab.emulator.sdn_snapshot() == before


def test_fault_during_delete_puts_the_network_back(tmp_path, cli_run):
    with emulator_lab(tmp_path) as lab:
        assert cli_run("router", "iot-net", "-f", lab.playbook, "-y", env=lab.env()).exit_code == 0
        before = lab.emulator.sdn_snapshot()
        lab.emulator.add_fault("apply", "drop")
        r = cli_run("router", "delete-net", "Azkaban", "-f", lab.playbook, "-y", env=lab.env())
        assert r.exit_code == 5 and "restored and verified" in r.stderr
        assert lab.emulator.sdn_snapshot() == before
        posts = lab.emulator.requests_to("applyapp.cgi")
        assert posts[-1]["changed"]  # the restore undid the half-applied delete


@pytest.mark.parametrize("fault", ["5xx", "drop"])
def test_a_failed_restore_post_is_retried_from_a_fresh_read(tmp_path, cli_run, fault):
    """apply:<fault>:2 fails the apply and the first restore POST; the second restore,
    planned from a fresh read, puts the router back (no half-applied AP group remains)."""
    with emulator_lab(tmp_path) as lab:
        before = lab.emulator.sdn_snapshot()
        lab.emulator.add_fault("apply", fault, count=2)
        r = cli_run("router", "iot-net", "-f", lab.playbook, "-y", env=lab.env())
        assert r.exit_code != 0
        assert "restored and verified" in r.stderr
        assert lab.emulator.sdn_snapshot() == before
        applies = lab.emulator.requests_to("applyapp.cgi")
        assert [a.get("fault") for a in applies] == [fault, fault, None]
        # every restore attempt began with a fresh read of the tables
        paths = lab.paths()
        first = paths.index("applyapp.cgi")
        between = paths[first + 1:]
        assert between.count("applyapp.cgi") == 2
        for i, p in enumerate(between):
            if p == "applyapp.cgi":
                assert "appGet.cgi" in between[:i]


def test_mangled_writes_never_leave_an_unrelated_record_corrupted(tmp_path, cli_run):
    """apply:mangle:3 corrupts the apply and two restores (the Guest network's subnet_rl
    record included); the third restore repairs every record, and a clean re-run then
    finds the Guest network as it was."""
    with emulator_lab(tmp_path) as lab:
        before = lab.emulator.sdn_snapshot()
        guest_subnets = before["subnet_rl"]
        lab.emulator.add_fault("apply", "mangle", count=3)
        r = cli_run("router", "iot-net", "-f", lab.playbook, "-y", env=lab.env())
        assert r.exit_code == 4, r
        assert "subnet_rl record" in r.stderr  # the mismatch names the records
        assert "restored and verified" in r.stderr
        assert lab.emulator.sdn_snapshot() == before
        r = cli_run("router", "iot-net", "-f", lab.playbook, "-y", env=lab.env())
        assert r.exit_code == 0, r
        after = lab.emulator.nvram["subnet_rl"]
        assert after.startswith(guest_subnets), "the Guest record is unchanged"


def test_a_change_made_between_read_and_write_is_not_overwritten(tmp_path):
    """Compare-and-swap: another client changes the tables after labctl's read; labctl
    writes nothing and says so (StaleRead), and never restores over that change."""
    from labctl.app import router as app
    from labctl.core.secrets import Secret
    from labctl.router.asus.driver import AsusDriver
    from labctl.router.base import RouterTarget, StaleRead

    with emulator_lab(tmp_path) as lab:
        target = RouterTarget(url=lab.url, user="admin", password=Secret(ROUTER_PASSWORD),
                              allow_http=True, lab="cas")
        from labctl.core.playbook import load_playbook

        desired = app.desired_network(load_playbook(lab.playbook), {},
                                      environ=lab.env())
        with AsusDriver(target) as driver:
            state = driver.read()
            edit = driver.plan_network(state, desired)
            lab.emulator.write({"apg5_ssid": "Someone-else"})  # e.g. the router's web page
            with pytest.raises(StaleRead):
                driver.apply(edit)
        assert lab.emulator.nvram["apg5_ssid"] == "Someone-else"
        assert lab.count("applyapp.cgi") == 0


def test_keys_a_failed_apply_created_read_back_empty_after_the_restore(tmp_path, cli_run):
    """The web API cannot unset an nvram key (applyapp.cgi only sets values), and the
    emulator behaves like the firmware: a key the failed apply created stays present with
    an empty value. "Restored and verified" compares the values as appGet reads them."""
    with emulator_lab(tmp_path) as lab:
        absent_before = {k for k in lab.emulator.sdn_snapshot() if k not in lab.emulator.nvram}
        lab.emulator.add_fault("apply", "5xx")
        r = cli_run("router", "iot-net", "-f", lab.playbook, "-y", env=lab.env())
        assert r.exit_code == 1 and "restored and verified" in r.stderr
        created = {k for k in absent_before if k in lab.emulator.nvram}
        assert created, "the failed apply created keys"
        assert all(lab.emulator.nvram[k] == "" for k in created)
