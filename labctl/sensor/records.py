"""The embedded sensor's in-memory records: devices, connections, alerts and events.

Why plain mutable dataclasses: the engine updates them in place on the per-packet path (a
device's last-seen stamp, a connection's ports, an alert's repeat count), and the store
persists them as JSON rows (``to_row`` / ``from_row``). Their D4IoT API projection lives in
:mod:`labctl.sensor.api`; the vendor-neutral records a driver returns live in
:mod:`labctl.sensor.base`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: (title, source address, destination or scanned subnet): alerts with the same key inside
#: the engine's dedup window are counted as repeats of one alert
DedupKey = tuple[str, str | None, str | None]


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
    #: the D4IoT device ``type``: ``Unknown`` for a device of the lab, ``Internet`` for an
    #: internet endpoint, ``Multicast/Broadcast`` for a group address (values from the
    #: "Supported type values" list of sensor-inventory-apis.md)
    kind: str = "Unknown"

    @property
    def external(self) -> bool:
        """An endpoint record (internet or group address), not a device of the lab."""
        return self.kind != "Unknown"

    def to_row(self) -> dict[str, Any]:
        return {"id": self.id, "ip": self.ip, "mac": self.mac, "vendor": self.vendor,
                "first_seen": self.first_seen, "last_seen": self.last_seen,
                "vlans": sorted(self.vlans), "protocols": sorted(self.protocols),
                "ports": sorted(self.ports), "scanner": self.scanner,
                "authorized": self.authorized, "kind": self.kind}

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> Device:
        """Read a stored row; rows written before ``kind`` existed are lab devices."""
        return cls(id=r["id"], ip=r["ip"], mac=r["mac"], vendor=r["vendor"],
                   first_seen=r["first_seen"], last_seen=r["last_seen"], vlans=set(r["vlans"]),
                   protocols=set(r["protocols"]), ports=set(r["ports"]),
                   scanner=r["scanner"], authorized=r["authorized"],
                   kind=r.get("kind") or "Unknown")


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
    def from_row(cls, r: dict[str, Any]) -> Connection:
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
    #: the key repeats are deduplicated on; None for alerts that are never deduplicated
    #: (Operational). Persisted, so a restarted sensor keeps deduplicating.
    dedup_key: DedupKey | None = None

    def to_row(self) -> dict[str, Any]:
        return {"id": self.id, "time": self.time, "title": self.title, "message": self.message,
                "severity": self.severity, "engine": self.engine,
                "source_device": self.source_device,
                "destination_device": self.destination_device,
                "source_address": self.source_address,
                "destination_address": self.destination_address,
                "remediation": self.remediation, "description": self.description,
                "information": self.information, "handled": self.handled,
                "last_time": self.last_time, "count": self.count,
                "dedup_key": list(self.dedup_key) if self.dedup_key is not None else None}

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> Alert:
        """Read a stored row; rows written before ``dedup_key`` existed lack that key."""
        row = dict(r)
        key = row.pop("dedup_key", None)
        alert = cls(**row)
        if key is not None:
            alert.dedup_key = (str(key[0]), key[1], key[2])
        return alert


@dataclass
class Event:
    seq: int
    timestamp: int  # epoch ms
    type: str
    title: str
    severity: str  # INFO | NOTICE | ALERT
    content: str
    #: who created the event by hand; null for every event the sensor detects itself
    #: (sensor-alert-apis.md: "owner ... Nullable ... If the event was created manually")
    owner: str | None = None

    def to_row(self) -> dict[str, Any]:
        return {"seq": self.seq, "timestamp": self.timestamp, "type": self.type,
                "title": self.title, "severity": self.severity, "content": self.content,
                "owner": self.owner}

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> Event:
        """Read a stored row; older rows stored the detected events' owner as ``""``."""
        row = dict(r)
        row["owner"] = row.get("owner") or None
        return cls(**row)


# ---- flows ---------------------------------------------------------------------------------

#: a flow direction's key: (source address, destination address, source port, destination
#: port, IP protocol, VLAN). Addresses are raw bytes; ports are stored byte-swapped (as a
#: little-endian read of the wire gives them, which is what the fused pcap loop reads) or -1
#: for a protocol without ports
FlowKey = tuple[bytes, bytes, int, int, int, int]

# indexes of a flow direction (a plain list: the per-packet path updates it in place)
D_PK = 0  # packets
D_BY = 1  # wire bytes
D_LAST = 2  # timestamp (s) of the direction's last packet
D_STAMP = 3  # the engine's tick stamp when last touched (a changed stamp: minute or flush)
D_FLOW = 4  # the FlowRecord
D_MIN = 5  # the epoch minute being counted, or None
D_BASE = 6  # packets before that minute began
D_HITS = 7  # cached rule-dedup cells for this direction, or None (not known / not cacheable)
D_DEV = 8  # the lab Device that sends in this direction, or None


def swap16(v: int) -> int:
    """A port as the byte-swapped value the flow keys hold (-1 stays -1)."""
    return ((v & 0xFF) << 8) | (v >> 8) if v >= 0 else -1


def reverse_key(k: FlowKey) -> FlowKey:
    return (k[1], k[0], k[3], k[2], k[4], k[5])


