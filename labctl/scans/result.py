"""Scan results as plain data, parsed from nmap's XML (``-oX``) with ElementTree.

:func:`parse_nmap_xml` reads the few elements labctl uses straight into small dataclasses
that serialise to JSON and SQLite the same way. It needs no nmap binary, so XML that came
back from a remote Kali box over SSH parses the same as local output.
"""

from __future__ import annotations

import ipaddress
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from typing import Any

from labctl.core.errors import LabctlError


@dataclass
class PortResult:
    port: int
    proto: str
    state: str
    reason: str = ""
    service: str = ""
    product: str = ""
    version: str = ""
    extrainfo: str = ""
    cpe: str = ""
    scripts: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.port}/{self.proto}"

    @property
    def version_text(self) -> str:
        return " ".join(p for p in (self.product, self.version, self.extrainfo and
                                    f"({self.extrainfo})") if p)


@dataclass
class HostResult:
    addr: str
    state: str = "up"
    reason: str = ""
    ipv4: str = ""
    ipv6: str = ""
    mac: str = ""
    vendor: str = ""
    hostnames: list[str] = field(default_factory=list)
    ports: list[PortResult] = field(default_factory=list)
    hostscripts: dict[str, str] = field(default_factory=dict)

    def open_ports(self) -> list[PortResult]:
        return [p for p in self.ports if p.state == "open"]

    def port(self, port: int, proto: str = "tcp") -> PortResult | None:
        for p in self.ports:
            if p.port == port and p.proto == proto:
                return p
        return None


def _addr_key(addr: str) -> tuple[int, int]:
    try:
        a = ipaddress.ip_address(addr)
        return (a.version, int(a))
    except ValueError:
        return (9, 0)


@dataclass
class NmapRun:
    """One nmap invocation: the exact argv, when, and the raw XML."""

    argv: list[str]
    started: float
    ended: float
    xml: str
    stderr: str = ""
    returncode: int = 0


_ENTITY_DECL = re.compile(r"<!ENTITY\b")


def _attr(el: ET.Element | None, name: str) -> str:
    return (el.get(name) or "") if el is not None else ""


def _parse_port(el: ET.Element) -> PortResult:
    state = el.find("state")
    svc = el.find("service")
    # nmap lists the service's CPEs first, then the OS's; the value kept is the last
    # <cpe> text, as python-nmap kept it, so saved histories stay comparable.
    cpes = [c.text or "" for c in svc.findall("cpe")] if svc is not None else []
    return PortResult(
        port=int(el.get("portid") or 0), proto=el.get("protocol") or "",
        state=_attr(state, "state"), reason=_attr(state, "reason"),
        service=_attr(svc, "name"), product=_attr(svc, "product"),
        version=_attr(svc, "version"), extrainfo=_attr(svc, "extrainfo"),
        cpe=cpes[-1] if cpes else "",
        scripts={s.get("id") or "": s.get("output") or "" for s in el.findall("script")})


_PROTOS = ("tcp", "udp", "sctp", "ip")


def _parse_host(el: ET.Element) -> HostResult:
    addrs: dict[str, str] = {}
    vendors: dict[str, str] = {}
    for a in el.findall("address"):
        kind, value = a.get("addrtype") or "", a.get("addr") or ""
        addrs[kind] = value
        if kind == "mac" and a.get("vendor"):
            vendors[value] = a.get("vendor") or ""
    first = el.find("address")
    key = addrs.get("ipv4") or _attr(first, "addr")
    status = el.findall("status")
    mac = addrs.get("mac", "")
    host = HostResult(
        addr=key, state=_attr(status[-1], "state") if status else "unknown",
        reason=_attr(status[-1], "reason") if status else "",
        ipv4=addrs.get("ipv4", ""), ipv6=addrs.get("ipv6", ""), mac=mac,
        vendor=vendors.get(mac, ""),
        hostnames=[n.get("name") or "" for n in el.findall("hostnames/hostname")
                   if n.get("name")])
    ports: dict[tuple[str, int], PortResult] = {}
    for p in el.findall("ports/port"):
        port = _parse_port(p)
        if port.proto in _PROTOS:
            ports[(port.proto, port.port)] = port  # a repeated port: the last one counts
    host.ports = sorted(ports.values(), key=lambda p: (_PROTOS.index(p.proto), p.port))
    for s in el.findall("hostscript/script"):
        host.hostscripts[s.get("id") or ""] = s.get("output") or ""
    return host


