"""The scope guard: nothing is scanned unless it is provably inside the lab.

Three checks run before nmap is started, and any one refuses the whole scan (exit 2):

1. **Targets.** A target is ASCII text: a dotted-decimal IPv4 address, an IPv6 address, a
   CIDR network or an nmap last-octet range ``a.b.c.x-y``. Anything else (hostnames,
   Unicode digits, leading zeros, zone ids) is refused: nmap would resolve it as a name.
2. **Scope.** Every target must lie inside one allowed network. Allowed networks come
   from the playbook (``Playbook.lab_networks``) and ``--scope CIDR``, and each must itself
   be a *lab range* (private, link-local or documentation space: ``LAB_RANGES`` in
   :mod:`labctl.core.playbook.scanner`). A global range is allowed only when given with
   ``--i-own-this-public-range CIDR``, one range per flag, never wider than /16 (IPv4) or
   /48 (IPv6). An empty scope refuses everything, and ``--force`` does not change that.
3. **Route** (``local`` and ``netns:`` scanners). ``ip -j route get`` for the first and last
   address of each target, run in the scanner's namespace, must leave through an interface
   that holds a lab address whose own network contains the target, or through a gateway
   inside the scope on such an interface's network. A route out of another interface (the
   uplink, or the interface of another lab network) means the "lab" address is really
   somewhere else. ``--force`` skips only this check.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from labctl.core.errors import ScopeError, ToolMissingError, UsageError
from labctl.core.playbook.scanner import LAB_RANGES, is_lab_range

__all__ = ["LAB_RANGES", "is_lab_range", "Target", "parse_target", "parse_exclude",
           "parse_scope", "parse_public_range", "check_scope", "check_routes", "route_get",
           "route_verdict", "interface_addresses", "lab_interfaces", "Route"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_OCTET = r"(0|[1-9][0-9]{0,2})"
_RANGE = re.compile(rf"^{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}-{_OCTET}$", re.ASCII)
_V4 = re.compile(rf"^{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(/[0-9]{{1,2}})?$", re.ASCII)
_V6 = re.compile(r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$", re.ASCII)

PUBLIC_MIN_PREFIX = {4: 16, 6: 48}
PUBLIC_FLAG = "--i-own-this-public-range"


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
    """Parse an address, a CIDR network or an IPv4 last-octet range ``a.b.c.x-y``.

    Only ASCII digits, dots, colons, hex letters, one ``/`` and one ``-`` are accepted, and
    the returned :attr:`Target.text` is the canonical form that nmap receives.
    """
    hint = ("labctl scans addresses only, so the scope guard can check them: dotted-decimal "
            "IPv4 (no leading zeros), IPv6, CIDR or a.b.c.x-y, in ASCII digits; hostnames "
            "are refused because they could resolve outside the lab")
    if not isinstance(text, str) or not text.isascii() or not text.isprintable() \
            or text != text.strip() or not text:
        raise UsageError(f"target {text!r} is not an IP address, CIDR network or a.b.c.x-y "
                         "range (only ASCII, no spaces)", hint=hint)
    m = _RANGE.match(text)
    if m:
        a, b, c, lo, hi = (int(x) for x in m.groups())
        if any(x > 255 for x in (a, b, c, lo, hi)) or lo > hi:
            raise UsageError(f"target {text!r} is not a valid address range", hint=hint)
        return Target(f"{a}.{b}.{c}.{lo}-{hi}", ipaddress.IPv4Address(f"{a}.{b}.{c}.{lo}"),
                      ipaddress.IPv4Address(f"{a}.{b}.{c}.{hi}"))
    if _V4.match(text) or (":" in text and _V6.match(text)):
        try:
            if "/" in text:
                net = ipaddress.ip_network(text, strict=False)
                return Target(str(net), net.network_address, net.broadcast_address)
            addr = ipaddress.ip_address(text)
            return Target(str(addr), addr, addr)
        except ValueError:
            pass
    raise UsageError(
        f"target {text!r} is not an IP address, CIDR network or a.b.c.x-y range", hint=hint)


def parse_exclude(text: str) -> str:
    """Validate an --exclude entry (address, CIDR or range) and return nmap's form."""
    return parse_target(text).text


def _strict_network(text: str, what: str) -> IPNetwork:
    t = text.strip() if isinstance(text, str) else text
    if not isinstance(t, str) or not t.isascii() or "/" not in t or \
            not (_V4.match(t) or _V6.match(t)):
        raise UsageError(f"{what} {text!r} is not a CIDR network in ASCII digits",
                         hint=f"e.g. {what} 172.16.1.0/24")
    try:
        return ipaddress.ip_network(t, strict=True)
    except ValueError as e:
        raise UsageError(f"{what} {text!r} is not a CIDR network ({e})",
                         hint=f"e.g. {what} 172.16.1.0/24") from None


def parse_scope(text: str) -> IPNetwork:
    """A ``--scope`` network: a CIDR inside the lab ranges (private, link-local, docs)."""
    net = _strict_network(text, "--scope")
    if not is_lab_range(net):
        raise ScopeError(
            f"--scope {text} is not a private, link-local or documentation range, so it is "
            "not a lab network",
            hint=f"a lab lives in 10/8, 172.16/12, 192.168/16, 169.254/16, fc00::/7 or "
                 f"fe80::/10. If you own a public range and mean to scan it, give it "
                 f"with {PUBLIC_FLAG} CIDR (one range per flag, at most a /16)")
    return net


