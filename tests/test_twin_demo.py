"""`labctl twin demo` end to end on a copy of playbooks/twin.yaml (lab tw6): up, embedded
sensor, real nmap from the scanner namespace, alerts from the sensor API, down."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import twin_lab as tl

pytestmark = [pytest.mark.netns, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def test_twin_demo_end_to_end(tmp_path, cli_run):
    L = tl.lab_name("tw6")
    if tl.unavailable_process_names() & {"sensor"}:
        pytest.skip("the embedded sensor (labctl sensor serve) is not in this build")
    text = (ROOT / "playbooks" / "twin.yaml").read_text()
    path = tmp_path / f"{L}.yaml"
    path.write_text(text.replace("lab: twin", f"lab: {L}").replace("netns:twin-kali",
                                                                  f"netns:{L}-kali"))
    try:
        r = cli_run("twin", "demo", "-f", str(path), "--json")
        assert r.exit_code == 0, r
        d = r.json()
        found = {h["ip"]: h["ports"] for h in d["hosts"]}
        assert {"172.16.1.21", "172.16.1.22", "172.16.1.31", "172.16.1.32",
                "172.16.1.40"} <= set(found)
        assert "6668/tcp" in found["172.16.1.21"] and "8009/tcp" in found["172.16.1.40"]
        assert len(d["devices_found"]) == len(d["devices_expected"]) == 5
        assert d["alerts_fired"] >= 1
        assert any("Scan" in a for a in d["alerts"])
        assert d["up_seconds"] < 10 and not d["kept"]
        assert d["stages"] == {"hyperv": "applied", "router": "applied", "sensor": "applied"}
        vendors = {x["ip"]: x["vendor"] for x in d["sensor_devices"]}
        assert vendors.get("172.16.1.21") and "Tuya" in vendors["172.16.1.21"]
        assert tl.lab_namespaces(L) == []
    finally:
        for ns in tl.lab_namespaces(L):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def test_demo_refuses_a_non_twin_playbook(cli_run, repo_root):
    r = cli_run("twin", "demo", "-f", str(repo_root / "playbooks" / "home-lab.yaml"))
    assert r.exit_code != 0
    assert "not a twin playbook" in r.stderr
