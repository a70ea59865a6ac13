"""The twin section: what only the netns provider needs (WAN, devices, main LAN)."""

from __future__ import annotations

from ipaddress import IPv4Interface

from pydantic import Field

from labctl.core.playbook.common import Address, Interface, Model, Name


class TwinDevice(Model):
    name: Name
    persona: str  # playbooks/devices/<persona>.yaml
    ip: Interface
    switch: Name
    mac: str | None = Field(default=None, pattern=r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$")


class TwinScanner(Model):
    name: Name = "kali"
    ip: Interface
    switch: Name


class TwinSection(Model):
    main_lan_router: Interface = Field(default=IPv4Interface("192.168.50.1/24"))
    main_lan_host: Interface = Field(default=IPv4Interface("192.168.50.2/24"))
    wan_router: Interface = Field(default=IPv4Interface("203.0.113.2/24"))
    wan_services: list[Interface] = Field(
        default_factory=lambda: [IPv4Interface("203.0.113.10/24"),
                                 IPv4Interface("198.51.100.10/24")])
    irc_port: int = 6667
    devices: list[TwinDevice] = Field(default_factory=list)
    scanner: TwinScanner | None = None
    dns_forwarders: list[Address] = Field(default_factory=list)
