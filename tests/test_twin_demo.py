"""`labctl twin demo` end to end on a copy of playbooks/twin.yaml and on a second twin with
other subnets, VLAN and devices: up, embedded sensor, verify-alerts with real nmap and
packet recipes from the scanner namespace, verdicts, JUnit, down."""

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
    junit = tmp_path / "demo.xml"
    try:
        r = cli_run("twin", "demo", "-f", str(path), "--json", "--junit", str(junit))
        assert r.exit_code == 0, r
        d = r.json()
        _assert_verdicts(d, junit)
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


OFF_BY_DEFAULT = {"arp-address-scan": "arp_scan", "icmp-flood": "icmp_flood"}


def _assert_verdicts(d, junit):
    """Every case of nmap-default passed, or was skipped for the documented reason."""
    import junitparser

    v = d["verify"]
    cases = {c["id"]: c for c in v["cases"]}
    assert v["ok"] is True and d["ok"] is True and not v["blind"] and v["canary"]["seen"]
    for cid, c in cases.items():
        if cid in OFF_BY_DEFAULT:
            assert c["verdict"] == "SKIP", c
            assert "off by default" in c["reason"]
            assert f"sensor.engines.{OFF_BY_DEFAULT[cid]}.enabled: true" in c["hint"]
        else:
            assert c["verdict"] == "PASS", c
    assert {"service-scan-subnet", "full-port-scan-feeder", "irc-6667-custom-rule",
            "port-zero", "sweep-below-threshold", "baseline-quiet"} <= set(cases)
    for cid in ("port-zero", "irc-6667-custom-rule", "full-port-scan-feeder"):
        assert cases[cid]["matched"] and cases[cid]["seen_latency_seconds"] is not None
    suite = next(iter(junitparser.JUnitXml.fromfile(str(junit))))
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == \
        (len(cases), 0, 0, len(OFF_BY_DEFAULT))


def test_twin_demo_on_a_second_twin_with_other_subnets_vlan_and_devices(tmp_path, cli_run):
    L = tl.lab_name("tw7")
    path = tl.write_second_twin(tmp_path, L, a=71, b=72, c=73)
    text = path.read_text().replace("  kind: d4iot\n", "  kind: embedded\n")
    path.write_text(text)
    junit = tmp_path / "second.xml"
    try:
        r = cli_run("twin", "demo", "-f", str(path), "--json", "--junit", str(junit))
        assert r.exit_code == 0, r
        d = r.json()
        _assert_verdicts(d, junit)
        assert d["target"] == "10.72.7.0/24"
        found = {h["ip"] for h in d["hosts"]}
        assert {"10.72.7.10", "10.72.7.11"} <= found
        pz = next(c for c in d["verify"]["cases"] if c["id"] == "port-zero")
        assert pz["matched"][0]["source"] == "10.72.7.200"
        assert pz["matched"][0]["destination"] == "10.72.7.10"
        assert tl.lab_namespaces(L) == []
    finally:
        for ns in tl.lab_namespaces(L):
            subprocess.run(["ip", "netns", "del", ns], check=False)
