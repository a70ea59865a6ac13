"""Sensor configuration: detection engines (``sensor/engines.yaml``) and user-defined rules.

Why a data file: the real D4IoT sensor lets an admin turn each alert on or off and (for some)
change thresholds; the embedded sensor mirrors that in YAML with defaults taken from
Microsoft's alert reference (see the comments in ``sensor/engines.yaml``). Every file is
loaded through :func:`labctl.core.yamlfile.load_yaml` so a mistake names file, key and line.

User-defined rules mirror the sensor's *Custom alert rules* page: a name, a protocol, a
direction (source and/or destination subnets), AND-combined conditions such as
``TCP.dstport == 6667``, an action (alert or event), a severity and a message.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field, field_validator, model_validator

from labctl.core.assets import asset_path
from labctl.core.errors import ConfigError
from labctl.core.playbook.common import Model
from labctl.core.yamlfile import format_loc, load_yaml, validate

Severity = Literal["Warning", "Minor", "Major", "Critical"]
EngineName = Literal["Protocol Violation", "Policy Violation", "Malware", "Anomaly",
                     "Operational"]


class Detection(Model):
    """One built-in alert: on/off, what it is called and, where relevant, its threshold."""

    enabled: bool = True
    title: str
    engine: EngineName
    severity: Severity
    threshold: int | None = Field(default=None, ge=1)
    window_seconds: float | None = Field(default=None, gt=0)
    prefix: int | None = Field(default=None, ge=1, le=32)  # address scan: subnet size (/16)
    idle_seconds: float | None = Field(default=None, gt=0)  # no-traffic timer
    remediation: list[str] = Field(default_factory=list)


class Detections(Model):
    port_scan: Detection
    address_scan: Detection
    arp_scan: Detection
    icmp_flood: Detection
    port_zero: Detection
    excessive_sessions: Detection
    dos: Detection
    new_asset: Detection
    internet: Detection
    no_traffic: Detection
    traffic_resumed: Detection

    @model_validator(mode="after")
    def _need_thresholds(self) -> Detections:
        for name in ("port_scan", "address_scan", "arp_scan", "icmp_flood",
                     "excessive_sessions", "dos"):
            d: Detection = getattr(self, name)
            if d.threshold is None or d.window_seconds is None:
                raise ValueError(f"{name} needs threshold and window_seconds")
        if self.no_traffic.idle_seconds is None:
            raise ValueError("no_traffic needs idle_seconds")
        return self


class FlowStore(Model):
    """The flow store's bounds (``flows:`` in engines.yaml)."""

    #: a flow not seen for this long is dropped (from memory and from the store)
    max_age_days: float = Field(default=7.0, gt=0, le=3650)
    #: flows kept at most; past it the least recently seen goes
    max_flows: int = Field(default=100_000, ge=1, le=10_000_000)
    #: per-minute packet counts kept per flow, in minutes back from the newest packet
    minute_window: int = Field(default=1440, ge=1, le=525_600)


class EnginesFile(Model):
    learning_mode: bool = True
    dedup_seconds: float = Field(default=600, ge=0)
    authorized_scanners: list[str] = Field(default_factory=list)
    rules: list[str] = Field(default_factory=lambda: ["rules/*.yaml"])
    flows: FlowStore = Field(default_factory=FlowStore)
    detections: Detections

    @field_validator("authorized_scanners")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        return [normalize_address(item) for item in v]


def normalize_address(item: str) -> str:
    """An IP (canonical text) or a MAC (lower case, colons); ValueError otherwise."""
    item = str(item).strip()
    if _MAC_RE.match(item):
        return item.lower().replace("-", ":")
    try:
        return str(ipaddress.ip_address(item))
    except ValueError:
        raise ValueError(f"{item!r} is neither an IP nor a MAC address") from None


# ---- user-defined rules -----------------------------------------------------------------

_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")
COND_RE = re.compile(r"^\s*([A-Za-z0-9]+)\.([A-Za-z]+)\s*(==|!=|<=|>=|<|>)\s*(\S+)\s*$")

