"""The twin's desired state as data: what :func:`labctl.netns.topology.build` produces.

Mapping: the Hyper-V host is namespace ``<lab>-host`` holding one Linux bridge per vSwitch;
the router is ``<lab>-rtr`` (main LAN, IoT gateway, WAN, masquerade); the internet is
``<lab>-wan``; every VM, device and the scanner is a namespace of its own, joined to a
bridge by a veth pair created directly in the two namespaces (nothing touches the root
namespace). Link names fit 15 characters and are derived from list positions, so they are
short, unique and deterministic.

Mirroring: every port of a ``span_source`` bridge gets an ingress qdisc with
``u32 match u32 0 0 action mirred egress mirror dev <monitor port>``. The sensor's monitor
port is not a bridge member, so the bridge never floods into it and every frame crossing the
bridge is seen once (at the port where it enters).

Everything here is pure: no system calls except :func:`etc_netns_writable`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IFNAMSIZ = 15
NFT_TABLE = "labctl"  # the lab's own nftables table in the host and router namespaces
# `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf: the twin's
# processes get a resolver that fails at once instead of sending DNS queries (that die in the
# WAN namespace) and waiting for timeouts (HTTPServer's getfqdn, nmap's reverse lookups)
ETC_NETNS = "/etc/netns"
# no IPv6 in the twin: no router solicitations or MLD chatter on the mirrored segment
IPV6_OFF = {"net.ipv6.conf.all.disable_ipv6": "1",
            "net.ipv6.conf.default.disable_ipv6": "1"}


def etc_netns_writable() -> bool:
    """False on read-only /etc (some containers): then the twin leaves DNS alone."""
    probe = ETC_NETNS if os.path.isdir(ETC_NETNS) else os.path.dirname(ETC_NETNS)
    return os.access(probe, os.W_OK)


def resolv_conf(lab: str, servers: list[str] | tuple[str, ...] = ()) -> str:
    """The lab namespaces' resolv.conf: ``twin.dns_forwarders`` if given (they are reached
    through the twin's own routes, so queries never leave the lab), else 127.0.0.1, where
    nothing listens, so lookups fail at once."""
    lines = [f"# labctl twin lab {lab}: DNS stays inside the lab"]
    lines += [f"nameserver {a}" for a in (servers or ["127.0.0.1"])]
    lines.append("options timeout:1 attempts:1")
    return "\n".join(lines) + "\n"


def sanitize(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return s or "x"


def ifname(*parts: str) -> str:
    """A link name of at most 15 characters; callers put a unique index in the first part."""
    s = "-".join(sanitize(p) for p in parts if p)
    if len(s) <= IFNAMSIZ:
        return s
    digest = hashlib.sha1(s.encode()).hexdigest()[:4]
    return s[: IFNAMSIZ - 5].rstrip("-") + "-" + digest


@dataclass(frozen=True)
class Bridge:
    ns: str
    name: str
    switch: str
    addrs: tuple[str, ...] = ()
    vlan: int | None = None
    subnet: str | None = None
    span_source: bool = False


@dataclass(frozen=True)
class Veth:
    """A veth pair: end A (usually the bridge port in the host namespace) and end B."""

    a_ns: str
    a_name: str
    b_ns: str
    b_name: str
    a_master: str | None = None
    a_addrs: tuple[str, ...] = ()
    b_addrs: tuple[str, ...] = ()
    b_mac: str | None = None
    role: str = ""  # device | vm | scanner | router-iot | main-lan | wan | monitor
    # bridge port isolation: the router's AP isolation (isolated ports reach only the
    # non-isolated ones, i.e. the router, never each other)
    a_isolated: bool = False

    @property
    def key(self) -> str:
        return f"{self.a_ns}/{self.a_name}"


@dataclass(frozen=True)
class ExtraAddr:
    ns: str
    dev: str
    cidr: str


@dataclass(frozen=True)
class Route:
    ns: str
    dest: str  # "default" or a CIDR
    via: str


@dataclass(frozen=True)
class Mirror:
    ns: str
    port: str
    target: str
    switch: str


@dataclass(frozen=True)
class NftTable:
    ns: str
    family: str
    name: str
    body: str  # the table's chains and rules, one fingerprint comment on every rule

    @property
    def fingerprint(self) -> str:
        return "labctl:" + hashlib.sha1(self.body.encode()).hexdigest()[:12]

    def script(self) -> str:
        """nft -f input that (re)creates the table atomically."""
        body = self.body.replace("@FP@", self.fingerprint)
        return (f"table {self.family} {self.name}\n"
                f"delete table {self.family} {self.name}\n"
                f"table {self.family} {self.name} {{\n{body}}}\n")


@dataclass(frozen=True)
class Process:
    name: str  # unique within the lab: "persona-feeder1", "wan", "sensor", "router"
    ns: str
    argv: tuple[str, ...]
    kind: str
    # (address, TCP port) it listens on inside its namespace: `up` waits until it accepts,
    # so the stages after the provider (router API, sensor API) find it ready
    ready: tuple[str, int] | None = None


@dataclass
class Topology:
    lab: str
    namespaces: list[str] = field(default_factory=list)
    bridges: list[Bridge] = field(default_factory=list)
    veths: list[Veth] = field(default_factory=list)
    addrs: list[ExtraAddr] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    sysctls: dict[str, dict[str, str]] = field(default_factory=dict)
    mirrors: list[Mirror] = field(default_factory=list)
    nft: list[NftTable] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: files the processes read (path -> content), written by `up` before anything starts
    files: dict[Path, str] = field(default_factory=dict)
    # names for other helpers (scanner namespace, sensor namespace and interfaces)
    host_ns: str = ""
    router_ns: str = ""
    wan_ns: str = ""
    scanner_ns: str | None = None
    sensor_ns: str | None = None
    sensor_monitor_if: str | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)
    manage_resolv: bool = True
    resolv: str = ""  # the resolv.conf text of every lab namespace
    networks: list[ipaddress.IPv4Network] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lab": self.lab,
            "host_ns": self.host_ns,
            "router_ns": self.router_ns,
            "wan_ns": self.wan_ns,
            "scanner_ns": self.scanner_ns,
            "sensor_ns": self.sensor_ns,
            "sensor_monitor_if": self.sensor_monitor_if,
            "namespaces": list(self.namespaces),
            "segments": self.segments,
            "processes": [{"name": p.name, "netns": p.ns, "kind": p.kind} for p in self.processes],
        }
