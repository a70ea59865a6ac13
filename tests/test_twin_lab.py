"""The reference twin (playbooks/twin.yaml as lab tw1), brought up once for this module.

up -> status clean -> second plan empty -> mirroring, NAT, nmap, drift -> down -> nothing left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from labctl.app import lab
from tests.helpers import twin_lab as tl

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parent.parent
LAB = tl.lab_name("tw1")
SENSOR_NS = f"{LAB}-d4iot-sensor"


@pytest.fixture(scope="module")
def tw1(tmp_path_factory):
    state = tmp_path_factory.mktemp("tw1-state")
    folder = tmp_path_factory.mktemp("tw1-playbook")
    text = (ROOT / "playbooks" / "twin.yaml").read_text()
    text = text.replace("lab: twin", f"lab: {LAB}").replace("netns:twin-kali", f"netns:{LAB}-kali")
    path = folder / f"{LAB}.yaml"
    path.write_text(text)
    mp = pytest.MonkeyPatch()
    mp.setenv("LABCTL_STATE_DIR", str(state))
    before = tl.root_snapshot()
    t0 = time.monotonic()
    try:
        report = tl.up(path)
        up_seconds = time.monotonic() - t0
        yield SimpleNamespace(path=path, state=state, before=before, report=report,
                              up_seconds=up_seconds)
    finally:
        try:
            tl.down(path)
        finally:
            for ns in tl.lab_namespaces(LAB):  # last resort, never leave namespaces behind
                subprocess.run(["ip", "netns", "del", ns], check=False)
            mp.undo()


@pytest.fixture(autouse=True)
def _module_state(_isolated_state, tw1, monkeypatch):
    monkeypatch.setenv("LABCTL_STATE_DIR", str(tw1.state))


def _statuses(tw1):
    return {s.resource: s for s in lab.status(tl.ctx(tw1.path))}


def test_up_converges_fast_and_leaves_root_namespace_alone(tw1):
    assert tw1.report.applied and tw1.report.converged
    assert tw1.up_seconds < 10
    assert tl.root_lab_traces(tw1.before) == {"links": [], "addrs": [], "routes": []}
    expected = {f"{LAB}-{n}" for n in ("host", "rtr", "wan", "d4iot-sensor", "feeder1", "feeder2",
                                       "roborock", "roomba", "google-home", "kali")}
    assert set(tl.lab_namespaces(LAB)) == expected
    # per-namespace resolver: DNS fails fast inside the lab instead of leaking or hanging
    conf = Path(f"/etc/netns/{LAB}-kali/resolv.conf").read_text()
    assert "nameserver 127.0.0.1" in conf


def test_status_is_clean(tw1):
    skip = tl.unavailable_process_names()
    bad = [s.to_dict() for r, s in _statuses(tw1).items()
           if s.drifted and r.split(":", 1)[1] not in skip]
    assert bad == []
    st = _statuses(tw1)
    assert st["netns.process:wan"].state == "running"
    assert st["netns.process:device-feeder1"].state == "running"


def test_second_plan_is_empty(tw1):
    skip = tl.unavailable_process_names()
    plan = lab.plan(tl.ctx(tw1.path))
    pending = [c.resource for c in plan.pending
               if c.resource.split(":", 1)[1] not in skip]
    assert pending == []
    assert len(plan.changes) > 40  # every resource was looked at


def test_vlan_and_segments_stay_in_the_model(tw1):
    st = _statuses(tw1)
    az = st["netns.bridge:Azkaban"]
    assert "vlan 52" in az.details and "subnet 172.16.1.0/24" in az.details
    assert any(d.startswith("mirrored to ") for d in az.details)


def test_mirroring_device_to_device_and_to_wan_seen_exactly_once(tw1):
    tag = uuid.uuid4().hex[:10].encode()
    d2d_req, d2d_rep = b"D2D-REQ-" + tag, b"D2D-REP-" + tag
    wan_req, wan_rep = b"WAN-REQ-" + tag, b"WAN-REP-" + tag
    s1, got1 = tl.udp_server(f"{LAB}-google-home", 41001, reply=d2d_rep)
    s2, got2 = tl.udp_server(f"{LAB}-wan", 41002, reply=wan_rep, bind="203.0.113.10")
    try:
        with tl.capture(SENSOR_NS, "eth1") as frames:
            assert tl.udp_ask(f"{LAB}-feeder1", "172.16.1.40", 41001, d2d_req) == d2d_rep
            assert tl.udp_ask(f"{LAB}-feeder2", "203.0.113.10", 41002, wan_req) == wan_rep
    finally:
        s1.close()
        s2.close()
    assert [tl.count(frames, m) for m in (d2d_req, d2d_rep, wan_req, wan_rep)] == [1, 1, 1, 1]
    # the device's outbound traffic reaches the WAN masqueraded by the router
    assert got2 and got2[0][1][0] == "203.0.113.2"


def test_nat_core_to_wan_is_masqueraded(tw1):
    seen = tl.tcp_peer_seen(f"{LAB}-wan", SENSOR_NS, "198.51.100.10", 41003)
    assert seen == "203.0.113.2"  # not 192.168.0.101 (NetNat) nor 192.168.50.2 (router NAT)
    # and the host's NetNat table is the lab's own, with the masquerade rule
    out = subprocess.run(["ip", "netns", "exec", f"{LAB}-host", "nft", "list", "table", "ip",
                          "labctl"], capture_output=True, text=True, check=True).stdout
    assert "192.168.0.0/24" in out and "masquerade" in out


def test_nmap_from_scanner_namespace_finds_the_personas(tw1):
    time.sleep(0.5)
    xml = subprocess.run(["ip", "netns", "exec", f"{LAB}-kali", "nmap", "-n", "-sT",
                          "-p", "6668,8008,8009,8443,8883", "-oX", "-", "172.16.1.0/24"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    hosts = {}
    for h in ET.fromstring(xml).findall("host"):
        if h.find("status").get("state") != "up":
            continue
        ip = h.find("address[@addrtype='ipv4']").get("addr")
        hosts[ip] = sorted(int(p.get("portid")) for p in h.findall("ports/port")
                           if p.find("state").get("state") == "open")
    devices = {"172.16.1.21": [6668], "172.16.1.22": [6668], "172.16.1.31": [],
               "172.16.1.32": [8883], "172.16.1.40": [8008, 8009, 8443]}
    others = {ip: p for ip, p in hosts.items() if ip not in ("172.16.1.50", "172.16.1.1")}
    assert others == devices  # 5 hosts besides the scanner (and the router's gateway)


def test_deleted_tc_filter_is_drift_and_up_repairs_it(tw1):
    subprocess.run(["tc", "-n", f"{LAB}-host", "filter", "del", "dev", "d0-feeder1",
                    "parent", "ffff:"], check=True)
    st = _statuses(tw1)["netns.mirror:Azkaban/d0-feeder1"]
    assert st.drifted and "mirror filter missing" in st.details
    rep = tl.up(tw1.path)
    assert rep.converged
    skip = tl.unavailable_process_names()
    assert [c.resource for c in rep.plan.pending
            if c.resource.split(":", 1)[1] not in skip] == ["netns.mirror:Azkaban/d0-feeder1"]
    assert not _statuses(tw1)["netns.mirror:Azkaban/d0-feeder1"].drifted


def test_other_drift_is_reported_and_repaired(tw1):
    host = f"{LAB}-host"
    subprocess.run(["ip", "netns", "exec", host, "nft", "flush", "chain", "ip", "labctl",
                    "postrouting"], check=True)
    subprocess.run(["ip", "-n", host, "link", "set", "d2-roborock", "nomaster"], check=True)
    subprocess.run(["ip", "netns", "exec", f"{LAB}-rtr", "sysctl", "-qw",
                    "net.ipv4.ip_forward=0"], check=True)
    st = _statuses(tw1)
    assert st[f"netns.nft:{host}/ip labctl"].state == "drift"
    assert st[f"netns.veth:{host}/d2-roborock"].state == "drift"
    assert any("master None" in d for d in st[f"netns.veth:{host}/d2-roborock"].details)
    assert any("ip_forward=0" in d for d in st[f"netns.namespace:{LAB}-rtr"].details)
    assert tl.up(tw1.path).converged
    st = _statuses(tw1)
    assert not any(st[r].drifted for r in (f"netns.nft:{host}/ip labctl",
                                           f"netns.veth:{host}/d2-roborock",
                                           f"netns.namespace:{LAB}-rtr"))


def test_concurrent_apply_is_refused(tw1):
    from labctl.core.errors import PreflightError
    from labctl.netns.provider import NetnsProvider

    a = NetnsProvider(tl.ctx(tw1.path).loaded)
    b = NetnsProvider(tl.ctx(tw1.path).loaded)
    with a._lock():
        with pytest.raises(PreflightError, match="another labctl"):
            b.apply(b.plan_up(b.read_facts()))


def test_dead_persona_is_reported_and_restarted(tw1):
    from labctl.netns import supervisor

    d = tw1.state / "labs" / LAB
    info = supervisor.read(d, "device-roomba")
    os.killpg(info.pid, signal.SIGKILL)
    for _ in range(50):
        if not supervisor.read(d, "device-roomba").alive:
            break
        time.sleep(0.05)
    st = _statuses(tw1)["netns.process:device-roomba"]
    assert st.state == "failed"
    tl.up(tw1.path)
    again = supervisor.read(d, "device-roomba")
    assert again.alive and again.pid != info.pid
    assert _statuses(tw1)["netns.process:device-roomba"].state == "running"


def test_logs_and_pid_files_live_in_the_lab_state_dir(tw1):
    d = tw1.state / "labs" / LAB
    for _ in range(40):
        text = (d / "logs" / "wan.log").read_text()
        if "WAN services up" in text:
            break
        time.sleep(0.1)
    assert "WAN services up" in text
    assert (d / "run" / "device-feeder1.json").is_file()
    assert (d / "twin-owner.json").is_file()


def test_twin_ps_lists_the_processes(tw1, cli_run):
    r = cli_run("twin", "ps", "--json")
    assert r.exit_code == 0, r
    rows = {p["name"]: p for p in r.json()["processes"] if p["lab"] == LAB}
    assert rows["wan"]["state"] == "running" and rows["wan"]["netns"] == f"{LAB}-wan"
    r = cli_run("twin", "ps", "-f", str(tw1.path))
    assert r.exit_code == 0 and "device-feeder2" in r.stdout


def test_down_leaves_nothing_and_is_idempotent(tw1):
    from labctl.netns import supervisor

    d = tw1.state / "labs" / LAB
    pids = [p.pid for p in supervisor.read_all(d).values() if p.alive]
    assert pids
    rep = tl.down(tw1.path)
    assert rep.converged
    assert tl.lab_namespaces(LAB) == []
    assert all(not Path(f"/proc/{p}").exists() or
               Path(f"/proc/{p}/stat").read_text().split(")")[-1].split()[0] == "Z"
               for p in pids)
    assert not (d / "twin-owner.json").exists()
    assert not any(Path(f"/etc/netns/{ns}").exists() for ns in (f"{LAB}-host", f"{LAB}-kali"))
    assert list((d / "run").glob("*.json")) == []
    assert tl.root_lab_traces(tw1.before) == {"links": [], "addrs": [], "routes": []}
    assert lab.plan(tl.ctx(tw1.path), down=True).empty
    assert tl.down(tw1.path).plan.empty
