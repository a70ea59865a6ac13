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
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from labctl.sensor.parse import K_IPV4, Parsed, parse_frame
from labctl.sensor.pcap import (
    FRAME_HEAD,
    FRAME_HEAD_TAGGED,
    MAX_RECORD,
    PCAP_FILE_HEADER_LEN,
    PCAP_RECORD,
    PCAP_RECORD_LEN,
    RELEASE_EVERY,
    CaptureFile,
)
from labctl.sensor.records import Device, FlowKey, FlowRecord
from labctl.sensor.rules import RuleIndex

if TYPE_CHECKING:
    import mmap


class Sensor(Protocol):
    """What the fast paths use of :class:`labctl.sensor.engine.Sensor` (which calls them)."""

    by_ip: dict[bytes, Device | bool]
    dev_seen: dict[bytes, float]
    udp_flows: dict[tuple[bytes, bytes, int], float]
    flow_dirs: dict[FlowKey, list[Any]]
    flow_tick: tuple[float, float, object]
    dirty_alerts: set[int]
    dedup_ms: int
    rules: RuleIndex
    packets: int
    malformed: int
    last_ts: float

    def process(self, p: Parsed, ts: float, wire: int = 0, key: FlowKey | None = None
                ) -> None: ...

    def fold(self, now: float) -> None: ...

    def _flow_tick(self, ts: float) -> None: ...

    def _flow_touch(self, d: list[Any]) -> None: ...

    def syn_state(self) -> tuple[Any, ...]: ...

    def _attempt(self, p: Parsed, ts: float, proto: int) -> None: ...

# the live frames' fields read little-endian, like the fused pcap loop reads them, so the
# flow keys (byte-swapped ports) and the byte-swapped constants are the same on both paths
_LIVE_HEAD = struct.Struct("<" + FRAME_HEAD)
# the fused pcap loop's reads: a little-endian record header and the frame's fields
_UNTAGGED = struct.Struct("<" + PCAP_RECORD + FRAME_HEAD)
_TAGGED = struct.Struct("<" + PCAP_RECORD + FRAME_HEAD_TAGGED)


def _swapped(ports: Iterable[int]) -> set[int]:
    return {((p & 0xFF) << 8) | (p >> 8) for p in ports}


def _hits_settled(hits: tuple[list[Any], ...] | None, ms: int, dms: int,
                  dirty: set[int]) -> bool:
    """A rule-port packet of a direction whose matching rules all alerted within the dedup
    window: count the repeats (what Sensor._raise does for them) and return True; False
    sends the packet the slow way (no cache yet, or a new alert is due)."""
    if hits is None:
        return False
    if len(hits) == 1:  # the common case: one rule on the port
        a = hits[0][0]
        if a is None or ms - a.last_time >= dms:
            return False
        if ms > a.last_time:
            a.last_time = ms
        a.count += 1
        dirty.add(a.id)
        return True
    for c in hits:
        a = c[0]
        if a is None or ms - a.last_time >= dms:
            return False
    for c in hits:
        a = c[0]
        if ms > a.last_time:
            a.last_time = ms
        a.count += 1
        dirty.add(a.id)
    return True


