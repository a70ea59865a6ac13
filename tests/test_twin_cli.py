"""The headline commands on a copy of playbooks/twin.yaml (lab tw7), through the real CLI:
`labctl up -f twin.yaml -y` (provider, then the router stage against the router twin),
`status --json`, a second `up` that changes nothing, `down`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import twin_lab as tl

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parent.parent


def test_up_status_up_down_through_the_cli(tmp_path, cli_run, monkeypatch):
    L = tl.lab_name("tw7")
    monkeypatch.setenv("LABCTL_ROUTER_PASSWORD", f"{L}-Router-pass")
    monkeypatch.setenv("LABCTL_IOT_PASSPHRASE", f"{L}-iot-passphrase")
    text = (ROOT / "playbooks" / "twin.yaml").read_text()
    path = tmp_path / f"{L}.yaml"
    path.write_text(text.replace("lab: twin", f"lab: {L}").replace("netns:twin-kali",
                                                                  f"netns:{L}-kali"))
    before = tl.root_snapshot()
    try:
        r = cli_run("up", "-f", str(path), "-y", "--json")
        assert r.exit_code == 0, r
        stages = {s["stage"]: s for s in r.json()["stages"]}
        assert stages["hyperv"]["status"] == "applied"
        r = cli_run("status", "-f", str(path), "--json")
        assert r.exit_code == 0, r
        doc = r.json()
        assert doc["drift"] is False
        res = {x["resource"]: x for x in doc["resources"]}
        assert "vlan 52" in res["netns.bridge:Azkaban"]["details"]
        assert res["netns.process:router"]["state"] == "running"
        r = cli_run("plan", "-f", str(path), "--json")
        assert r.exit_code == 0 and r.json()["empty"] is True
        r = cli_run("up", "-f", str(path), "-y")
        assert r.exit_code == 0 and "nothing to change" in r.stdout
        r = cli_run("down", "-f", str(path), "-y")
        assert r.exit_code == 0, r
        assert tl.lab_namespaces(L) == []
        assert tl.root_lab_traces(before) == {"links": [], "addrs": [], "routes": []}
        r = cli_run("down", "-f", str(path), "-y")
        assert r.exit_code == 0 and f"Nothing of lab {L}" in r.stdout
    finally:
        cli_run("down", "-f", str(path), "-y")
        for ns in tl.lab_namespaces(L):
            subprocess.run(["ip", "netns", "del", ns], check=False)
