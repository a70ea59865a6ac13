"""The traffic report: per device, per conversation, per fleet, with flags.

Input is a list of directed flows (:class:`labctl.traffic.flows.FlowRecord`) plus what is
known about names (the playbook's twin devices, the sensor's inventory, DNS answers seen in
the capture). Output is one plain JSON-ready document (:func:`build_report`); the CLI renders
it as rich tables or HTML, ``--json`` prints it as is.

Who is the client of a flow: the sender of a TCP SYN without ACK; without a SYN (the capture
started mid-connection, UDP) the side with the higher port, and on equal ports the sender.
The other side's port is the *service port* that the report lists and flags.

Internal means a private, loopback or link-local unicast address (RFC 1918, RFC 4193, ...);
devices are the internal unicast addresses that sent traffic. Everything else is external
("traffic to the internet"), except multicast and broadcast, which are peers but never
internet.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from labctl.traffic.flows import FlowRecord
from labctl.traffic.periodicity import detect
from labctl.traffic.ports import PortInfo

PROTO_NAMES = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6"}
SPARK = "▁▂▃▄▅▆▇█"


def proto_name(proto: int) -> str:
    return PROTO_NAMES.get(proto, f"IP/{proto}")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def sparkline(values: list[int]) -> str:
    """One character per value; 0 is a space, the largest value is a full block."""
    top = max(values) if values else 0
    if top <= 0:
        return " " * len(values)
    return "".join(" " if v <= 0 else SPARK[min(7, (v * 8 - 1) // top)] for v in values)


#: internal address space: RFC 1918, shared CGNAT space (RFC 6598), loopback, link-local,
#: unique local IPv6 (RFC 4193). The documentation ranges (RFC 5737, RFC 3849), which
#: ``ipaddress`` calls private, are external: the twin's WAN uses them for the internet.
INTERNAL_NETS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8",
    "169.254.0.0/16", "::1/128", "fc00::/7", "fe80::/10"))


def classify(addr: str) -> str:
    """``internal``, ``external`` or ``multicast`` (multicast and broadcast)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return "external"
    if ip.is_multicast or addr == "255.255.255.255":
        return "multicast"
    if any(ip in n for n in INTERNAL_NETS if n.version == ip.version):
        return "internal"
    return "external"


@dataclass
class Names:
    """Names the report may use: device names by IP (playbook twin devices or the sensor's
    inventory), DNS names seen in the capture, MAC addresses and a vendor lookup."""

    devices: Mapping[str, str] = field(default_factory=dict)
    dns: Mapping[str, str] = field(default_factory=dict)
    macs: Mapping[str, str] = field(default_factory=dict)
    vendors: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Session:
    client: str
    server: str
    proto: int
    port: int | None
    pk_cs: int = 0
    by_cs: int = 0
    pk_sc: int = 0
    by_sc: int = 0
    first: float = float("inf")
    last: float = float("-inf")
    starts: list[float] = field(default_factory=list)
    #: the flows' own per-minute maps (not merged: the detector only needs the active
    #: minutes, read once, so the report holds no second copy of every flow's minutes)
    minute_maps: list[Mapping[int, int]] = field(default_factory=list)

    def active_minutes(self) -> Iterator[int]:
        for mm in self.minute_maps:
            yield from mm


def _sessions(flows: list[FlowRecord]) -> dict[tuple[str, str, int, int | None], _Session]:
    keys = {(f.vlan, f.src, f.dst, f.proto, f.sport, f.dport): f for f in flows}
    out: dict[tuple[str, str, int, int | None], _Session] = {}
    for f in flows:
        if f.sport < 0 or f.proto not in (6, 17):
            client, server, port, forward = f.src, f.dst, None, True
        else:
            rev = keys.get((f.vlan, f.dst, f.src, f.proto, f.dport, f.sport))
            if f.syn:
                forward = True
            elif rev is not None and rev.syn:
                forward = False
            elif f.sport != f.dport:
                forward = f.sport > f.dport
            else:
                forward = rev is None or f.first <= rev.first
            if forward:
                client, server, port = f.src, f.dst, f.dport
            else:
                client, server, port = f.dst, f.src, f.sport
        k = (client, server, f.proto, port)
        s = out.get(k)
        if s is None:
            s = out[k] = _Session(client, server, f.proto, port)
        if forward:
            s.pk_cs += f.packets
            s.by_cs += f.bytes
            s.starts.append(f.first)
        else:
            s.pk_sc += f.packets
            s.by_sc += f.bytes
        s.first = min(s.first, f.first)
        s.last = max(s.last, f.last)
        s.minute_maps.append(f.minutes)
    return out


