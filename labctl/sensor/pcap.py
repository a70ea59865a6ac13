"""The project's one capture-file reader: pcap and pcapng, plain or gzip-compressed.

Why not scapy's reader: it builds a packet object per record, which caps replay at a few
thousand packets/s. This reader maps the file into memory (read-only ``mmap``, so a capture
larger than RAM still works; small files are simply read) and yields
``(timestamp, offset, caplen)`` triples (``for ts, off, caplen in cap``), or with
:meth:`CaptureFile.records` ``(timestamp, offset, caplen, wirelen)``, pointing into
:attr:`CaptureFile.data`, which the parser (:mod:`labctl.sensor.parse`) reads in place. The
embedded sensor's replay and ``labctl traffic`` both read captures through it.

Supported (docs/capture-files.md):

* classic pcap in both byte orders, micro- and nanosecond magic;
* pcapng: section header (the byte order is taken per section, so a big-endian section
  after a little-endian one works), interface description (``if_tsresol``,
  ``if_tsoffset``), enhanced, simple and obsolete packet blocks; other blocks are skipped;
* gzip (one or more members), decompressed once, streaming, into an anonymous private
  temporary file (``O_TMPFILE``, mode 0600, gone when closed or when the process ends) that
  is then mapped like a plain file.

Only Ethernet (linktype 1) records are yielded. A classic pcap of another link type is a
:class:`~labctl.core.errors.UsageError` at open; pcapng records of other interfaces are
counted in :attr:`CaptureFile.skipped`, and a pcapng with no Ethernet record at all is a
UsageError when its walk ends.

Damage stops the walk and is recorded, not raised, so the sensor can replay what was read:
:attr:`CaptureFile.stop` is the byte offset of the first record or block that is cut or
corrupt (for gzip, an offset into the decompressed stream), :attr:`CaptureFile.stop_reason`
says what, and :meth:`CaptureFile.damage` returns the :class:`CaptureError` (naming file and
offset, with a ``--partial`` hint) that a strict caller raises. A record claiming more than
:data:`MAX_RECORD` bytes is corruption, not a frame.

Memory: the walk releases the pages of the mapping behind it every :data:`RELEASE_EVERY`
bytes (``madvise(MADV_DONTNEED)``), so the resident size stays bounded however large the file
is; the bytes stay in the page cache and are re-read transparently if touched again.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

from labctl.core.errors import UsageError

LINKTYPE_ETHERNET = 1

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
GZIP_MAGIC = b"\x1f\x8b"

#: files smaller than this are read into memory, larger ones are mapped
MMAP_THRESHOLD = 64 << 20
#: a record longer than this is corrupt, not a frame (tcpdump's largest snap length)
MAX_RECORD = 262_144
#: the walk gives back the mapped pages behind it in steps of this many bytes
RELEASE_EVERY = 8 << 20

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

_HINT_NOT_CAPTURE = "give a capture written by tcpdump, Wireshark or scapy"
_HINT_LINK = "capture on an Ethernet interface (linktype 1)"
_PAGE = mmap.PAGESIZE

Record = tuple[float, int, int, int]


class CaptureError(UsageError):
    """A capture that is truncated or corrupt at a known byte offset (exit 2)."""

    def __init__(self, path: str, offset: int, what: str, compressed: bool = False) -> None:
        where = f"byte {offset}" + (" of the decompressed stream" if compressed else "")
        super().__init__(f"{path}: {what} at {where}",
                         hint="pass --partial to report what was read before it")
        self.path = path
        self.offset = offset
        self.what = what
        self.compressed = compressed


def gunzip_to(src: IO[bytes], out: IO[bytes]) -> tuple[int, tuple[int, str] | None]:
    """Decompress the gzip stream ``src`` (one or more members) into ``out``.

    Returns ``(bytes written, damage)``; damage is ``(decompressed offset, what)`` when the
    stream is cut or damaged. Everything decompressed before the damage is written: a
    chunk that fails is fed again in small pieces from a copy of the decompressor's state
    taken before it, so at most one small piece's output is lost.
    """
    written = 0
    fed = 0  # compressed bytes given to the current member's decompressor
    d = zlib.decompressobj(wbits=31)
    while chunk := src.read(1 << 20):
        while chunk:
            fed += len(chunk)
            saved = d.copy()
            try:
                piece = d.decompress(chunk)
            except zlib.error as e:
                d = saved
                for i in range(0, len(chunk), 512):
                    try:
                        piece = d.decompress(chunk[i:i + 512])
                    except zlib.error:
                        break
                    out.write(piece)
                    written += len(piece)
                    if d.eof:  # the damage is past this member's end: not ours to mend
                        break
                return written, (written, f"compressed stream damaged ({e})")
            out.write(piece)
            written += len(piece)
            chunk = b""
            if d.eof:
                chunk = d.unused_data
                d = zlib.decompressobj(wbits=31)
                fed = 0
    if fed:
        return written, (written, "compressed stream ends early")
    return written, None


class CaptureFile:
    """One pcap or pcapng file (plain or gzip), mapped or held in memory.

    Use it as a context manager (or call :meth:`close`) to unmap the file and remove the
    decompressed copy of a gzip capture at once; otherwise both go when it is collected.
    """

    data: bytes | mmap.mmap
    format: str  # "pcap" or "pcapng"
    endian: str  # "<" or ">": the file's (pcapng: the first section's) byte order
    nanos: bool
    linktype: int

    def __init__(self, path: str | Path, *, mmap_threshold: int | None = None) -> None:
        self.path = str(path)
        self.skipped = 0  # records of other link types or unknown interfaces
        self.truncated = 0  # 1 once a walk stopped early at damage
        self.stop: int | None = None
        self.stop_reason: str | None = None
        self.compressed = False
        #: (decompressed offset, what) when the gzip stream itself is cut or damaged
        self.gzip_damage: tuple[int, str] | None = None
        self._tmp: IO[bytes] | None = None
        self._released = 0
        threshold = MMAP_THRESHOLD if mmap_threshold is None else mmap_threshold
        try:
            self.data = self._open(Path(path), threshold)
        except FileNotFoundError:
            raise UsageError(f"{path}: file not found") from None
        except IsADirectoryError:
            raise UsageError(f"{path}: is a directory, not a capture file") from None
        except OSError as e:
            raise UsageError(f"{path}: cannot read: {e.strerror}") from None
        try:
            self._header()
        except BaseException:
            self.close()
            raise

    # ---- opening ---------------------------------------------------------------------

    def _open(self, path: Path, threshold: int) -> bytes | mmap.mmap:
        with open(path, "rb") as f:
            magic = f.read(2)
            f.seek(0)
            if magic == GZIP_MAGIC:
                self.compressed = True
                return self._gunzip(f, threshold)
            size = os.fstat(f.fileno()).st_size
            if size < threshold or size == 0:
                return f.read()
            return self._mapped(f.fileno())

    def _gunzip(self, src: IO[bytes], threshold: int) -> bytes | mmap.mmap:
        tmp = tempfile.TemporaryFile(prefix="labctl-capture-")  # noqa: SIM115 (kept open)
        self._tmp = tmp
        size, self.gzip_damage = gunzip_to(src, tmp)
        tmp.flush()
        if size < threshold or size == 0:
            tmp.seek(0)
            data = tmp.read()
            tmp.close()
            self._tmp = None
            return data
        return self._mapped(tmp.fileno())

    @staticmethod
    def _mapped(fd: int) -> mmap.mmap:
        m = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        if hasattr(m, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
            m.madvise(mmap.MADV_SEQUENTIAL)
        return m

    def _header(self) -> None:
        data = self.data
        if len(data) < 24 and data[:4] != b"\x0a\x0d\x0d\x0a":
            if self.gzip_damage is not None:
                raise self._error(*self.gzip_damage)
            raise UsageError(f"{self.path}: not a pcap or pcapng file (too short)",
                             hint=_HINT_NOT_CAPTURE)
        magic_le = struct.unpack_from("<I", data, 0)[0]
        magic_be = struct.unpack_from(">I", data, 0)[0]
        self.nanos = False
        if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            self.format, self.endian = "pcap", "<"
            self.nanos = magic_le == PCAP_MAGIC_NS
        elif magic_be in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            self.format, self.endian = "pcap", ">"
            self.nanos = magic_be == PCAP_MAGIC_NS
        elif magic_le == PCAPNG_SHB:
            self.format = "pcapng"
            if len(data) < 12:
                if self.gzip_damage is not None:
                    raise self._error(*self.gzip_damage)
                raise UsageError(f"{self.path}: not a pcap or pcapng file (too short)",
                                 hint=_HINT_NOT_CAPTURE)
            bom = data[8:12]
            if bom == b"\x4d\x3c\x2b\x1a":
                self.endian = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                self.endian = ">"
            else:
                raise UsageError(f"{self.path}: not a pcap or pcapng file (a pcapng section "
                                 f"header without its byte-order magic)",
                                 hint=_HINT_NOT_CAPTURE)
        else:
            raise UsageError(f"{self.path}: not a pcap or pcapng file (unknown magic "
                             f"0x{magic_be:08x})", hint=_HINT_NOT_CAPTURE)
        if self.format == "pcap":
            self.linktype = struct.unpack_from(self.endian + "I", data, 20)[0] & 0x0FFFFFFF
            if self.linktype != LINKTYPE_ETHERNET:
                raise UsageError(f"{self.path}: link type {self.linktype} is not Ethernet",
                                 hint=_HINT_LINK)
        else:
            self.linktype = LINKTYPE_ETHERNET

    # ---- closing ---------------------------------------------------------------------

    def close(self) -> None:
        """Unmap the file and remove the decompressed copy of a gzip capture."""
        data = getattr(self, "data", None)
        if isinstance(data, mmap.mmap):
            try:
                data.close()
            except BufferError:  # a caller still holds a view into it: leave it to GC
                pass
        if self._tmp is not None:
            self._tmp.close()
            self._tmp = None

    def __enter__(self) -> CaptureFile:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ---- damage ----------------------------------------------------------------------

    def _error(self, offset: int, what: str) -> CaptureError:
        return CaptureError(self.path, offset, what, self.compressed)

    def _stopped(self, offset: int, what: str) -> None:
        self.truncated += 1
        if self.stop is None:
            self.stop, self.stop_reason = offset, what

    def damage(self) -> CaptureError | None:
        """The error of a walk that stopped early, or of a damaged gzip stream; None if the
        file was read to its end.

        A damaged gzip stream is the error named, at its decompressed offset: it usually
        also cuts the last record, and the bytes inflated just before a damage that zlib
        detects late (at the member's checksum) may be garbage that looks like a corrupt
        record, a symptom rather than the cause.
        """
        if self.gzip_damage is not None:
            return self._error(*self.gzip_damage)
        if self.stop is not None and self.stop_reason is not None:
            return self._error(self.stop, self.stop_reason)
        return None

    # ---- memory ----------------------------------------------------------------------

    def release(self, upto: int) -> None:
        """Give back the mapped pages before byte ``upto`` (a no-op for bytes in memory).

        They stay in the page cache: touching them again re-reads them transparently.
        """
        data = self.data
        if not isinstance(data, mmap.mmap) or not hasattr(data, "madvise"):
            return
        end = upto - upto % _PAGE
        if end > self._released:
            try:
                data.madvise(mmap.MADV_DONTNEED, self._released, end - self._released)
            except (OSError, ValueError):
                return
            self._released = end

    # ---- walking ---------------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[float, int, int]]:
        """``(timestamp, offset, caplen)`` of every Ethernet record."""
        for ts, off, cap, _wire in self.records():
            yield ts, off, cap

    def records(self, start: int | None = None) -> Iterator[Record]:
        """``(timestamp, offset, caplen, wirelen)`` of every Ethernet record.

        ``start`` (classic pcap only) resumes at the record header at that offset, so a
        caller's own fast loop can hand over the rest of the file, and its damage, here.
        """
        if self.format == "pcap":
            return self._iter_pcap(PCAP_FILE_HEADER_LEN if start is None else start)
        if start is not None:
            raise ValueError("records(start=...) is for classic pcap only")
        return self._iter_pcapng()

    def _iter_pcap(self, off: int) -> Iterator[Record]:
        data = self.data
        n = len(data)
        unpack = struct.Struct(self.endian + PCAP_RECORD).unpack_from
        div = 1e9 if self.nanos else 1e6
        release = self.release
        mark = off + RELEASE_EVERY
        while off + PCAP_RECORD_LEN <= n:
            sec, frac, incl, orig = unpack(data, off)
            if incl > MAX_RECORD:
                self._stopped(off, f"corrupt record (length {incl})")
                return
            if off + PCAP_RECORD_LEN + incl > n:
                self._stopped(off, "truncated record")
                return
            yield sec + frac / div, off + PCAP_RECORD_LEN, incl, orig
            off += PCAP_RECORD_LEN + incl
            if off > mark:
                release(off)
                mark = off + RELEASE_EVERY
        if off != n:
            self._stopped(off, "truncated record header")

    def _iter_pcapng(self) -> Iterator[Record]:
        data = self.data
        n = len(data)
        off = 0
        end = self.endian
        u32 = struct.Struct(end + "I").unpack_from
        # per interface: (linktype, ticks per second, offset in seconds)
        ifaces: list[tuple[int, float, int]] = []
        release = self.release
        mark = RELEASE_EVERY
        yielded = 0
        while off + 12 <= n:
            btype = u32(data, off)[0]
            if btype == PCAPNG_SHB:  # a section header (the same in both orders)
                bom = data[off + 8:off + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    end = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    end = ">"
                else:
                    self._stopped(off, "corrupt section header (byte-order magic)")
                    break
                u32 = struct.Struct(end + "I").unpack_from
                ifaces = []
            blen = u32(data, off + 4)[0]
            if blen < 12 or blen % 4:
                self._stopped(off, f"corrupt block (length {blen})")
                break
            if off + blen > n:
                self._stopped(off, "truncated or corrupt block")
                break
            if u32(data, off + blen - 4)[0] != blen:
                self._stopped(off, f"corrupt block (trailing length "
                                   f"{u32(data, off + blen - 4)[0]}, leading {blen})")
                break
            if btype == 6 or btype == 2:  # enhanced / obsolete packet
                if blen < 32:
                    self._stopped(off, f"corrupt block (length {blen})")
                    break
                if btype == 6:
                    ifid, hi, lo, cap, wire = struct.unpack_from(end + "IIIII", data, off + 8)
                else:
                    ifid, hi, lo, cap, wire = struct.unpack_from(end + "H2xIIII", data,
                                                                 off + 8)
                if cap > MAX_RECORD:
                    self._stopped(off, f"corrupt record (length {cap})")
                    break
                if 28 + cap > blen - 4:
                    self._stopped(off, f"corrupt block (captured length {cap} in a "
                                       f"{blen}-byte block)")
                    break
                if ifid >= len(ifaces) or ifaces[ifid][0] != LINKTYPE_ETHERNET:
                    self.skipped += 1
                else:
                    _lt, tps, tsoff = ifaces[ifid]
                    yielded += 1
                    yield ((hi << 32) | lo) / tps + tsoff, off + 28, cap, wire
            elif btype == 3:  # simple packet: interface 0, no timestamp
                if blen < 16:
                    self._stopped(off, f"corrupt block (length {blen})")
                    break
                wire = u32(data, off + 8)[0]
                cap = min(wire, blen - 16)
                if cap > MAX_RECORD:
                    self._stopped(off, f"corrupt record (length {cap})")
                    break
                if ifaces and ifaces[0][0] == LINKTYPE_ETHERNET:
                    yielded += 1
                    yield 0.0, off + 12, cap, wire
                else:
                    self.skipped += 1
            elif btype == 1:  # interface description
                if blen < 20:
                    self._stopped(off, f"corrupt block (length {blen})")
                    break
                linktype = struct.unpack_from(end + "H", data, off + 8)[0]
                tps, tsoff = self._if_options(data, off + 16, off + blen - 4, end)
                ifaces.append((linktype, tps, tsoff))
            off += blen
            if off > mark:
                release(off)
                mark = off + RELEASE_EVERY
        else:
            if off != n:
                self._stopped(off, "truncated or corrupt block")
        if yielded == 0 and self.skipped:
            raise UsageError(f"{self.path}: no Ethernet records ({self.skipped} records of "
                             "other link types)", hint=_HINT_LINK)

    @staticmethod
    def _if_options(data: bytes | mmap.mmap, p: int, stop: int, end: str
                    ) -> tuple[float, int]:
        """Ticks per second (``if_tsresol``, default microseconds) and the seconds to add
        (``if_tsoffset``) from an interface description's options."""
        tps = 1e6
        tsoff = 0
        while p + 4 <= stop:
            code, olen = struct.unpack_from(end + "HH", data, p)
            if code == 0 or p + 4 + olen > stop:
                break
            if code == 9 and olen >= 1:
                v = data[p + 4]
                tps = float(2 ** (v & 0x7F)) if v & 0x80 else float(10 ** v)
            elif code == 14 and olen == 8:
                tsoff = struct.unpack_from(end + "q", data, p + 4)[0]
            p += 4 + ((olen + 3) & ~3)
        return tps, tsoff
