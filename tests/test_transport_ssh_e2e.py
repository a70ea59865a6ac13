"""`labctl up/plan/status/down` end to end over a real SSH connection.

The whole stack is real down to the remote process: the CLI, the Hyper-V provider and its
templates, make_runner -> SshRunner -> paramiko -> a throwaway OpenSSH server on 127.0.0.1.
There, ``powershell.exe`` is the stand-in (tests/helpers/fake_powershell.py), which checks the
command line, the wrapper and the parameters against each script's param() block, and then
hands the script to helper A's stateful fake Hyper-V host, kept in a pickle between sessions.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml

from tests.helpers.sshd import sshd_server

ROOT = Path(__file__).resolve().parent.parent
STANDIN = ROOT / "tests" / "helpers" / "fake_powershell.py"


@pytest.fixture
def ssh_lab(tmp_path):
    fake_hyperv = pytest.importorskip("tests.helpers.fake_hyperv")
    state = tmp_path / "host.pkl"
    state.write_bytes(pickle.dumps(fake_hyperv.FakeHyperVHost.reference()))
    with sshd_server(tmp_path / "sshd", powershell_standin=STANDIN,
                     setenv={"LABCTL_STANDIN_HYPERV_STATE": str(state)}) as srv:
        doc = yaml.safe_load((ROOT / "playbooks" / "home-lab.yaml").read_text())
        doc["hyperv"] = {
            "host": srv.host, "transport": "ssh", "port": srv.port, "user": srv.user,
            "ssh_key": str(srv.key_path), "ssh_known_hosts": str(srv.known_hosts),
            "vhd_path": doc["hyperv"]["vhd_path"], "timeout": 30,
        }
        pb = tmp_path / "lab.yaml"
        pb.write_text(yaml.safe_dump(doc, sort_keys=False))

        def host():
            return pickle.loads(state.read_bytes())

        yield srv, pb, host


def test_up_converges_then_plan_is_one_round_trip_and_down_cleans(ssh_lab, cli_run):
    srv, pb, host = ssh_lab
    r = cli_run("up", "-f", str(pb), "-y", "--only", "hyperv")
    assert r.exit_code == 0, r
    h = host()
    assert any(s["name"] == "Core" for s in h.switches)
    assert any(v["name"] == "d4iot-sensor" for v in h.vms)
    writes_after_up = len(h.writes)
    assert writes_after_up >= 10

    sessions = len(srv.standin_calls())
    r = cli_run("plan", "-f", str(pb), "--json")
    assert r.exit_code == 0, r
    assert r.json()["steps"] == []
    # a converged plan is exactly one remote round trip (facts/read) and no writes
    calls = srv.standin_calls()[sessions:]
    assert len(calls) == 1 and calls[0]["body"].startswith("# labctl facts/read:")
    assert len(host().writes) == writes_after_up

    r = cli_run("status", "-f", str(pb))
    assert r.exit_code == 0, r

    r = cli_run("down", "-f", str(pb), "-y")
    assert r.exit_code == 0, r
    h = host()
    assert not any(s["name"] in ("Core", "Azkaban") for s in h.switches)
    assert not any(v["name"] == "d4iot-sensor" for v in h.vms)
    assert any(v["name"] == "kali" for v in h.vms)  # not ours: untouched


def test_wrong_key_over_the_cli_is_exit_5_and_names_the_script(ssh_lab, cli_run, tmp_path):
    from tests.helpers.sshd import keygen

    srv, pb, _ = ssh_lab
    doc = yaml.safe_load(pb.read_text())
    doc["hyperv"]["ssh_key"] = str(keygen(tmp_path / "wrong"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = cli_run("status", "-f", str(bad))
    assert r.exit_code == 5, r
    assert "facts/read" in r.stderr and "authentication" in r.stderr.lower()
    assert "Traceback" not in r.stderr


def test_password_canary_never_printed_by_the_cli(tmp_path, cli_run, monkeypatch, caplog):
    import logging

    canary = "CANARY-cli-ssh-pw-0d4e"
    monkeypatch.setenv("LABCTL_TEST_SSH_E2E_PW", canary)
    caplog.set_level(logging.DEBUG)
    with sshd_server(tmp_path / "sshd", powershell_standin=STANDIN, password_auth=True) as srv:
        doc = yaml.safe_load((ROOT / "playbooks" / "home-lab.yaml").read_text())
        doc["hyperv"] = {"host": srv.host, "transport": "ssh", "port": srv.port,
                         "user": srv.user, "password": {"env": "LABCTL_TEST_SSH_E2E_PW"},
                         "ssh_known_hosts": str(srv.known_hosts), "timeout": 10}
        pb = tmp_path / "lab.yaml"
        pb.write_text(yaml.safe_dump(doc, sort_keys=False))
        for args in (["-vv", "status", "-f", str(pb)], ["plan", "-f", str(pb), "--json"],
                     ["-vv", "up", "-f", str(pb), "-y", "--only", "hyperv", "--json"]):
            r = cli_run(*args)
            assert r.exit_code == 5, r
            assert canary not in r.stdout and canary not in r.stderr
    assert canary not in caplog.text
