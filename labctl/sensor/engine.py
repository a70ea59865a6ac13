"""The embedded passive sensor's engine: device inventory, connections, alerts, events.

One :class:`Sensor` consumes parsed packets (see :mod:`labctl.sensor.parse`) in time order and
keeps, in memory:

* the device inventory (keyed by IP; MAC, vendor from the OUI table, first/last seen,
  protocols, served ports, VLANs, scanner/authorized flags);
* connections (client IP, server IP, protocol; ports; first/last seen);
* alerts, deduplicated per (title, source, destination) inside ``dedup_seconds``;
* events (``ALERT_REPORTED``, ``DEVICE_CREATE``, ``DEVICE_CONNECTION_CREATED``, ``SCAN``,
  ``USER_DEFINED_RULE_OPERATION``).

Its parts live beside it: the records (:mod:`labctl.sensor.records`), the OUI table
(:mod:`labctl.sensor.oui`), the sliding windows (:mod:`labctl.sensor.windows`), the rule
language (:mod:`labctl.sensor.rules`), the fused per-packet loops
(:mod:`labctl.sensor.fastpath`, beside the pcap reader) and the D4IoT projection of the
records (:mod:`labctl.sensor.api`).

Why the shape of the hot path: :meth:`Sensor.process` runs once per packet, so it does only
dict look-ups and stores on raw ``bytes`` keys; strings, sets and alerts are built only when
something new happens (a new device, a new conversation, a threshold crossed).

Times are the packets' own timestamps (seconds), so a replayed pcap yields the same alerts
as the live capture did. Alert ``time`` values are epoch milliseconds, as in the D4IoT API.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from labctl.core.errors import UsageError
from labctl.sensor import fastpath
from labctl.sensor.config import Detection, LoadedRule, SensorConfig, normalize_address
from labctl.sensor.oui import OuiTable, default_oui
from labctl.sensor.parse import (
    F_DIP,
    F_DPORT,
    F_PROTO,
    F_SIP,
    F_SMAC,
    F_SPORT,
    F_VLAN,
    K_ARP,
    K_IPV4,
    K_IPV6,
    Parsed,
    ip_str,
    mac_str,
    parse_frame,
)
from labctl.sensor.records import (
    D_BASE,
    D_DEV,
    D_FLOW,
    D_LAST,
    D_MIN,
    D_PK,
    D_STAMP,
    Alert,
    Connection,
    DedupKey,
    Device,
    Event,
    FlowKey,
    FlowRecord,
    lru_append,
    lru_ring,
    lru_unlink,
    reverse_key,
)
from labctl.sensor.rules import RuleIndex, render_message, rule_matches
from labctl.sensor.windows import DistinctWindow, RateWindow

if TYPE_CHECKING:
    import mmap

    from labctl.sensor.pcap import CaptureFile

__all__ = ["MAX_EVENTS", "PROTO_NAMES", "SERVICE_NAMES", "Alert", "Connection", "Device",
           "Event", "OuiTable", "Sensor", "default_oui"]

Row = dict[str, Any]


#: (IP protocol, port) -> protocol name. Names on the sensor's documented list are spelled as
#: there (sensor-inventory-apis.md, ms.date 06/27/2022, "protocol name values": MODBUS,
#: BACNet, Siemens S7, MDNS, DNP3, EtherNet/IP, SNMP, SMB, FTP, Telnet, SSH, HTTP, DNS).
#: The others (SMTP, DHCP, NTP, SSDP, MQTT, IRC, HTTPS, CASTV2) are not on that list; labctl
#: names them by their usual names rather than hiding them as GENERIC.
SERVICE_NAMES = {
    (6, 20): "FTP", (6, 21): "FTP", (6, 22): "SSH", (6, 23): "Telnet", (6, 25): "SMTP",
    (17, 53): "DNS", (6, 53): "DNS", (17, 67): "DHCP", (17, 68): "DHCP", (6, 80): "HTTP",
    (17, 123): "NTP", (17, 161): "SNMP", (6, 443): "HTTPS", (6, 445): "SMB",
    (6, 502): "MODBUS", (6, 102): "Siemens S7", (17, 1900): "SSDP", (6, 1883): "MQTT",
    (17, 5353): "MDNS", (6, 6667): "IRC", (6, 6668): "IRC", (6, 8008): "HTTP",
    (6, 8009): "CASTV2", (6, 8443): "HTTPS", (6, 20000): "DNP3", (6, 44818): "EtherNet/IP",
    (17, 47808): "BACNet",
}
PROTO_NAMES = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6"}
MAX_PORTS_PER_CONNECTION = 256
MAX_EVENTS = 20000
#: endpoint records (internet and group addresses) the inventory keeps at most; later ones
#: are left out of the inventory (their connections then carry a null device id)
MAX_EXTERNAL = 65536
INTERNET = "Internet"
GROUP = "Multicast/Broadcast"


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
        #: endpoint records of addresses that are not lab devices (internet, group
        #: addresses), made when a connection or an alert names them; they are in
        #: ``devices`` too, so /api/v1/devices and the connections' ids agree
        self.external: dict[bytes, Device] = {}
        self.connections: dict[tuple[str, str, int], Connection] = {}
        self.alerts: list[Alert] = []
        self._alert_by_id: dict[int, Alert] = {}
        self.events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._next_device = 1
        self._next_alert = 1
        self._next_event = 1
        self._dedup: dict[DedupKey, Alert] = {}

        # per-packet touch maps, folded into the records at flush time
        self.dev_seen: dict[bytes, float] = {}
        self.udp_flows: dict[tuple[bytes, bytes, int], float] = {}
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
        self._port_scan: DistinctWindow[tuple[bytes, bytes], int] | None = \
            _distinct(d.port_scan)
        self._addr_scan: DistinctWindow[tuple[bytes, bytes], bytes] | None = \
            _distinct(d.address_scan)
        self._addr_prefix_bytes = max(1, (d.address_scan.prefix or 16) // 8)
        self._port0_on = d.port_zero.enabled
        self._internet_on = d.internet.enabled
        self._arp_scan: DistinctWindow[bytes, bytes] | None = _distinct(d.arp_scan)
        self._icmp_flood: RateWindow[tuple[bytes, bytes]] | None = _rate(d.icmp_flood)
        self._sessions: RateWindow[bytes] | None = _rate(d.excessive_sessions)
        self._dos: RateWindow[bytes] | None = _rate(d.dos)

        # user-defined rules, indexed by (protocol, destination port) where possible
        self.rules = RuleIndex(config.rules)
        self._rules_port = self.rules.by_port
        self._rules_any = self.rules.any
        self._has_rules = self.rules.has_rules
        self._rule_dets: dict[int, Detection] = {}
        #: a rule match whose dedup entry is known can be settled from the flow direction's
        #: cached cells (see _rule_cells) when no rule reads what a flow key does not fix
        self._rules_cacheable = self._has_rules and not self._rules_any and all(
            r.rule.action == "alert" and not any(c.var.startswith("eth.") for c in r.conditions)
            for r in config.rules)
        #: dedup key -> [the alert _dedup holds for it], shared by the flow directions
        self._cells: dict[DedupKey, list[Alert | None]] = {}
        self._ip_texts: dict[bytes, str] = {}

        # flows (see the flow store section below)
        fl = eng.flows
        self.flow_max = fl.max_flows
        self.flow_age = fl.max_age_days * 86400.0
        self.flow_window = fl.minute_window
        #: by flow id. Keyed by the id, not the direction key: ids are consecutive
        #: integers, so a new flow's entry and the oldest flow's sit in memory the engine
        #: touched just before (no cache miss per flow)
        self.flows: dict[int, FlowRecord] = {}
        #: the flows least recently seen first (records.lru_ring: oldest _lru.nxt)
        self._lru = lru_ring()
        self.flow_dirs: dict[FlowKey, list[Any]] = {}  # direction key -> direction
        #: opener's direction key -> flow, for the flows whose opening direction is not in
        #: flow_dirs (none of its packets went through process: a flow first seen by its
        #: SYN-ACK, restored so, or whose UDP directions were dropped). With flow_dirs it
        #: finds every flow by its key: usually empty
        self.unseen_flows: dict[FlowKey, FlowRecord] = {}
        self.dirty_flows: dict[int, FlowRecord] = {}
        self.evicted_flows: list[int] = []
        self.flow_seq = 0
        self._next_flow = 1
        self._fminute = 0
        #: (minute start, minute end, stamp): a packet outside the minute, or a flush,
        #: makes a new stamp; a direction whose stamp differs takes the slow touch
        self.flow_tick: tuple[float, float, object] = (float("inf"), float("-inf"), object())

        self.listeners: list[Callable[[Alert], None]] = []

    # ---- hot path --------------------------------------------------------------------

    def process(self, p: Parsed, ts: float, wire: int = 0, key: FlowKey | None = None
                ) -> None:
        """Account one parsed packet (a :func:`~labctl.sensor.parse.parse_frame` tuple) of
        ``wire`` bytes on the wire. ``key``: its flow direction key, when the caller (the
        fused loop) has it already."""
        self.packets += 1
        self.last_ts = ts
        kind = p[3]  # literal indexes (F_KIND...): no global look-ups per packet
        if kind == K_IPV4 or kind == K_IPV6:
            sip = p[4]
            dev = self.by_ip.get(sip)
            if dev is None:
                dev = self._new_device(sip, p[F_SMAC], p[F_VLAN], ts)
            proto = p[6]
            ft = self.flow_tick
            if ts >= ft[1] or ts < ft[0]:
                self._flow_tick(ts)
            if key is None:
                sp = p[7]
                if sp >= 0 and (proto == 6 or proto == 17):
                    dp = p[8]
                    key = (sip, p[5], ((sp & 0xFF) << 8) | (sp >> 8),
                           ((dp & 0xFF) << 8) | (dp >> 8), proto, p[0])
                else:
                    key = (sip, p[5], -1, -1, proto, p[0])
            d = self.flow_dirs.get(key)
            if d is None:
                d = self._flow_direction(key, p, ts, dev)
            d[0] += 1
            d[1] += wire
            d[2] = ts
            if d[3] is not self.flow_tick[2]:
                self._flow_touch(d)
            if proto == 6:
                flags = p[9]
                if flags & 0x12 == 0x02:  # SYN without ACK: a connection attempt
                    self._attempt(p, ts, 6)
                elif flags & 0x12 == 0x12:  # SYN-ACK: a service answered
                    self._answered(p, ts, dev)
                if self._has_rules and (self._rules_any or p[8] in self._rules_port[6]):
                    if d[7] is None and self._rules_cacheable:
                        d[7] = self._rule_cells(p, 6)
                    self._rules(p, ts, 6)
            elif proto == 17:
                ukey = (sip, p[5], p[8])
                if ukey not in self.udp_flows:
                    self.udp_flows[ukey] = ts
                    self._attempt(p, ts, 17)
                if self._has_rules and (self._rules_any or p[8] in self._rules_port[17]):
                    if d[7] is None and self._rules_cacheable:
                        d[7] = self._rule_cells(p, 17)
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
        self.process(p, ts, length)

    def feed_batch(self, batch: Sequence[tuple[bytes, float]]) -> None:
        """Process captured frames (serve's loop); see :func:`labctl.sensor.fastpath.feed_batch`."""
        fastpath.feed_batch(self, batch)

    def replay(self, capture: CaptureFile, data: bytes | mmap.mmap) -> int:
        """Process every record of a capture file; see :func:`labctl.sensor.fastpath.replay`."""
        return fastpath.replay(self, capture, data)

    # ---- per-conversation work (off the per-packet path) -----------------------------

    def _attempt(self, p: Parsed, ts: float, proto: int) -> None:
        sip, dip, dport = p[F_SIP], p[F_DIP], p[F_DPORT]
        tcpudp = proto == 6 or proto == 17
        if tcpudp and dport == 0 and self._port0_on:
            self._raise(self.det.port_zero, ts, sip, dip,
                        lambda: f"A connection attempt to port 0 ({PROTO_NAMES[proto]}) was "
                                f"detected from {ip_str(sip)} to {ip_str(dip)}. "
                                f"Port 0 is reserved.")
        scanner = None  # computed lazily
        if tcpudp and self._port_scan is not None:
            w = self._port_scan
            wk = (sip, dip)
            items = w.keys.get(wk)
            if items is not None and len(items) + 1 < w.threshold:
                items[dport] = ts  # below the threshold whatever: what add() does, inline
                hit = None
            else:
                hit = w.add(wk, dport, ts)
            if hit:
                scanner = self._is_scanner(sip, p[F_SMAC])
                if not scanner:
                    # (the texts are built only for a new alert, not for its repeats)
                    new = self._raise(
                        self.det.port_scan, ts, sip, dip,
                        lambda: f"Port scan detected.\nScanning address: {ip_str(sip)}\n"
                                f"Scanned address: {ip_str(dip)}\n"
                                f"Scanned ports: {_short_list(sorted(hit))}\n"
                                f"The source hasn't been authorized as a network scanning "
                                f"device.",
                        info=lambda: [f"{len(hit)} ports in "
                                      f"{int(self.det.port_scan.window_seconds or 0)} seconds"])
                    if new:
                        self._scan_event(sip, ts)
        if self._addr_scan is not None:
            # IPv4: the configured prefix (/16, "class B"); IPv6: the /64 (one LAN segment)
            nb = self._addr_prefix_bytes if len(dip) == 4 else 8
            wa = self._addr_scan
            ak = (sip, dip[:nb])
            addrs_seen = wa.keys.get(ak)
            if addrs_seen is not None and len(addrs_seen) + 1 < wa.threshold:
                addrs_seen[dip] = ts
                hit_a = None
            else:
                hit_a = wa.add(ak, dip, ts)
            if hit_a:
                if scanner is None:
                    scanner = self._is_scanner(sip, p[F_SMAC])
                if not scanner:
                    subnet = _subnet(dip, self.det.address_scan.prefix or 16)
                    addrs = sorted(hit_a)
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
                q = self._sessions.keys.get(sip)
                if q is not None and len(q) + 1 < self._sessions.threshold:
                    q.append(ts)
                    n = 0
                else:
                    n = self._sessions.add(sip, ts)
                if n:
                    win = self._sessions.window
                    self._raise(self.det.excessive_sessions, ts, sip, None,
                                lambda: f"Excessive number of sessions: {ip_str(sip)} opened "
                                        f"{n} TCP sessions within "
                                        f"{int(win)} seconds.")
            if self._dos is not None:
                q = self._dos.keys.get(dip)
                if q is not None and len(q) + 1 < self._dos.threshold:
                    q.append(ts)
                    n2 = 0
                else:
                    n2 = self._dos.add(dip, ts)
                if n2:
                    win = self._dos.window
                    self._raise(self.det.dos, ts, None, dip,
                                lambda: f"Suspicion of denial of service: {ip_str(dip)} "
                                        f"received {n2} connection attempts within "
                                        f"{int(win)} seconds.")
        elif (proto == 1 or proto == 58) and self._icmp_flood is not None:
            n3 = self._icmp_flood.add((sip, dip), ts)
            if n3:
                win = self._icmp_flood.window
                self._raise(self.det.icmp_flood, ts, sip, dip,
                            lambda: f"ICMP flooding: {ip_str(sip)} sent {n3} ICMP echo "
                                    f"requests to {ip_str(dip)} within "
                                    f"{int(win)} seconds.")
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

    def _answered(self, p: Parsed, ts: float, dev: Device | bool) -> None:
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
            for end in (client, server):
                if not isinstance(self.by_ip.get(end), Device):
                    self._endpoint(end, ts)
            self._event(ts, "DEVICE_CONNECTION_CREATED", "Device Connection Detected", "INFO",
                        f"New connection {key[0]} -> {key[1]} ({PROTO_NAMES.get(proto, proto)})")
        c.last_seen = ts
        if port is not None and port not in c.ports and len(c.ports) < MAX_PORTS_PER_CONNECTION:
            c.ports.add(port)
        self.dirty_connections.add(key)

    def _arp(self, p: Parsed, ts: float) -> None:
        spa, tpa, op = p[F_SIP], p[F_DIP], p[F_PROTO]
        if spa != b"\x00\x00\x00\x00":
            dev = self.by_ip.get(spa)
            if dev is None:
                dev = self._new_device(spa, p[F_SMAC], p[F_VLAN], ts)
            if isinstance(dev, Device):
                self.dev_seen[spa] = ts
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

    def _rule_cells(self, p: Parsed, proto: int) -> tuple[list[Alert | None], ...]:
        """The dedup cells of the rules that match ``p``'s flow direction. Only alert rules
        that read no MAC address are cached (``_rules_cacheable``), so whether a rule
        matches depends only on what the direction key fixes (addresses, ports, protocol,
        VLAN); a later packet of the direction then costs one look-up per matching rule."""
        cells = []
        for r in self.rules.candidates(p, proto):
            if rule_matches(r, p):
                key: DedupKey = (r.rule.name, ip_str(p[F_SIP]), ip_str(p[F_DIP]))
                c = self._cells.get(key)
                if c is None:
                    c = self._cells[key] = [self._dedup.get(key)]
                cells.append(c)
        return tuple(cells)

    def _set_dedup(self, key: DedupKey, alert: Alert) -> None:
        self._dedup[key] = alert
        c = self._cells.get(key)
        if c is not None:
            c[0] = alert

    def _rules(self, p: Parsed, ts: float, proto: int) -> None:
        for r in self.rules.candidates(p, proto):
            if rule_matches(r, p):
                self._rule_fire(r, p, ts)

    def _rule_fire(self, r: LoadedRule, p: Parsed, ts: float) -> None:
        """A rule matched. Heavy matching traffic (a pet feeder's IRC) mostly lands in the
        dedup window, so the message is rendered only for a new alert or event."""
        if r.rule.action == "event":
            key = (f"event:{r.rule.name}", ip_str(p[F_SIP]), ip_str(p[F_DIP]))
            prev = self._dedup.get(key)
            ms = int(ts * 1000)
            if prev is not None and ms - prev.last_time < self.dedup_ms:
                prev.last_time = ms
                return
            msg = render_message(r.rule.message or r.rule.name, p)
            self._set_dedup(key, Alert(0, ms, r.rule.name, msg, r.rule.severity, r.rule.engine,
                                       None, None, None, None, [], last_time=ms))
            # the documented title of this type; the rule's name leads the content
            self._event(ts, "USER_DEFINED_RULE_OPERATION", "User Defined Rule Operation",
                        "NOTICE", f"{r.rule.name}: {msg}")
            return
        det = self._rule_dets.get(id(r))
        if det is None:
            det = self._rule_dets[id(r)] = Detection(
                title=r.rule.name, engine=r.rule.engine, severity=r.rule.severity,
                remediation=[f"Review the custom rule {r.rule.name!r} ({r.file})."])
        self._raise(det, ts, p[F_SIP], p[F_DIP],
                    lambda: render_message(r.rule.message or r.rule.name, p), user_rule=True,
                    info=[f"User-defined rule: {r.rule.name}"])

    # ---- the flow store --------------------------------------------------------------
    #
    # A flow has two directions (lists, see labctl.sensor.records D_*), each found by its own
    # key in flow_dirs, so a packet costs one look-up whichever way it goes. A direction is
    # in flow_dirs only once a packet of it went through process (its source is resolved),
    # which is what lets the fast paths skip the device look-up. Per packet a direction
    # gets packets, bytes and last-seen; everything else (the per-minute counts, the dirty
    # mark, the LRU order) happens in _flow_touch, when the direction's stamp differs from
    # the engine's: once per direction per minute of traffic and per flush.

    def _flow_tick(self, ts: float) -> None:
        """A packet outside the current minute: a new stamp, and drop flows past their age."""
        m = int(ts // 60)
        self._fminute = m
        self.flow_tick = (m * 60.0, m * 60.0 + 60.0, object())
        cutoff = ts - self.flow_age
        ring = self._lru
        while True:
            f = ring.nxt
            assert f is not None
            if f is ring or f.last >= cutoff:
                break
            self._evict(f)

    def _flow_touch(self, d: list[Any]) -> None:
        m = self._fminute
        om = d[D_MIN]
        if om != m:
            if om is not None:
                n = d[D_PK] - 1 - d[D_BASE]
                if n:
                    f0: FlowRecord = d[D_FLOW]
                    mins = f0.minutes
                    if mins is None:
                        mins = f0.minutes = {}
                    mins[om] = mins.get(om, 0) + n
                    if len(mins) > self.flow_window:
                        lo = m - self.flow_window
                        f0.minutes = {k: v for k, v in mins.items() if k > lo}
            d[D_MIN] = m
            d[D_BASE] = d[D_PK] - 1
        f: FlowRecord = d[D_FLOW]
        self.dirty_flows[f.id] = f
        ring = self._lru
        if ring.prev is not f:  # move it last: the most recently seen
            lru_unlink(f)
            lru_append(ring, f)
        d[D_STAMP] = self.flow_tick[2]

    def syn_state(self) -> tuple[Any, ...]:
        """What the fused loop reads to settle a SYN itself (see fastpath._replay_pcap):
        the windows' key maps and the room below each threshold (None: off)."""
        def keys(w: Any) -> Any:
            return None if w is None else w.keys

        def room(w: Any) -> int:
            return 0 if w is None else w.threshold - 1

        return (self.by_ip, self._port0_on, keys(self._port_scan), room(self._port_scan),
                keys(self._addr_scan), room(self._addr_scan), self._addr_prefix_bytes,
                keys(self._sessions), room(self._sessions), keys(self._dos),
                room(self._dos), self._internet_on, self._global, self._syn_flow)

    def _syn_flow(self, key: FlowKey, ts: float, dev: Device | bool) -> list[Any]:
        """A new flow opened by a SYN whose direction and reverse are both unknown."""
        flows = self.flows
        if len(flows) >= self.flow_max:
            self._evict(self._oldest())
        sp, dp = key[2], key[3]
        f = FlowRecord(self._next_flow, key, (sp & 0xFF) << 8 | sp >> 8,
                       (dp & 0xFF) << 8 | dp >> 8, ts)
        self._next_flow += 1
        flows[f.id] = f
        lru_append(self._lru, f)
        self.dirty_flows[f.id] = f
        d = f.out
        d[D_MIN] = self._fminute
        d[D_STAMP] = self.flow_tick[2]
        d[D_DEV] = dev if dev is not False else None
        self.flow_dirs[key] = d
        return d

    def _flow_direction(self, key: FlowKey, p: Parsed, ts: float,
                        dev: Device | bool) -> list[Any]:
        """The direction of ``key`` (not in flow_dirs): of a known flow, or of a new one
        (which may evict the least recently seen flow)."""
        unseen = self.unseen_flows
        f = unseen.pop(key, None) if unseen else None
        if f is not None:  # the opener's direction, seen now
            d = f.out
        else:
            rk = reverse_key(key)
            r = self.flow_dirs.get(rk)
            if r is None and unseen:
                f = unseen.get(rk)
                r = None if f is None else f.out
            if r is not None:
                # (r is its flow's out: were it the in, ``key`` would be the out's key,
                # found in flow_dirs or unseen_flows)
                f = r[D_FLOW]
                d = f.inn if r is f.out else f.out
            else:
                flows = self.flows
                while len(flows) >= self.flow_max:
                    self._evict(self._oldest())
                ported = key[2] >= 0
                if p[6] == 6 and p[9] & 0x12 == 0x12:
                    # the first packet seen is a SYN-ACK: its receiver sent the SYN
                    f = FlowRecord(self._next_flow, rk, p[8] if ported else -1,
                                   p[7] if ported else -1, ts)
                    d = f.inn
                    unseen[rk] = f
                else:
                    f = FlowRecord(self._next_flow, key, p[7] if ported else -1,
                                   p[8] if ported else -1, ts)
                    d = f.out
                self._next_flow += 1
                flows[f.id] = f
                lru_append(self._lru, f)  # last already: no touch needed
                self.dirty_flows[f.id] = f
                d[D_MIN] = self._fminute
                d[D_STAMP] = self.flow_tick[2]
        d[D_DEV] = dev if isinstance(dev, Device) else None
        self.flow_dirs[key] = d
        return d

    def _oldest(self) -> FlowRecord:
        f = self._lru.nxt
        assert f is not None and f is not self._lru
        return f

    def _evict(self, f: FlowRecord) -> None:
        """Drop ``f``.

        A direction key maps to one flow only (a new flow is made only when neither its
        key nor the reverse is known), so popping the keys cannot drop another flow's."""
        key = f.key
        del self.flows[f.id]
        lru_unlink(f)
        fd = self.flow_dirs
        d = f.out
        if d[D_PK]:
            fd.pop(key, None)
            dev = d[D_DEV]
            if dev is not None and d[D_LAST] > dev.last_seen:
                dev.last_seen = d[D_LAST]
                self.dirty_devices.add(dev.id)
        if self.unseen_flows:
            self.unseen_flows.pop(key, None)
        d[D_FLOW] = None  # no reference cycle left: freed without the garbage collector
        d = f.inn
        if d[D_PK]:
            fd.pop((key[1], key[0], key[3], key[2], key[4], key[5]), None)
            dev = d[D_DEV]
            if dev is not None and d[D_LAST] > dev.last_seen:
                dev.last_seen = d[D_LAST]
                self.dirty_devices.add(dev.id)
        d[D_FLOW] = None
        self.dirty_flows.pop(f.id, None)
        if f.stored:
            self.evicted_flows.append(f.id)

    def flow_rows(self) -> list[Row]:
        """Every flow in memory as a row (seq order), for replay and tests."""
        lo = self._fminute - self.flow_window
        return [f.to_row(lo) for f in sorted(self.flows.values(), key=lambda f: (f.seq, f.id))]

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

    def _endpoint(self, ip: bytes, ts: float) -> Device | None:
        """The endpoint record of an internet or group address (made on first mention);
        None for any other address that is not a lab device, or past MAX_EXTERNAL."""
        dev = self.external.get(ip)
        if dev is not None:
            return dev
        if ip == b"\xff\xff\xff\xff" or (len(ip) == 4 and 224 <= ip[0] < 240) or \
                (len(ip) == 16 and ip[0] == 0xFF):
            kind = GROUP
        elif self._is_global(ip):
            kind = INTERNET
        else:
            return None
        if len(self.external) >= MAX_EXTERNAL:
            return None
        ip_text = ip_str(ip)
        dev = Device(id=self._next_device, ip=ip_text, mac=None, vendor=None, first_seen=ts,
                     last_seen=ts, authorized=self.learning, kind=kind)
        self._next_device += 1
        self.devices[dev.id] = dev
        self.external[ip] = dev
        self.dirty_devices.add(dev.id)
        self._event(ts, "DEVICE_CREATE", "Device Detected", "INFO",
                    f"New {kind} endpoint {ip_text}")
        return dev

    def _device_id(self, ip: bytes | None, ts: float) -> int | None:
        """The device id an alert names for ``ip``: a lab device or an endpoint record."""
        if not ip:
            return None
        d = self.by_ip.get(ip)
        if isinstance(d, Device):
            return d.id
        e = self._endpoint(ip, ts)
        return e.id if e is not None else None

    def _ip_text(self, ip: bytes) -> str:
        """``ip_str(ip)``, kept in ``_ip_texts`` (an alert's repeats need its addresses'
        texts for its dedup key; bounded, emptied when full)."""
        texts = self._ip_texts
        if len(texts) >= 65536:
            texts.clear()
        t = texts[ip] = ip_str(ip)
        return t

    def _is_scanner(self, ip: bytes, mac: bytes) -> bool:
        dev = self.by_ip.get(ip)
        if isinstance(dev, Device) and dev.scanner:
            return True
        if not self.scanners:  # none authorized (the default): no text to build
            return False
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
        texts = self._ip_texts
        src_a = src_text or ((texts.get(src) or self._ip_text(src)) if src else None)
        dst_a = (texts.get(dst) or self._ip_text(dst)) if dst else None
        key: DedupKey = (det.title, src_a, dedup_dst or dst_a)
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
        alert = Alert(
            id=self._next_alert, time=ms, title=det.title, message=message,
            severity=det.severity, engine=det.engine,
            source_device=self._device_id(src, ts),
            destination_device=self._device_id(dst, ts),
            source_address=src_a, destination_address=dst_a,
            remediation=list(det.remediation), description=det.title,
            information=list(info or []), last_time=ms, dedup_key=key if dedup else None)
        self._next_alert += 1
        self.alerts.append(alert)
        self._alert_by_id[alert.id] = alert
        if dedup:
            self._set_dedup(key, alert)
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
        for ip, ts in self.dev_seen.items():
            dev = self.by_ip.get(ip)
            if isinstance(dev, Device) and ts > dev.last_seen:
                dev.last_seen = ts
                self.dirty_devices.add(dev.id)
        self.dev_seen.clear()
        # IP traffic refreshes its senders through their flows' directions
        for f in self.dirty_flows.values():
            for d in (f.out, f.inn):
                dev = d[D_DEV]
                if dev is not None and d[D_PK] and d[D_LAST] > dev.last_seen:
                    dev.last_seen = d[D_LAST]
                    self.dirty_devices.add(dev.id)
        # bound the caches a long-running sensor keeps (an internet-wide scan would
        # otherwise grow them without limit)
        if len(self.udp_flows) > 200_000:
            cutoff = now - 600
            self.udp_flows = {k: t for k, t in self.udp_flows.items() if t >= cutoff}
            # a UDP direction skips the known-flow check only while its flow is known: make
            # every UDP direction pass through process once more. (TCP directions stay: the
            # fused loop's SYN branch relies on a known TCP flow having a known direction.)
            fd = self.flow_dirs
            for k in [k for k in fd if k[4] == 17]:
                d = fd.pop(k)
                f = d[D_FLOW]
                if d is f.out:  # its flow is found by its key still
                    self.unseen_flows[k] = f
        if len(self._global) > 500_000:
            self._global.clear()
        if len(self.by_ip) - len(self.devices) > 500_000:
            self.by_ip = {k: v for k, v in self.by_ip.items() if v is not False}

    def prune(self, now: float) -> None:
        for w in (self._port_scan, self._addr_scan, self._arp_scan, self._icmp_flood,
                  self._sessions, self._dos):
            if w is not None:
                w.prune(now)

    def take_dirty(self) -> tuple[list[Row], list[Row], list[Row], list[Row], list[Row],
                                  dict[str, Any]]:
        """Rows changed since the last call (for the SQLite writer); call under ``lock``.

        The fifth item is the changed flows, each with a new ``seq``; the sixth the flow
        store's bookkeeping (``deleted`` flow ids, the last ``seq`` and the next flow id)."""
        self.fold(self.last_ts)
        lo = self._fminute - self.flow_window
        flows = []
        for f in self.dirty_flows.values():
            self.flow_seq += 1
            f.seq = self.flow_seq
            f.stored = True
            flows.append(f.to_row(lo))
        self.dirty_flows = {}
        # a new stamp: the next packet of every direction marks its flow changed again
        t = self.flow_tick
        self.flow_tick = (t[0], t[1], object())
        flow_meta = {"deleted": self.evicted_flows, "seq": self.flow_seq,
                     "next_id": self._next_flow,
                     "max_age_ms": int(self.flow_age * 1000), "max_flows": self.flow_max}
        self.evicted_flows = []
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
        return devs, conns, alerts, events, flows, flow_meta

    def restore(self, devices: list[Row], connections: list[Row], alerts: list[Row],
                events: list[Row], flows: list[Row] | None = None,
                flow_meta: dict[str, Any] | None = None) -> None:
        """Load persisted state (after a restart); flows continue their counters."""
        for r in devices:
            d = Device.from_row(r)
            self.devices[d.id] = d
            try:
                packed = ipaddress.ip_address(d.ip).packed
            except ValueError:
                packed = None
            if packed is not None:
                if d.external:
                    self.external[packed] = d
                    self.by_ip.setdefault(packed, False)
                else:
                    self.by_ip[packed] = d
            self._next_device = max(self._next_device, d.id + 1)
        for r in connections:
            c = Connection.from_row(r)
            self.connections[(c.client, c.server, c.proto)] = c
        for r in alerts:
            a = Alert.from_row(r)
            self.alerts.append(a)
            self._alert_by_id[a.id] = a
            self._next_alert = max(self._next_alert, a.id + 1)
            if a.dedup_key is not None:
                self._set_dedup(a.dedup_key, a)
            elif "dedup_key" not in r and a.engine != "Operational":
                # a row stored before alerts carried their key: rebuild it
                a.dedup_key = (a.title, a.source_address,
                               a.destination_address or _legacy_dedup_dst(a))
                self._set_dedup(a.dedup_key, a)
        # the scanner flag follows the configuration in force, not the one a device was
        # first seen under (a scanner authorized later shows scanner: true at once)
        for d in self.devices.values():
            flag = d.ip in self.scanners or (d.mac or "-") in self.scanners
            if not d.external and d.scanner != flag:
                d.scanner = flag
                self.dirty_devices.add(d.id)
        self.alerts.sort(key=lambda a: a.id)
        for r in events:
            e = Event.from_row(r)
            self.events.append(e)
            self._next_event = max(self._next_event, e.seq + 1)
        meta = flow_meta or {}
        self.flow_seq = max(self.flow_seq, int(meta.get("seq", 0)))
        self._next_flow = max(self._next_flow, int(meta.get("next_id", 1)))
        for r in sorted(flows or [], key=lambda r: (r["last"], r["id"])):
            f = FlowRecord.from_row(r)
            if f.key in self.flow_dirs or f.key in self.unseen_flows:
                continue
            while len(self.flows) >= self.flow_max:
                self._evict(self._oldest())
            self.flows[f.id] = f
            lru_append(self._lru, f)
            if not f.out[D_PK]:
                self.unseen_flows[f.key] = f
            self.flow_seq = max(self.flow_seq, f.seq)
            self._next_flow = max(self._next_flow, f.id + 1)
            for dr, k in ((f.out, f.key), (f.inn, reverse_key(f.key))):
                if dr[D_PK]:  # its sender went through process before the restart
                    sender = self.by_ip.get(k[0])
                    dr[D_DEV] = sender if isinstance(sender, Device) else None
                    self.flow_dirs[k] = dr

    # ---- views -----------------------------------------------------------------------

    def device_by_ip(self, ip: str) -> Device | None:
        """The lab device or endpoint record of ``ip``, if there is one."""
        try:
            packed = ipaddress.ip_address(ip).packed
        except ValueError:
            return None
        d = self.by_ip.get(packed)
        return d if isinstance(d, Device) else self.external.get(packed)

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


def _legacy_dedup_dst(a: Alert) -> str | None:
    """The scanned subnet of an address-scan alert stored without its dedup key."""
    for line in a.message.splitlines():
        if line.startswith("Scanned subnet: "):
            return line[len("Scanned subnet: "):]
    return None



def _distinct(det: Detection) -> DistinctWindow[Any, Any] | None:
    return DistinctWindow(det.threshold, det.window_seconds) if det.enabled else None


def _rate(det: Detection) -> RateWindow[Any] | None:
    return RateWindow(det.threshold, det.window_seconds) if det.enabled else None
