"""Live capture: `labctl sensor serve` in a namespace while a real nmap scan runs from the
other namespace of the pair; alerts checked through the HTTPS API. Restart persistence (clean
SIGTERM and unclean SIGKILL) and the Operational no-traffic / traffic-resumed alerts."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from labctl.core.waiting import WaitTimeout, wait_until
from tests.helpers.sensor_netns import (
    SCANNER_IP,
    TARGET_IP,
    LiveSensor,
    new_pair,
    sh,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.fixture
def pair():
    p = new_pair()
    try:
        yield p
    finally:
        p.down()


@pytest.fixture
def live(pair, tmp_path):
    s = LiveSensor(pair, tmp_path / "sensor-state", 8443)
    try:
        yield s
    finally:
        s.kill()


def _udp(pair, ip: str) -> None:
    """A few UDP datagrams from the scanner namespace (there is no ping binary here)."""
    sh("ip", "netns", "exec", pair.a, "python3", "-c",
       "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
       f"for i in range(3):\n    s.sendto(b'hi',('{ip}',9999)); time.sleep(0.2)\n")


def _wait_for(fn, timeout=20.0, every=0.3):
    """What ``fn`` returned once truthy, else its last value after ``timeout``."""
    try:
        return wait_until(fn, timeout=timeout, interval=every)
    except WaitTimeout as e:
        return e.last


@pytest.mark.skipif(not shutil.which("nmap"), reason="nmap not installed")
def test_nmap_scan_raises_port_and_address_scan_via_api(live, pair):
    live.start("--no-learning")
    token = live.token()
    # a listener so some ports answer (SYN-ACK -> inventory ports and a connection)
    listener = subprocess.Popen(["ip", "netns", "exec", pair.b, "python3", "-c",
                                 "import socket,time;s=socket.socket();s.setsockopt(1,2,1);"
                                 "s.bind(('0.0.0.0',6668));s.listen();time.sleep(60)"])
    try:
        time.sleep(0.3)
        r = sh("ip", "netns", "exec", pair.a, "nmap", "-n", "-Pn", "-sS", "-T4",
               "-p", "1-300,6668", TARGET_IP, timeout=120)
        assert "6668/tcp open" in r.stdout, r.stdout
        sh("ip", "netns", "exec", pair.a, "nmap", "-n", "-Pn", "-sS", "-T4", "--max-retries",
           "0", "-p", "80", "10.250.1.0/26", timeout=120)
    finally:
        listener.kill()
        listener.wait()

    def alerts():
        got = live.get("/api/v2/alerts", token)
        titles = {a["title"] for a in got}
        return got if {"Port Scan Detected", "Address Scan Detected"} <= titles else None

    got = _wait_for(alerts)
    assert got, live.get("/api/v2/alerts", token)
    port = next(a for a in got if a["title"] == "Port Scan Detected")
    assert port["sourceDeviceAddress"] == SCANNER_IP and port["engine"] == "Anomaly"
    assert port["destinationDeviceAddress"] == TARGET_IP
    assert f"Scanning address: {SCANNER_IP}" in port["message"]
    addr = next(a for a in got if a["title"] == "Address Scan Detected")
    assert "10.250.0.0/16" in addr["message"]
    devs = {d["ipAddresses"][0]: d for d in live.get("/api/v1/devices", token)}
    assert SCANNER_IP in devs and 6668 in devs[TARGET_IP]["ports"]
    st = live.status()
    assert st["received"] > 300 and st["kernel_drops"] == 0
    api_st = live.get("/api/labctl/status", token)
    assert api_st["interface"] == "b0" and api_st["kernel_drops"] == 0
    assert api_st["packets"] >= st["packets"] > 300 and api_st["learning_mode"] is False
    assert live.stop() == 0
    assert "state saved" in live.log.read_text()


def test_restart_loses_nothing_and_unclean_stop_loses_at_most_a_second(live, pair):
    live.start("--no-learning")
    token = live.token()
    # traffic the sensor sees: a 40-port SYN burst from the scanner namespace (python, no nmap)
    burst = ("import socket\n"
             "for p in range(1000, 1040):\n"
             "    s = socket.socket(); s.setblocking(False)\n"
             f"    try: s.connect(('{TARGET_IP}', p))\n"
             "    except OSError: pass\n"
             "    s.close()\n")
    sh("ip", "netns", "exec", pair.a, "python3", "-c", burst)
    assert _wait_for(lambda: [a for a in live.get("/api/v1/alerts", token)
                              if a["title"] == "Port Scan Detected"])
    before_alerts = live.get("/api/v2/alerts", token)
    before_devices = live.get("/api/v1/devices", token)
    assert live.stop() == 0
    live.start("--no-learning")
    # every alert and device is back (tokens persist too); background traffic such as IPv6
    # neighbour discovery may add more after the restart
    assert live.get("/api/v2/alerts", token)[:len(before_alerts)] == before_alerts
    after_devices = live.get("/api/v1/devices", token)
    assert after_devices[:len(before_devices)] == before_devices
    # an unclean stop: traffic, wait a little over one flush period, then SIGKILL
    sh("ip", "netns", "exec", pair.a, "python3", "-c", burst.replace("1000, 1040", "2000, 2040")
       .replace(f"'{TARGET_IP}'", "'10.250.7.7'"))
    assert _wait_for(lambda: any("10.250.7.7" in (a["destinationDeviceAddress"] or "")
                                 for a in live.get("/api/v2/alerts", token)))
    time.sleep(1.6)
    live.kill()
    live.start()
    after = live.get("/api/v2/alerts", token)
    assert any(a["destinationDeviceAddress"] == "10.250.7.7" and a["title"] == "Port Scan Detected"
               for a in after)
    # a new alert after restart gets a fresh id (no id reuse)
    ids = [a["id"] for a in after]
    assert len(ids) == len(set(ids))
    # learning mode off was remembered across restarts without the flag
    assert '"learning_mode": false' in (live.state / "status.json").read_text()


def test_no_traffic_then_traffic_resumed(live, pair, tmp_path):
    from tests.helpers.sensor_pcaps import engines_file

    cfg = engines_file(tmp_path, idle_seconds=1.5, learning=False)
    live.start("--config", str(cfg))
    token = live.token()

    def titles():
        return [a["title"] for a in live.get("/api/v1/alerts", token)]

    assert _wait_for(lambda: "No Traffic Detected on Sensor Interface" in titles(), 15)
    _udp(pair, TARGET_IP)
    assert _wait_for(lambda: "Traffic Detected on Sensor Interface" in titles(), 15)
    ops = [a for a in live.get("/api/v2/alerts", token) if a["engine"] == "Operational"]
    assert "stopped detecting network traffic on b0" in ops[0]["message"]
    assert "resumed detecting network traffic on b0" in ops[1]["message"]


@pytest.mark.parametrize("ring_mb", ["128", "0"])  # TPACKET_V3 ring, and plain recvmsg
def test_vlan_tag_is_kept_on_live_capture(live, pair, ring_mb):
    """The kernel moves 802.1Q tags out of received frames; PACKET_AUXDATA puts the id back.

    (No 8021q module here, so the tagged frame is written raw onto the veth from the scanner
    namespace.)"""
    import socket

    pytest.importorskip("scapy")
    from scapy.all import IP, UDP, Dot1Q, Ether

    from labctl.transport.netns import netns_context

    live.start("--no-learning", "--ring-mb", ring_mb)
    token = live.token()
    frame = bytes(Ether(src="00:15:5d:00:52:01", dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=52) /
                  IP(src="172.31.52.1", dst="172.31.52.2") / UDP(sport=5000, dport=9999) / b"x")
    with netns_context(pair.a):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        s.bind(("a0", 0))
        for _ in range(3):
            s.send(frame)
            time.sleep(0.1)
    finally:
        s.close()
    dev = _wait_for(lambda: next((d for d in live.get("/api/v1/devices", token)
                                  if d["ipAddresses"] == ["172.31.52.1"]), None))
    assert dev and dev["vlans"] == [52]
    assert dev["vendor"] == "Microsoft"


def test_serve_refuses_a_missing_interface(cli_run, tmp_path):
    r = cli_run("sensor", "serve", "--interface", "nosuchif0", "--listen", "127.0.0.1:0",
                "--state", str(tmp_path / "s"))
    assert r.exit_code == 6 and "does not exist" in r.stderr


def test_serve_refuses_a_busy_port(pair, tmp_path, cli_run):
    """In the sensor namespace: the API port is taken -> a clear pre-flight error, exit 6."""
    import socket

    from labctl.transport.netns import netns_context

    with netns_context(pair.b):
        busy = socket.socket()
    try:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        live = LiveSensor(pair, tmp_path / "st", port)
        try:
            live.start()
        except RuntimeError:
            pass  # it may exit before or after writing its status file
        assert live.proc.wait(timeout=20) == 6
        assert f"cannot serve the sensor API on 127.0.0.1:{port}" in live.log.read_text()
    finally:
        busy.close()


def test_sigint_stops_cleanly_and_flushes(live, pair):
    import signal as sig

    live.start("--no-learning")
    _udp(pair, TARGET_IP)
    time.sleep(0.3)
    live.proc.send_signal(sig.SIGINT)
    assert live.proc.wait(timeout=15) == 0
    log = live.log.read_text()
    assert "capturing on b0" in log and "state saved" in log and "Traceback" not in log
    import sqlite3

    rows = sqlite3.connect(live.state / "sensor.db").execute(
        "SELECT data FROM devices").fetchall()
    assert any(SCANNER_IP in r[0] for r in rows)
