"""The twin end to end: the pet feeders' personas chat with the WAN's IRC-like service on
6667; the embedded sensor keeps the flows; `labctl traffic report --sensor --json` shows both
feeders, by name, with dport 6667 and the bytes the personas sent, within the framing
computed here (Linux TCP with timestamps: 40-byte TCP header on the SYN, 32 on the rest;
IPv4 20; Ethernet 14, 18 with the VLAN tag)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from labctl.traffic.persona import load_persona
from tests.helpers import twin_lab as tl

pytestmark = [pytest.mark.netns, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
FEEDERS = {"172.16.1.21": "feeder1", "172.16.1.22": "feeder2"}
IRC = "203.0.113.10"


def _payload(name: str) -> int:
    """Bytes one pet-feeder conversation sends (persona.converse: lines + CRLF)."""
    p = load_persona(ROOT / "playbooks" / "devices" / "pet-feeder.yaml")
    (ob,) = p.outbound
    return len("".join(ln.format(name=name) + "\r\n" for ln in ob.lines).encode("latin-1"))


def _residue(f, l2: int) -> int:
    """Payload bytes of the opener's side of a flow: wire bytes less the headers."""
    return f.bytes_out - f.packets_out * (l2 + 20 + 32) - 8  # the SYN's 8 option bytes more


def _irc_totals(ctx) -> dict[str, dict[str, int]]:
    from labctl.app.traffic import _latest, sensor_driver, sensor_flows

    out = {ip: {"packets_out": 0, "bytes_out": 0, "packets_in": 0, "bytes_in": 0}
           for ip in FEEDERS}
    with sensor_driver(ctx) as drv:
        for f in _latest(sensor_flows(drv)):
            if f.src in FEEDERS and f.dst == IRC and f.dport == 6667:
                t = out[f.src]
                t["packets_out"] += f.packets_out
                t["bytes_out"] += f.bytes_out
                t["packets_in"] += f.packets_in
                t["bytes_in"] += f.bytes_in
    return out


def test_feeder_irc_traffic_in_the_sensor_report(tmp_path: Path, cli_run) -> None:
    from labctl.app.traffic import sensor_driver, sensor_flows

    if tl.unavailable_process_names() & {"sensor"}:
        pytest.skip("the embedded sensor (labctl sensor serve) is not in this build")
    from labctl.sensor.client import D4IoTDriver

    if not hasattr(D4IoTDriver, "flows"):
        pytest.skip("the sensor driver's flow API (GET /api/labctl/flows) is not in this build")
    name = tl.lab_name("tf")
    doc = yaml.safe_load((ROOT / "playbooks" / "twin.yaml").read_text())
    doc["lab"] = name
    doc["scanner"]["spec"] = f"netns:{name}-kali"
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        rep = tl.up(path)
        assert rep.converged
        ctx = tl.ctx(path)
        done: dict[str, list] = {}
        deadline = time.monotonic() + 90
        with sensor_driver(ctx) as drv:
            while time.monotonic() < deadline:
                latest: dict[int, object] = {}
                for f in sensor_flows(drv):
                    latest[f.id] = f
                irc = [f for f in latest.values() if f.dst == IRC and f.dport == 6667
                       and f.src in FEEDERS]
                done = {ip: [f for f in irc if f.src == ip and f.packets_in > 0]
                        for ip in FEEDERS}
                if all(len(v) >= 3 for v in done.values()):
                    break
                time.sleep(1.0)
        assert all(len(v) >= 3 for v in done.values()), done
        for ip, flows in done.items():
            want = _payload(FEEDERS[ip])
            l2 = 18 if flows[0].vlan else 14
            # every conversation: its payload, or nothing yet if caught before the data
            residues = [_residue(f, l2) for f in flows]
            assert set(residues) <= {0, want}, (ip, l2, residues, want)
            assert residues.count(want) >= 3
        # the report: both feeders by name, 6667 to the WAN, the bytes the sensor counted
        # (the personas keep talking: between the store's totals just before and after)
        before = _irc_totals(ctx)
        r = cli_run("traffic", "report", "--sensor", "--json", "-f", str(path))
        after = _irc_totals(ctx)
        assert r.exit_code == 0, r
        rep_doc = r.json()
        assert rep_doc["sources"]["kind"] == "sensor-flows"
        devs = {d["ip"]: d for d in rep_doc["devices"]}
        for ip, nm in FEEDERS.items():
            d = devs[ip]
            assert d["name"] == nm
            assert d["mac"] == next(t["mac"] for t in doc["twin"]["devices"]
                                    if t["name"] == nm)
            peer = next(p for p in d["peers"] if p["ip"] == IRC)
            assert "tcp/6667" in peer["ports"] and peer["outbound"]
            assert peer["scope"] == "external"
            flags = {x["flag"] for x in d["flags"]}
            assert "internet" in flags and "irc-like" in flags
            for key in ("packets_out", "bytes_out", "packets_in", "bytes_in"):
                assert before[ip][key] <= peer[key] <= after[ip][key], (ip, key)
            assert peer["bytes_out"] >= len(done[ip]) * _payload(nm)
            assert sum(d["hours"]) > 0
        conv = {(c["a"], c["b"]): c for c in rep_doc["conversations"]}
        assert ("172.16.1.21", IRC) in conv and ("172.16.1.22", IRC) in conv
    finally:
        try:
            tl.down(path)
        finally:
            for ns in tl.lab_namespaces(name):
                subprocess.run(["ip", "netns", "del", ns], check=False)
