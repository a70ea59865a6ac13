"""The sensor's fast paths: fused record walk + parse + accounting for the common case.

Why: on a busy segment most frames are established TCP data or UDP of a known flow between
hosts the sensor already knows. Such a frame only refreshes its source's last-seen stamp, so
these loops read the few header fields they need with one precompiled ``unpack_from`` (the
layouts are :data:`labctl.sensor.pcap.FRAME_HEAD` and ``FRAME_HEAD_TAGGED``, beside the pcap
record layout) and skip :func:`~labctl.sensor.parse.parse_frame` and
:meth:`Sensor.process <labctl.sensor.engine.Sensor.process>`. Anything else goes through
them, so every path gives identical results (tests compare them).

Three entry points: :func:`feed_batch` (live capture), :func:`replay` (a capture file:
the fused loop for little-endian classic pcap, :func:`replay_generic` otherwise).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from labctl.sensor.parse import K_IPV4, Parsed, parse_frame
from labctl.sensor.pcap import (
    FRAME_HEAD,
    FRAME_HEAD_TAGGED,
    PCAP_FILE_HEADER_LEN,
    PCAP_RECORD,
    PCAP_RECORD_LEN,
    CaptureFile,
)
from labctl.sensor.records import Device
from labctl.sensor.rules import RuleIndex

if TYPE_CHECKING:
    import mmap


class Sensor(Protocol):
    """What the fast paths use of :class:`labctl.sensor.engine.Sensor` (which calls them)."""

    by_ip: dict[bytes, Device | bool]
    dev_seen: dict[bytes, float]
    udp_flows: dict[tuple[bytes, bytes, int], float]
    rules: RuleIndex
    packets: int
    malformed: int
    last_ts: float

    def process(self, p: Parsed, ts: float) -> None: ...

    def fold(self, now: float) -> None: ...

# network byte order, for frames from a live capture (no pcap record header in front)
_LIVE_HEAD = struct.Struct("!" + FRAME_HEAD)


def feed_batch(sensor: Sensor, batch: Sequence[tuple[bytes, float]]) -> None:
    """Process captured frames (serve's loop).

    Untagged IPv4 TCP without SYN, or UDP of a known flow, from a known host only needs its
    last-seen stamp; everything else goes through :func:`parse_frame` and ``process``.
    """
    head = _LIVE_HEAD.unpack_from
    by_ip = sensor.by_ip
    seen = sensor.dev_seen
    udp_flows = sensor.udp_flows
    rules = sensor.rules
    tcp_rules = rules.by_port[6] if rules.has_rules else {}
    udp_rules = rules.by_port[17] if rules.has_rules else {}
    simple = not rules.any
    parse = parse_frame
    process = sensor.process
    fast = 0
    bad = 0
    ts = sensor.last_ts
    for frame, ts in batch:
        n = len(frame)
        if simple and n >= 54:
            etype, vihl, frag, proto, sip, dip, sport, dport, flags = head(frame)
            if etype == 0x0800 and vihl == 0x45 and not frag & 0x3FFF:
                if proto == 6:
                    if not flags & 0x02 and dport not in tcp_rules:
                        dev = by_ip.get(sip)
                        if dev is not None:
                            if dev is not False:
                                seen[sip] = ts
                            fast += 1
                            continue
                elif proto == 17 and dport not in udp_rules:
                    dev = by_ip.get(sip)
                    if dev is not None and (sip, dip, dport) in udp_flows:
                        if dev is not False:
                            seen[sip] = ts
                        fast += 1
                        continue
        p = parse(frame, 0, n)
        if p is None:
            bad += 1
            continue
        process(p, ts)
    sensor.packets += fast + bad
    sensor.malformed += bad
    if fast and ts > sensor.last_ts:
        sensor.last_ts = ts


def replay(sensor: Sensor, capture: CaptureFile, data: bytes | mmap.mmap) -> int:
    """Process every record of ``capture``; returns the number of records."""
    if capture.format == "pcap":
        return _replay_pcap(sensor, capture, data)
    return replay_generic(sensor, capture, data)


def replay_generic(sensor: Sensor, capture: CaptureFile, data: bytes | mmap.mmap) -> int:
    """Every record through :func:`parse_frame` and ``process`` (the reference path)."""
    parse = parse_frame
    process = sensor.process
    n = 0
    bad = 0
    for ts, off, cap in capture:
        n += 1
        p = parse(data, off, cap)
        if p is None:
            bad += 1
            continue
        process(p, ts)
    sensor.malformed += bad
    sensor.packets += bad
    sensor.fold(sensor.last_ts)
    return n


def _replay_pcap(sensor: Sensor, capture: CaptureFile, data: bytes | mmap.mmap) -> int:
    """The fused classic-pcap loop.

    One precompiled little-endian struct reads the pcap record header *and* the frame's
    Ethernet/IPv4/TCP-UDP fields in a single ``unpack_from`` call. Network-order fields
    therefore come out byte-swapped, and are compared with byte-swapped constants
    (``0x0008`` is EtherType 0x0800). Only little-endian pcap takes this path.
    """
    rules = sensor.rules
    if capture.endian != "<" or rules.any:
        return replay_generic(sensor, capture, data)
    rec = struct.Struct("<" + PCAP_RECORD).unpack_from
    head = struct.Struct("<" + PCAP_RECORD + FRAME_HEAD).unpack_from
    tagged = struct.Struct("<" + PCAP_RECORD + FRAME_HEAD_TAGGED)
    headv = tagged.unpack_from
    div = 1e9 if capture.nanos else 1e6
    parse = parse_frame
    process = sensor.process
    by_ip = sensor.by_ip
    seen = sensor.dev_seen
    udp_flows = sensor.udp_flows
    if rules.has_rules:
        tcp_rules = {((p & 0xFF) << 8) | (p >> 8) for p in rules.by_port[6]}
        udp_rules = {((p & 0xFF) << 8) | (p >> 8) for p in rules.by_port[17]}
    else:
        tcp_rules = udp_rules = set()
    nofrag = {0x0000, 0x0040}  # fragment word 0 or DF only, byte-swapped
    rec_len = PCAP_RECORD_LEN
    size = len(data)
    limit = size - tagged.size  # past this offset a fused read could run off the end
    off = PCAP_FILE_HEADER_LEN
    n = 0
    fast = 0
    bad = 0
    vid = 0
    ts = sensor.last_ts
    while off + rec_len <= size:
        if off <= limit:
            sec, frac, incl, _o, etype, vihl, frag, proto, sip, dip, sport, dport, \
                flags = head(data, off)
            hl = 14
            if etype == 0x0081:  # 802.1Q: read the same fields 4 bytes further on
                sec, frac, incl, _o, vid, etype, vihl, frag, proto, sip, dip, sport, \
                    dport, flags = headv(data, off)
                hl = 18
            pk = off + rec_len
            off = pk + incl
            if off > size:
                capture.truncated += 1
                break
            n += 1
            ts = sec + frac / div
            if etype == 0x0008 and vihl == 0x45 and frag in nofrag:
                if proto == 6 and incl >= hl + 34:
                    if not flags & 0x02 and dport not in tcp_rules:
                        dev = by_ip.get(sip)
                        if dev is not None:
                            if dev is not False:
                                seen[sip] = ts
                            fast += 1
                            continue
                    # the fields are already read: build the parse tuple directly
                    process((((vid & 0xFF) << 8 | vid >> 8) & 0xFFF if hl == 18 else 0,
                             data[pk + 6:pk + 12], data[pk:pk + 6], K_IPV4, sip, dip, 6,
                             (sport & 0xFF) << 8 | sport >> 8,
                             (dport & 0xFF) << 8 | dport >> 8, flags), ts)
                    continue
                if proto == 17 and incl >= hl + 28:
                    rport = (dport & 0xFF) << 8 | dport >> 8
                    if dport not in udp_rules:
                        dev = by_ip.get(sip)
                        if dev is not None and (sip, dip, rport) in udp_flows:
                            if dev is not False:
                                seen[sip] = ts
                            fast += 1
                            continue
                    process((((vid & 0xFF) << 8 | vid >> 8) & 0xFFF if hl == 18 else 0,
                             data[pk + 6:pk + 12], data[pk:pk + 6], K_IPV4, sip, dip, 17,
                             (sport & 0xFF) << 8 | sport >> 8, rport, 0), ts)
                    continue
        else:
            sec, frac, incl, _o = rec(data, off)
            pk = off + rec_len
            off = pk + incl
            if off > size:
                capture.truncated += 1
                break
            n += 1
            ts = sec + frac / div
        p = parse(data, pk, incl)
        if p is None:
            bad += 1
            continue
        process(p, ts)
    else:
        if off != size:
            capture.truncated += 1
    sensor.packets += fast + bad
    sensor.malformed += bad
    if fast:
        sensor.last_ts = max(sensor.last_ts, ts)
    sensor.fold(sensor.last_ts)
    return n