# variable -> (protocols it applies to, kind)
VARIABLES: dict[str, tuple[frozenset[str], str]] = {
    "ipv4.src": (frozenset({"IPv4", "TCP", "UDP", "ICMP"}), "ip"),
    "ipv4.dst": (frozenset({"IPv4", "TCP", "UDP", "ICMP"}), "ip"),
    "ipv6.src": (frozenset({"IPv6", "TCP", "UDP", "ICMP"}), "ip6"),
    "ipv6.dst": (frozenset({"IPv6", "TCP", "UDP", "ICMP"}), "ip6"),
    "tcp.srcport": (frozenset({"TCP"}), "port"),
    "tcp.dstport": (frozenset({"TCP"}), "port"),
    "udp.srcport": (frozenset({"UDP"}), "port"),
    "udp.dstport": (frozenset({"UDP"}), "port"),
    "icmp.type": (frozenset({"ICMP"}), "byte"),
    "eth.src": (frozenset({"IPv4", "IPv6", "TCP", "UDP", "ICMP", "ARP"}), "mac"),
    "eth.dst": (frozenset({"IPv4", "IPv6", "TCP", "UDP", "ICMP", "ARP"}), "mac"),
    "vlan.id": (frozenset({"IPv4", "IPv6", "TCP", "UDP", "ICMP", "ARP"}), "vlan"),
}


class Direction(Model):
    source: list[str] = Field(default_factory=list)
    destination: list[str] = Field(default_factory=list)

    @field_validator("source", "destination")
    @classmethod
    def _nets(cls, v: list[str]) -> list[str]:
        out = []
        for item in v:
            try:
                out.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or subnet") from None
        return out


class Rule(Model):
    name: str = Field(min_length=1)
    enabled: bool = True
    protocol: Literal["TCP", "UDP", "ICMP", "IPv4", "IPv6", "ARP"]
    direction: Direction = Field(default_factory=Direction)
    conditions: list[str] = Field(default_factory=list)
    action: Literal["alert", "event"] = "alert"
    severity: Severity = "Major"
    engine: EngineName = "Policy Violation"
    message: str = ""

    @field_validator("conditions")
    @classmethod
    def _check_conditions(cls, v: list[str], info: Any) -> list[str]:
        protocol = info.data.get("protocol")
        if protocol is None:
            return v
        for i, c in enumerate(v):
            parse_condition(c, protocol, where=f"condition {i + 1}")
        return v


class RulesFile(Model):
    rules: list[Rule]


@dataclass(frozen=True)
class Condition:
    var: str
    op: str
    value: int


def parse_condition(text: str, protocol: str, where: str = "") -> Condition:
    m = COND_RE.match(text)
    if not m:
        raise ValueError(f"{where}: {text!r} is not `VARIABLE OP VALUE` (e.g. TCP.dstport == 6667)")
    var = f"{m.group(1)}.{m.group(2)}".lower()
    if var not in VARIABLES:
        raise ValueError(f"{where}: unknown variable {m.group(1)}.{m.group(2)}; known: "
                         + ", ".join(sorted(VARIABLES)))
    protos, kind = VARIABLES[var]
    if protocol not in protos:
        raise ValueError(f"{where}: {m.group(1)}.{m.group(2)} cannot be used in a {protocol} rule")
    raw = m.group(4)
    try:
        if kind in ("ip", "ip6"):
            # the sensor UI wants IPs in decimal; dotted notation is accepted too
            value = int(raw) if raw.isdigit() else int(ipaddress.ip_address(raw))
        elif kind == "mac":
            value = int(raw) if raw.isdigit() else int(raw.replace(":", "").replace("-", ""), 16)
        else:
            value = int(raw, 0)
    except ValueError:
        raise ValueError(f"{where}: {raw!r} is not a valid value for {var}") from None
    limits = {"port": 65535, "byte": 255, "vlan": 4095, "ip": 2**32 - 1, "ip6": 2**128 - 1,
              "mac": 2**48 - 1}
    if not 0 <= value <= limits[kind]:
        raise ValueError(f"{where}: {raw} is out of range for {var}")
    return Condition(var, m.group(3), value)


@dataclass
class LoadedRule:
    """A rule ready for the hot path."""

    rule: Rule
    file: str
    conditions: list[Condition]
    dstport_eq: int | None  # index key when the rule pins the destination port
    src_nets: list[Any] = field(default_factory=list)
    dst_nets: list[Any] = field(default_factory=list)


@dataclass
class SensorConfig:
    engines: EnginesFile
    path: str
    rules: list[LoadedRule]

    @property
    def detections(self) -> Detections:
        return self.engines.detections