def conversations(flows: Iterable[FlowRecord]) -> list[dict[str, Any]]:
    """One entry per IP pair (``a`` sorts before ``b``), packets and bytes each way."""
    pairs: dict[tuple[str, str], list[Any]] = {}
    for f in flows:
        a, b = sorted((f.src, f.dst), key=_ip_key)
        c = pairs.get((a, b))
        if c is None:
            c = pairs[(a, b)] = [0, 0, 0, 0, f.first, f.last]
        if f.src == a:
            c[0] += f.packets
            c[1] += f.bytes
        else:
            c[2] += f.packets
            c[3] += f.bytes
        c[4] = min(c[4], f.first)
        c[5] = max(c[5], f.last)
    out = []
    for (a, b), c in pairs.items():
        out.append({"a": a, "b": b, "packets_a_to_b": c[0], "bytes_a_to_b": c[1],
                    "packets_b_to_a": c[2], "bytes_b_to_a": c[3],
                    "packets": c[0] + c[2], "bytes": c[1] + c[3],
                    "first_seen": iso(c[4]), "last_seen": iso(c[5])})
    out.sort(key=lambda c: (-c["bytes"], _ip_key(c["a"]), _ip_key(c["b"])))
    return out


def _ip_key(addr: str) -> tuple[int, int]:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return (9, 0)
    return (ip.version, int(ip))


