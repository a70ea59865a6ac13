"""End to end through the real transport: `labctl up/status/down` with `transport: local`,
LocalRunner starting a PowerShell stand-in process per script (tests/helpers/hyperv_standin.py)
that runs each script against a fake host kept in a state file."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from labctl.core.errors import ExitCode
from tests.helpers.hyperv_lab import reference_data, write_playbook

HELPERS = Path(__file__).resolve().parent / "helpers"


@pytest.fixture
def local_lab(tmp_path, monkeypatch):
    wrapper = tmp_path / "powershell"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {HELPERS / 'hyperv_standin.py'} \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    root = str(HELPERS.parent.parent)
    monkeypatch.setenv("PYTHONPATH", root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("LABCTL_POWERSHELL", str(wrapper))
    monkeypatch.setenv("LABCTL_FAKE_HYPERV_STATE", str(tmp_path / "host.json"))
    monkeypatch.setenv("LABCTL_STANDIN_LOG", str(tmp_path / "calls.jsonl"))
    data = reference_data()
    data["hyperv"] = {"host": "localhost", "transport": "local",
                      "vhd_path": r"D:\Hyper-V\Virtual Hard Disks"}
    return write_playbook(tmp_path, data), tmp_path


def _calls(tmp_path: Path) -> list[str]:
    p = tmp_path / "calls.jsonl"
    return [json.loads(x)["name"] for x in p.read_text().splitlines()] if p.exists() else []


def test_up_status_down_through_the_local_runner(cli_run, local_lab):
    pb, tmp = local_lab
    r = cli_run("up", "-f", str(pb), "-y")
    assert r.exit_code == 0, r
    calls = _calls(tmp)
    assert calls[0] == "facts/read" and calls[-1] == "facts/read" and len(calls) == 19
    state = json.loads((tmp / "host.json").read_text())
    vm = [v for v in state["vms"] if v["name"] == "d4iot-sensor"][0]
    assert [a["name"] for a in vm["adapters"]] == ["Management", "Monitor"]
    assert vm["state"] == "Running"
    n = len(calls)
    r = cli_run("up", "-f", str(pb), "-y")
    assert r.exit_code == 0 and _calls(tmp)[n:] == ["facts/read"]  # one round trip
    assert cli_run("status", "-f", str(pb)).exit_code == 0
    r = cli_run("down", "-f", str(pb), "-y")
    assert r.exit_code == 0
    state = json.loads((tmp / "host.json").read_text())
    assert sorted(s["name"] for s in state["switches"]) == ["Default Switch"]
    assert sorted(v["name"] for v in state["vms"]) == ["kali"]


def test_remote_error_record_comes_back_named_then_rerun_converges(cli_run, local_lab,
                                                                   monkeypatch):
    pb, tmp = local_lab
    monkeypatch.setenv("LABCTL_STANDIN_FAIL", "netnat/create")
    r = cli_run("up", "-f", str(pb), "-y")
    assert r.exit_code == ExitCode.ERROR
    assert "netnat/create" in r.stderr and "Access is denied" in r.stderr
    assert "steps 1-4 of 17 were applied" in r.stderr
    monkeypatch.delenv("LABCTL_STANDIN_FAIL")
    n = len(_calls(tmp))
    r = cli_run("up", "-f", str(pb), "-y")
    assert r.exit_code == 0, r
    assert "vmswitch/create" not in _calls(tmp)[n:]  # resumed, no duplicate switches
    state = json.loads((tmp / "host.json").read_text())
    assert sorted(s["name"] for s in state["switches"]) == ["Azkaban", "Core", "Default Switch"]
