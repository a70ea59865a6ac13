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
               nanos: bool = False, linktype: int = 1, snaplen: int | None = None) -> Path:
    """A classic pcap (gzip when ``path`` ends in .gz). With ``snaplen`` each record keeps
    at most that many bytes of its frame, and the frame's length as its wire length."""
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen or 65535, linktype)]
    for ts, fr in frames:
        sec = int(ts)
        frac = round((ts - sec) * (1e9 if nanos else 1e6))
        cap = fr[:snaplen] if snaplen else fr
        out.append(struct.pack(endian + "IIII", sec, frac, len(cap), len(fr)) + cap)
    data = b"".join(out)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def pcapng_block(btype: int, body: bytes, endian: str = "<") -> bytes:
    """One pcapng block: type, total length, body padded to 32 bits, total length."""
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(endian + "II", btype, n) + body + struct.pack(endian + "I", n)


def pcapng_section(frames: Iterable[Frame], *, endian: str = "<", linktype: int = 1,
                   tsresol: int | None = None, snaplen: int | None = None,
                   other: Iterable[Frame] = (), other_linktype: int = 101) -> bytes:
    """One pcapng section in byte order ``endian``: a section header, interface 0 of
    ``linktype`` (``tsresol``: the if_tsresol option byte, default microseconds), and one
    enhanced packet block per frame; ``other`` frames go to a second interface of
    ``other_linktype``, interleaved after them."""
    tps = 10 ** 6
    opts = b""
    if tsresol is not None:
        opts = struct.pack(endian + "HHB3x", 9, 1, tsresol) + struct.pack(endian + "HH", 0, 0)
        tps = 2 ** (tsresol & 0x7F) if tsresol & 0x80 else 10 ** tsresol
    out = [pcapng_block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1),
                        endian),
           pcapng_block(1, struct.pack(endian + "HHI", linktype, 0, snaplen or 65535) + opts,
                        endian)]
    other = list(other)
    if other:
        out.append(pcapng_block(1, struct.pack(endian + "HHI", other_linktype, 0, 65535),
                                endian))

    def epb(ifid: int, ts: float, fr: bytes, res: int) -> bytes:
        t = round(ts * res)
        cap = fr[:snaplen] if snaplen else fr
        return pcapng_block(6, struct.pack(endian + "IIIII", ifid, t >> 32, t & 0xFFFFFFFF,
                                           len(cap), len(fr)) + cap, endian)

    for ts, fr in frames:
        out.append(epb(0, ts, fr, tps))
    for ts, fr in other:
        out.append(epb(1, ts, fr, 10 ** 6))
    return b"".join(out)


def write_pcapng(path: Path, frames: Iterable[Frame], *, linktype: int = 1,
                 endian: str = "<", snaplen: int | None = None) -> Path:
    """A one-section pcapng (see :func:`pcapng_section`)."""
    path.write_bytes(pcapng_section(frames, endian=endian, linktype=linktype,
                                    snaplen=snaplen))
    return path
