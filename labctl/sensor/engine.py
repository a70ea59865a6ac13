"""Detection engines, device inventory and connections of the embedded passive sensor.

One :class:`Sensor` consumes parsed packets (see :mod:`labctl.sensor.parse`) in time order and
keeps, in memory:

* the device inventory (keyed by IP; MAC, vendor from the OUI table, first/last seen,
  protocols, served ports, VLANs, scanner/authorized flags);
* connections (client IP, server IP, protocol; ports; first/last seen);
* alerts in the D4IoT shape, deduplicated per (title, source, destination) inside
  ``dedup_seconds``;
* events (``ALERT_REPORTED``, ``DEVICE_CREATE``, ``DEVICE_CONNECTION_CREATED``, ``SCAN``,
  ``USER_DEFINED_RULE_OPERATION``).

Why the shape of the hot path: :meth:`Sensor.process` runs once per packet, so it does only
dict look-ups and stores on raw ``bytes`` keys; strings, sets and alerts are built only when
something new happens (a new device, a new conversation, a threshold crossed). Scan windows
are sliding: each key maps distinct items (ports, addresses) to the time last seen, and old
items are pruned only when the count reaches the threshold.

Times are the packets' own timestamps (seconds), so a replayed pcap yields the same alerts
as the live capture did. Alert ``time`` values are epoch milliseconds, as in the D4IoT API.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from labctl.core.errors import UsageError
from labctl.sensor.config import Detection, LoadedRule, SensorConfig, normalize_address
from labctl.sensor.parse import (
    F_DIP,
    F_DMAC,
    F_DPORT,
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

SERVICE_NAMES = {
    (6, 20): "FTP-DATA", (6, 21): "FTP", (6, 22): "SSH", (6, 23): "Telnet", (6, 25): "SMTP",
    (17, 53): "DNS", (6, 53): "DNS", (17, 67): "DHCP", (17, 68): "DHCP", (6, 80): "HTTP",
    (17, 123): "NTP", (17, 161): "SNMP", (6, 443): "HTTPS", (6, 445): "SMB",
    (6, 502): "Modbus", (6, 102): "S7", (17, 1900): "SSDP", (6, 1883): "MQTT",
    (17, 5353): "mDNS", (6, 6667): "IRC", (6, 6668): "IRC", (6, 8008): "HTTP",
    (6, 8009): "CASTV2", (6, 8443): "HTTPS", (6, 20000): "DNP3", (6, 44818): "EtherNet/IP",
    (17, 47808): "BACnet",
}
PROTO_NAMES = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6"}
MAX_PORTS_PER_CONNECTION = 256
MAX_EVENTS = 20000
# Ethernet type, IPv4 version/IHL, fragment word, protocol, addresses, ports, TCP flags of an
# untagged frame, network byte order (the live fast path; see Sensor.feed_batch)
_LIVE_HEAD = struct.Struct("!12xHBx4xHxB2x4s4sHH9xB")


# ---- records -----------------------------------------------------------------------------

@dataclass
class Device:
    id: int
    ip: str
    mac: str | None
    vendor: str | None
    first_seen: float
    last_seen: float
    vlans: set[int] = field(default_factory=set)
    protocols: set[str] = field(default_factory=set)
    ports: set[int] = field(default_factory=set)  # services this device answered on
    scanner: bool = False
    authorized: bool = True

    def to_api(self) -> dict[str, Any]:
        """The D4IoT /api/v1/devices object, plus the embedded sensor's extras."""
        return {
            "id": self.id,
            "name": self.ip,
            "type": "Unknown",
            "ipAddresses": [self.ip],
            "macAddresses": [self.mac] if self.mac else [],
            "vendor": self.vendor,
            "operatingSystem": None,
            "engineeringStation": False,
            "scanner": self.scanner,
            "authorized": self.authorized,
            "protocols": [{"id": i + 1, "name": n, "ipAddresses": [self.ip]}
                          for i, n in enumerate(sorted(self.protocols))],
            "firmware": [],
            "hasDynamicAddress": False,
            # extras (not in the D4IoT schema; a client ignores unknown keys)
            "firstSeen": int(self.first_seen * 1000),
            "lastSeen": int(self.last_seen * 1000),
            "ports": sorted(self.ports),
            "vlans": sorted(self.vlans),
        }

    def to_row(self) -> dict[str, Any]:
        return {"id": self.id, "ip": self.ip, "mac": self.mac, "vendor": self.vendor,
                "first_seen": self.first_seen, "last_seen": self.last_seen,
                "vlans": sorted(self.vlans), "protocols": sorted(self.protocols),
                "ports": sorted(self.ports), "scanner": self.scanner,
                "authorized": self.authorized}

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> "Device":
        return cls(id=r["id"], ip=r["ip"], mac=r["mac"], vendor=r["vendor"],
                   first_seen=r["first_seen"], last_seen=r["last_seen"], vlans=set(r["vlans"]),
                   protocols=set(r["protocols"]), ports=set(r["ports"]),
                   scanner=r["scanner"], authorized=r["authorized"])


@dataclass
class Connection:
    client: str
    server: str
    proto: int
    first_seen: float
    last_seen: float
    ports: set[int] = field(default_factory=set)

    @property
    def key(self) -> str:
        return f"{self.client}|{self.server}|{self.proto}"

    def to_row(self) -> dict[str, Any]:
        return {"client": self.client, "server": self.server, "proto": self.proto,
                "first_seen": self.first_seen, "last_seen": self.last_seen,
                "ports": sorted(self.ports)}

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> "Connection":
        return cls(r["client"], r["server"], r["proto"], r["first_seen"], r["last_seen"],
                   set(r["ports"]))