def feed_batch(sensor: Sensor, batch: Sequence[tuple[bytes, float]]) -> None:
    """Process captured frames (serve's loop).

    An untagged IPv4 TCP frame without SYN or a UDP frame, of a flow direction the sensor
    already knows, only updates that direction's counters (and, on a rule's port, the
    repeat count of the rule's alert); everything else goes through :func:`parse_frame`
    and ``process``.
    """
    head = _LIVE_HEAD.unpack_from
    fd = sensor.flow_dirs
    rules = sensor.rules
    tcp_rules = _swapped(rules.by_port[6]) if rules.has_rules else set()
    udp_rules = _swapped(rules.by_port[17]) if rules.has_rules else set()
    simple = not rules.any
    dms = sensor.dedup_ms
    dirty = sensor.dirty_alerts
    parse = parse_frame
    process = sensor.process
    flo, fhi, fstamp = sensor.flow_tick
    fast = 0
    bad = 0
    ts = sensor.last_ts
    for frame, ts in batch:
        n = len(frame)
        if simple and n >= 54:
            etype, vihl, frag, proto, sip, dip, sport, dport, flags = head(frame)
            if etype == 0x0008 and vihl == 0x45 and (frag == 0 or frag == 0x0040):
                if proto == 6:
                    d = None if flags & 0x02 else fd.get((sip, dip, sport, dport, 6, 0))
                elif proto == 17:
                    d = fd.get((sip, dip, sport, dport, 17, 0))
                else:
                    d = None
                if d is not None and (
                        (dport not in (tcp_rules if proto == 6 else udp_rules)) or
                        _hits_settled(d[7], int(ts * 1000), dms, dirty)):
                    if ts >= fhi or ts < flo:
                        sensor._flow_tick(ts)
                        flo, fhi, fstamp = sensor.flow_tick
                    d[0] += 1
                    d[1] += n
                    d[2] = ts
                    if d[3] is not fstamp:
                        sensor._flow_touch(d)
                    fast += 1
                    continue
        p = parse(frame, 0, n)
        if p is None:
            bad += 1
            continue
        process(p, ts, n)
        flo, fhi, fstamp = sensor.flow_tick
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
    """Every record through :func:`parse_frame` and ``process`` (the reference path).

    The wire length is the 4 bytes before the frame: ``orig_len`` of a pcap record, the
    original length of a pcapng enhanced or simple packet block."""
    parse = parse_frame
    process = sensor.process
    wire = struct.Struct(capture.endian + "I").unpack_from
    guard = capture.format != "pcap"  # classic pcap: orig_len as the fused loop reads it
    n = 0
    bad = 0
    for ts, off, cap in capture:
        n += 1
        p = parse(data, off, cap)
        if p is None:
            bad += 1
            continue
        w = wire(data, off - 4)[0] if off >= 4 else cap
        if guard and not cap <= w <= MAX_RECORD:
            w = cap  # not a length (a big-endian pcapng section): the captured length
        process(p, ts, w)
    sensor.malformed += bad
    sensor.packets += bad
    sensor.fold(sensor.last_ts)
    return n


