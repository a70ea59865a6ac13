"""The scanner section: where nmap runs and what it may touch."""

from __future__ import annotations

import ipaddress
import re

from pydantic import Field, field_validator

from labctl.core.playbook.common import Address, Model, Network, ShortText, Text

# Where a lab lives: private (RFC 1918, IPv6 unique local fc00::/7), link-local and
# documentation space (RFC 5737, RFC 3849). None of it is routed on the internet, so a scan
# of it cannot reach somebody else's network through the scanner's uplink. Shared address
# space 100.64.0.0/10 (carrier-grade NAT, RFC 6598) is not here: it is the ISP's network and
# its other subscribers. scanner.scope may only add lab ranges; a public range the user owns
# is given on the command line, one flag per range (labctl scan --i-own-this-public-range
# CIDR), never in a file that others copy.
LAB_RANGES: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(
    ipaddress.ip_network(n) for n in (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "192.0.2.0/24",
        "198.51.100.0/24", "203.0.113.0/24", "fc00::/7", "fe80::/10", "2001:db8::/32"))


def is_lab_range(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """True if ``net`` lies inside one of :data:`LAB_RANGES`."""
    for r in LAB_RANGES:
        if isinstance(net, ipaddress.IPv4Network) and isinstance(r, ipaddress.IPv4Network):
            if net.subnet_of(r):
                return True
        elif isinstance(net, ipaddress.IPv6Network) and isinstance(r, ipaddress.IPv6Network):
            if net.subnet_of(r):
                return True
    return False

SPEC_RE = re.compile(r"^(local|netns:[A-Za-z0-9_.-]+|ssh://[A-Za-z0-9_.-]+@[A-Za-z0-9_.:\[\]-]+)$")


class ScannerSection(Model):
    spec: str = "local"  # local | ssh://user@host[:port] | netns:NAME
    profile: ShortText = "smart"
    ssh_key: Text | None = None
    ip: Address | None = None  # the scanner's own address in the lab (Kali)
    scope: list[Network] = Field(default_factory=list)  # extra networks it may scan
    exclude: list[Address] = Field(default_factory=list)  # never scanned (fragile OT devices)

    @field_validator("spec")
    @classmethod
    def _spec(cls, v: str) -> str:
        if not SPEC_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a scanner spec: use local, ssh://user@host[:port] "
                             "or netns:NAME")
        return v

    @field_validator("scope")
    @classmethod
    def _scope(cls, v: list[ipaddress.IPv4Network]) -> list[ipaddress.IPv4Network]:
        for net in v:
            if not is_lab_range(net):
                raise ValueError(
                    f"{net} is not a private, link-local or documentation range; scanner.scope "
                    "adds lab networks only (a public range you own is given on the command "
                    "line: labctl scan --i-own-this-public-range CIDR)")
        return v
