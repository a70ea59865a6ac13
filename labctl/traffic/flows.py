"""Capture files to flow records: the aggregation under ``labctl traffic``.

Why here and not in the sensor: the sensor keeps device and alert state, the traffic report
needs per-flow counters. Both read packets through the same code: the project's one capture
reader :class:`labctl.sensor.pcap.CaptureFile` (pcap and pcapng, gzip, per-section byte
order, wire lengths, the byte offset where a damaged file stops; docs/capture-files.md) and
the header layouts and parser of :mod:`labctl.sensor.parse`. What this module adds on top:
the per-flow accounting, and DNS answers (A and AAAA records in UDP from port 53) for names,
since the header parser stops at the transport header.

Memory grows with the number of flows and of active minutes per flow, not with packets:
the capture is read through bounded windows of its mapping (the pages behind the walk are
given back), and a flow is one list of counters plus its per-minute activity, packed as
``(minute, packets)`` pairs in one ``array('q')`` (16 bytes per active minute) and handed
to the report as a read-only :class:`MinuteCounts` mapping over that array (no copy).

A flow is directed: ``(vlan, src, dst, proto, sport, dport)``. In the fused loop ports and
the VLAN id are kept as read by one little-endian ``unpack_from`` (byte-swapped) and swapped
back once per flow in :meth:`FlowTable.records`.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left
from collections.abc import ItemsView, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import ge
from pathlib import Path
from typing import TYPE_CHECKING

from labctl.sensor.parse import (
    F_DIP,
    F_DPORT,
    F_FLAGS,
    F_KIND,
    F_PROTO,
    F_SIP,
    F_SMAC,
    F_SPORT,
    F_VLAN,
    K_ARP,
    K_IPV4,
    K_IPV6,
    ip_str,
    mac_str,
    parse_frame,
)
from labctl.sensor.pcap import (
    FRAME_HEAD,
    FRAME_HEAD_TAGGED,
    MAX_RECORD,
    PCAP_FILE_HEADER_LEN,
    PCAP_RECORD,
    PCAP_RECORD_LEN,
    RELEASE_EVERY,
    CaptureError,
    CaptureFile,
)

if TYPE_CHECKING:
    import mmap

__all__ = ["MAX_RECORD", "CaptureError", "FlowRecord", "FlowTable", "MinuteCounts",
           "SourceStats", "dns_answers", "read_captures"]

# flow list slots
PK, BY, FIRST, LAST, MINS, CURM, CURN, SYN = range(8)


def _new_pairs() -> array[int]:
    return array("q")


def _swap(p: int) -> int:
    return ((p & 0xFF) << 8) | (p >> 8)


class _MinuteItems(ItemsView[int, int]):
    _mapping: MinuteCounts

    def __iter__(self) -> Iterator[tuple[int, int]]:
        m = self._mapping
        a = m.pairs
        yield from zip(a[0:m.end:2], a[1:m.end:2], strict=True)
        if m.n:
            yield m.cur, m.n


class MinuteCounts(Mapping[int, int]):
    """A flow's ``{epoch minute: packets}``, read-only, over a packed ``array('q')`` of
    ``minute, packets`` pairs with strictly increasing minutes (16 bytes per entry where a
    dict takes about 90), plus the open last minute ``cur`` with ``n`` packets.

    The array is the flow table's own (not copied); only its first ``end`` items belong
    to this view."""

    __slots__ = ("cur", "end", "n", "pairs")

    def __init__(self, pairs: array[int], cur: int = 0, n: int = 0) -> None:
        self.pairs = pairs
        self.end = len(pairs)
        self.cur = cur
        self.n = n

    @classmethod
    def of(cls, pairs: array[int], cur: int, n: int) -> MinuteCounts:
        """From the pairs appended while reading (in packet order) and the open minute
        ``cur`` with ``n`` packets: sorted and merged only when packets came out of order."""
        keys = pairs[0::2]
        if not keys or (keys[-1] < cur and not any(map(ge, keys, keys[1:]))):
            return cls(pairs, cur, n)
        merged: dict[int, int] = {cur: n}
        for m, c in zip(keys, pairs[1::2], strict=True):
            merged[m] = merged.get(m, 0) + c
        a = array("q")
        for m in sorted(merged):
            a.append(m)
            a.append(merged[m])
        return cls(a)

    def __getitem__(self, minute: int) -> int:
        if self.n and minute == self.cur:
            return self.n
        keys = self.pairs[0:self.end:2]
        i = bisect_left(keys, minute)
        if i < len(keys) and keys[i] == minute:
            return self.pairs[2 * i + 1]
        raise KeyError(minute)

    def __iter__(self) -> Iterator[int]:
        for m, _c in self.items():
            yield m

    def __len__(self) -> int:
        return self.end // 2 + (1 if self.n else 0)

    def items(self) -> ItemsView[int, int]:
        return _MinuteItems(self)

    def __repr__(self) -> str:
        return f"MinuteCounts({dict(self.items())!r})"


@dataclass(frozen=True)
class FlowRecord:
    """One directed flow, with plain values."""

    vlan: int
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    packets: int
    bytes: int
    first: float
    last: float
    #: epoch minute -> packets in that minute (a :class:`MinuteCounts` from captures)
    minutes: Mapping[int, int] = field(compare=False)
    #: a TCP SYN without ACK was sent on this flow (src opened the connection)
    syn: bool = False


@dataclass
class SourceStats:
    """What reading the sources found besides flows."""

    files: list[str] = field(default_factory=list)
    packets: int = 0
    ip_packets: int = 0
    non_ip: int = 0
    malformed: int = 0
    #: (file, byte offset, what) of each truncated or corrupt file read with --partial
    partial: list[tuple[str, int, str]] = field(default_factory=list)
    first: float | None = None
    last: float | None = None


class FlowTable:
    """Directed flows, MAC addresses and DNS names collected from packets."""

    def __init__(self, since: float | None = None) -> None:
        self.flows: dict[tuple[int, bytes, bytes, int, int, int], list] = {}  # type: ignore[type-arg]
        self.macs: dict[bytes, bytes] = {}
        self.names: dict[bytes, str] = {}
        self.stats = SourceStats()
        self.since = since

    # ---- reading -------------------------------------------------------------------

    def add_file(self, path: str | Path, partial: bool = False) -> None:
        """Read one capture (pcap or pcapng, plain or gzip). Damage raises
        :class:`CaptureError` (file and byte offset), or with ``partial`` keeps what was
        read and records ``(file, offset, what)`` in :attr:`SourceStats.partial`."""
        path = str(path)
        self.stats.files.append(path)
        with CaptureFile(path, mmap_threshold=0) as cap:
            if cap.format == "pcap" and cap.endian == "<" and self.since is None:
                self._fused(cap, cap.data)
            else:
                self._generic(cap, cap.data)
            err = cap.damage()
        if err is not None:
            if not partial:
                raise err
            self.stats.partial.append((path, err.offset, err.what))

    def _generic(self, cap: CaptureFile, data: bytes | mmap.mmap) -> int:
        """Every record of any container through :meth:`CaptureFile.records`.

        The frame's Ethernet/IPv4/TCP-UDP fields are read with the sensor's frame layout
        in one little-endian ``unpack_from`` (network-order fields come out byte-swapped,
        as in :meth:`_fused`); frames that are not plain IPv4 TCP/UDP, or too near the
        end of the data for that read, go through :func:`parse_frame` (:meth:`_one`).
        """
        head = struct.Struct("<" + FRAME_HEAD).unpack_from
        tagged = struct.Struct("<" + FRAME_HEAD_TAGGED)
        headv = tagged.unpack_from
        limit = len(data) - tagged.size
        since = self.since
        flows = self.flows
        get = flows.get
        macs = self.macs
        one = self._one
        new_pairs = _new_pairs
        n = 0
        fast = 0
        first = last = None
        for ts, pk, incl, orig in cap.records():
            if since is not None and ts < since:
                continue
            n += 1
            if pk > limit:
                one(data, pk, incl, orig, ts)
                continue
            etype, vihl, frag, proto, sip, dip, sport, dport, flags = head(data, pk)
            hl = 14
            vid = 0
            if etype == 0x0081:
                v, etype, vihl, frag, proto, sip, dip, sport, dport, flags = headv(data, pk)
                vid = _swap(v) & 0xFFF
                hl = 18
            if etype == 0x0008 and vihl == 0x45 and not frag & 0xFF3F and (
                    (proto == 6 and incl >= hl + 34)
                    or (proto == 17 and incl >= hl + 28 and sport != 0x3500)):
                fast += 1
                if first is None:
                    first = last = ts
                elif ts > last:  # type: ignore[operator]
                    last = ts
                elif ts < first:
                    first = ts
                key = (vid, sip, dip, proto, sport, dport)
                m = int(ts) // 60
                f = get(key)
                if f is None:
                    flows[key] = [1, orig, ts, ts, new_pairs(), m, 1,
                                  proto == 6 and (flags & 0x12) == 0x02]
                    if sip not in macs:
                        macs[sip] = data[pk + 6:pk + 12]
                    continue
                f[0] += 1
                f[1] += orig
                if ts > f[3]:
                    f[3] = ts
                elif ts < f[2]:
                    f[2] = ts
                if m == f[5]:
                    f[6] += 1
                else:
                    f[4].extend((f[5], f[6]))
                    f[5] = m
                    f[6] = 1
                if proto == 6 and flags & 0x12 == 0x02:
                    f[7] = True
                continue
            one(data, pk, incl, orig, ts)
        st = self.stats
        st.packets += fast
        st.ip_packets += fast
        if first is not None:
            st.first = first if st.first is None else min(st.first, first)
            st.last = last if st.last is None else max(st.last, last)  # type: ignore[type-var]
        return n

    def _one(self, data: bytes | mmap.mmap, off: int, caplen: int, orig: int,
             ts: float) -> None:
        st = self.stats
        st.packets += 1
        if st.first is None or ts < st.first:
            st.first = ts
        if st.last is None or ts > st.last:
            st.last = ts
        p = parse_frame(data, off, caplen)
        if p is None:
            st.malformed += 1
            return
        kind = p[F_KIND]
        if kind == K_ARP:
            self.macs.setdefault(p[F_SIP], p[F_SMAC])
            st.non_ip += 1
            return
        if kind != K_IPV4 and kind != K_IPV6:
            st.non_ip += 1
            return
        st.ip_packets += 1
        proto = p[F_PROTO]
        sport = p[F_SPORT]
        dport = p[F_DPORT]
        if proto in (6, 17) and sport >= 0:
            sport, dport = _swap(sport), _swap(dport)
            if proto == 17 and sport == 0x3500:
                self._dns(data, off, caplen)
        key = (p[F_VLAN], p[F_SIP], p[F_DIP], proto, sport, dport)
        syn = proto == 6 and (p[F_FLAGS] & 0x12) == 0x02
        self._account(key, orig, ts, p[F_SMAC], syn)

    def _account(self, key: tuple[int, bytes, bytes, int, int, int], orig: int, ts: float,
                 smac: bytes, syn: bool) -> None:
        m = int(ts) // 60
        f = self.flows.get(key)
        if f is None:
            self.flows[key] = [1, orig, ts, ts, array("q"), m, 1, syn]
            self.macs.setdefault(key[1], smac)
            return
        f[PK] += 1
        f[BY] += orig
        if ts > f[LAST]:
            f[LAST] = ts
        if ts < f[FIRST]:
            f[FIRST] = ts
        if syn:
            f[SYN] = True
        if m == f[CURM]:
            f[CURN] += 1
        else:
            f[MINS].extend((f[CURM], f[CURN]))
            f[CURM] = m
            f[CURN] = 1

    def _fused(self, cap: CaptureFile, data: bytes | mmap.mmap) -> int:
        """Little-endian classic pcap: one ``unpack_from`` reads the record header and the
        Ethernet/IPv4/TCP-UDP fields (the sensor's layouts); other frames go through
        :meth:`_one`. Ports and the tag stay byte-swapped in the key.

        The loop stops at the first record it cannot take whole (the file's last few bytes,
        or damage) and hands the rest to :meth:`CaptureFile.records`, which walks the tail
        and names any damage. Every :data:`RELEASE_EVERY` bytes it gives the pages behind
        it back (:meth:`CaptureFile.release`), so memory does not grow with the file.
        """
        head = struct.Struct("<" + PCAP_RECORD + FRAME_HEAD).unpack_from
        tagged = struct.Struct("<" + PCAP_RECORD + FRAME_HEAD_TAGGED)
        headv = tagged.unpack_from
        div = 1e9 if cap.nanos else 1e6
        flows = self.flows
        get = flows.get
        macs = self.macs
        one = self._one
        release = cap.release
        new_pairs = _new_pairs
        size = len(data)
        limit = size - tagged.size  # past this a fused read could run off the end
        rlen = PCAP_RECORD_LEN
        maxrec = MAX_RECORD
        off = PCAP_FILE_HEADER_LEN
        lim = min(limit, off + RELEASE_EVERY)
        n = 0
        fast = 0
        first = last = None
        ts = 0.0
        while True:
            if off > lim:
                if off > limit:
                    break
                release(off)
                lim = min(limit, off + RELEASE_EVERY)
                continue
            sec, frac, incl, orig, etype, vihl, frag, proto, sip, dip, sport, dport, \
                flags = head(data, off)
            hl = 14
            vid = 0
            if etype == 0x0081:
                sec, frac, incl, orig, v, etype, vihl, frag, proto, sip, dip, sport, \
                    dport, flags = headv(data, off)
                vid = _swap(v) & 0xFFF
                hl = 18
            pk = off + rlen
            if incl > maxrec or pk + incl > size:
                break  # damage: the reader names it
            off = pk + incl
            n += 1
            ts = sec + frac / div
            if first is None:
                first = last = ts
            if etype == 0x0008 and vihl == 0x45 and not frag & 0xFF3F and (
                    (proto == 6 and incl >= hl + 34)
                    or (proto == 17 and incl >= hl + 28 and sport != 0x3500)):
                fast += 1
                if ts > last:
                    last = ts
                elif ts < first:
                    first = ts
                key = (vid, sip, dip, proto, sport, dport)
                m = sec // 60
                f = get(key)
                if f is None:
                    flows[key] = [1, orig, ts, ts, new_pairs(), m, 1,
                                  proto == 6 and (flags & 0x12) == 0x02]
                    if sip not in macs:
                        macs[sip] = data[pk + 6:pk + 12]
                    continue
                f[0] += 1
                f[1] += orig
                if ts > f[3]:
                    f[3] = ts
                elif ts < f[2]:
                    f[2] = ts
                if m == f[5]:
                    f[6] += 1
                else:
                    f[4].extend((f[5], f[6]))
                    f[5] = m
                    f[6] = 1
                if proto == 6 and flags & 0x12 == 0x02:
                    f[7] = True
                continue
            one(data, pk, incl, orig, ts)
        st = self.stats
        st.packets += fast
        st.ip_packets += fast
        if first is not None:
            st.first = first if st.first is None else min(st.first, first)
            st.last = last if st.last is None else max(st.last, last)  # type: ignore[type-var]
        for ts, pk, incl, orig in cap.records(start=off):
            n += 1
            one(data, pk, incl, orig, ts)
        return n

    def add_frames(self, batch: Iterable[tuple[bytes, float]]) -> None:
        """Frames from a live capture (``(frame, timestamp)``, no record header): the
        captured length is the wire length as far as the report knows."""
        one = self._one
        since = self.since
        for frame, ts in batch:
            if since is not None and ts < since:
                continue
            one(frame, 0, len(frame), len(frame), ts)

    # ---- DNS answers -----------------------------------------------------------------

    def _dns(self, data: bytes | mmap.mmap, off: int, caplen: int) -> None:
        """Record A/AAAA answers of one DNS response (frame at ``off``); never raises."""
        end = off + caplen
        p = off + 12
        etype = struct.unpack_from("!H", data, p)[0]
        while etype in (0x8100, 0x88A8, 0x9100) and p + 4 <= end:
            p += 4
            etype = struct.unpack_from("!H", data, p)[0]
        p += 2
        if etype == 0x0800:
            p += (data[p] & 0x0F) * 4
        elif etype == 0x86DD:
            p += 40
        else:
            return
        p += 8
        try:
            for raw, name in dns_answers(bytes(data[p:end])):
                self.names[raw] = name
        except (IndexError, struct.error, UnicodeDecodeError):
            return

    # ---- results ---------------------------------------------------------------------

    def records(self) -> list[FlowRecord]:
        """The flows as plain records (ports and VLAN swapped back where needed)."""
        out = []
        for (vlan, sip, dip, proto, sport, dport), f in self.flows.items():
            mins = MinuteCounts.of(f[MINS], f[CURM], f[CURN])
            if proto in (6, 17) and sport >= 0:
                sport, dport = _swap(sport), _swap(dport)
            out.append(FlowRecord(vlan, ip_str(sip), ip_str(dip), proto, sport, dport,
                                  f[PK], f[BY], f[FIRST], f[LAST], mins, bool(f[SYN])))
        return out

    def mac_of(self) -> dict[str, str]:
        return {ip_str(ip): mac_str(mac) for ip, mac in self.macs.items()
                if len(ip) in (4, 16)}

    def dns_names(self) -> dict[str, str]:
        return {ip_str(ip): name for ip, name in self.names.items()}


def dns_answers(msg: bytes) -> list[tuple[bytes, str]]:
    """``(address bytes, owner name)`` of the A and AAAA answers of one DNS response.

    The owner name is the question name when answers are CNAME chains (the name the device
    asked for). Compression pointers are followed at most 16 deep.
    """
    if len(msg) < 12:
        return []
    flags, qd, an = struct.unpack_from("!2xHHH", msg, 0)
    if not flags & 0x8000:
        return []

    def name_at(p: int) -> tuple[str, int]:
        labels: list[str] = []
        nxt = -1
        for _ in range(64):
            ln = msg[p]
            if ln & 0xC0 == 0xC0:
                if nxt < 0:
                    nxt = p + 2
                p = ((ln & 0x3F) << 8) | msg[p + 1]
                continue
            if ln == 0:
                return ".".join(labels).lower(), (nxt if nxt >= 0 else p + 1)
            labels.append(msg[p + 1:p + 1 + ln].decode("ascii"))
            p += 1 + ln
        raise IndexError("name too long")

    p = 12
    qname = ""
    for i in range(qd):
        nm, p = name_at(p)
        if i == 0:
            qname = nm
        p += 4
    out = []
    for _ in range(an):
        nm, p = name_at(p)
        rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", msg, p)
        p += 10
        rdata = msg[p:p + rdlen]
        p += rdlen
        if (rtype == 1 and rdlen == 4) or (rtype == 28 and rdlen == 16):
            out.append((rdata, qname or nm))
    return out


def read_captures(paths: Iterable[str | Path], *, partial: bool = False,
                  since_seconds: float | None = None) -> FlowTable:
    """Aggregate every capture into one :class:`FlowTable`.

    ``since_seconds`` keeps packets newer than that many seconds before the newest packet of
    all the files (captures are usually older than now), found in a first pass.
    """
    paths = list(paths)
    cutoff = None
    if since_seconds is not None:
        probe = FlowTable(since=float("-inf"))
        for p in paths:
            probe.add_file(p, partial=partial)
        if probe.stats.last is not None:
            cutoff = probe.stats.last - since_seconds
    table = FlowTable(since=cutoff)
    for p in paths:
        table.add_file(p, partial=partial)
    return table