def walk_py(data: bytes | mmap.mmap, off: int, limit: int, div: float, sensor: Sensor,
            fd: dict[FlowKey, list[Any]], tcp_rules: set[int], udp_rules: set[int], dms: int,
            dirty: set[int], tick: Callable[[float], None],
            touch: Callable[[list[Any]], None], settled: Callable[..., bool],
            process: Callable[..., None], parse: Callable[..., Parsed | None],
            release: Callable[[int], None], syn: tuple[Any, ...], maxrec: int, every: int,
            ts: float) -> tuple[int, int, int, int, float]:
    """The fused classic-pcap loop, from byte ``off`` while a fused read stays below
    ``limit``; returns ``(offset reached, records, slow ones, malformed, last ts)``.

    One precompiled little-endian struct reads the pcap record header *and* the frame's
    Ethernet/IPv4/TCP-UDP fields in a single ``unpack_from`` call. Network-order fields
    therefore come out byte-swapped, and are compared with byte-swapped constants
    (``0x0008`` is EtherType 0x0800); the flow keys hold the ports byte-swapped too. Only
    little-endian pcap takes this path.

    A SYN from a known source is settled here too: its flow is counted as ``process`` would,
    and while every connection-attempt window is below its threshold, so are the windows
    (what ``Sensor._attempt`` would do, inline); otherwise ``Sensor._attempt`` itself runs
    after the flow, as in ``process`` (the window stores are idempotent, so a SYN sent on
    after them counts the same). It stops at a
    corrupt length (> ``maxrec``) or a cut record, for the reader to name, and releases the
    pages behind it every ``every`` bytes. ``_walk.c`` is its step-for-step translation:
    change both.
    """
    head = _UNTAGGED.unpack_from
    headv = _TAGGED.unpack_from
    (by_ip, port0, ps_keys, ps_room, as_keys, as_room, nb, ss_keys, ss_room, dos_keys,
     dos_room, internet, glob, new_flow, kipv4, _flow_class, attempt) = syn
    flo, fhi, fstamp = sensor.flow_tick
    rec_len = PCAP_RECORD_LEN
    size = len(data)
    lim = min(limit, off + every)
    n = 0
    slow = 0
    bad = 0
    vl = 0
    while True:
        if off > lim:
            if off > limit:
                break  # the last few records: the reader walks them (see below)
            release(off)
            lim = min(limit, off + every)
            continue
        sec, frac, incl, orig, etype, vihl, frag, proto, sip, dip, sport, dport, \
            flags = head(data, off)
        hl = 14
        if etype == 0x0081:  # 802.1Q: read the same fields 4 bytes further on
            sec, frac, incl, orig, vid, etype, vihl, frag, proto, sip, dip, sport, \
                dport, flags = headv(data, off)
            hl = 18
            vl = ((vid & 0xFF) << 8 | vid >> 8) & 0xFFF
        else:
            vl = 0
        pk = off + rec_len
        if incl > maxrec or pk + incl > size:
            break  # damage: the reader names it (see below)
        off = pk + incl
        n += 1
        ts = sec + frac / div
        if etype == 0x0008 and vihl == 0x45 and (frag == 0 or frag == 0x0040):
            if proto == 6 and incl >= hl + 34:
                key = (sip, dip, sport, dport, 6, vl)
                if not flags & 0x02:
                    d = fd.get(key)
                    if d is not None and (dport not in tcp_rules or settled(
                            d[7], int(ts * 1000), dms, dirty)):
                        if ts >= fhi or ts < flo:
                            tick(ts)
                            flo, fhi, fstamp = sensor.flow_tick
                        d[0] += 1
                        d[1] += orig
                        d[2] = ts
                        if d[3] is not fstamp:
                            touch(d)
                        continue
                elif flags & 0x12 == 0x02 and dport not in tcp_rules:
                    # a SYN: a connection attempt. From a known source, its flow is
                    # counted here, and its windows too while each is below its threshold
                    # (else Sensor._attempt runs, as in process)
                    dev = by_ip.get(sip)
                    hp = (dport & 0xFF) << 8 | dport >> 8
                    ok = dev is not None and (hp or not port0)
                    if ok and ps_keys is not None:
                        items = ps_keys.get((sip, dip))
                        if items is not None and len(items) < ps_room:
                            items[hp] = ts
                        else:
                            ok = False
                    if ok and as_keys is not None:
                        items = as_keys.get((sip, dip[:nb]))
                        if items is not None and len(items) < as_room:
                            items[dip] = ts
                        else:
                            ok = False
                    q1 = q2 = None
                    if ok and ss_keys is not None:
                        q1 = ss_keys.get(sip)
                        if q1 is None or len(q1) >= ss_room:
                            ok = False
                    if ok and dos_keys is not None:
                        q2 = dos_keys.get(dip)
                        if q2 is None or len(q2) >= dos_room:
                            ok = False
                    if ok and internet:
                        g = glob.get(dip)
                        if g is None or (g and dev):
                            ok = False
                    if dev is not None:
                        if ts >= fhi or ts < flo:
                            tick(ts)
                            flo, fhi, fstamp = sensor.flow_tick
                        d = fd.get(key)
                        # (the other side's flow, when its direction is known, is
                        # found the slow way)
                        if d is None and (dip, sip, dport, sport, 6, vl) not in fd:
                            d = new_flow(key, ts, dev)
                        if d is not None:
                            if ok:
                                if q1 is not None:
                                    q1.append(ts)
                                if q2 is not None:
                                    q2.append(ts)
                            d[0] += 1
                            d[1] += orig
                            d[2] = ts
                            if d[3] is not fstamp:
                                touch(d)
                            if not ok:
                                # a window at its threshold, port 0, or a destination
                                # not classified yet: the rest of process() for a SYN
                                attempt((vl, data[pk + 6:pk + 12], data[pk:pk + 6], kipv4,
                                         sip, dip, 6, (sport & 0xFF) << 8 | sport >> 8, hp,
                                         flags), ts, 6)
                                flo, fhi, fstamp = sensor.flow_tick
                            continue
                # the fields are already read: build the parse tuple directly
                process((vl, data[pk + 6:pk + 12], data[pk:pk + 6], kipv4, sip, dip, 6,
                         (sport & 0xFF) << 8 | sport >> 8,
                         (dport & 0xFF) << 8 | dport >> 8, flags), ts, orig, key)
                slow += 1
                flo, fhi, fstamp = sensor.flow_tick
                continue
            if proto == 17 and incl >= hl + 28:
                key = (sip, dip, sport, dport, 17, vl)
                d = fd.get(key)
                if d is not None and (dport not in udp_rules or settled(
                        d[7], int(ts * 1000), dms, dirty)):
                    if ts >= fhi or ts < flo:
                        tick(ts)
                        flo, fhi, fstamp = sensor.flow_tick
                    d[0] += 1
                    d[1] += orig
                    d[2] = ts
                    if d[3] is not fstamp:
                        touch(d)
                    continue
                process((vl, data[pk + 6:pk + 12], data[pk:pk + 6], kipv4, sip, dip, 17,
                         (sport & 0xFF) << 8 | sport >> 8,
                         (dport & 0xFF) << 8 | dport >> 8, 0), ts, orig, key)
                slow += 1
                flo, fhi, fstamp = sensor.flow_tick
                continue
        p = parse(data, pk, incl)
        if p is None:
            bad += 1
            continue
        process(p, ts, orig)
        slow += 1
        flo, fhi, fstamp = sensor.flow_tick
    return off, n, slow, bad, ts


