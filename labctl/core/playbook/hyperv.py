"""Playbook sections shared by both providers: the host connection, switches and VMs."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from labctl.core.playbook.common import (
    Address,
    Bool,
    Hostname,
    Interface,
    Mac,
    Model,
    Name,
    Network,
    Port,
    SecretRef,
    ShortText,
    Text,
    TimeoutSeconds,
    UserName,
    VlanId,
    WinPath,
    int_in,
    parse_vlan_list,
)

#: Hyper-V's limits on Windows Server 2022: 240 vCPUs and 12 TB of memory for a Generation 2
#: VM, 64 TB for a VHDX
MAX_CPU = 240
MAX_MEMORY_MB = 12 * 1024 * 1024
MAX_DISK_GB = 64 * 1024


class HyperVHost(Model):
    """How to reach the Hyper-V host (ignored by the netns provider)."""

    host: Hostname = "localhost"
    transport: Literal["winrm", "ssh", "local"] = "winrm"
    port: Port | None = None
    user: UserName | None = None
    password: SecretRef | None = None
    auth: Literal["negotiate", "ntlm", "kerberos", "credssp", "basic"] = "negotiate"
    ssl: Bool = True
    cert_validation: Bool = True
    ca_trust_path: Text | None = None
    ssh_key: Text | None = None
    ssh_known_hosts: Text | None = None
    timeout: TimeoutSeconds = 120
    vm_path: WinPath | None = None
    vhd_path: WinPath = r"C:\ProgramData\Microsoft\Windows\Virtual Hard Disks"

    @model_validator(mode="after")
    def _tls(self) -> HyperVHost:
        if self.transport != "winrm":
            return self
        if self.auth == "basic" and not self.ssl:
            raise ValueError("auth: basic sends the password in clear text without ssl: true")
        if not self.cert_validation and self.auth in ("basic", "credssp"):
            raise ValueError(
                f"cert_validation: false with auth: {self.auth} would hand the password to "
                "whoever answers on the host's address; trust the host's certificate instead "
                "with ca_trust_path: <its PEM> (a self-signed certificate is its own CA)")
        return self

    @property
    def tls_warning(self) -> str | None:
        """What the CLI must show before connecting when validation is off (negotiate,
        NTLM or Kerberos: the exchange cannot be replayed as a password, but the host is
        not authenticated and an NTLM exchange can be relayed)."""
        if self.transport == "winrm" and self.ssl and not self.cert_validation:
            return (f"hyperv.cert_validation is false: the WinRM host {self.host} is not "
                    "authenticated; set hyperv.ca_trust_path to its certificate instead")
        return None

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
    adapter: ShortText | None = None
    allow_management_os: Bool = False
    span_source: Bool = False
    vlan: VlanId | None = None
    subnet: Network | None = None
    notes: Text = ""

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
    native: Annotated[int, BeforeValidator(int_in(0, 4094))] = 0

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
    vmq: Bool = True
    vlan: VlanTrunk | VlanAccess | None = Field(default=None, discriminator="mode")
    mac: Mac | None = None

    @field_validator("mac", mode="before")
    @classmethod
    def _mac_forms(cls, v: Any) -> Any:
        # Hyper-V writes MACs as 00155D010203 or 00-15-5D-01-02-03: accept those too
        if isinstance(v, str) and len(v) in (12, 17) and ":" not in v:
            bare = v.replace("-", "")
            if len(bare) == 12:
                return ":".join(bare[i:i + 2] for i in range(0, 12, 2))
        return v


class VM(Model):
    name: Name
    role: Literal["sensor", "scanner", "generic"] = "generic"
    profile: ShortText | None = None
    generation: Annotated[Literal[1, 2], BeforeValidator(int_in(1, 2))] = 2
    cpu: Annotated[int, BeforeValidator(int_in(1, MAX_CPU))] | None = None
    memory_mb: Annotated[int, BeforeValidator(int_in(512, MAX_MEMORY_MB))] | None = None
    dynamic_memory: Bool = False
    disk_gb: Annotated[int, BeforeValidator(int_in(1, MAX_DISK_GB))] | None = None
    vhd_type: Literal["fixed", "dynamic"] = "fixed"
    iso: WinPath | None = None
    secure_boot: Literal["MicrosoftUEFICertificateAuthority", "MicrosoftWindows", "off"] = \
        "MicrosoftUEFICertificateAuthority"
    boot_first: Literal["dvd", "disk"] = "dvd"
    start: Bool = True
    nics: list[Nic] = Field(default_factory=list, max_length=64)
    notes: Text = ""

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
