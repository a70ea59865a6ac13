"""Each FAIL reason of verify-alerts produced for real on the twin, by configuring the
embedded sensor through the playbook (sensor.authorized_scanners, sensor.engines,
sensor.learning_mode) and by removing the twin's mirror: real packets from the scanner
namespace, the real embedded sensor, real verdicts.

One twin is built for the module; each test changes the playbook, runs `up` again (the
sensor restarts with the new configuration) and runs one case.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from labctl.app import lab
from labctl.app.verify import VerifyOptions, verify_alerts
from labctl.app.verify_core import Verdict
from labctl.core.context import LabContext
from labctl.core.playbook import load_playbook
from tests.helpers import twin_lab as tl

pytestmark = [pytest.mark.netns, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SCANNER = "172.16.1.50"

SWEEP = """
cases:
  - id: sweep
    requires: port_scan
    stimulus: {recipe: syn-sweep, host: "{device:%d}", ports: 40}
    expect:
      - {title: Port Scan Detected, engine: Anomaly, source: "{scanner}", within: 4s}
"""

NEW_MAC = """
cases:
  - id: new-mac
    requires: new_asset
    stimulus: {recipe: new-mac, host: "{gateway}", source_ip: 172.16.1.%d}
    expect:
      - {title: New Asset Detected, engine: Policy Violation, within: 4s}
"""


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("verify-twin")
    name = tl.lab_name("tv")
    base = yaml.safe_load((ROOT / "playbooks" / "twin.yaml").read_text())
    base["lab"] = name
    base["scanner"]["spec"] = f"netns:{name}-kali"
    state = {"folder": folder, "name": name, "base": base, "n": 0,
             "state_dir": str(folder / "state")}
    try:
        yield state
    finally:
        os.environ["LABCTL_STATE_DIR"] = state["state_dir"]
        try:
            lab.down(LabContext(load_playbook(str(_write(state, {})))),
                     confirm=lambda p: True)
        finally:
            for ns in tl.lab_namespaces(name):
                subprocess.run(["ip", "netns", "del", ns], check=False)


def _write(state: dict, sensor: dict) -> Path:
    # one state directory for the module's twin (the suite gives each test its own; the
    # autouse fixture restores the variable after each test)
    os.environ["LABCTL_STATE_DIR"] = state["state_dir"]
    doc = yaml.safe_load(yaml.safe_dump(state["base"]))
    doc["sensor"].update(sensor)
    path = state["folder"] / f"{state['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _verify(state: dict, sensor: dict, cases: str, **opts) -> list:
    path = _write(state, sensor)
    ctx = LabContext(load_playbook(str(path)))
    rep = lab.up(ctx, confirm=lambda p: True)
    assert rep.converged
    state["n"] += 1
    exp = state["folder"] / f"cases{state['n']}.yaml"
    exp.write_text(cases)
    report = verify_alerts(ctx, VerifyOptions(expectations=str(exp), **opts))
    return report.results


def test_an_authorized_scanner_is_the_reason(twin):
    [r] = _verify(twin, {"authorized_scanners": [SCANNER]}, SWEEP % 1)
    assert r.verdict == Verdict.FAIL, r.to_dict()
    assert "authorized scanner" in r.reason and "sensor.authorized_scanners" in r.reason


def test_a_disabled_detection_is_the_reason(twin):
    [r] = _verify(twin, {"engines": {"port_scan": {"enabled": False}}}, SWEEP % 2)
    assert r.verdict == Verdict.FAIL, r.to_dict()
    assert "Port Scan Detected (port_scan) is disabled" in r.reason


def test_a_threshold_above_what_the_stimulus_touched_is_the_reason(twin):
    [r] = _verify(twin, {"engines": {"port_scan": {"threshold": 100}}}, SWEEP % 3)
    assert r.verdict == Verdict.FAIL, r.to_dict()
    assert "threshold not reached: the stimulus touched 40 ports" in r.reason
    assert "needs 100" in r.reason


def test_learning_mode_withholds_a_policy_violation_and_is_the_reason(twin):
    [r] = _verify(twin, {"learning_mode": True}, NEW_MAC % 201)
    assert r.verdict == Verdict.FAIL, r.to_dict()
    assert "learning mode" in r.reason
    [r] = _verify(twin, {"learning_mode": False}, NEW_MAC % 202)
    assert r.verdict == Verdict.PASS, r.to_dict()


def test_a_removed_mirror_is_a_blind_sensor(twin):
    from labctl.netns.provider import NetnsProvider

    path = _write(twin, {})
    ctx = LabContext(load_playbook(str(path)))
    assert lab.up(ctx, confirm=lambda p: True).converged
    topo = NetnsProvider(ctx.loaded).topology
    for m in topo.mirrors:
        subprocess.run(["tc", "-n", m.ns, "filter", "del", "dev", m.port, "parent", "ffff:"],
                       check=True)
    exp = twin["folder"] / "blind.yaml"
    exp.write_text(SWEEP % 4)
    rep = verify_alerts(ctx, VerifyOptions(expectations=str(exp), canary_timeout=3.0))
    assert rep.blind and not rep.canary["seen"]
    [r] = rep.results
    assert r.verdict == Verdict.ERROR and "blind" in r.reason and "SPAN" in r.hint
    # `up` puts the mirror back, and the canary sees the scanner again
    assert lab.up(ctx, confirm=lambda p: True).applied
    rep = verify_alerts(ctx, VerifyOptions(expectations=str(exp), canary_timeout=5.0))
    assert not rep.blind and rep.canary["seen"]