def _number(el: ET.Element, name: str, kind: type[float] | type[int]) -> float | int:
    try:
        return kind(el.get(name) or 0)
    except ValueError:
        return kind(0)


def parse_nmap_xml(xml: str, source: str = "nmap") -> tuple[dict[str, Any], list[HostResult]]:
    """Parse nmap ``-oX`` output into (run info, hosts sorted by address).

    The reader follows nmap's DTD (``nmap.dtd``): ``nmaprun`` holds ``host`` elements
    (``status``, ``address``, ``hostnames/hostname``, ``ports/port`` with ``state``,
    ``service`` and its ``cpe``, ``script``; ``hostscript/script``) and ends with
    ``runstats`` (``finished``, ``hosts``), which nmap writes only when a scan ran to the
    end. A host is keyed by its IPv4 address, else its first address. nmap declares no
    entities, so a document that declares any is refused before parsing: entity expansion
    is the way XML is made to eat memory.
    """
    if "<nmaprun" not in xml:
        raise LabctlError(f"{source} did not produce nmap XML",
                          hint="run with -v to see nmap's own messages")
    if _ENTITY_DECL.search(xml):
        raise LabctlError(f"the XML from {source} declares entities, which nmap never does; "
                          "refusing to parse it")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise LabctlError(f"cannot parse the XML from {source}: {str(e)[:300]}") from None
    if root.tag != "nmaprun":
        raise LabctlError(f"cannot parse the XML from {source}: the root element is "
                          f"<{root.tag}>, not <nmaprun>")
    finished, counts = root.find("runstats/finished"), root.find("runstats/hosts")
    if finished is None or counts is None:
        raise LabctlError(f"the XML from {source} is incomplete (nmap stopped before the end "
                          "of the scan)", hint="see nmap's message above; rerun with -v")
    by_addr: dict[str, HostResult] = {}
    for el in root.findall("host"):
        host = _parse_host(el)
        by_addr[host.addr] = host
    hosts = sorted(by_addr.values(), key=lambda x: _addr_key(x.addr))
    info: dict[str, Any] = {
        "command_line": root.get("args") or "",
        "elapsed": float(_number(finished, "elapsed", float)),
        "uphosts": int(_number(counts, "up", int)),
        "downhosts": int(_number(counts, "down", int)),
        "totalhosts": int(_number(counts, "total", int)),
    }
    return info, hosts


@dataclass
class ScanResult:
    """What ``run_scan`` returns; ``to_dict()`` is the ``--json`` document."""

    lab: str
    scanner: str
    profile: str
    targets: list[str]
    excludes: list[str]
    started: float
    ended: float
    hosts: list[HostResult] = field(default_factory=list)
    runs: list[NmapRun] = field(default_factory=list)
    id: int | None = None
    xml_paths: list[str] = field(default_factory=list)
    deviations: list[dict[str, Any]] | None = None  # from --baseline
    baseline: str | None = None

    @property
    def argv(self) -> list[list[str]]:
        return [r.argv for r in self.runs]

    def host(self, addr: str) -> HostResult | None:
        for h in self.hosts:
            if h.addr == addr:
                return h
        return None

    def up_hosts(self) -> list[HostResult]:
        return [h for h in self.hosts if h.state == "up"]

    def open_ports(self) -> dict[str, list[str]]:
        """``{addr: ["22/tcp", ...]}`` for hosts that are up."""
        return {h.addr: [p.key for p in h.open_ports()] for h in self.up_hosts()}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id, "lab": self.lab, "scanner": self.scanner, "profile": self.profile,
            "targets": self.targets, "excludes": self.excludes, "started": self.started,
            "ended": self.ended, "duration": round(self.ended - self.started, 3),
            "argv": self.argv, "xml": self.xml_paths,
            "hosts": [asdict(h) for h in self.hosts],
        }
        if self.baseline is not None:
            d["baseline"] = self.baseline
            d["deviations"] = self.deviations or []
        return d
