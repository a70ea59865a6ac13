"""Helpers for the twin tests: build/remove labs, run code in a lab namespace, capture frames.

Nothing here sends a packet outside namespaces the tests created themselves.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from labctl.app import lab
from labctl.core.playbook import load_playbook
from labctl.transport.netns import netns_context

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_OUTGOING = 4

SECOND_TWIN = """\
# A second twin: other subnets, another VLAN id, another device set (nothing tied to
# 172.16.1.0/24 or VLAN 52).
version: 1
lab: {lab}
provider: netns
switches:
  - name: Mgmt
    type: internal
    host_ip: 10.{a}.0.1/24
    nat: {{name: Mgmt, prefix: 10.{a}.0.0/24}}
  - name: Plant
    type: external
    adapter: eth9
    span_source: true
    subnet: 10.{b}.7.0/24
    vlan: 117
vms:
  - name: ids
    role: sensor
    boot_first: disk
    nics:
      - {{name: mgmt, switch: Mgmt, role: management, ip: 10.{a}.0.50/24, gateway: 10.{a}.0.1}}
      - {{name: tap, switch: Plant, role: monitor, port_mirroring: destination}}
router:
  url: https://10.{c}.0.1:8443
  lan: 10.{c}.0.0/24
  iot_network:
    name: Plant
    ssid: Plant
    subnet: 10.{b}.7.0/24
    gateway: 10.{b}.7.254
    vlan: 117
sensor:
  kind: d4iot
  vm: ids
  management_ip: 10.{a}.0.50
scanner:
  spec: netns:{lab}-scan
  ip: 10.{b}.7.200
twin:
  main_lan_router: 10.{c}.0.1/24
  main_lan_host: 10.{c}.0.2/24
  wan_router: 198.51.100.2/24
  wan_services: [203.0.113.77/24]
  irc_port: 6697
  devices:
    - {{name: cam, persona: camera, ip: 10.{b}.7.10/24, switch: Plant, mac: "00:12:41:00:07:10"}}
    - {{name: plug, persona: pet-feeder, ip: 10.{b}.7.11/24, switch: Plant}}
  scanner: {{name: scan, ip: 10.{b}.7.200/24, switch: Plant}}
"""

CAMERA = """\
name: camera
vendor: Hikvision
model: IP camera
listeners:
  - {port: 554, proto: tcp, banner: "RTSP/1.0 200 OK\\r\\nCSeq: 1\\r\\n\\r\\n"}
  - {port: 8000, proto: tcp, reply: "ok"}
