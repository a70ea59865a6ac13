"""Scan results as plain data, parsed from nmap XML with python-nmap.

python-nmap's ``PortScanner.analyse_nmap_xml_scan(xml)`` does the parsing; it is an
instance method but needs no nmap binary, so :func:`parse_nmap_xml` builds a parser-only
instance (``PortScanner()`` itself runs ``nmap -V`` and fails where nmap is only installed
on the remote Kali box). The dictionaries it returns are turned into small dataclasses that
serialise to JSON and SQLite the same way.
"""

from __future__ import annotations

import ipaddress
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


def _parser() -> Any:
    import nmap  # python-nmap, imported lazily (keeps `labctl --help` light)

    p = nmap.PortScanner.__new__(nmap.PortScanner)
    p._nmap_path = ""
    p._scan_result = {}
    p._nmap_version_number = 0
    p._nmap_subversion_number = 0
    p._nmap_last_output = ""
    return p


def parse_nmap_xml(xml: str, source: str = "nmap") -> tuple[dict[str, Any], list[HostResult]]:
    """Parse nmap ``-oX`` output into (run info, hosts sorted by address)."""
    import nmap

    if "<nmaprun" not in xml:
        raise LabctlError(f"{source} did not produce nmap XML",
                          hint="run with -v to see nmap's own messages")
    try:
        raw = _parser().analyse_nmap_xml_scan(xml)
    except nmap.PortScannerError as e:
        raise LabctlError(f"cannot parse the XML from {source}: {str(e)[:300]}") from None
    except AttributeError:
        # python-nmap reads <runstats>; nmap writes it only when the scan ran to the end.
        raise LabctlError(f"the XML from {source} is incomplete (nmap stopped before the end "
                          "of the scan)", hint="see nmap's message above; rerun with -v") from None
    hosts: list[HostResult] = []
    for addr, h in raw.get("scan", {}).items():
        addrs = h.get("addresses", {})
        mac = addrs.get("mac", "")
        status = h.get("status", {})
        host = HostResult(
            addr=addr, state=status.get("state", "unknown"), reason=status.get("reason", ""),
            ipv4=addrs.get("ipv4", ""), ipv6=addrs.get("ipv6", ""), mac=mac,
            vendor=h.get("vendor", {}).get(mac, ""),
            hostnames=[n["name"] for n in h.get("hostnames", []) if n.get("name")],
        )
        for proto in ("tcp", "udp", "sctp", "ip"):
            for port, p in sorted(h.get(proto, {}).items()):
                host.ports.append(PortResult(
                    port=int(port), proto=proto, state=p.get("state", ""),
                    reason=p.get("reason", ""), service=p.get("name", ""),
                    product=p.get("product", ""), version=p.get("version", ""),
                    extrainfo=p.get("extrainfo", ""), cpe=p.get("cpe", ""),
                    scripts=dict(p.get("script", {}) or {})))
        for s in h.get("hostscript", []) or []:
            host.hostscripts[s.get("id", "")] = s.get("output", "")
        hosts.append(host)
    hosts.sort(key=lambda x: _addr_key(x.addr))
    stats = raw.get("nmap", {}).get("scanstats", {})
    info = {"command_line": raw.get("nmap", {}).get("command_line", ""),
            "elapsed": float(stats.get("elapsed") or 0),
            "uphosts": int(stats.get("uphosts") or 0),
            "downhosts": int(stats.get("downhosts") or 0),
            "totalhosts": int(stats.get("totalhosts") or 0)}
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
