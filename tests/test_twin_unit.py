"""The twin without root: naming, topology, plans from empty facts, pre-flight checks,
personas, the WAN's IRC-like service, the supervisor and the `twin` CLI group."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from labctl.core.errors import ConfigError, PreflightError, ToolMissingError
from labctl.core.playbook import load_playbook
from labctl.netns import facts as factsmod
from labctl.netns import plan as planmod
from labctl.netns import provider as provmod
from labctl.netns import supervisor
from labctl.netns.topology import build
from labctl.netns.topology_model import ifname

ROOT = Path(__file__).resolve().parent.parent
TWIN = ROOT / "playbooks" / "twin.yaml"


@pytest.fixture
def topo(tmp_path):
    return build(load_playbook(str(TWIN)), tmp_path)


def test_ifname_is_short_deterministic_and_sanitized():
    a = ifname("v0n1", "A very long VM name (prod)")
    assert len(a) <= 15 and a == ifname("v0n1", "A very long VM name (prod)")
    assert a != ifname("v0n2", "A very long VM name (prod)")
    assert ifname("br1", "Azkaban") == "br1-azkaban"


def test_every_link_name_fits_and_is_unique_per_namespace(topo):
    names: dict[str, set[str]] = {}
    for v in topo.veths:
        for ns, n in ((v.a_ns, v.a_name), (v.b_ns, v.b_name)):
            assert len(n) <= 15
            assert n not in names.setdefault(ns, set()), (ns, n)
            names[ns].add(n)
    for b in topo.bridges:
        assert len(b.name) <= 15 and b.name not in names[b.ns]


def test_reference_twin_topology(topo):
    pb = load_playbook(str(TWIN)).model
    assert pb.scanner.spec == f"netns:{topo.scanner_ns}" == "netns:twin-kali"
    assert topo.host_ns == "twin-host" and topo.router_ns == "twin-rtr"
    assert topo.sensor_ns == "twin-d4iot-sensor" and topo.sensor_monitor_if == "eth1"
    az = next(s for s in topo.segments if s["switch"] == "Azkaban")
    assert az["vlan"] == 52 and az["subnet"] == "172.16.1.0/24" and az["span_source"]
    monitor = next(v for v in topo.veths if v.role == "monitor")
    assert monitor.a_master is None  # never flooded by the bridge: each frame once
    members = {v.a_name for v in topo.veths if v.a_master == az["bridge"]}
    assert {m.port for m in topo.mirrors} == members and len(members) == 7
    assert {m.target for m in topo.mirrors} == {monitor.a_name}
    assert sum(1 for v in topo.veths if v.role == "device") == 5
    procs = {p.name: p for p in topo.processes}
    assert procs["sensor"].argv[3:9] == ("sensor", "serve", "--interface", "eth1", "--listen",
                                         "192.168.0.101:443")
    r = procs["router"].argv
    assert "--https" in r and "192.168.50.1:8443" in r and "52=iot0" in r
    assert procs["device-feeder1"].ns == "twin-feeder1"
    # the twin keeps everything out of the root namespace
    assert all(v.a_ns.startswith("twin-") and v.b_ns.startswith("twin-") for v in topo.veths)


def test_plan_from_empty_facts_orders_and_describes_steps(topo, tmp_path):
    plan = planmod.plan_up(topo, factsmod.empty(topo), str(tmp_path))
    kinds = [c.resource.split(":")[0] for c in plan.changes]
    assert kinds[0] == "netns.lab"
    order = ["netns.namespace", "netns.bridge", "netns.veth", "netns.route", "netns.mirror",
             "netns.nft", "netns.process"]
    firsts = [kinds.index(k) for k in order]
    assert firsts == sorted(firsts)
    assert all(s.kind == "command" for s in plan.steps)
    text = "\n".join(s.script for s in plan.steps)
    assert "ip netns add twin-host" in text
    assert "u32 match u32 0 0 action mirred egress mirror dev" in text
    assert "masquerade" in text and "172.16.1.1/24" in text
    d = plan.to_dict()
    assert d["provider"] == "netns" and not d["empty"]
    assert planmod.plan_down(topo, factsmod.empty(topo)).empty


def test_device_name_clashing_with_a_lab_namespace_is_refused(tmp_path):
    text = TWIN.read_text().replace("name: feeder2,", "name: rtr,")
    p = tmp_path / "t.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        build(load_playbook(str(p)), tmp_path)
    assert "twin-rtr" in str(ei.value)


def test_unknown_persona_names_the_key(tmp_path):
    text = TWIN.read_text().replace("persona: roomba", "persona: toaster")
    p = tmp_path / "t.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        build(load_playbook(str(p)), tmp_path)
    assert "toaster" in str(ei.value) and "twin.devices.3.persona" in str(ei.value)


def test_route_collision_check():
    topo = build(load_playbook(str(TWIN)), Path("/tmp"))
    provmod.check_collisions(topo, [{"dst": "default", "gateway": "192.0.2.1"},
                                    {"dst": "10.99.0.0/16", "dev": "eth0"}])
    with pytest.raises(PreflightError) as ei:
        provmod.check_collisions(topo, [{"dst": "172.16.0.0/12", "dev": "docker0"}])
    assert "172.16.1.0/24" in str(ei.value) and "docker0" in str(ei.value)


def test_platform_checks(monkeypatch):
    monkeypatch.setattr(provmod.sys, "platform", "darwin")
    with pytest.raises(PreflightError, match="Linux"):
        provmod.check_platform()
    monkeypatch.setattr(provmod.sys, "platform", "linux")
    monkeypatch.setattr(provmod.os, "geteuid", lambda: 1000)
    with pytest.raises(PreflightError, match="root"):
        provmod.check_platform()
    monkeypatch.setattr(provmod.os, "geteuid", lambda: 0)
    real = provmod.shutil.which
    monkeypatch.setattr(provmod.shutil, "which", lambda t: None if t == "nft" else real(t))
    with pytest.raises(ToolMissingError) as ei:
        provmod.check_platform()
    assert "apt-get install -y nftables" in ei.value.hint
    monkeypatch.setattr(provmod.shutil, "which", lambda t: None if t == "tc" else "/x")
    with pytest.raises(ToolMissingError, match="tc") as ei:
        provmod.check_platform()
    assert "iproute2" in ei.value.hint


def test_preflight_refuses_unowned_namespaces(monkeypatch, tmp_path):
    monkeypatch.setattr(provmod, "check_platform", lambda: None)
    prov = provmod.NetnsProvider(load_playbook(str(TWIN)), state_dir=tmp_path)
    facts = factsmod.empty(prov.topology)
    facts.empty = False
    facts.all_namespaces = {"twin-host", "twin-kali", "other"}
    plan = prov.plan_up(facts)
    with pytest.raises(PreflightError) as ei:
        prov.preflight(facts, plan)
    assert "twin-host" in str(ei.value) and "ip netns del twin-kali" in ei.value.hint
    facts.marker = {"namespaces": ["twin-host"]}  # owned: converged, not refused
    prov.preflight(facts, prov.plan_up(facts))


def test_every_persona_file_validates():
    from labctl.traffic.persona import load_persona

    files = sorted((ROOT / "playbooks" / "devices").glob("*.yaml"))
    assert len(files) >= 4
    for f in files:
        p = load_persona(f)
        assert p.listeners or p.outbound
    feeder = load_persona(ROOT / "playbooks" / "devices" / "pet-feeder.yaml")
    assert [lst.port for lst in feeder.listeners] == [6668]
    assert feeder.outbound[0].port == "irc"
    gh = load_persona(ROOT / "playbooks" / "devices" / "google-home.yaml")
    assert sorted(lst.port for lst in gh.listeners) == [8008, 8009, 8443]


def test_bad_persona_is_a_config_error(tmp_path):
    from labctl.traffic.persona import load_persona

    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nlisteners:\n  - {port: 70000}\n")
    with pytest.raises(ConfigError) as ei:
        load_persona(p)
    assert "listeners" in str(ei.value) and "bad.yaml" in str(ei.value)


def test_persona_outbound_target_is_checked(tmp_path):
    from labctl.traffic.persona import load_persona

    p = tmp_path / "bad.yaml"
    p.write_text("name: x\noutbound:\n  - {to: evil.example.com, port: 80}\n")
    with pytest.raises(ConfigError, match="neither 'wan' nor an IPv4"):
        load_persona(p)


def test_persona_runtime_banner_reply_and_outbound(tmp_path):
    from labctl.traffic.persona import Listener, Outbound, Persona, run_persona

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(4)
    sink.settimeout(5)
    persona = Persona(name="t", listeners=[Listener(port=port, banner="HELLO\n", reply="ACK")],
                      outbound=[Outbound(to="127.0.0.1", port=sink.getsockname()[1],
                                         every_seconds=0.5, lines=["NICK {name}"])])
    stop = threading.Event()
    t = threading.Thread(target=run_persona, args=(persona, "dev1", "127.0.0.1"),
                         kwargs={"stop": stop, "bind": "127.0.0.1"}, daemon=True)
    t.start()
    try:
        conn, _ = sink.accept()
        assert conn.recv(100) == b"NICK dev1\r\n"
        conn.close()
        for _ in range(50):
            try:
                c = socket.create_connection(("127.0.0.1", port), timeout=2)
                break
            except ConnectionRefusedError:
                time.sleep(0.05)
        assert c.recv(100) == b"HELLO\n"
        c.sendall(b"hi\n")
        assert c.recv(100) == b"ACK"
        c.close()
    finally:
        stop.set()
        t.join(3)
        sink.close()


def test_wan_irc_session_speaks_enough_irc():
    from labctl.traffic.wan import irc_session

    a, b = socket.socketpair()
    t = threading.Thread(target=irc_session, args=(b, "203.0.113.2"), daemon=True)
    t.start()
    a.sendall(b"NICK feeder1\r\nUSER feeder1 0 * :x\r\nPING :42\r\nQUIT :bye\r\n")
    t.join(3)
    b.close()
    data = b""
    while chunk := a.recv(4096):
        data += chunk
    text = data.decode()
    assert " 001 feeder1 " in text and "PONG" in text and ":42" in text and "ERROR" in text


def test_supervisor_lifecycle(tmp_path):
    pid = supervisor.spawn(tmp_path, "sleeper", None,
                           [sys.executable, "-c", "import time; print('up', flush=True); "
                                              "time.sleep(30)"])
    info = supervisor.read(tmp_path, "sleeper")
    assert info.alive and info.pid == pid and info.state == "running"
    for _ in range(50):
        if "up" in info.log_tail():
            break
        time.sleep(0.05)
    assert "up" in info.log_tail()
    supervisor.stop(tmp_path, "sleeper")
    assert supervisor.read(tmp_path, "sleeper") is None
    supervisor.spawn(tmp_path, "quitter", None,
                     [sys.executable, "-c", "raise SystemExit(3)"])
    for _ in range(100):
        info = supervisor.read(tmp_path, "quitter")
        if not info.alive:
            break
        time.sleep(0.05)
    assert info.state == "failed" and info.exit_code == 3


def test_twin_cli_group(cli_run):
    r = cli_run("twin", "--help")
    assert r.exit_code == 0
    for cmd in ("demo", "ps", "serve-router"):
        assert cmd in r.stdout
    assert "run-persona" not in r.stdout
    r = cli_run("twin", "ps", "--json")
    assert r.exit_code == 0 and r.json() == {"processes": []}
    r = cli_run("twin", "demo", "--help")
    assert r.exit_code == 0 and "--keep" in r.stdout


def test_sensor_vm_with_start_false_runs_no_sensor(tmp_path):
    text = TWIN.read_text().replace("    start: true\n", "    start: false\n", 1)
    p = tmp_path / "t.yaml"
    p.write_text(text)
    t = build(load_playbook(str(p)), tmp_path)
    assert "sensor" not in {x.name for x in t.processes}
    assert any("start: false" in w for w in t.warnings)


def test_second_twin_topology_is_not_tied_to_the_reference_lab(tmp_path):
    from tests.helpers.twin_lab import write_second_twin

    t = build(load_playbook(str(write_second_twin(tmp_path, "tw9"))), tmp_path)
    seg = {s["switch"]: s for s in t.segments}
    assert seg["Plant"]["vlan"] == 117 and seg["Plant"]["subnet"] == "10.62.7.0/24"
    rtr_iot = next(v for v in t.veths if v.role == "router-iot")
    assert rtr_iot.b_addrs == ("10.62.7.254/24",)
    routes = {r.ns: r.via for r in t.routes}
    assert routes["tw9-cam"] == "10.62.7.254" and routes["tw9-ids"] == "10.61.0.1"
    assert routes["tw9-rtr"] == "198.51.100.1"
    assert t.scanner_ns == "tw9-scan"
    assert all("172.16.1" not in str(n) for n in t.networks)


def test_ifname_property():
    import re

    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=200, deadline=None)
    @given(st.integers(min_value=0, max_value=999), st.text(min_size=1, max_size=80))
    def check(i: int, name: str) -> None:
        n = ifname(f"d{i}", name)
        assert 1 <= len(n) <= 15 and re.fullmatch(r"[a-z0-9-]+", n)
        assert n.startswith(f"d{i}")  # the index keeps names unique

    check()


def test_ap_isolation_isolates_device_ports_only(tmp_path):
    text = TWIN.read_text().replace("ap_isolation: false", "ap_isolation: true")
    p = tmp_path / "t.yaml"
    p.write_text(text)
    t = build(load_playbook(str(p)), tmp_path)
    iso = {v.a_name for v in t.veths if v.a_isolated}
    assert iso == {v.a_name for v in t.veths if v.role == "device"} and len(iso) == 5
    plan = planmod.plan_up(t, factsmod.empty(t), str(tmp_path))
    text = "\n".join(s.script for s in plan.steps)
    assert text.count("type bridge_slave isolated on") == 5
    ref = build(load_playbook(str(TWIN)), tmp_path)
    assert not any(v.a_isolated for v in ref.veths)  # the reference lab: isolation off


def test_resolv_conf_uses_dns_forwarders_when_given(tmp_path):
    text = TWIN.read_text().replace("  irc_port: 6667\n",
                                    "  irc_port: 6667\n  dns_forwarders: [203.0.113.53]\n")
    p = tmp_path / "t.yaml"
    p.write_text(text)
    t = build(load_playbook(str(p)), tmp_path)
    assert "nameserver 203.0.113.53" in t.resolv and "127.0.0.1" not in t.resolv
    ref = build(load_playbook(str(TWIN)), tmp_path)
    assert "nameserver 127.0.0.1" in ref.resolv