def _add_hours(h: list[int], minutes: Mapping[int, int]) -> None:
    """Add a flow's per-minute packets to 24 hour-of-day counters (UTC)."""
    for m, c in minutes.items():
        h[(m // 60) % 24] += c


def _service(port: int | None, proto: int, ports: Mapping[int, PortInfo]) -> PortInfo | None:
    if port is None:
        return None
    info = ports.get(port)
    return info if info is not None and info.applies(proto) else None


def build_report(flows: list[FlowRecord], names: Names, ports: Mapping[int, PortInfo], *,
                 previous: Mapping[str, Any] | None = None, device: str | None = None,
                 sources: Mapping[str, Any] | None = None, top: int = 10) -> dict[str, Any]:
    """The report document (see docs/traffic.md for every key).

    ``previous``: the ``baseline`` of the previous report of the same lab (device IP ->
    peers and ports), for the new-peer and new-port flags; None: this is the first report.
    ``device``: keep only the device with this IP, MAC or name.
    """
    sessions = _sessions(flows)
    devs: dict[str, dict[str, Any]] = {}

    def dev(ip: str) -> dict[str, Any]:
        d = devs.get(ip)
        if d is None:
            mac = names.macs.get(ip)
            d = devs[ip] = {
                "ip": ip, "mac": mac, "vendor": names.vendors.get(mac or ""),
                "name": names.devices.get(ip) or names.dns.get(ip),
                "packets_out": 0, "bytes_out": 0, "packets_in": 0, "bytes_in": 0,
                "first_seen": float("inf"), "last_seen": float("-inf"),
                "_peers": {}, "_ports": {}, "_hours": [0] * 24,
                "periodicity": [], "flags": [],
            }
        return d

    for f in flows:
        if classify(f.src) == "internal":
            d = dev(f.src)
            d["packets_out"] += f.packets
            d["bytes_out"] += f.bytes
            d["first_seen"] = min(d["first_seen"], f.first)
            d["last_seen"] = max(d["last_seen"], f.last)
            _add_hours(d["_hours"], f.minutes)
    for f in flows:  # receivers: only addresses that are devices (sent something)
        rd = devs.get(f.dst)
        if rd is not None:
            rd["packets_in"] += f.packets
            rd["bytes_in"] += f.bytes
            rd["first_seen"] = min(rd["first_seen"], f.first)
            rd["last_seen"] = max(rd["last_seen"], f.last)
            _add_hours(rd["_hours"], f.minutes)

    for s in sessions.values():
        for me, other, role in ((s.client, s.server, "client"), (s.server, s.client, "server")):
            md = devs.get(me)
            if md is None:
                continue
            d = md
            out_pk, out_by, in_pk, in_by = ((s.pk_cs, s.by_cs, s.pk_sc, s.by_sc)
                                            if role == "client"
                                            else (s.pk_sc, s.by_sc, s.pk_cs, s.by_cs))
            peer = d["_peers"].get(other)
            if peer is None:
                peer = d["_peers"][other] = {
                    "ip": other, "scope": classify(other), "name": names.devices.get(other)
                    or names.dns.get(other), "outbound": False,
                    "packets_out": 0, "bytes_out": 0, "packets_in": 0, "bytes_in": 0,
                    "ports": set()}
            peer["packets_out"] += out_pk
            peer["bytes_out"] += out_by
            peer["packets_in"] += in_pk
            peer["bytes_in"] += in_by
            if role == "client":
                peer["outbound"] = True
                if s.port is not None:
                    peer["ports"].add(f"{proto_name(s.proto).lower()}/{s.port}")
            pkey = (role, s.proto, s.port)
            pe = d["_ports"].get(pkey)
            if pe is None:
                info = _service(s.port, s.proto, ports)
                pe = d["_ports"][pkey] = {
                    "direction": "out" if role == "client" else "in",
                    "proto": proto_name(s.proto), "port": s.port,
                    "service": info.service if info else None,
                    "packets": 0, "bytes": 0, "peers": set(), "_info": info}
            pe["packets"] += s.pk_cs + s.pk_sc
            pe["bytes"] += s.by_cs + s.by_sc
            pe["peers"].add(other)
            if role == "client" and s.port is not None:
                p = detect(s.starts, s.active_minutes())
                if p is not None:
                    d["periodicity"].append({
                        "peer": other, "proto": proto_name(s.proto), "port": s.port,
                        **p.to_dict(),
                        "text": f"to {other}:{s.port} {p.describe()}"})

    baseline: dict[str, dict[str, list[str]]] = {}
    devices_out = []
    for ip, d in sorted(devs.items(), key=lambda kv: _ip_key(kv[0])):
        peers = sorted(d.pop("_peers").values(),
                       key=lambda p: (-(p["bytes_out"] + p["bytes_in"]), _ip_key(p["ip"])))
        for p in peers:
            p["ports"] = sorted(p["ports"])
        port_rows = sorted(d.pop("_ports").values(),
                           key=lambda p: (p["direction"], p["proto"], p["port"] or 0))
        flags: list[dict[str, Any]] = []
        for pr in port_rows:
            info = pr.pop("_info")
            pr["peers"] = sorted(pr["peers"], key=_ip_key)
            if pr["direction"] != "out" or pr["port"] is None:
                continue
            where = f"{pr['proto'].lower()}/{pr['port']}"
            if info is not None and info.flag:
                flags.append({"flag": info.flag, "port": pr["port"], "proto": pr["proto"],
                              "detail": f"{where} ({info.service}) to "
                                        + ", ".join(pr["peers"])})
            elif info is None:
                flags.append({"flag": "non-standard-port", "port": pr["port"],
                              "proto": pr["proto"],
                              "detail": f"{where} is not in the port list, to "
                                        + ", ".join(pr["peers"])})
            if info is not None and info.cleartext:
                flags.append({"flag": "cleartext", "port": pr["port"], "proto": pr["proto"],
                              "detail": f"{info.service} without TLS on {where} to "
                                        + ", ".join(pr["peers"])})
        ext = [p["ip"] for p in peers if p["scope"] == "external" and p["outbound"]]
        if ext:
            flags.append({"flag": "internet", "detail": "to " + ", ".join(ext)})
        peer_ips = [p["ip"] for p in peers]
        port_keys = sorted({f"{p['direction']}:{p['proto'].lower()}/{p['port']}"
                            for p in port_rows if p["port"] is not None})
        baseline[ip] = {"peers": peer_ips, "ports": port_keys}
        if previous is not None:
            before = previous.get(ip)
            if before is None:
                flags.append({"flag": "new-device", "detail": "not in the previous report"})
            else:
                new_peers = [p for p in peer_ips if p not in set(before.get("peers", []))]
                new_ports = [p for p in port_keys if p not in set(before.get("ports", []))]
                if new_peers:
                    flags.append({"flag": "new-peer", "peers": new_peers,
                                  "detail": "new since the previous report: "
                                            + ", ".join(new_peers)})
                if new_ports:
                    flags.append({"flag": "new-port", "ports": new_ports,
                                  "detail": "new since the previous report: "
                                            + ", ".join(new_ports)})
        hours = d.pop("_hours")
        d["first_seen"] = iso(d["first_seen"])
        d["last_seen"] = iso(d["last_seen"])
        d["peers"] = peers
        d["outbound"] = [p["ip"] for p in peers if p["outbound"]]
        d["ports"] = port_rows
        d["hours"] = hours
        d["sparkline"] = sparkline(hours)
        d["periodicity"].sort(key=lambda p: (_ip_key(p["peer"]), p["port"]))
        d["flags"] = flags
        devices_out.append(d)

    convs = conversations(flows)
    if device is not None:
        wanted = {d["ip"] for d in devices_out
                  if device in (d["ip"], d["mac"], d["name"])}
        if not wanted:
            from labctl.core.errors import UsageError

            raise UsageError(f"--device {device}: no such device in the traffic",
                             hint="give an IP, MAC or name shown by the full report")
        devices_out = [d for d in devices_out if d["ip"] in wanted]
        convs = [c for c in convs if c["a"] in wanted or c["b"] in wanted]

    return {
        "sources": dict(sources or {}),
        "devices": devices_out,
        "conversations": convs,
        "fleet": _fleet(devices_out, top),
        "baseline": baseline,
    }


def _fleet(devices: list[dict[str, Any]], top: int) -> dict[str, Any]:
    talkers = sorted(devices, key=lambda d: (-(d["bytes_out"] + d["bytes_in"]),
                                              _ip_key(d["ip"])))
    ext: dict[str, dict[str, Any]] = {}
    usage: dict[tuple[str, int], dict[str, Any]] = {}
    for d in devices:
        for p in d["peers"]:
            if p["scope"] == "external" and p["outbound"]:
                e = ext.setdefault(p["ip"], {"ip": p["ip"], "name": p["name"], "bytes": 0,
                                             "packets": 0, "devices": [], "ports": set()})
                e["bytes"] += p["bytes_out"] + p["bytes_in"]
                e["packets"] += p["packets_out"] + p["packets_in"]
                e["devices"].append(d["ip"])
                e["ports"].update(p["ports"])
        for pr in d["ports"]:
            if pr["direction"] != "out" or pr["port"] is None:
                continue
            u = usage.setdefault((pr["proto"], pr["port"]), {
                "proto": pr["proto"], "port": pr["port"], "service": pr["service"],
                "packets": 0, "bytes": 0, "devices": []})
            u["packets"] += pr["packets"]
            u["bytes"] += pr["bytes"]
            u["devices"].append(d["ip"])
    for e in ext.values():
        e["ports"] = sorted(e["ports"])
    return {
        "top_talkers": [{"ip": d["ip"], "name": d["name"],
                         "bytes": d["bytes_out"] + d["bytes_in"],
                         "packets": d["packets_out"] + d["packets_in"]}
                        for d in talkers[:top]],
        "top_external": sorted(ext.values(), key=lambda e: (-e["bytes"], _ip_key(e["ip"])))[:top],
        "ports": sorted(usage.values(), key=lambda u: (-u["bytes"], u["proto"], u["port"])),
        "matrix": {"hours": list(range(24)),
                   "rows": [{"ip": d["ip"], "name": d["name"], "hours": d["hours"]}
                            for d in devices]},
    }


#: what a sensor's devices/connections view cannot give (the report says so)
SENSOR_MISSING = ("packets and bytes in each direction", "first seen per peer",
                  "hour-of-day activity", "periodicity", "which side opened a connection",
                  "DNS names of peers")


def build_sensor_report(devices: list[Any], connections: list[Any], names: Names,
                        ports: Mapping[int, PortInfo], *, sources: Mapping[str, Any],
                        device: str | None = None, top: int = 10) -> dict[str, Any]:
    """The coarse report from a sensor's inventory (``labctl.sensor.base.Device``) and
    connections (``Connection``: device pair, ports, discovered, last seen), as a real
    Defender for IoT sensor gives them. Counters it lacks are None; ports are flagged from
    the port list for both protocols, since a connection's ports carry no protocol."""
    by_id = {d.id: d for d in devices}
    out: dict[str, dict[str, Any]] = {}

    def ip_of(dev: Any) -> str | None:
        return dev.ip_addresses[0] if dev is not None and dev.ip_addresses else None

    for d in devices:
        ip = ip_of(d)
        if ip is None or classify(ip) != "internal":
            continue
        mac = d.mac_addresses[0].lower() if d.mac_addresses else names.macs.get(ip)
        out[ip] = {"ip": ip, "mac": mac, "vendor": d.vendor or names.vendors.get(mac or ""),
                   "name": names.devices.get(ip) or d.name, "packets_out": None,
                   "bytes_out": None, "packets_in": None, "bytes_in": None,
                   "first_seen": None, "last_seen": None, "_peers": {}, "_ports": {},
                   "periodicity": [], "flags": [], "hours": None, "sparkline": None,
                   "protocols": sorted(d.protocols)}
    convs: dict[tuple[str, str], dict[str, Any]] = {}
    for c in connections:
        a, b = ip_of(by_id.get(c.first_device_id)), ip_of(by_id.get(c.second_device_id))
        if a is None or b is None:
            continue
        x, y = sorted((a, b), key=_ip_key)
        cv = convs.setdefault((x, y), {"a": x, "b": y, "packets_a_to_b": None,
                                        "bytes_a_to_b": None, "packets_b_to_a": None,
                                        "bytes_b_to_a": None, "packets": None,
                                        "bytes": None, "first_seen": None, "last_seen": None,
                                        "ports": set()})
        cv["ports"].update(c.ports)
        first = c.discovered / 1000 if c.discovered else None
        last = c.last_seen / 1000 if c.last_seen else None
        for me, other in ((a, b), (b, a)):
            d = out.get(me)
            if d is None:
                continue
            p = d["_peers"].setdefault(other, {
                "ip": other, "scope": classify(other), "name": names.devices.get(other),
                "outbound": None, "packets_out": None, "bytes_out": None,
                "packets_in": None, "bytes_in": None, "ports": set()})
            p["ports"].update(str(x) for x in c.ports)
            for port in c.ports:
                d["_ports"].setdefault(port, set()).add(other)
            for key, val, pick in (("first_seen", first, min), ("last_seen", last, max)):
                if val is not None:
                    d[key] = val if d[key] is None else pick(d[key], val)
        for key, val, pick in (("first_seen", first, min), ("last_seen", last, max)):
            if val is not None:
                cv[key] = val if cv[key] is None else pick(cv[key], val)
    devices_out = []
    for _ip, d in sorted(out.items(), key=lambda kv: _ip_key(kv[0])):
        peers = sorted(d.pop("_peers").values(), key=lambda p: _ip_key(p["ip"]))
        for p in peers:
            p["ports"] = sorted(p["ports"], key=int)
        port_rows = []
        for port, peer_ips in sorted(d.pop("_ports").items()):
            info = ports.get(port)
            plist = sorted(peer_ips, key=_ip_key)
            port_rows.append({"direction": None, "proto": None, "port": port,
                              "service": info.service if info else None, "packets": None,
                              "bytes": None, "peers": plist})
            if info is not None and info.flag:
                d["flags"].append({"flag": info.flag, "port": port, "proto": None,
                                   "detail": f"port {port} ({info.service}) with "
                                             + ", ".join(plist)})
            if info is not None and info.cleartext:
                d["flags"].append({"flag": "cleartext", "port": port, "proto": None,
                                   "detail": f"{info.service} on port {port} with "
                                             + ", ".join(plist)})
        ext = [p["ip"] for p in peers if p["scope"] == "external"]
        if ext:
            d["flags"].append({"flag": "internet", "detail": "with " + ", ".join(ext)})
        d["first_seen"], d["last_seen"] = iso(d["first_seen"]), iso(d["last_seen"])
        d["peers"], d["ports"] = peers, port_rows
        d["outbound"] = [p["ip"] for p in peers if p["scope"] == "external"]
        devices_out.append(d)
    conv_list = []
    for cv in sorted(convs.values(), key=lambda c: (_ip_key(c["a"]), _ip_key(c["b"]))):
        cv["ports"] = sorted(cv["ports"])
        cv["first_seen"], cv["last_seen"] = iso(cv["first_seen"]), iso(cv["last_seen"])
        conv_list.append(cv)
    if device is not None:
        wanted = {d["ip"] for d in devices_out if device in (d["ip"], d["mac"], d["name"])}
        if not wanted:
            from labctl.core.errors import UsageError

            raise UsageError(f"--device {device}: no such device in the sensor's inventory")
        devices_out = [d for d in devices_out if d["ip"] in wanted]
        conv_list = [c for c in conv_list if c["a"] in wanted or c["b"] in wanted]
    ext_rows: dict[str, dict[str, Any]] = {}
    for d in devices_out:
        for p in d["peers"]:
            if p["scope"] == "external":
                e = ext_rows.setdefault(p["ip"], {"ip": p["ip"], "name": p["name"],
                                                  "bytes": None, "packets": None,
                                                  "devices": [], "ports": set()})
                e["devices"].append(d["ip"])
                e["ports"].update(p["ports"])
    for e in ext_rows.values():
        e["ports"] = sorted(e["ports"], key=int)
    fleet = {"top_talkers": [], "top_external": sorted(ext_rows.values(),
                                                       key=lambda e: _ip_key(e["ip"]))[:top],
             "ports": [], "matrix": {"hours": list(range(24)), "rows": []}}
    return {"sources": {**sources, "missing": list(SENSOR_MISSING)}, "devices": devices_out,
            "conversations": conv_list, "fleet": fleet}