class FlowRecord:
    """One bidirectional flow: ``src`` opened it; ``out`` counts src -> dst, ``inn`` the
    other way. Times are seconds; rows and the API carry epoch milliseconds."""

    __slots__ = ("id", "seq", "sport", "dport", "first", "out", "inn", "minutes", "key",
                 "stored", "prev", "nxt")

    def __init__(self, id: int, key: FlowKey, sport: int, dport: int, first: float) -> None:  # noqa: A002
        self.id = id
        self.seq = 0
        self.key = key
        self.sport = sport
        self.dport = dport
        self.first = first
        self.out: list[Any] = [0, 0, 0.0, None, self, None, 0, None, None]
        self.inn: list[Any] = [0, 0, 0.0, None, self, None, 0, None, None]
        #: epoch minute -> packets, for the minutes before each direction's current one
        #: (None until there is one: most flows live less than a minute)
        self.minutes: dict[int, int] | None = None
        #: written to the store at least once (so an eviction deletes its row)
        self.stored = False
        #: the neighbours in the engine's least-recently-seen order (see lru_ring)
        self.prev: FlowRecord | None = None
        self.nxt: FlowRecord | None = None

    @property
    def src(self) -> bytes:
        return self.key[0]

    @property
    def dst(self) -> bytes:
        return self.key[1]

    @property
    def proto(self) -> int:
        return self.key[4]

    @property
    def vlan(self) -> int:
        return self.key[5]

    @property
    def last(self) -> float:
        return float(max(self.out[D_LAST], self.inn[D_LAST], self.first))

    def minute_counts(self, lo: int) -> dict[int, int]:
        """Packets per epoch minute, both directions, minutes after ``lo`` only."""
        out = {m: n for m, n in (self.minutes or {}).items() if m > lo}
        for d in (self.out, self.inn):
            m = d[D_MIN]
            if m is not None and m > lo:
                n = d[D_PK] - d[D_BASE]
                if n:
                    out[m] = out.get(m, 0) + n
        return dict(sorted(out.items()))

    def to_row(self, lo: int) -> dict[str, Any]:
        from labctl.sensor.parse import ip_str

        return {"id": self.id, "seq": self.seq, "vlan": self.vlan, "proto": self.proto,
                "src": ip_str(self.src), "sport": self.sport, "dst": ip_str(self.dst),
                "dport": self.dport, "packets_out": self.out[D_PK],
                "bytes_out": self.out[D_BY], "packets_in": self.inn[D_PK],
                "bytes_in": self.inn[D_BY], "first": int(self.first * 1000),
                "last": int(self.last * 1000),
                "last_out": int(self.out[D_LAST] * 1000),
                "last_in": int(self.inn[D_LAST] * 1000),
                "minutes": {str(m): n for m, n in self.minute_counts(lo).items()}}

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> FlowRecord:
        import ipaddress

        src = ipaddress.ip_address(r["src"]).packed
        dst = ipaddress.ip_address(r["dst"]).packed
        key: FlowKey = (src, dst, swap16(int(r["sport"])), swap16(int(r["dport"])),
                        int(r["proto"]), int(r["vlan"]))
        f = cls(int(r["id"]), key, int(r["sport"]), int(r["dport"]), r["first"] / 1000)
        f.seq = int(r["seq"])
        f.stored = True
        f.out[D_PK], f.out[D_BY] = int(r["packets_out"]), int(r["bytes_out"])
        f.inn[D_PK], f.inn[D_BY] = int(r["packets_in"]), int(r["bytes_in"])
        f.out[D_LAST] = r.get("last_out", r["last"] if f.out[D_PK] else 0) / 1000
        f.inn[D_LAST] = r.get("last_in", r["last"] if f.inn[D_PK] else 0) / 1000
        f.minutes = {int(m): int(n) for m, n in (r.get("minutes") or {}).items()} or None
        return f


# ---- the least-recently-seen order of the flows ----------------------------------------
#
# A ring of the records themselves (their prev and nxt slots) around a sentinel record that
# is no flow: the oldest is ring.nxt, the newest ring.prev. Why not an OrderedDict: in a
# scan every packet makes a flow and evicts the oldest, and an OrderedDict pays a hash
# look-up, a node and sometimes a resize of its own for each; relinking two records costs
# none of that (the compiled loop relinks them the same way).

def lru_ring() -> FlowRecord:
    """A new, empty ring: its sentinel."""
    ring = FlowRecord(0, (b"", b"", -1, -1, 0, 0), -1, -1, 0.0)
    ring.prev = ring.nxt = ring
    return ring


def lru_append(ring: FlowRecord, f: FlowRecord) -> None:
    """Put ``f`` (in no ring) last: the most recently seen."""
    tail = ring.prev
    assert tail is not None
    f.prev, f.nxt = tail, ring
    tail.nxt = ring.prev = f


def lru_unlink(f: FlowRecord) -> None:
    """Take ``f`` out of its ring."""
    p, n = f.prev, f.nxt
    assert p is not None and n is not None
    p.nxt, n.prev = n, p
    f.prev = f.nxt = None