def _replay_pcap(sensor: Sensor, capture: CaptureFile, data: bytes | mmap.mmap) -> int:
    """The fused classic-pcap loop: :func:`walk_py`, or its compiled translation
    (:mod:`labctl.sensor.native`) when it is built; then the tail and the fold.

    The last few records, and any damage, go to :meth:`CaptureFile.records`, which records
    where the walk stopped.
    """
    rules = sensor.rules
    if capture.endian != "<" or rules.any:
        return replay_generic(sensor, capture, data)
    if rules.has_rules:
        tcp_rules = _swapped(rules.by_port[6])
        udp_rules = _swapped(rules.by_port[17])
    else:
        tcp_rules = udp_rules = set()
    from labctl.sensor import native

    walk = native.walk() or walk_py
    off, n, slow, bad, ts = walk(
        data, PCAP_FILE_HEADER_LEN, len(data) - _TAGGED.size, 1e9 if capture.nanos else 1e6,
        sensor, sensor.flow_dirs, tcp_rules, udp_rules, sensor.dedup_ms, sensor.dirty_alerts,
        sensor._flow_tick, sensor._flow_touch, _hits_settled, sensor.process, parse_frame,
        capture.release, (*sensor.syn_state(), K_IPV4, FlowRecord, sensor._attempt),
        MAX_RECORD, RELEASE_EVERY, sensor.last_ts)
    fast = n - slow - bad  # (counted this way: no counter on the fast path)
    sensor.packets += fast + bad
    sensor.malformed += bad
    if fast:
        sensor.last_ts = max(sensor.last_ts, ts)
    # the tail: what the fused read could run off, and any damage, which the reader records
    # (CaptureFile.damage names the byte offset)
    parse = parse_frame
    process = sensor.process
    for ts, pk, incl, orig in capture.records(start=off):
        n += 1
        p = parse(data, pk, incl)
        if p is None:
            sensor.malformed += 1
            sensor.packets += 1
            continue
        process(p, ts, orig)
    sensor.fold(sensor.last_ts)
    return n