@dataclass
class Alert:
    id: int
    time: int  # epoch ms, first detection
    title: str
    message: str
    severity: str
    engine: str
    source_device: int | None
    destination_device: int | None
    source_address: str | None
    destination_address: str | None
    remediation: list[str]
    description: str = ""
    information: list[str] = field(default_factory=list)
    handled: bool = False
    last_time: int = 0
    count: int = 1

    def to_api(self, version: int = 2) -> dict[str, Any]:
        """The D4IoT alert object; v2 adds the addresses and remediation steps."""
        out: dict[str, Any] = {
            "id": self.id,
            "time": self.time,
            "title": self.title,
            "message": self.message,
            "severity": self.severity,
            "engine": self.engine,
            "sourceDevice": self.source_device,
            "destinationDevice": self.destination_device,
            "additionalInformation": (
                {"description": self.description, "information": list(self.information)}
                if self.description or self.information else None),
        }
        if version >= 2:
            out["sourceDeviceAddress"] = self.source_address
            out["destinationDeviceAddress"] = self.destination_address
            out["remediationSteps"] = list(self.remediation)
        return out

    def to_row(self) -> dict[str, Any]:
        return {"id": self.id, "time": self.time, "title": self.title, "message": self.message,
                "severity": self.severity, "engine": self.engine,
                "source_device": self.source_device,
                "destination_device": self.destination_device,
                "source_address": self.source_address,
                "destination_address": self.destination_address,
                "remediation": self.remediation, "description": self.description,
                "information": self.information, "handled": self.handled,
                "last_time": self.last_time, "count": self.count}

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> "Alert":
        return cls(**r)


@dataclass
class Event:
    seq: int
    timestamp: int  # epoch ms
    type: str
    title: str
    severity: str  # INFO | NOTICE | ALERT
    content: str
    owner: str = ""

    def to_api(self) -> dict[str, Any]:
        return {"timestamp": self.timestamp, "type": self.type, "title": self.title,
                "severity": self.severity, "owner": self.owner, "content": self.content}

    def to_row(self) -> dict[str, Any]:
        return {"seq": self.seq, "timestamp": self.timestamp, "type": self.type,
                "title": self.title, "severity": self.severity, "content": self.content,
                "owner": self.owner}

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> "Event":
        return cls(**r)


# ---- OUI ---------------------------------------------------------------------------------

class OuiTable:
    """MAC prefix -> vendor, from the shipped ``sensor/oui.txt`` (+ nmap's table if present)."""

    NMAP = Path("/usr/share/nmap/nmap-mac-prefixes")

    def __init__(self, paths: Iterable[Path]) -> None:
        self._map: dict[str, str] = {}
        self._paths = list(paths)
        self._loaded = False

    def _load(self) -> None:
        self._loaded = True
        for p in reversed(self._paths):  # earlier paths win
            try:
                text = p.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                prefix, _, vendor = line.partition(" ")
                if len(prefix) == 6:
                    self._map[prefix.upper()] = vendor.strip()

    def lookup(self, mac: str | None) -> str | None:
        if not mac:
            return None
        if not self._loaded:
            self._load()
        return self._map.get(mac.replace(":", "")[:6].upper())


@functools.lru_cache(maxsize=1)
def default_oui() -> OuiTable:
    """The shared table (loaded once per process, on the first lookup)."""
    from labctl.core.assets import asset_path

    return OuiTable([asset_path("sensor", "oui.txt"), OuiTable.NMAP])


# ---- the sensor --------------------------------------------------------------------------

class _Window:
    """Distinct items seen per key inside a sliding window; fires at the threshold."""

    __slots__ = ("threshold", "window", "keys")

    def __init__(self, det: Detection) -> None:
        self.threshold = det.threshold or 1
        self.window = det.window_seconds or 60.0
        self.keys: dict[Any, dict[Any, float]] = {}

    def add(self, key: Any, item: Any, ts: float) -> dict[Any, float] | None:
        """Record ``item`` for ``key``; return the items if the threshold is reached."""
        d = self.keys.get(key)
        if d is None:
            self.keys[key] = {item: ts}
            return None
        d[item] = ts
        if len(d) < self.threshold:
            return None
        cutoff = ts - self.window
        old = [k for k, t in d.items() if t < cutoff]
        for k in old:
            del d[k]
        if len(d) < self.threshold:
            return None
        items = dict(d)
        d.clear()  # the alert is raised; start counting afresh (dedup absorbs repeats)
        return items

    def prune(self, now: float) -> None:
        cutoff = now - self.window
        for key in [k for k, d in self.keys.items() if not d or max(d.values()) < cutoff]:
            del self.keys[key]


class _Rate:
    """Count of events per key inside a sliding window; fires at the threshold."""

    __slots__ = ("threshold", "window", "keys")

    def __init__(self, det: Detection) -> None:
        self.threshold = det.threshold or 1
        self.window = det.window_seconds or 60.0
        self.keys: dict[Any, deque[float]] = {}

    def add(self, key: Any, ts: float) -> int:
        q = self.keys.get(key)
        if q is None:
            q = self.keys[key] = deque()
        q.append(ts)
        if len(q) < self.threshold:
            return 0
        cutoff = ts - self.window
        while q and q[0] < cutoff:
            q.popleft()
        if len(q) < self.threshold:
            return 0
        n = len(q)
        q.clear()
        return n

    def prune(self, now: float) -> None:
        cutoff = now - self.window
        for key in [k for k, q in self.keys.items() if not q or q[-1] < cutoff]:
            del self.keys[key]