def load_rules_file(path: str | Path) -> list[LoadedRule]:
    doc = load_yaml(path)
    if not isinstance(doc.data, dict) or "rules" not in doc.data:
        raise ConfigError("a rules file needs a top-level `rules:` list", file=str(path),
                          line=doc.line_of(()), key="rules")
    model = validate(RulesFile, doc)
    out = []
    for r in model.rules:
        if not r.enabled:
            continue
        conds = [parse_condition(c, r.protocol) for c in r.conditions]
        eq = next((c.value for c in conds if c.op == "==" and c.var.endswith(".dstport")), None)
        out.append(LoadedRule(
            rule=r, file=str(path), conditions=conds, dstport_eq=eq,
            src_nets=[ipaddress.ip_network(n) for n in r.direction.source],
            dst_nets=[ipaddress.ip_network(n) for n in r.direction.destination]))
    return out


def default_config_path() -> Path:
    return asset_path("sensor", "engines.yaml")


def load_config(path: str | Path | None = None, *, extra_rules: list[str] | None = None
                ) -> SensorConfig:
    """Load ``engines.yaml`` (the shipped one by default) and the rule files it names.

    Rule globs are relative to the engines file's folder.
    """
    p = Path(path) if path else default_config_path()
    doc = load_yaml(p)
    engines = validate(EnginesFile, doc)
    rules: list[LoadedRule] = []
    patterns = list(engines.rules) + list(extra_rules or [])
    for i, pattern in enumerate(patterns):
        full = pattern if Path(pattern).is_absolute() else str(p.parent / pattern)
        matches = sorted(glob.glob(full))
        if not matches and not glob.has_magic(full):
            raise ConfigError(f"rule file {pattern!r} not found", file=str(p),
                              key=format_loc(("rules", i)), line=doc.line_of(("rules", i)))
        for m in matches:
            rules.extend(load_rules_file(m))
    return SensorConfig(engines=engines, path=str(p), rules=rules)


# ---- the configuration the twin writes for its embedded sensor ----------------------------

class Override(Protocol):
    """What one playbook ``sensor.engines`` entry carries (all optional)."""

    @property
    def enabled(self) -> bool | None: ...
    @property
    def threshold(self) -> int | None: ...
    @property
    def window_seconds(self) -> float | None: ...


def effective_engines(overrides: Mapping[str, Override], *, learning_mode: bool,
                      authorized_scanners: Iterable[str],
                      base: str | Path | None = None) -> dict[str, Any]:
    """``base`` (the shipped engines.yaml by default) with a playbook's sensor settings
    applied: each detection's ``enabled``/``threshold``/``window_seconds`` overrides,
    ``learning_mode`` and ``authorized_scanners``. Rule globs become absolute, so the
    document works from any folder. Validated as an engines file; an unknown detection
    key is a ConfigError naming it."""
    p = Path(base) if base else default_config_path()
    doc = load_yaml(p)
    data = copy.deepcopy(doc.data) if isinstance(doc.data, dict) else {}
    dets = data.get("detections")
    if not isinstance(dets, dict):
        raise ConfigError("an engines file needs a `detections:` mapping", file=str(p),
                          key="detections")
    for key, o in overrides.items():
        det = dets.get(key)
        if not isinstance(det, dict):
            raise ConfigError(f"unknown detection {key!r}", file=str(p),
                              key=f"detections.{key}",
                              hint="known: " + ", ".join(sorted(dets)))
        for name in ("enabled", "threshold", "window_seconds"):
            value = getattr(o, name)
            if value is not None:
                det[name] = value
    data["learning_mode"] = bool(learning_mode)
    data["authorized_scanners"] = [str(a) for a in authorized_scanners]
    data["rules"] = [r if Path(r).is_absolute() else str(p.parent / r)
                     for r in data.get("rules", ["rules/*.yaml"])]
    EnginesFile.model_validate(data)  # fail here, not in the started sensor
    return data


def render_engines(data: Mapping[str, Any], note: str = "") -> tuple[str, str]:
    """(YAML text, sha256 hex of it) of an engines document."""
    import yaml

    head = "# Written by labctl" + (f": {note}" if note else "") + ". Do not edit.\n"
    text = head + yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False)
    return text, hashlib.sha256(text.encode()).hexdigest()
