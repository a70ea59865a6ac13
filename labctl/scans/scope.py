"""The scope guard: nothing is scanned unless it is provably inside the lab.

Two checks run before nmap is started, and either one refuses the whole scan (exit 2):

1. **Scope.** Every target (address, CIDR, or nmap last-octet range ``a.b.c.x-y``) must lie
   inside one network the playbook declares (``Playbook.lab_networks``) or one given with
   ``--scope CIDR``. Hostnames are refused: resolving them could point anywhere. An empty
   scope refuses everything, and ``--force`` does not change that.
2. **Route** (``local`` and ``netns:`` scanners). ``ip -j route get`` for the first and last
   address of each target, run in the scanner's namespace, must leave through a *lab
   interface*: one that holds an address inside an allowed network. A route out of the
   default uplink means the "lab" address is really somewhere else. ``--force`` skips only
   this check (e.g. a lab behind a router the scanner reaches through its uplink).
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from labctl.core.errors import ScopeError, ToolMissingError, UsageError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_RANGE = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})-(\d{1,3})$")


@dataclass(frozen=True)
class Target:
    """One command-line target, with the addresses it covers."""

    text: str
    first: IPAddress
    last: IPAddress

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def probe_addresses(self) -> list[IPAddress]:
        """The addresses whose route is checked: first and last usable address."""
        if self.first == self.last:
            return [self.first]
        net = None
        try:
            net = ipaddress.ip_network(self.text, strict=False)
        except ValueError:
            pass
        if net is not None and net.version == 4 and net.prefixlen < 31:
            return [self.first + 1, self.last - 1]
        if net is not None and net.version == 6 and net.prefixlen < 127:
            return [self.first + 1, self.last]
        return [self.first, self.last]

    def within(self, net: IPNetwork) -> bool:
        return (self.first.version == net.version and self.first in net and self.last in net)


def parse_target(text: str) -> Target:
    """Parse an address, a CIDR network or an IPv4 last-octet range ``a.b.c.x-y``."""
    t = text.strip()
    m = _RANGE.match(t)
    if m:
        a, b, c, lo, hi = (int(x) for x in m.groups())
        if any(x > 255 for x in (a, b, c, lo, hi)) or lo > hi:
            raise UsageError(f"target {text!r} is not a valid address range")
        return Target(t, ipaddress.IPv4Address(f"{a}.{b}.{c}.{lo}"),
                      ipaddress.IPv4Address(f"{a}.{b}.{c}.{hi}"))
    try:
        if "/" in t:
            net = ipaddress.ip_network(t, strict=False)
            return Target(str(net), net.network_address, net.broadcast_address)
        addr = ipaddress.ip_address(t)
        return Target(str(addr), addr, addr)
    except ValueError:
        pass
    raise UsageError(
        f"target {text!r} is not an IP address, CIDR network or a.b.c.x-y range",
        hint="labctl scans addresses only, so the scope guard can check them; hostnames "
             "are refused because they could resolve outside the lab")


def parse_exclude(text: str) -> str:
    """Validate an --exclude entry (address, CIDR or range) and return nmap's form."""
    return parse_target(text).text


def parse_scope(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        raise UsageError(f"--scope {text!r} is not a CIDR network ({e})",
                         hint="e.g. --scope 172.16.1.0/24") from None


def check_scope(targets: Iterable[Target], allowed: list[IPNetwork]) -> None:
    """Refuse (ScopeError) unless every target lies inside one allowed network."""
    targets = list(targets)
    if not targets:
        raise UsageError("no targets given", hint="e.g. labctl scan 172.16.1.0/24")
    if not allowed:
        raise ScopeError(
            "the scan scope is empty: the playbook declares no lab network and no --scope "
            "was given, so nothing may be scanned",
            hint="declare the lab's networks in the playbook or pass --scope CIDR "
                 "(--force does not override an empty scope)")
    outside = [t.text for t in targets if not any(t.within(n) for n in allowed)]
    if outside:
        raise ScopeError(
            f"refusing to scan {', '.join(outside)}: outside the lab scope "
            f"({', '.join(str(n) for n in allowed)})",
            hint="scan only lab networks, or add one explicitly with --scope CIDR")


@dataclass(frozen=True)
class Route:
    addr: str
    dev: str
    gateway: str | None
    kind: str


def _ip_json(netns: str | None, args: list[str]) -> tuple[int, object, str]:
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-j", *args]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    except FileNotFoundError:
        raise ToolMissingError("`ip` (iproute2) was not found; the route check needs it",
                               hint="apt-get install iproute2, or pass --force") from None
    if p.returncode != 0:
        return p.returncode, None, p.stderr.strip()
    try:
        return 0, json.loads(p.stdout or "[]"), ""
    except json.JSONDecodeError:
        return 1, None, f"unexpected output from {' '.join(argv)}"


def route_get(addr: IPAddress, netns: str | None) -> Route | str:
    """The route to ``addr`` as seen from ``netns`` (None: this namespace), or an error text."""
    rc, data, err = _ip_json(netns, ["route", "get", str(addr)])
    if rc != 0 or not isinstance(data, list) or not data:
        return err or "no route"
    r = data[0]
    if r.get("type") in ("unreachable", "prohibit", "blackhole"):
        return f"route type {r.get('type')}"
    return Route(str(addr), str(r.get("dev", "")), r.get("gateway"), str(r.get("type", "unicast")))


def lab_interfaces(netns: str | None, allowed: list[IPNetwork]) -> dict[str, list[IPAddress]]:
    """Interfaces (in ``netns``) holding an address inside an allowed network."""
    rc, data, err = _ip_json(netns, ["addr", "show"])
    out: dict[str, list[IPAddress]] = {}
    if rc != 0 or not isinstance(data, list):
        return out
    for link in data:
        for a in link.get("addr_info", []):
            try:
                ip = ipaddress.ip_address(a.get("local", ""))
            except ValueError:
                continue
            if any(ip.version == n.version and ip in n for n in allowed):
                out.setdefault(str(link.get("ifname", "")), []).append(ip)
    return out


def check_routes(targets: Iterable[Target], allowed: list[IPNetwork], netns: str | None) -> None:
    """Refuse (ScopeError) unless each target's route leaves through a lab interface."""
    where = f"namespace {netns}" if netns else "this machine"
    ifaces = lab_interfaces(netns, allowed)
    own = {ip for ips in ifaces.values() for ip in ips}
    bad: list[str] = []
    for t in targets:
        for addr in t.probe_addresses():
            r = route_get(addr, netns)
            if isinstance(r, str):
                bad.append(f"{addr} (no route from {where}: {r})")
            elif r.dev in ifaces:
                continue
            elif r.kind == "local" and addr in own:
                continue
            else:
                via = f" via {r.gateway}" if r.gateway else ""
                bad.append(f"{addr} (route from {where} leaves through {r.dev}{via}, "
                           "not a lab interface)")
    if bad:
        lab = ", ".join(sorted(ifaces)) or "none"
        raise ScopeError(
            f"refusing to scan: the route to {'; '.join(bad)}. Lab interfaces: {lab}",
            hint="check that the lab network is up and routed through its own interface; "
                 "--force skips this route check (never the scope check)")
