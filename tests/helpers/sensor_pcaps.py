"""Crafted traffic for the sensor tests (scapy builds the frames and writes the pcaps)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

T0 = 1_700_000_000.0
SCANNER_MAC = "00:15:5d:00:00:32"  # Microsoft (Hyper-V) OUI
SCANNER_IP = "172.16.1.50"
TARGET_MAC = "b8:27:eb:00:00:0a"  # Raspberry Pi Foundation OUI
TARGET_IP = "172.16.1.10"


def _eth(src: str = SCANNER_MAC, dst: str = TARGET_MAC, vlan: int | None = None):
    from scapy.all import Dot1Q, Ether

    e = Ether(src=src, dst=dst)
    return e / Dot1Q(vlan=vlan) if vlan else e


def syn_scan(n_ports: int, *, src: str = SCANNER_IP, dst: str = TARGET_IP, vlan: int | None = None,
             start_port: int = 1, t0: float = T0, gap: float = 0.01, smac: str = SCANNER_MAC):
    from scapy.all import IP, TCP

    out = []
    for i in range(n_ports):
        p = _eth(smac, TARGET_MAC, vlan) / IP(src=src, dst=dst) / TCP(
            sport=40000, dport=start_port + i, flags="S")
        p.time = t0 + i * gap
        out.append(p)
    return out


def address_scan(n_hosts: int, *, src: str = SCANNER_IP, base: str = "172.16.",
                 vlan: int | None = None, t0: float = T0, gap: float = 0.01, port: int = 80):
    from scapy.all import IP, TCP

    out = []
    for i in range(n_hosts):
        dst = f"{base}{2 + i // 250}.{1 + i % 250}"
        p = _eth(SCANNER_MAC, TARGET_MAC, vlan) / IP(
            src=src, dst=dst) / TCP(sport=40001, dport=port, flags="S")
        p.time = t0 + i * gap
        out.append(p)
    return out


def arp_scan(n: int, *, t0: float = T0, gap: float = 0.01):
    from scapy.all import ARP, Ether

    out = []
    for i in range(n):
        p = Ether(src=SCANNER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=1, hwsrc=SCANNER_MAC, psrc=SCANNER_IP, pdst=f"172.16.1.{100 + i}")
        p.time = t0 + i * gap
        out.append(p)
    return out


def icmp_echo(n: int, *, t0: float = T0, gap: float = 0.1):
    from scapy.all import ICMP, IP

    out = []
    for i in range(n):
        p = _eth() / IP(src=SCANNER_IP, dst=TARGET_IP) / ICMP(type=8, seq=i)
        p.time = t0 + i * gap
        out.append(p)
    return out


def tcp_packet(src: str, dst: str, dport: int, *, sport: int = 51000, flags: str = "S",
               t: float = T0, vlan: int | None = None, smac: str = SCANNER_MAC,
               payload: bytes = b""):
    from scapy.all import IP, TCP

    p = _eth(smac, TARGET_MAC, vlan) / IP(src=src, dst=dst) / TCP(
        sport=sport, dport=dport, flags=flags) / payload
    p.time = t
    return p


def udp_packet(src: str, dst: str, dport: int, *, sport: int = 53000, t: float = T0):
    from scapy.all import IP, UDP

    p = _eth() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / b"x"
    p.time = t
    return p


def write(path: Path, packets: Iterable, *, pcapng: bool = False) -> Path:
    from scapy.all import PcapNgWriter, wrpcap

    pk = list(packets)
    pk.sort(key=lambda p: float(p.time))
    if pcapng:
        w = PcapNgWriter(str(path))
        for p in pk:
            w.write(p)
        w.close()
    else:
        wrpcap(str(path), pk)
    return path


def engines_file(tmp: Path, *, learning: bool | None = None, scanners: list[str] | None = None,
                 enable: Iterable[str] = (), rules: list[str] | None = None,
                 idle_seconds: float | None = None, dedup_seconds: float | None = None,
                 flows: dict | None = None) -> Path:
    """A copy of the shipped engines.yaml with some settings changed."""
    import yaml

    from labctl.core.assets import asset_path

    src = asset_path("sensor", "engines.yaml")
    doc = yaml.safe_load(src.read_text())
    if learning is not None:
        doc["learning_mode"] = learning
    if scanners is not None:
        doc["authorized_scanners"] = scanners
    for name in enable:
        doc["detections"][name]["enabled"] = True
    if idle_seconds is not None:
        doc["detections"]["no_traffic"]["idle_seconds"] = idle_seconds
    if dedup_seconds is not None:
        doc["dedup_seconds"] = dedup_seconds
    if flows is not None:
        doc["flows"] = flows
    doc["rules"] = rules if rules is not None else [str(src.parent / "rules" / "*.yaml")]
    out = tmp / "engines.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def write_raw(path: Path, frames: Iterable[tuple[float, bytes]]) -> Path:
    """Write (timestamp, frame bytes) records as a classic pcap, fast (no scapy per packet)."""
    import struct

    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for ts, frame in frames:
        sec = int(ts)
        out += struct.pack("<IIII", sec, int(round((ts - sec) * 1e6)), len(frame), len(frame))
        out += frame
    path.write_bytes(bytes(out))
    return path


def vary_source(template: bytes, ips: Iterable[str], sports: Iterable[int]) -> list[bytes]:
    """Copies of an untagged IPv4/TCP-or-UDP frame with other source IPs and ports (the
    checksums are left stale: the sensor does not verify them)."""
    import ipaddress

    out = []
    for ip, sp in zip(ips, sports, strict=False):
        b = bytearray(template)
        b[26:30] = ipaddress.IPv4Address(ip).packed
        b[34:36] = sp.to_bytes(2, "big")
        out.append(bytes(b))
    return out