def parse_public_range(text: str) -> IPNetwork:
    """A ``--i-own-this-public-range`` network: one global range of at most /16 (/48)."""
    net = _strict_network(text, PUBLIC_FLAG)
    limit = PUBLIC_MIN_PREFIX[net.version]
    if net.prefixlen < limit:
        raise ScopeError(
            f"{PUBLIC_FLAG} {text} is larger than a /{limit}; nobody scans that much of "
            "the internet from a home lab",
            hint=f"give the ranges you own one by one, each /{limit} or smaller")
    reserved = (net.is_multicast or net.is_loopback or net.is_unspecified or
                net.is_reserved or (net.version == 4 and net.overlaps(
                    ipaddress.IPv4Network("0.0.0.0/8"))))
    if reserved:
        raise ScopeError(f"{PUBLIC_FLAG} {text} is multicast, loopback or reserved space, "
                         "which nobody owns", hint="give a unicast range you own")
    return net


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


IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def interface_addresses(netns: str | None) -> dict[str, list[IPInterface]]:
    """Every interface (in ``netns``) with its addresses and their prefix lengths."""
    rc, data, _err = _ip_json(netns, ["addr", "show"])
    out: dict[str, list[IPInterface]] = {}
    if rc != 0 or not isinstance(data, list):
        return out
    for link in data:
        name = str(link.get("ifname", ""))
        for a in link.get("addr_info", []):
            try:
                iface = ipaddress.ip_interface(f"{a.get('local', '')}/{a.get('prefixlen', '')}")
            except ValueError:
                continue
            out.setdefault(name, []).append(iface)
    return out


def _inside(addr: IPAddress, allowed: list[IPNetwork]) -> bool:
    return any(addr.version == n.version and addr in n for n in allowed)


def lab_interfaces(netns: str | None, allowed: list[IPNetwork]) -> dict[str, list[IPInterface]]:
    """Interfaces (in ``netns``) and their addresses that lie inside an allowed network."""
    out: dict[str, list[IPInterface]] = {}
    for name, ifaces in interface_addresses(netns).items():
        lab = [i for i in ifaces if _inside(i.ip, allowed)]
        if lab:
            out[name] = lab
    return out


def route_verdict(addr: IPAddress, route: Route, ifaces: dict[str, list[IPInterface]],
                  allowed: list[IPNetwork]) -> str | None:
    """None if the route to ``addr`` stays inside the lab, else the reason it does not.

    ``ifaces`` are every interface's addresses in the scanner's namespace. The route is
    accepted when:

    * ``addr`` is an address of this namespace, or (a ``local`` route on a loopback device)
      inside the own network of a lab address on that device;
    * it leaves through an interface holding a lab address (one inside ``allowed``) whose
      own network (address and prefix length) contains ``addr``, without a gateway;
    * or through a gateway that lies inside ``allowed`` and inside the own network of a lab
      address on that interface (for IPv6 also a link-local gateway on an interface with a
      lab address of that family).
    """
    lab_nets = [i.network for i in ifaces.get(route.dev, []) if _inside(i.ip, allowed)]
    own = {i.ip for lst in ifaces.values() for i in lst}
    if route.kind == "local":
        # this namespace itself: one of its addresses, or a prefix on a loopback device
        if addr in own or any(addr.version == n.version and addr in n for n in lab_nets):
            return None
        return f"is a local route on {route.dev}, outside its lab networks"
    if route.gateway is None:
        if any(addr.version == n.version and addr in n for n in lab_nets):
            return None
        held = ", ".join(str(i) for i in ifaces.get(route.dev, [])
                         if i.version == addr.version) or "no address"
        return (f"leaves through {route.dev} ({held}), whose lab networks do not contain "
                f"{addr}")
    try:
        gw = ipaddress.ip_address(route.gateway.partition("%")[0])
    except ValueError:
        return f"leaves through {route.dev} via {route.gateway}, not an address"
    if _inside(gw, allowed) and any(gw.version == n.version and gw in n for n in lab_nets):
        return None
    if gw.version == 6 and gw.is_link_local and any(n.version == 6 for n in lab_nets):
        return None
    return (f"leaves through {route.dev} via {route.gateway}, not a lab interface or a "
            "gateway on a lab network")


def check_routes(targets: Iterable[Target], allowed: list[IPNetwork], netns: str | None) -> None:
    """Refuse (ScopeError) unless each target's route stays inside the lab (route_verdict)."""
    where = f"namespace {netns}" if netns else "this machine"
    ifaces = interface_addresses(netns)
    bad: list[str] = []
    for t in targets:
        for addr in t.probe_addresses():
            r = route_get(addr, netns)
            if isinstance(r, str):
                bad.append(f"{addr} (no route from {where}: {r})")
                continue
            why = route_verdict(addr, r, ifaces, allowed)
            if why is not None:
                bad.append(f"{addr} (route from {where} {why})")
    if bad:
        lab = ", ".join(f"{name} {' '.join(str(i) for i in lst)}"
                        for name, lst in sorted(lab_interfaces(netns, allowed).items()))
        raise ScopeError(
            f"refusing to scan: the route to {'; '.join(bad)}. Lab interfaces: {lab or 'none'}",
            hint="check that the lab network is up and routed through its own interface; "
                 "--force skips this route check (never the scope check)")