class Sensor:
    """The passive sensor's state machine; see the module docstring."""

    def __init__(self, config: SensorConfig, *, oui: OuiTable | None = None,
                 learning_mode: bool | None = None,
                 authorized_scanners: Iterable[str] = (), interface: str = "") -> None:
        self.config = config
        eng = config.engines
        self.det = eng.detections
        self.learning = eng.learning_mode if learning_mode is None else learning_mode
        self.dedup_ms = int(eng.dedup_seconds * 1000)
        extra = set()
        for s in authorized_scanners:
            try:
                extra.add(normalize_address(s))
            except ValueError as e:
                raise UsageError(f"authorized scanner: {e}",
                                 hint="give an IP address or a MAC address") from None
        self.scanners: set[str] = set(eng.authorized_scanners) | extra
        self.interface = interface
        self.oui = oui or default_oui()
        self.lock = threading.RLock()

        # inventory and connections
        self.devices: dict[int, Device] = {}
        self.by_ip: dict[bytes, Device | bool] = {}  # False = not a device (global address)
        self.connections: dict[tuple[str, str, int], Connection] = {}
        self.alerts: list[Alert] = []
        self._alert_by_id: dict[int, Alert] = {}
        self.events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._next_device = 1
        self._next_alert = 1
        self._next_event = 1
        self._dedup: dict[tuple[str, str | None, str | None], Alert] = {}

        # per-packet touch maps, folded into the records at flush time
        self._dev_seen: dict[bytes, float] = {}
        self._udp_flows: dict[tuple[bytes, bytes, int], float] = {}
        self._global: dict[bytes, bool] = {}

        # dirty sets for persistence
        self.dirty_devices: set[int] = set()
        self.dirty_connections: set[tuple[str, str, int]] = set()
        self.dirty_alerts: set[int] = set()
        self.new_events: list[Event] = []

        # counters
        self.packets = 0
        self.malformed = 0
        self.withheld = 0
        self.last_ts = 0.0

        # detections
        d = self.det
        self._port_scan = _Window(d.port_scan) if d.port_scan.enabled else None
        self._addr_scan = _Window(d.address_scan) if d.address_scan.enabled else None
        self._addr_prefix_bytes = max(1, (d.address_scan.prefix or 16) // 8)
        self._port0_on = d.port_zero.enabled
        self._internet_on = d.internet.enabled
        self._arp_scan = _Window(d.arp_scan) if d.arp_scan.enabled else None
        self._icmp_flood = _Rate(d.icmp_flood) if d.icmp_flood.enabled else None
        self._sessions = _Rate(d.excessive_sessions) if d.excessive_sessions.enabled else None
        self._dos = _Rate(d.dos) if d.dos.enabled else None

        # user-defined rules, indexed by (protocol, destination port) where possible
        self._rules_port: dict[int, dict[int, list[LoadedRule]]] = {6: {}, 17: {}}
        self._rules_any: dict[int, list[LoadedRule]] = {}
        self._has_rules = bool(config.rules)
        self._rule_dets: dict[int, Detection] = {}
        for r in config.rules:
            proto = {"TCP": 6, "UDP": 17, "ICMP": 1, "IPv4": -4, "IPv6": -6, "ARP": -1}[
                r.rule.protocol]
            if proto in (6, 17) and r.dstport_eq is not None:
                self._rules_port[proto].setdefault(r.dstport_eq, []).append(r)
            else:
                self._rules_any.setdefault(proto, []).append(r)

        self.listeners: list[Callable[[Alert], None]] = []

    # ---- hot path --------------------------------------------------------------------

    def process(self, p: tuple, ts: float) -> None:
        """Account one parsed packet (a :func:`~labctl.sensor.parse.parse_frame` tuple)."""
        self.packets += 1
        self.last_ts = ts
        kind = p[3]
        if kind == K_IPV4 or kind == K_IPV6:
            sip = p[4]
            dev = self.by_ip.get(sip)
            if dev is None:
                dev = self._new_device(sip, p[F_SMAC], p[F_VLAN], ts)
            if dev is not False:
                self._dev_seen[sip] = ts
            proto = p[6]
            if proto == 6:
                flags = p[9]
                if flags & 0x12 == 0x02:  # SYN without ACK: a connection attempt
                    self._attempt(p, ts, 6)
                elif flags & 0x12 == 0x12:  # SYN-ACK: a service answered
                    self._answered(p, ts, dev)
                if self._has_rules and (self._rules_any or p[8] in self._rules_port[6]):
                    self._rules(p, ts, 6)
            elif proto == 17:
                key = (sip, p[5], p[8])
                if key not in self._udp_flows:
                    self._udp_flows[key] = ts
                    self._attempt(p, ts, 17)
                if self._has_rules and (self._rules_any or p[8] in self._rules_port[17]):
                    self._rules(p, ts, 17)
            elif proto == 1 or proto == 58:
                t = p[F_SPORT]
                if t == 8 or t == 128:  # echo request
                    self._attempt(p, ts, proto)
                elif (t == 0 or t == 129) and dev is not False:  # echo reply
                    self._conn(p[F_DIP], p[F_SIP], proto, None, ts)
                if self._has_rules:
                    self._rules(p, ts, 1)
            elif self._has_rules:
                self._rules(p, ts, 0)
        elif kind == K_ARP:
            self._arp(p, ts)
        # K_OTHER (LLDP, STP ...) counts as traffic only

    def feed(self, buf: bytes | memoryview, off: int, length: int, ts: float) -> None:
        """Parse and process one raw Ethernet frame; malformed frames are counted."""
        p = parse_frame(buf, off, length)
        if p is None:
            self.malformed += 1
            self.packets += 1
            return
        self.process(p, ts)

    def feed_batch(self, batch: list[tuple[bytes, float]]) -> None:
        """Process captured frames (serve's loop); same fast path idea as :meth:`replay`.

        Untagged IPv4 TCP without SYN, or UDP of a known flow, from a known host only needs
        its last-seen stamp; everything else goes through :func:`parse_frame` and
        :meth:`process`.
        """
        head = _LIVE_HEAD.unpack_from
        by_ip = self.by_ip
        seen = self._dev_seen
        udp_flows = self._udp_flows
        tcp_rules = self._rules_port[6] if self._has_rules else {}
        udp_rules = self._rules_port[17] if self._has_rules else {}
        simple = not self._rules_any
        parse = parse_frame
        process = self.process
        fast = 0
        bad = 0
        ts = self.last_ts
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
        self.packets += fast + bad
        self.malformed += bad
        if fast and ts > self.last_ts:
            self.last_ts = ts

    def replay(self, capture: Any, data: bytes) -> int:
        """Process every record of a :class:`~labctl.sensor.pcap.CaptureFile`; fast path.

        For classic pcap files the record walk, the common-case parse (untagged IPv4 TCP/UDP
        between already-known hosts, no new conversation) and the accounting are fused into
        one loop: that case needs only a few byte reads and two dict operations, and is most
        of the traffic on a busy segment. Anything else goes through :func:`parse_frame` and
        :meth:`process`, so both paths give identical results (a test checks this).
        """
        if getattr(capture, "format", None) == "pcap":
            return self._replay_pcap(capture, data)
        return self._replay_generic(capture, data)

    def _replay_generic(self, capture: Any, data: bytes) -> int:
        parse = parse_frame
        process = self.process
        n = 0
        bad = 0
        for ts, off, cap in capture:
            n += 1
            p = parse(data, off, cap)
            if p is None:
                bad += 1
                continue
            process(p, ts)
        self.malformed += bad
        self.packets += bad
        self.fold(self.last_ts)
        return n

    def _replay_pcap(self, capture: Any, data: bytes) -> int:
        """The fused classic-pcap loop (see :meth:`replay`).

        One precompiled little-endian struct reads the pcap record header *and* the frame's
        Ethernet/IPv4/TCP-UDP fields in a single ``unpack_from`` call. Network-order fields
        therefore come out byte-swapped, and are compared with byte-swapped constants
        (``0x0008`` is EtherType 0x0800). Only little-endian pcap takes this path.
        """
        import struct

        if capture.endian != "<":
            return self._replay_generic(capture, data)
        rec = struct.Struct("<IIII").unpack_from
        # record(16) | macs(12) etype(H) vihl(B) tos totlen id | frag(H) ttl proto(B) csum |
        # sip(4s) dip(4s) sport(H) dport(H) seq ack off | flags(B)
        head = struct.Struct("<IIII12xHBx4xHxB2x4s4sHH9xB").unpack_from
        headv = struct.Struct("<IIII12x2xHHBx4xHxB2x4s4sHH9xB").unpack_from
        div = 1e9 if capture.nanos else 1e6
        parse = parse_frame
        process = self.process
        by_ip = self.by_ip
        seen = self._dev_seen
        udp_flows = self._udp_flows
        swap = {p: ((p & 0xFF) << 8) | (p >> 8) for p in range(65536)}.__getitem__ \
            if self._has_rules else None
        tcp_rules = {swap(p) for p in self._rules_port[6]} if swap else set()
        udp_rules = {swap(p) for p in self._rules_port[17]} if swap else set()
        nofrag = {0x0000, 0x0040}  # fragment word 0 or DF only, byte-swapped
        if self._rules_any:
            return self._replay_generic(capture, data)
        size = len(data)
        limit = size - 68
        off = 24
        n = 0
        fast = 0
        bad = 0
        ts = self.last_ts
        while off + 16 <= size:
            if off <= limit:
                sec, frac, incl, _o, etype, vihl, frag, proto, sip, dip, sport, dport, \
                    flags = head(data, off)
                hl = 14
                if etype == 0x0081:  # 802.1Q: read the same fields 4 bytes further on
                    sec, frac, incl, _o, vid, etype, vihl, frag, proto, sip, dip, sport, \
                        dport, flags = headv(data, off)
                    hl = 18
                pk = off + 16
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
                pk = off + 16
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
        self.packets += fast + bad
        self.malformed += bad
        if fast:
            self.last_ts = max(self.last_ts, ts)
        self.fold(self.last_ts)
        return n

    # ---- per-conversation work (off the per-packet path) -----------------------------

    def _attempt(self, p: tuple, ts: float, proto: int) -> None:
        sip, dip, dport = p[F_SIP], p[F_DIP], p[F_DPORT]
        tcpudp = proto == 6 or proto == 17
        if tcpudp and dport == 0 and self._port0_on:
            self._raise(self.det.port_zero, ts, sip, dip,
                        lambda: f"A connection attempt to port 0 ({PROTO_NAMES[proto]}) was "
                                f"detected from {ip_str(sip)} to {ip_str(dip)}. "
                                f"Port 0 is reserved.")
        scanner = None  # computed lazily
        if tcpudp and self._port_scan is not None:
            hit = self._port_scan.add((sip, dip), dport, ts)
            if hit:
                scanner = self._is_scanner(sip, p[F_SMAC])
                if not scanner:
                    ports = sorted(hit)
                    new = self._raise(
                        self.det.port_scan, ts, sip, dip,
                        lambda: f"Port scan detected.\nScanning address: {ip_str(sip)}\n"
                                f"Scanned address: {ip_str(dip)}\n"
                                f"Scanned ports: {_short_list(ports)}\n"
                                f"The source hasn't been authorized as a network scanning "
                                f"device.",
                        info=lambda: [f"{len(ports)} ports in "
                                      f"{int(self.det.port_scan.window_seconds or 0)} seconds"])
                    if new:
                        self._scan_event(sip, ts)
        if self._addr_scan is not None:
            # IPv4: the configured prefix (/16, "class B"); IPv6: the /64 (one LAN segment)
            nb = self._addr_prefix_bytes if len(dip) == 4 else 8
            hit = self._addr_scan.add((sip, dip[:nb]), dip, ts)
            if hit:
                if scanner is None:
                    scanner = self._is_scanner(sip, p[F_SMAC])
                if not scanner:
                    subnet = _subnet(dip, self.det.address_scan.prefix or 16)
                    addrs = sorted(hit)
                    new = self._raise(
                        self.det.address_scan, ts, sip, None,
                        lambda: f"Address scan detected.\nScanning address: {ip_str(sip)}\n"
                                f"Scanned subnet: {subnet}\nScanned addresses: "
                                f"{_short_list([ip_str(a) for a in addrs])}",
                        dedup_dst=subnet,
                        info=lambda: [f"{len(addrs)} addresses in "
                                      f"{int(self.det.address_scan.window_seconds or 0)} "
                                      f"seconds"])
                    if new:
                        self._scan_event(sip, ts)
        if proto == 6:
            if self._sessions is not None:
                n = self._sessions.add(sip, ts)
                if n:
                    self._raise(self.det.excessive_sessions, ts, sip, None,
                                lambda: f"Excessive number of sessions: {ip_str(sip)} opened "
                                        f"{n} TCP sessions within "
                                        f"{int(self._sessions.window)} seconds.")
            if self._dos is not None:
                n2 = self._dos.add(dip, ts)
                if n2:
                    self._raise(self.det.dos, ts, None, dip,
                                lambda: f"Suspicion of denial of service: {ip_str(dip)} "
                                        f"received {n2} connection attempts within "
                                        f"{int(self._dos.window)} seconds.")
        elif (proto == 1 or proto == 58) and self._icmp_flood is not None:
            n3 = self._icmp_flood.add((sip, dip), ts)
            if n3:
                self._raise(self.det.icmp_flood, ts, sip, dip,
                            lambda: f"ICMP flooding: {ip_str(sip)} sent {n3} ICMP echo "
                                    f"requests to {ip_str(dip)} within "
                                    f"{int(self._icmp_flood.window)} seconds.")
        if self._internet_on:
            g = self._global.get(dip)
            if g is None:
                g = self._is_global(dip)
            if g and self.by_ip.get(sip):
                self._raise(self.det.internet, ts, sip, dip,
                            lambda: f"Unauthorized internet connectivity: {ip_str(sip)} "
                                    f"communicated with the internet address {ip_str(dip)} "
                                    f"({PROTO_NAMES.get(proto, proto)}"
                                    + (f" port {dport})" if tcpudp else ")"))
        if proto == 17 and self.by_ip.get(sip):
            self._conn(sip, dip, 17, dport, ts)

    def _answered(self, p: tuple, ts: float, dev: Device | bool) -> None:
        sport = p[F_SPORT]
        if isinstance(dev, Device) and sport not in dev.ports:
            dev.ports.add(sport)
            dev.protocols.add(SERVICE_NAMES.get((6, sport), "TCP"))
            self.dirty_devices.add(dev.id)
        self._conn(p[F_DIP], p[F_SIP], 6, sport, ts)

    def _conn(self, client: bytes, server: bytes, proto: int, port: int | None,
              ts: float) -> None:
        key = (ip_str(client), ip_str(server), proto)
        c = self.connections.get(key)
        if c is None:
            c = self.connections[key] = Connection(key[0], key[1], proto, ts, ts)
            self._event(ts, "DEVICE_CONNECTION_CREATED", "Connection Detected", "INFO",
                        f"New connection {key[0]} -> {key[1]} ({PROTO_NAMES.get(proto, proto)})")
        c.last_seen = ts
        if port is not None and port not in c.ports and len(c.ports) < MAX_PORTS_PER_CONNECTION:
            c.ports.add(port)
        self.dirty_connections.add(key)

    def _arp(self, p: tuple, ts: float) -> None:
        spa, tpa, op = p[F_SIP], p[F_DIP], p[6]
        if spa != b"\x00\x00\x00\x00":
            dev = self.by_ip.get(spa)
            if dev is None:
                dev = self._new_device(spa, p[F_SMAC], p[F_VLAN], ts)
            if isinstance(dev, Device):
                self._dev_seen[spa] = ts
                if "ARP" not in dev.protocols:
                    dev.protocols.add("ARP")
                    self.dirty_devices.add(dev.id)
        if op == 1 and self._arp_scan is not None and spa != tpa:
            hit = self._arp_scan.add(p[F_SMAC], tpa, ts)
            if hit and not self._is_scanner(spa, p[F_SMAC]):
                self._raise(self.det.arp_scan, ts, spa or None, None,
                            f"ARP address scan detected.\nScanning address: {ip_str(spa)} "
                            f"({mac_str(p[F_SMAC])})\nScanned addresses: "
                            f"{_short_list([ip_str(a) for a in sorted(hit)])}",
                            src_text=ip_str(spa) if spa != b"\x00\x00\x00\x00"
                            else mac_str(p[F_SMAC]))
                self._scan_event(spa, ts)

    def _rules(self, p: tuple, ts: float, proto: int) -> None:
        cands = None
        if proto in (6, 17):
            cands = self._rules_port[proto].get(p[F_DPORT])
        anys = self._rules_any.get(proto)
        ipk = -4 if p[3] == K_IPV4 else -6
        more = self._rules_any.get(ipk)
        if not (cands or anys or more):
            return
        for r in (cands or []) + (anys or []) + (more or []):
            if _rule_matches(r, p):
                self._rule_fire(r, p, ts)

    def _rule_fire(self, r: LoadedRule, p: tuple, ts: float) -> None:
        """A rule matched. Heavy matching traffic (a pet feeder's IRC) mostly lands in the
        dedup window, so the message is rendered only for a new alert or event."""
        if r.rule.action == "event":
            key = (f"event:{r.rule.name}", ip_str(p[F_SIP]), ip_str(p[F_DIP]))
            prev = self._dedup.get(key)
            ms = int(ts * 1000)
            if prev is not None and ms - prev.last_time < self.dedup_ms:
                prev.last_time = ms
                return
            msg = _render_message(r.rule.message or r.rule.name, p)
            self._dedup[key] = Alert(0, ms, r.rule.name, msg, r.rule.severity, r.rule.engine,
                                     None, None, None, None, [], last_time=ms)
            self._event(ts, "USER_DEFINED_RULE_OPERATION", r.rule.name, "NOTICE", msg)
            return
        det = self._rule_dets.get(id(r))
        if det is None:
            det = self._rule_dets[id(r)] = Detection(
                title=r.rule.name, engine=r.rule.engine, severity=r.rule.severity,
                remediation=[f"Review the custom rule {r.rule.name!r} ({r.file})."])
        self._raise(det, ts, p[F_SIP], p[F_DIP],
                    lambda: _render_message(r.rule.message or r.rule.name, p), user_rule=True,
                    info=[f"User-defined rule: {r.rule.name}"])

    # ---- records ---------------------------------------------------------------------

    def _new_device(self, ip: bytes, mac: bytes, vlan: int, ts: float) -> Device | bool:
        if self._is_global(ip) or ip in (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff") or \
                (len(ip) == 4 and ip[0] >= 224) or (len(ip) == 16 and ip[0] == 0xFF) or \
                ip == bytes(16):
            self.by_ip[ip] = False
            return False
        mac_text = mac_str(mac) if mac else None
        if mac_text and (mac[0] & 1):  # multicast/broadcast source MAC is bogus
            mac_text = None
        ip_text = ip_str(ip)
        dev = Device(id=self._next_device, ip=ip_text, mac=mac_text,
                     vendor=self.oui.lookup(mac_text), first_seen=ts, last_seen=ts,
                     vlans={vlan} if vlan else set(),
                     protocols=set(),
                     scanner=ip_text in self.scanners or (mac_text or "-") in self.scanners,
                     authorized=self.learning)
        self._next_device += 1
        self.devices[dev.id] = dev
        self.by_ip[ip] = dev
        self.dirty_devices.add(dev.id)
        self._event(ts, "DEVICE_CREATE", "Device Detected", "INFO",
                    f"New device {ip_text} ({mac_text or 'no MAC'}, "
                    f"{dev.vendor or 'unknown vendor'})")
        if self.det.new_asset.enabled:
            self._raise(self.det.new_asset, ts, ip, None,
                        f"New asset detected.\nIP address: {ip_text}\nMAC address: "
                        f"{mac_text or 'unknown'}\nVendor: {dev.vendor or 'unknown'}")
        return dev

    def _is_global(self, ip: bytes) -> bool:
        g = self._global.get(ip)
        if g is None:
            try:
                g = ipaddress.ip_address(ip).is_global
            except ValueError:
                g = False
            self._global[ip] = g
        return g

    def _is_scanner(self, ip: bytes, mac: bytes) -> bool:
        dev = self.by_ip.get(ip)
        if isinstance(dev, Device) and dev.scanner:
            return True
        return ip_str(ip) in self.scanners or mac_str(mac) in self.scanners

    def _scan_event(self, ip: bytes, ts: float) -> None:
        self._event(ts, "SCAN", "Scan Device Detected", "NOTICE",
                    f"{ip_str(ip)} is scanning the network")

    def _event(self, ts: float, etype: str, title: str, severity: str, content: str) -> None:
        ev = Event(self._next_event, int(ts * 1000), etype, title, severity, content)
        self._next_event += 1
        self.events.append(ev)
        self.new_events.append(ev)

    def _raise(self, det: Detection, ts: float, src: bytes | None, dst: bytes | None,
               message: str | Callable[[], str], *, dedup_dst: str | None = None,
               info: list[str] | Callable[[], list[str]] | None = None,
               user_rule: bool = False, dedup: bool = True, src_text: str | None = None
               ) -> Alert | None:
        """Raise an alert; returns it if new, None if withheld (learning) or deduplicated.

        ``message`` and ``info`` may be callables so that the text of an alert that is
        deduplicated (the common case during a long scan) is never built.
        """
        if det.engine == "Policy Violation" and self.learning and not user_rule:
            self.withheld += 1
            return None
        ms = int(ts * 1000)
        src_a = src_text or (ip_str(src) if src else None)
        dst_a = ip_str(dst) if dst else None
        key = (det.title, src_a, dedup_dst or dst_a)
        if dedup:
            prev = self._dedup.get(key)
            if prev is not None and ms - prev.last_time < self.dedup_ms:
                prev.last_time = max(prev.last_time, ms)
                prev.count += 1
                self.dirty_alerts.add(prev.id)
                return None
        if callable(message):
            message = message()
        if callable(info):
            info = info()
        sd = self.by_ip.get(src) if src else None
        dd = self.by_ip.get(dst) if dst else None
        alert = Alert(
            id=self._next_alert, time=ms, title=det.title, message=message,
            severity=det.severity, engine=det.engine,
            source_device=sd.id if isinstance(sd, Device) else None,
            destination_device=dd.id if isinstance(dd, Device) else None,
            source_address=src_a, destination_address=dst_a,
            remediation=list(det.remediation), description=det.title,
            information=list(info or []), last_time=ms)
        self._next_alert += 1
        self.alerts.append(alert)
        self._alert_by_id[alert.id] = alert
        if dedup:
            self._dedup[key] = alert
        self.dirty_alerts.add(alert.id)
        self._event(ts, "ALERT_REPORTED", "Alert Detected", "ALERT",
                    f"{det.title}: {message.splitlines()[0]}")
        for cb in self.listeners:
            cb(alert)
        return alert

    def operational(self, title_key: str, ts: float) -> Alert | None:
        """Raise the No Traffic / Traffic Detected alert (serve's idle timer calls this)."""
        det: Detection = getattr(self.det, title_key)
        if not det.enabled:
            return None
        iface = self.interface or "the monitored interface"
        if title_key == "no_traffic":
            msg = f"The sensor stopped detecting network traffic on {iface}."
        else:
            msg = f"The sensor resumed detecting network traffic on {iface}."
        return self._raise(det, ts, None, None, msg, dedup=False)

    # ---- maintenance -----------------------------------------------------------------

    def fold(self, now: float) -> None:
        """Fold per-packet last-seen stamps into the device records; prune old windows."""
        for ip, ts in self._dev_seen.items():
            dev = self.by_ip.get(ip)
            if isinstance(dev, Device) and ts > dev.last_seen:
                dev.last_seen = ts
                self.dirty_devices.add(dev.id)
        self._dev_seen.clear()
        # bound the caches a long-running sensor keeps (an internet-wide scan would
        # otherwise grow them without limit)
        if len(self._udp_flows) > 200_000:
            cutoff = now - 600
            self._udp_flows = {k: t for k, t in self._udp_flows.items() if t >= cutoff}
        if len(self._global) > 500_000:
            self._global.clear()
        if len(self.by_ip) - len(self.devices) > 500_000:
            self.by_ip = {k: v for k, v in self.by_ip.items() if v is not False}

    def prune(self, now: float) -> None:
        for w in (self._port_scan, self._addr_scan, self._arp_scan, self._icmp_flood,
                  self._sessions, self._dos):
            if w is not None:
                w.prune(now)

    def take_dirty(self) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
        """Rows changed since the last call (for the SQLite writer); call under ``lock``."""
        self.fold(self.last_ts)
        devs = [self.devices[i].to_row() for i in self.dirty_devices if i in self.devices]
        conns = [self.connections[k].to_row() for k in self.dirty_connections
                 if k in self.connections]
        alerts = [self._alert_by_id[i].to_row() for i in sorted(self.dirty_alerts)
                  if i in self._alert_by_id]
        events = [e.to_row() for e in self.new_events]
        self.dirty_devices.clear()
        self.dirty_connections.clear()
        self.dirty_alerts.clear()
        self.new_events = []
        return devs, conns, alerts, events

    def restore(self, devices: list[dict], connections: list[dict], alerts: list[dict],
                events: list[dict]) -> None:
        """Load persisted state (after a restart)."""
        for r in devices:
            d = Device.from_row(r)
            self.devices[d.id] = d
            try:
                self.by_ip[ipaddress.ip_address(d.ip).packed] = d
            except ValueError:
                pass
            self._next_device = max(self._next_device, d.id + 1)
        for r in connections:
            c = Connection.from_row(r)
            self.connections[(c.client, c.server, c.proto)] = c
        for r in alerts:
            a = Alert.from_row(r)
            self.alerts.append(a)
            self._alert_by_id[a.id] = a
            self._next_alert = max(self._next_alert, a.id + 1)
            if a.engine != "Operational":
                self._dedup[(a.title, a.source_address,
                             a.destination_address or _dedup_dst_from(a))] = a
        self.alerts.sort(key=lambda a: a.id)
        for r in events:
            e = Event.from_row(r)
            self.events.append(e)
            self._next_event = max(self._next_event, e.seq + 1)

    # ---- views -----------------------------------------------------------------------

    def device_by_ip(self, ip: str) -> Device | None:
        try:
            d = self.by_ip.get(ipaddress.ip_address(ip).packed)
        except ValueError:
            return None
        return d if isinstance(d, Device) else None

    def connections_api(self) -> list[dict[str, Any]]:
        """Connections grouped per device pair, in the D4IoT /devices/connections shape."""
        pairs: dict[tuple[str, str], dict[str, Any]] = {}
        for c in self.connections.values():
            a, b = sorted((c.client, c.server))
            ent = pairs.get((a, b))
            if ent is None:
                da, db = self.device_by_ip(a), self.device_by_ip(b)
                ent = pairs[(a, b)] = {
                    "firstDeviceId": da.id if da else None,
                    "secondDeviceId": db.id if db else None,
                    "lastSeen": 0, "discovered": None, "ports": set(), "protocols": set(),
                    "firstDeviceAddress": a, "secondDeviceAddress": b,
                }
            ent["lastSeen"] = max(ent["lastSeen"], int(c.last_seen * 1000))
            first = int(c.first_seen * 1000)
            ent["discovered"] = first if ent["discovered"] is None else min(ent["discovered"],
                                                                             first)
            ent["ports"] |= c.ports
            ent["protocols"].add(PROTO_NAMES.get(c.proto, str(c.proto)))
            for port in c.ports:
                name = SERVICE_NAMES.get((c.proto, port))
                if name:
                    ent["protocols"].add(name)
        out = []
        for ent in pairs.values():
            ent["ports"] = sorted(ent["ports"])
            ent["protocols"] = [{"name": n, "commands": []} for n in sorted(ent["protocols"])]
            out.append(ent)
        out.sort(key=lambda e: (e["discovered"] or 0, e["firstDeviceAddress"]))
        return out

    def summary(self) -> dict[str, Any]:
        return {"packets": self.packets, "malformed": self.malformed,
                "devices": len(self.devices), "connections": len(self.connections),
                "alerts": len(self.alerts), "withheld_policy_alerts": self.withheld,
                "learning_mode": self.learning}


# ---- helpers -----------------------------------------------------------------------------

def _short_list(items: list[Any], limit: int = 20) -> str:
    text = ", ".join(str(i) for i in items[:limit])
    if len(items) > limit:
        text += f", ... ({len(items)} in all)"
    return text


def _subnet(ip: bytes, prefix: int) -> str:
    """The scanned subnet as text: the IPv4 prefix, or the IPv6 /64."""
    if len(ip) != 4:
        prefix = 64
    return str(ipaddress.ip_network((ipaddress.ip_address(ip), prefix), strict=False))


def _dedup_dst_from(a: Alert) -> str | None:
    for line in a.message.splitlines():
        if line.startswith("Scanned subnet: "):
            return line[len("Scanned subnet: "):]
    return None


def _var_value(var: str, p: tuple) -> int | None:
    kind = p[3]
    if var in ("ipv4.src", "ipv4.dst"):
        if kind != K_IPV4:
            return None
        return int.from_bytes(p[F_SIP] if var.endswith("src") else p[F_DIP], "big")
    if var in ("ipv6.src", "ipv6.dst"):
        if kind != K_IPV6:
            return None
        return int.from_bytes(p[F_SIP] if var.endswith("src") else p[F_DIP], "big")
    if var in ("tcp.srcport", "tcp.dstport"):
        if p[6] != 6:
            return None
        return p[F_SPORT] if var.endswith("srcport") else p[F_DPORT]
    if var in ("udp.srcport", "udp.dstport"):
        if p[6] != 17:
            return None
        return p[F_SPORT] if var.endswith("srcport") else p[F_DPORT]
    if var == "icmp.type":
        return p[F_SPORT] if p[6] in (1, 58) else None
    if var == "eth.src":
        return int.from_bytes(p[F_SMAC], "big")
    if var == "eth.dst":
        return int.from_bytes(p[F_DMAC], "big")
    if var == "vlan.id":
        return p[F_VLAN]
    return None


_OPS = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
        ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b}


def _rule_matches(r: LoadedRule, p: tuple) -> bool:
    if r.src_nets or r.dst_nets:
        if p[3] not in (K_IPV4, K_IPV6):
            return False
        sip = ipaddress.ip_address(p[F_SIP])
        dip = ipaddress.ip_address(p[F_DIP])
        if r.src_nets and not any(sip in n for n in r.src_nets if n.version == sip.version):
            return False
        if r.dst_nets and not any(dip in n for n in r.dst_nets if n.version == dip.version):
            return False
    for c in r.conditions:
        v = _var_value(c.var, p)
        if v is None or not _OPS[c.op](v, c.value):
            return False
    return True


def _render_message(template: str, p: tuple) -> str:
    def val(name: str) -> str:
        low = name.lower()
        if low in ("ipv4.src", "ipv6.src"):
            return ip_str(p[F_SIP])
        if low in ("ipv4.dst", "ipv6.dst"):
            return ip_str(p[F_DIP])
        if low in ("eth.src", "eth.dst"):
            return mac_str(p[F_SMAC] if low.endswith("src") else p[F_DMAC])
        v = _var_value(low, p)
        return "" if v is None else str(v)

    out = []
    i = 0
    while i < len(template):
        j = template.find("{", i)
        if j < 0:
            out.append(template[i:])
            break
        k = template.find("}", j)
        if k < 0:
            out.append(template[i:])
            break
        out.append(template[i:j])
        name = template[j + 1:k]
        out.append(val(name) if name else f"{ip_str(p[F_SIP])} -> {ip_str(p[F_DIP])}")
        i = k + 1
    return "".join(out)