outbound: []
"""


def lab_name(base: str) -> str:
    """``base`` plus a random suffix: concurrent runs of the suite never share a lab."""
    import secrets

    return f"{base}{secrets.token_hex(2)}"


def write_second_twin(folder: Path, lab_name: str, a: int = 61, b: int = 62, c: int = 63) -> Path:
    (folder / "devices").mkdir(parents=True, exist_ok=True)
    (folder / "devices" / "camera.yaml").write_text(CAMERA)
    path = folder / f"{lab_name}.yaml"
    path.write_text(SECOND_TWIN.format(lab=lab_name, a=a, b=b, c=c))
    return path


def ctx(path: str | Path) -> lab.LabContext:
    return lab.LabContext(load_playbook(str(path)))


def up(path: str | Path) -> lab.UpReport:
    return lab.up(ctx(path), confirm=lambda p: True)


def down(path: str | Path) -> lab.UpReport:
    return lab.down(ctx(path), confirm=lambda p: True)


def unavailable_process_names() -> set[str]:
    """Supervised processes whose command other parts of labctl do not provide yet."""
    out = set()
    if importlib.util.find_spec("labctl.cli.twin_router") is None:
        out.add("router")
    try:
        from labctl.cli.sensor import sensor  # noqa: F401

        if "serve" not in getattr(sensor, "commands", {}):
            out.add("sensor")
    except ImportError:
        out.add("sensor")
    return out


def lab_namespaces(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(prefix + "-"))
    except FileNotFoundError:
        return []


def root_snapshot() -> dict:
    """Links, addresses and routes of the root namespace (must not change)."""
    def j(*args: str):
        return json.loads(subprocess.run(["ip", "-j", *args], capture_output=True, text=True,
                                         check=True).stdout or "[]")

    return {
        "links": sorted(ln["ifname"] for ln in j("link", "show")),
        "addrs": sorted((a["ifname"], x["local"]) for a in j("addr", "show")
                        for x in a.get("addr_info", [])),
        "routes": sorted(json.dumps(r, sort_keys=True) for r in j("route", "show")),
    }


TWIN_NETS = ("192.168.0.", "192.168.50.", "172.16.1.", "203.0.113.", "198.51.100.")
TWIN_LINKS = {"uplink", "r-iot", "br0-core", "br1-azkaban", "d0-feeder1", "s-kali"}


def root_lab_traces(before: dict) -> dict:
    """What the root namespace gained that looks like the twin (other helpers' tests may
    add their own links meanwhile, so this is not a plain equality)."""
    now = root_snapshot()
    new_links = set(now["links"]) - set(before["links"])
    new_addrs = set(now["addrs"]) - set(before["addrs"])
    new_routes = set(now["routes"]) - set(before["routes"])
    return {
        "links": sorted(n for n in new_links
                        if n in TWIN_LINKS or re.match(r"^(v\d+n\d+|d\d+|br\d+)-", n)),
        "addrs": sorted(a for a in new_addrs if a[1].startswith(TWIN_NETS)),
        "routes": sorted(r for r in new_routes if any(n in r for n in TWIN_NETS)),
    }


def pids_in(ns: str) -> list[int]:
    cp = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(x) for x in cp.stdout.split()]


@contextmanager
def capture(ns: str, ifname: str) -> Iterator[list[bytes]]:
    """Collect every frame received on ``ns``/``ifname`` (raw AF_PACKET socket, promiscuous)."""
    with netns_context(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((ifname, 0))
        idx = socket.if_nametoindex(ifname)
    mreq = struct.pack("iHH8s", idx, PACKET_MR_PROMISC, 0, b"")
    s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    s.settimeout(0.1)
    frames: list[bytes] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                data, addr = s.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] != PACKET_OUTGOING:
                frames.append(data)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield frames
        time.sleep(0.3)  # let the last mirrored frames arrive
    finally:
        stop.set()
        t.join(2)
        s.close()


def udp_server(ns: str, port: int, reply: bytes | None = None,
               bind: str = "0.0.0.0") -> tuple[socket.socket, list]:
    """A UDP socket bound in ``ns``; a thread records (payload, peer) and answers ``reply``.

    Bind the address the client asks for when the namespace has several (the WAN), so the
    answer leaves from it and matches the router's NAT mapping."""
    with netns_context(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((bind, port))
    s.settimeout(0.1)
    got: list = []

    def loop() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                data, peer = s.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            got.append((data, peer))
            if reply is not None:
                s.sendto(reply, peer)

    threading.Thread(target=loop, daemon=True).start()
    return s, got


def udp_ask(ns: str, dst: str, port: int, payload: bytes, timeout: float = 2.0) -> bytes | None:
    with netns_context(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(payload, (dst, port))
        try:
            return s.recvfrom(2048)[0]
        except TimeoutError:
            return None
    finally:
        s.close()


def tcp_peer_seen(listen_ns: str, connect_ns: str, dst: str, port: int) -> str:
    """Connect from ``connect_ns`` to ``dst:port`` served in ``listen_ns``; return the source
    address the server saw."""
    with netns_context(listen_ns):
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        srv.listen(1)
    srv.settimeout(5)
    try:
        with netns_context(connect_ns):
            cli = socket.create_connection((dst, port), timeout=5)
        conn, peer = srv.accept()
        conn.close()
        cli.close()
        return peer[0]
    finally:
        srv.close()


def count(frames: list[bytes], marker: bytes) -> int:
    return sum(1 for f in frames if marker in f)
