"""The twin section: what only the netns provider needs (WAN, devices, main LAN)."""

from __future__ import annotations

from ipaddress import IPv4Interface

from pydantic import Field

from labctl.core.playbook.common import (
    AssetName,
    HostAddress,
    Interface,
    Mac,
    Model,
    Name,
    Port,
)

#: a twin runs one namespace and a few processes per device: more is a typo, not a lab
MAX_TWIN_DEVICES = 254


class TwinDevice(Model):
    name: Name
    #: playbooks/devices/<persona>.yaml: a file name, never a path
    persona: AssetName
    ip: Interface
    switch: Name
    mac: Mac | None = None


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
                                 IPv4Interface("198.51.100.10/24")],
        max_length=16)
    irc_port: Port = 6667
    devices: list[TwinDevice] = Field(default_factory=list, max_length=MAX_TWIN_DEVICES)
    scanner: TwinScanner | None = None
    dns_forwarders: list[HostAddress] = Field(default_factory=list, max_length=4)
