"""Playbook sections shared by both providers: the host connection, switches and VMs."""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from labctl.core.playbook.common import (
    Address,
    Interface,
    Model,
    Name,
    Network,
    SecretRef,
    VlanId,
    parse_vlan_list,
)


class HyperVHost(Model):
    """How to reach the Hyper-V host (ignored by the netns provider)."""

    host: str = "localhost"
    transport: Literal["winrm", "ssh", "local"] = "winrm"
    port: int | None = Field(default=None, ge=1, le=65535)
    user: str | None = None
    password: SecretRef | None = None
    auth: Literal["negotiate", "ntlm", "kerberos", "credssp", "basic"] = "negotiate"
    ssl: bool = True
    cert_validation: bool = True
    ca_trust_path: str | None = None
    ssh_key: str | None = None
    ssh_known_hosts: str | None = None
    timeout: int = Field(default=120, ge=5, le=3600)
    vm_path: str | None = None
    vhd_path: str = r"C:\ProgramData\Microsoft\Windows\Virtual Hard Disks"

    @property
    def effective_port(self) -> int | None:
        if self.port:
            return self.port
        if self.transport == "winrm":
            return 5986 if self.ssl else 5985
        if self.transport == "ssh":
            return 22
        return None


class Nat(Model):
    name: Name
    prefix: Network


class Switch(Model):
    """A Hyper-V vSwitch (a Linux bridge in the twin)."""

    name: Name
    type: Literal["internal", "external", "private"]
    host_ip: Interface | None = None
    dns: list[Address] = Field(default_factory=list, max_length=4)
    nat: Nat | None = None
    adapter: str | None = None
    allow_management_os: bool = False
    span_source: bool = False
    vlan: VlanId | None = None
    subnet: Network | None = None
    notes: str = ""

    @model_validator(mode="after")
    def _check(self) -> Switch:
        if self.type == "external" and not self.adapter:
            raise ValueError(f"external switch {self.name!r} needs adapter: "
                             "<physical adapter name>")
        if self.type != "external" and self.adapter:
            raise ValueError(f"adapter is only valid on an external switch ({self.name!r} is "
                             f"{self.type})")
        if self.type != "external" and self.span_source:
            raise ValueError("span_source is only valid on an external switch")
        if self.host_ip is not None and self.type == "private":
            raise ValueError("a private switch has no host vNIC, so host_ip is not allowed")
        if self.nat is not None:
            if self.type != "internal":
                raise ValueError("nat is only valid on an internal switch")
            if self.host_ip is None:
                raise ValueError("nat needs host_ip (the NAT gateway address)")
            if self.host_ip.ip not in self.nat.prefix:
                raise ValueError(f"host_ip {self.host_ip} is outside nat.prefix {self.nat.prefix}")
        if self.dns and self.host_ip is None:
            raise ValueError("dns needs host_ip (it is set on the host vNIC)")
        if self.subnet is not None and self.host_ip is not None and \
                self.host_ip.ip not in self.subnet:
            raise ValueError(f"host_ip {self.host_ip} is outside subnet {self.subnet}")
        return self

    @property
    def network(self) -> ipaddress.IPv4Network | None:
        if self.subnet is not None:
            return self.subnet
        if self.host_ip is not None:
            return self.host_ip.network
        return None


class VlanTrunk(Model):
    mode: Literal["trunk"] = "trunk"
    allowed: list[int] = Field(default_factory=lambda: [1, 4094])
    native: int = Field(default=0, ge=0, le=4094)

    @field_validator("allowed", mode="before")
    @classmethod
    def _parse(cls, v: Any) -> list[int]:
        return parse_vlan_list(v)


class VlanAccess(Model):
    mode: Literal["access"] = "access"
    id: VlanId


class Nic(Model):
    name: Name
    switch: Name
    role: Literal["management", "monitor", "data"] = "data"
    ip: Interface | None = None
    gateway: Address | None = None
    port_mirroring: Literal["none", "source", "destination"] = "none"
    vmq: bool = True
    vlan: VlanTrunk | VlanAccess | None = Field(default=None, discriminator="mode")
    mac: str | None = Field(default=None, pattern=r"^([0-9A-Fa-f]{2}[:-]?){5}[0-9A-Fa-f]{2}$")


class VM(Model):
    name: Name
    role: Literal["sensor", "scanner", "generic"] = "generic"
    profile: str | None = None
    generation: Literal[1, 2] = 2
    cpu: int | None = Field(default=None, ge=1, le=240)
    memory_mb: int | None = Field(default=None, ge=512)
    dynamic_memory: bool = False
    disk_gb: int | None = Field(default=None, ge=1)
    vhd_type: Literal["fixed", "dynamic"] = "fixed"
    iso: str | None = None
    secure_boot: Literal["MicrosoftUEFICertificateAuthority", "MicrosoftWindows", "off"] = \
        "MicrosoftUEFICertificateAuthority"
    boot_first: Literal["dvd", "disk"] = "dvd"
    start: bool = True
    nics: list[Nic] = Field(default_factory=list)
    notes: str = ""

    @model_validator(mode="after")
    def _check(self) -> VM:
        from labctl.core.playbook.profiles import hardware_profiles

        if self.profile is not None:
            profiles = hardware_profiles()
            prof = profiles.get(self.profile)
            if prof is None:
                raise ValueError(f"unknown hardware profile {self.profile!r} "
                                 f"(known: {', '.join(profiles)})")
            for key, have, need, unit in (
                ("cpu", self.cpu, prof.cpu, "vCPU"),
                ("memory_mb", self.memory_mb, prof.memory_mb, "MB"),
                ("disk_gb", self.disk_gb, prof.disk_gb, "GB"),
            ):
                if have is not None and have < need:
                    raise ValueError(f"{key} {have} {unit} is smaller than profile "
                                     f"{prof.name} ({need} {unit})")
            if self.dynamic_memory:
                raise ValueError(f"profile {prof.name} needs static memory "
                                 "(dynamic_memory: false)")
        if self.boot_first == "dvd" and self.role == "sensor" and not self.iso:
            raise ValueError(f"VM {self.name!r} boots from DVD but has no iso: path")
        seen: set[str] = set()
        for nic in self.nics:
            if nic.name.lower() in seen:
                raise ValueError(f"duplicate NIC name {nic.name!r}")
            seen.add(nic.name.lower())
        return self

    def resolved(self) -> dict[str, Any]:
        """cpu/memory/disk with the profile's values filled in."""
        from labctl.core.playbook.profiles import hardware_profiles

        prof = hardware_profiles().get(self.profile) if self.profile else None
        return {
            "cpu": self.cpu or (prof.cpu if prof else 2),
            "memory_mb": self.memory_mb or (prof.memory_mb if prof else 2048),
            "disk_gb": self.disk_gb or (prof.disk_gb if prof else 40),
        }

    @property
    def management_nic(self) -> Nic | None:
        for n in self.nics:
            if n.role == "management":
                return n
        return self.nics[0] if self.nics else None
