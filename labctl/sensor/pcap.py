"""A fast pcap / pcapng reader for the sensor's replay path.

Why not scapy's reader: it builds a packet object per record, which caps replay at a few
thousand packets/s. This reader maps the file into memory (read-only ``mmap``, so a capture
larger than RAM still works; small files are simply read) and yields
``(timestamp, offset, caplen)`` triples pointing into :attr:`CaptureFile.data`, which the
parser reads in place.

Supported: classic pcap (both byte orders, micro- and nanosecond magic) and pcapng (section
header, interface description with ``if_tsresol``, enhanced and simple packet blocks; other
blocks are skipped). Only Ethernet (linktype 1) records are yielded; records of other link
types are counted in :attr:`CaptureFile.skipped`. A truncated last record stops the read
and is counted in :attr:`CaptureFile.truncated`; a file that is neither format raises a
:class:`~labctl.core.errors.UsageError` naming the file.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from pathlib import Path

from labctl.core.errors import UsageError

LINKTYPE_ETHERNET = 1

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D


MMAP_THRESHOLD = 64 << 20

#: classic pcap: a 24-byte file header, then per record ``ts_sec, ts_frac, incl_len,
#: orig_len`` (4 unsigned ints, in the file's byte order) followed by ``incl_len`` bytes
PCAP_FILE_HEADER_LEN = 24
PCAP_RECORD = "IIII"
PCAP_RECORD_LEN = 16
#: the fields the sensor's fast paths read from an Ethernet frame at the record's start:
#: EtherType, IPv4 version/IHL, fragment word, protocol, addresses, ports, TCP flags (an
#: untagged frame; the tagged variant reads the VLAN tag first and the same fields 4 bytes on)
FRAME_HEAD = "12xHBx4xHxB2x4s4sHH9xB"
FRAME_HEAD_TAGGED = "12x2xHHBx4xHxB2x4s4sHH9xB"


def _map(path: Path) -> bytes | mmap.mmap:
    """The file's bytes: read when small, a read-only mmap when large."""
    size = path.stat().st_size
    if size < MMAP_THRESHOLD:
        return path.read_bytes()
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


class CaptureFile:
    """One pcap or pcapng file held in memory."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            self.data = _map(Path(path))
        except FileNotFoundError:
            raise UsageError(f"{path}: file not found") from None
        except OSError as e:
            raise UsageError(f"{path}: cannot read: {e.strerror}") from None
        self.skipped = 0
        self.truncated = 0
        if len(self.data) < 24 and not self.data[:4] == b"\x0a\x0d\x0d\x0a":
            raise UsageError(f"{self.path}: not a pcap or pcapng file (too short)",
                             hint="give a capture written by tcpdump, Wireshark or scapy")
        magic_le = struct.unpack_from("<I", self.data, 0)[0]
        magic_be = struct.unpack_from(">I", self.data, 0)[0]
        if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            self.format, self.endian = "pcap", "<"
            self.nanos = magic_le == PCAP_MAGIC_NS
        elif magic_be in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            self.format, self.endian = "pcap", ">"
            self.nanos = magic_be == PCAP_MAGIC_NS
        elif magic_le == PCAPNG_SHB:
            self.format, self.endian, self.nanos = "pcapng", "<", False
        else:
            raise UsageError(f"{self.path}: not a pcap or pcapng file (unknown magic "
                             f"0x{magic_be:08x})",
                             hint="give a capture written by tcpdump, Wireshark or scapy")
        if self.format == "pcap":
            self.linktype = struct.unpack_from(self.endian + "I", self.data, 20)[0] & 0x0FFFFFFF
            if self.linktype != LINKTYPE_ETHERNET:
                raise UsageError(f"{self.path}: link type {self.linktype} is not Ethernet",
                                 hint="capture on an Ethernet interface (linktype 1)")
        else:
            self.linktype = LINKTYPE_ETHERNET

    def __iter__(self) -> Iterator[tuple[float, int, int]]:
        if self.format == "pcap":
            return self._iter_pcap()
        return self._iter_pcapng()

    def _iter_pcap(self) -> Iterator[tuple[float, int, int]]:
        data = self.data
        n = len(data)
        rec = struct.Struct(self.endian + PCAP_RECORD)
        unpack = rec.unpack_from
        div = 1e9 if self.nanos else 1e6
        off = PCAP_FILE_HEADER_LEN
        while off + PCAP_RECORD_LEN <= n:
            sec, frac, incl, _orig = unpack(data, off)
            off += PCAP_RECORD_LEN
            if off + incl > n:
                self.truncated += 1
                return
            yield sec + frac / div, off, incl
            off += incl
        if off != n:
            self.truncated += 1

    def _iter_pcapng(self) -> Iterator[tuple[float, int, int]]:
        data = self.data
        n = len(data)
        off = 0
        end = "<"
        ifaces: list[tuple[int, float]] = []  # (linktype, ticks per second)
        while off + 12 <= n:
            btype = struct.unpack_from(end + "I", data, off)[0]
            if btype == PCAPNG_SHB:
                bom = struct.unpack_from("<I", data, off + 8)[0]
                end = "<" if bom == PCAPNG_BOM else ">"
                if struct.unpack_from(end + "I", data, off + 8)[0] != PCAPNG_BOM:
                    raise UsageError(f"{self.path}: bad pcapng byte-order magic at {off}")
                ifaces = []
            blen = struct.unpack_from(end + "I", data, off + 4)[0]
            if blen < 12 or blen % 4 or off + blen > n:
                self.truncated += 1
                return
            if btype == 1:  # interface description
                linktype = struct.unpack_from(end + "H", data, off + 8)[0]
                ifaces.append((linktype, self._tsresol(data, off + 16, off + blen - 4, end)))
            elif btype == 6:  # enhanced packet
                ifid, hi, lo, cap = struct.unpack_from(end + "IIII", data, off + 8)
                if ifid >= len(ifaces) or off + 28 + cap > off + blen:
                    self.skipped += 1
                elif ifaces[ifid][0] != LINKTYPE_ETHERNET:
                    self.skipped += 1
                else:
                    yield ((hi << 32) | lo) / ifaces[ifid][1], off + 28, cap
            elif btype == 3:  # simple packet: no timestamp
                orig = struct.unpack_from(end + "I", data, off + 8)[0]
                cap = min(orig, blen - 16)
                if ifaces and ifaces[0][0] == LINKTYPE_ETHERNET:
                    yield 0.0, off + 12, cap
                else:
                    self.skipped += 1
            off += blen
        if off != n:
            self.truncated += 1

    @staticmethod
    def _tsresol(data: bytes | mmap.mmap, p: int, stop: int, end: str) -> float:
        """Ticks per second from the IDB's if_tsresol option (default microseconds)."""
        while p + 4 <= stop:
            code, olen = struct.unpack_from(end + "HH", data, p)
            if code == 0:
                break
            if code == 9 and olen >= 1:
                v = data[p + 4]
                return float(2 ** (v & 0x7F)) if v & 0x80 else float(10 ** v)
            p += 4 + ((olen + 3) & ~3)
        return 1e6
