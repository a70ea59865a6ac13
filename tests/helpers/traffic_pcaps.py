"""Crafted captures for the traffic tests, built byte by byte so every length is known.

Frame lengths: Ethernet 14 (+4 per VLAN tag) + IPv4 20 + TCP 20 or UDP 8 + payload. The
``orig`` length written in each record is the frame length.
"""

from __future__ import annotations

import gzip
import ipaddress
import struct
from collections.abc import Iterable
from pathlib import Path

T0 = 1_700_006_400  # 2023-11-15T00:00:00Z, a midnight
DAY = 86_400

Frame = tuple[float, bytes]


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, smac: str, dmac: str,
         vlan: int | None = None) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0,
                      ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    eth = _mac(dmac) + _mac(smac)
    if vlan is not None:
        eth += struct.pack("!HH", 0x8100, vlan)
    return eth + b"\x08\x00" + hdr + payload


def tcp(src: str, dst: str, sport: int, dport: int, flags: str = "A", payload: bytes = b"",
        *, smac: str, dmac: str, vlan: int | None = None) -> bytes:
    bits = sum({"F": 1, "S": 2, "R": 4, "P": 8, "A": 16}[c] for c in flags)
    seg = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, bits, 65535, 0, 0) + payload
    return ipv4(src, dst, 6, seg, smac=smac, dmac=dmac, vlan=vlan)


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"", *, smac: str,
        dmac: str, vlan: int | None = None) -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return ipv4(src, dst, 17, seg, smac=smac, dmac=dmac, vlan=vlan)


def dns_response(qname: str, answers: list[str], *, txid: int = 1,
                 cname: str | None = None) -> bytes:
    """A DNS response for ``qname`` with A answers (through one CNAME when given)."""
    def enc(name: str) -> bytes:
        return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"

    an = len(answers) + (1 if cname else 0)
    msg = struct.pack("!HHHHHH", txid, 0x8180, 1, an, 0, 0) + enc(qname) + b"\0\x01\0\x01"
    owner = b"\xc0\x0c"  # pointer to the question name
    if cname:
        rd = enc(cname)
        msg += owner + struct.pack("!HHIH", 5, 1, 60, len(rd)) + rd
        owner = enc(cname)
    for a in answers:
        msg += owner + struct.pack("!HHIH", 1, 1, 60, 4) + ipaddress.IPv4Address(a).packed
    return msg


def write_pcap(path: Path, frames: Iterable[Frame], *, endian: str = "<",
               nanos: bool = False, linktype: int = 1) -> Path:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for ts, fr in frames:
        sec = int(ts)
        frac = round((ts - sec) * (1e9 if nanos else 1e6))
        out.append(struct.pack(endian + "IIII", sec, frac, len(fr), len(fr)) + fr)
    data = b"".join(out)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_pcapng(path: Path, frames: Iterable[Frame], *, linktype: int = 1) -> Path:
    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    out = [block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)),
           block(1, struct.pack("<HHI", linktype, 0, 65535))]
    for ts, fr in frames:
        t = round(ts * 1e6)
        out.append(block(6, struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(fr),
                                        len(fr)) + fr))
    path.write_bytes(b"".join(out))
    return path
