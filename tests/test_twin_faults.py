"""A second twin playbook (other subnets, VLAN 117, other devices) and faults: a step failing
mid-up, a half-built lab removed by down, leftovers and subnet collisions refused."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from labctl.app import lab
from labctl.core.errors import CommandError, PreflightError
from labctl.transport import proc
from tests.helpers import twin_lab as tl

pytestmark = pytest.mark.netns


def _cleanup(prefix: str) -> None:
    for ns in tl.lab_namespaces(prefix):
        subprocess.run(["ip", "netns", "pids", ns], check=False)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_second_twin_other_subnets_vlan_and_devices(tmp_path):
    L = tl.lab_name("tw2")
    path = tl.write_second_twin(tmp_path, L)
    try:
        rep = tl.up(path)
        assert rep.converged
        st = {s.resource: s for s in lab.status(tl.ctx(path))}
        plant = st["netns.bridge:Plant"]
        assert "vlan 117" in plant.details and "subnet 10.62.7.0/24" in plant.details
        assert st["netns.process:device-cam"].state == "running"
        # nothing tied to 172.16.1.0/24: the router's IoT gateway is 10.62.7.254
        out = subprocess.run(["ip", "-n", f"{L}-rtr", "-j", "addr", "show", "iot0"],
                             capture_output=True, text=True, check=True).stdout
        assert [a["local"] for a in json.loads(out)[0]["addr_info"]] == ["10.62.7.254"]
        xml = subprocess.run(["ip", "netns", "exec", f"{L}-scan", "nmap", "-n", "-sT", "-p",
                              "554,6668,8000", "-oX", "-", "10.62.7.0/24"], capture_output=True,
                             text=True, check=True, timeout=120).stdout
        found = {}
        for h in ET.fromstring(xml).findall("host"):
            ip = h.find("address[@addrtype='ipv4']").get("addr")
            found[ip] = sorted(int(p.get("portid")) for p in h.findall("ports/port")
                               if p.find("state").get("state") == "open")
        assert found["10.62.7.10"] == [554, 8000] and found["10.62.7.11"] == [6668]
        # mirroring on the second lab too (VLAN 117 segment -> the ids VM's eth1)
        s, _ = tl.udp_server(f"{L}-cam", 41010, reply=b"CAM-REP-x1")
        try:
            with tl.capture(f"{L}-ids", "eth1") as frames:
                assert tl.udp_ask(f"{L}-plug", "10.62.7.10", 41010, b"PLUG-REQ-x1") == \
                    b"CAM-REP-x1"
        finally:
            s.close()
        assert tl.count(frames, b"PLUG-REQ-x1") == 1 and tl.count(frames, b"CAM-REP-x1") == 1
        # NAT from the management switch to the WAN (198.51.100.0/24 side this time)
        assert tl.tcp_peer_seen(f"{L}-wan", f"{L}-ids", "203.0.113.77", 41011) == "198.51.100.2"
    finally:
        tl.down(path)
        assert tl.lab_namespaces(L) == []
        _cleanup(L)


def test_step_failing_mid_up_then_rerun_converges_and_down_cleans(tmp_path, monkeypatch):
    L = tl.lab_name("tw4")
    path = tl.write_second_twin(tmp_path, L, a=71, b=72, c=73)
    real = proc.run
    calls = {"n": 0}

    def flaky(argv, **kw):
        if argv[:3] == ["ip", "link", "add"]:
            calls["n"] += 1
            if calls["n"] == 3:  # the third veth fails
                raise CommandError(list(argv), 2, "RTNETLINK answers: injected fault")
        return real(argv, **kw)

    try:
        monkeypatch.setattr(proc, "run", flaky)
        with pytest.raises(CommandError) as ei:
            tl.up(path)
        assert "run `labctl up` again" in (ei.value.hint or "")
        monkeypatch.setattr(proc, "run", real)
        half = {s.resource: s for s in lab.status(tl.ctx(path))}
        assert any(s.state == "missing" for s in half.values())
        assert f"{L}-host" in tl.lab_namespaces(L)
        again = tl.up(path)  # converges from the half-built state (owned, so not refused)
        assert again.converged and len(again.plan.steps) < 40
        assert lab.plan(tl.ctx(path)).pending == []
        # now crash again half-way through and let down clean a half-built lab
        subprocess.run(["ip", "netns", "del", f"{L}-cam"], check=True)
        assert tl.down(path).converged
        assert tl.lab_namespaces(L) == []
        assert not Path(f"/etc/netns/{L}-cam").exists()  # its resolver file went too
    finally:
        monkeypatch.setattr(proc, "run", real)
        try:
            tl.down(path)
        finally:
            _cleanup(L)


def test_leftover_namespaces_without_marker_are_refused(tmp_path):
    L = tl.lab_name("tw3")
    path = tl.write_second_twin(tmp_path, L, a=81, b=82, c=83)
    subprocess.run(["ip", "netns", "add", f"{L}-host"], check=True)
    try:
        with pytest.raises(PreflightError) as ei:
            tl.up(path)
        assert f"{L}-host" in str(ei.value) and f"ip netns del {L}-host" in ei.value.hint
        assert tl.lab_namespaces(L) == [f"{L}-host"]  # nothing else was created
        with pytest.raises(PreflightError):
            tl.down(path)  # not ours to delete either
        assert tl.lab_namespaces(L) == [f"{L}-host"]
    finally:
        _cleanup(L)


def test_subnet_colliding_with_a_machine_route_is_refused(tmp_path):
    L = tl.lab_name("tw5")
    routes = json.loads(subprocess.run(["ip", "-j", "route", "show"], capture_output=True,
                                       text=True, check=True).stdout)
    nets = [ipaddress.ip_network(r["dst"], strict=False) for r in routes
            if r.get("dst") not in (None, "default")]
    nets = [n for n in nets if n.version == 4 and 8 <= n.prefixlen <= 24]
    if not nets:
        pytest.skip("the machine has no IPv4 route (other than default) to collide with")
    net = next(nets[0].subnets(new_prefix=24))
    path = tl.write_second_twin(tmp_path, L, a=91, b=92, c=93)
    text = path.read_text().replace("10.91.0.1/24", f"{net[1]}/24") \
        .replace("10.91.0.0/24", str(net)).replace("10.91.0.50", str(net[50])) \
        .replace("gateway: 10.91.0.1}", f"gateway: {net[1]}}}")
    path.write_text(text)
    try:
        with pytest.raises(PreflightError) as ei:
            tl.up(path)
        assert str(net) in str(ei.value) and "collides" in str(ei.value)
        assert tl.lab_namespaces(L) == []
    finally:
        _cleanup(L)


def test_ap_isolation_follows_the_playbook(tmp_path):
    L = tl.lab_name("tw8")
    path = tl.write_second_twin(tmp_path, L, a=101, b=102, c=103)
    plain = path.read_text()
    path.write_text(plain.replace("    vlan: 117\nsensor:",
                                  "    vlan: 117\n    ap_isolation: true\nsensor:"))
    try:
        assert tl.up(path).converged
        s, _ = tl.udp_server(f"{L}-cam", 41020, reply=b"CAM-ISO")
        try:
            # isolated device ports cannot reach each other, but still reach the router/WAN
            assert tl.udp_ask(f"{L}-plug", "10.102.7.10", 41020, b"PLUG", timeout=1.0) is None
            assert tl.tcp_peer_seen(f"{L}-wan", f"{L}-plug", "203.0.113.77", 41021) == \
                "198.51.100.2"
            path.write_text(plain)  # isolation off again: up converges the bridge ports
            rep = tl.up(path)
            assert rep.converged
            assert {c.resource for c in rep.plan.pending} >= {f"netns.veth:{L}-host/d0-cam",
                                                              f"netns.veth:{L}-host/d1-plug"}
            assert tl.udp_ask(f"{L}-plug", "10.102.7.10", 41020, b"PLUG") == b"CAM-ISO"
        finally:
            s.close()
    finally:
        tl.down(path)
        _cleanup(L)


def test_process_killed_during_up_is_not_converged_then_rerun_converges(tmp_path, monkeypatch):
    import os
    import signal

    from labctl.core.errors import ConvergenceError
    from labctl.netns import supervisor

    L = tl.lab_name("tw9")
    path = tl.write_second_twin(tmp_path, L, a=111, b=112, c=113)
    real_spawn = supervisor.spawn

    def spawn_and_kill(state_dir, name, netns, argv, env=None):
        pid = real_spawn(state_dir, name, netns, argv, env=env)
        if name == "wan":
            os.killpg(pid, signal.SIGKILL)  # killed right after it started
        return pid

    try:
        monkeypatch.setattr(supervisor, "spawn", spawn_and_kill)
        with pytest.raises(ConvergenceError) as ei:
            tl.up(path)
        assert "netns.process:wan" in str(ei.value)
        monkeypatch.setattr(supervisor, "spawn", real_spawn)
        st = {s.resource: s for s in lab.status(tl.ctx(path))}
        assert st["netns.process:wan"].state == "failed"
        assert st["netns.process:device-cam"].state == "running"
        rep = tl.up(path)
        assert rep.converged
        assert [c.resource for c in rep.plan.pending] == ["netns.process:wan"]
        assert lab.plan(tl.ctx(path)).pending == []
    finally:
        monkeypatch.setattr(supervisor, "spawn", real_spawn)
        try:
            tl.down(path)
        finally:
            _cleanup(L)
