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
