"""The playbook: one YAML file describing a lab, validated with pydantic.

See docs/playbook.md for every key. :func:`load_playbook` returns a :class:`LoadedPlaybook`
or raises :class:`~labctl.core.errors.ConfigError` naming the file, key path and line.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from labctl.core.errors import ConfigError, UsageError
from labctl.core.playbook.common import (
    HostAddress,
    Mac,
    Model,
    Name,
    ShortText,
    Text,
    check_host_address,
    parse_address,
    parse_network,
)
from labctl.core.playbook.hyperv import VM, HyperVHost, Nic, Switch
from labctl.core.playbook.router import IotNetwork, Router
from labctl.core.playbook.scanner import ScannerSection
from labctl.core.playbook.sensor import SensorSection
from labctl.core.playbook.sentinel import SentinelSection
from labctl.core.playbook.twin import TwinSection
from labctl.core.yamlfile import YamlDoc, load_yaml, validate

__all__ = [
    "Playbook", "LoadedPlaybook", "load_playbook", "parse_playbook", "find_playbook",
    "Switch", "VM", "Nic", "Router", "IotNetwork", "SensorSection", "ScannerSection",
    "TwinSection", "HyperVHost", "SentinelSection",
]


class _KeyError(ValueError):
    """A cross-section error that knows its key path."""

    def __init__(self, loc: tuple[str | int, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc


class LabDevice(Model):
    name: Name
    ip: HostAddress
    mac: Mac | None = None
    description: ShortText = ""


def _version(v: object) -> object:
    if v != 1 or isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"version must be the YAML integer 1, got {v!r}")
    return v


#: how many switches and VMs one playbook may declare (a typo guard, far above a home lab)
MAX_SWITCHES = 64
MAX_VMS = 256


class Playbook(Model):
    version: Annotated[Literal[1], BeforeValidator(_version)] = 1
    lab: str = Field(pattern=r"^[a-z][a-z0-9]{0,7}$",
                     description="short lab name; prefixes twin namespaces and links")
    description: Text = ""
    provider: Literal["hyperv", "netns"] = "hyperv"
    hyperv: HyperVHost | None = None
    switches: list[Switch] = Field(default_factory=list, max_length=MAX_SWITCHES)
    vms: list[VM] = Field(default_factory=list, max_length=MAX_VMS)
    router: Router | None = None
    sensor: SensorSection | None = None
    scanner: ScannerSection | None = None
    twin: TwinSection | None = None
    sentinel: SentinelSection | None = None
    #: the lab's known devices (a real lab's pet feeders, vacuums ...), by name: verify-alerts
    #: resolves {device:NAME} from here and twin.devices, traffic reports name them
    devices: list[LabDevice] = Field(default_factory=list, max_length=4096)

    def switch(self, name: str) -> Switch | None:
        for s in self.switches:
            if s.name.lower() == name.lower():
                return s
        return None

    def vm(self, name: str) -> VM | None:
        for v in self.vms:
            if v.name.lower() == name.lower():
                return v
        return None

    @property
    def lab_networks(self) -> list[ipaddress.IPv4Network]:
        """Every network the playbook declares (scope for scans)."""
        nets: list[ipaddress.IPv4Network] = []
        for s in self.switches:
            if s.network is not None:
                nets.append(s.network)
        if self.router and self.router.iot_network:
            nets.append(self.router.iot_network.subnet)
        if self.sensor:
            nets.extend(m.subnet for m in self.sensor.monitored_subnets)
        if self.scanner:
            nets.extend(self.scanner.scope)
        out: list[ipaddress.IPv4Network] = []
        for n in nets:
            if n not in out:
                out.append(n)
        return out


def _cross_check(pb: Playbook) -> None:
    def dup(kind: str, names: list[str], key: str) -> None:
        seen: dict[str, int] = {}
        for i, n in enumerate(names):
            low = n.lower()
            if low in seen:
                raise _KeyError((key, i, "name"),
                                f"duplicate {kind} name {n!r} (also {key}[{seen[low]}])")
            seen[low] = i

    dup("switch", [s.name for s in pb.switches], "switches")
    dup("VM", [v.name for v in pb.vms], "vms")
    if pb.twin:
        dup("device", [d.name for d in pb.twin.devices], "twin.devices")
    dup("device", [d.name for d in pb.devices], "devices")
    twin_names = {d.name.lower() for d in pb.twin.devices} if pb.twin else set()
    for i, lab_dev in enumerate(pb.devices):
        if lab_dev.name.lower() in twin_names:
            raise _KeyError(("devices", i, "name"),
                            f"device {lab_dev.name!r} is also in twin.devices (name it once)")
    for i, s in enumerate(pb.switches):
        if s.nat is not None:
            for j, t in enumerate(pb.switches[:i]):
                if t.nat is not None and t.nat.prefix.overlaps(s.nat.prefix):
                    raise _KeyError(("switches", i, "nat", "prefix"),
                                    f"NAT prefix {s.nat.prefix} overlaps switches[{j}] "
                                    f"({t.nat.prefix})")
    for i, vm in enumerate(pb.vms):
        for j, nic in enumerate(vm.nics):
            sw = pb.switch(nic.switch)
            if sw is None:
                raise _KeyError(("vms", i, "nics", j, "switch"),
                                f"NIC {nic.name!r} is on unknown switch {nic.switch!r} "
                                f"(known: {', '.join(s.name for s in pb.switches) or 'none'})")
            net = sw.network
            if nic.ip is not None and net is not None and nic.ip.ip not in net:
                raise _KeyError(("vms", i, "nics", j, "ip"),
                                f"{nic.ip} is outside switch {sw.name}'s subnet {net}")
            if nic.ip is not None and net is not None and nic.ip.network != net:
                raise _KeyError(("vms", i, "nics", j, "ip"),
                                f"{nic.ip} has prefix /{nic.ip.network.prefixlen}, switch "
                                f"{sw.name} is {net}")
            if nic.ip is not None and sw.host_ip is not None and nic.ip.ip == sw.host_ip.ip:
                raise _KeyError(("vms", i, "nics", j, "ip"),
                                f"{nic.ip.ip} is the host vNIC address of switch {sw.name}")
            if nic.gateway is not None and net is not None and nic.gateway not in net:
                raise _KeyError(("vms", i, "nics", j, "gateway"),
                                f"gateway {nic.gateway} is outside {net}")
    _address_rules(pb)
    if pb.provider == "hyperv":
        if pb.hyperv is None:
            raise _KeyError(("hyperv",),
                            "provider hyperv needs a hyperv: section (host, transport)")
    if pb.sensor is not None:
        if pb.sensor.vm is not None:
            sensor_vm = pb.vm(pb.sensor.vm)
            if sensor_vm is None:
                raise _KeyError(("sensor", "vm"), f"unknown VM {pb.sensor.vm!r}")
            mgmt = sensor_vm.management_nic
            if mgmt is not None and mgmt.ip is not None and mgmt.ip.ip != pb.sensor.management_ip:
                raise _KeyError(("sensor", "management_ip"),
                                f"{pb.sensor.management_ip} differs from VM {sensor_vm.name}'s "
                                f"management NIC address {mgmt.ip.ip}")
        for k, m in enumerate(pb.sensor.monitored_subnets):
            if pb.router and pb.router.iot_network and m.subnet == pb.router.iot_network.subnet \
                    and m.vlan is not None and m.vlan != pb.router.iot_network.vlan:
                raise _KeyError(("sensor", "monitored_subnets", k, "vlan"),
                                f"VLAN {m.vlan} differs from the router's IoT network VLAN "
                                f"{pb.router.iot_network.vlan}")
    if pb.twin is not None:
        for k, d in enumerate(pb.twin.devices):
            sw = pb.switch(d.switch)
            if sw is None:
                raise _KeyError(("twin", "devices", k, "switch"), f"unknown switch {d.switch!r}")
            net = sw.network
            if net is None and pb.router and pb.router.iot_network:
                net = pb.router.iot_network.subnet
            if net is not None and d.ip.ip not in net:
                raise _KeyError(("twin", "devices", k, "ip"), f"{d.ip} is outside {net}")
        if pb.twin.scanner is not None and pb.switch(pb.twin.scanner.switch) is None:
            raise _KeyError(("twin", "scanner", "switch"),
                            f"unknown switch {pb.twin.scanner.switch!r}")


Loc = tuple[str | int, ...]


def _address_rules(pb: Playbook) -> None:
    """Addresses across sections: switch subnets do not overlap, host addresses are not a
    network or broadcast address, no two hosts share an address or a MAC, and no host sits
    on the IoT gateway's address or on a switch's host vNIC address."""
    nets: list[tuple[ipaddress.IPv4Network, Loc]] = []
    for i, s in enumerate(pb.switches):
        net = s.network
        if net is None:
            continue
        key: Loc = ("switches", i, "subnet" if s.subnet is not None else "host_ip")
        for other, okey in nets:
            if other.overlaps(net):
                raise _KeyError(key, f"switch {s.name}'s subnet {net} overlaps "
                                f"{format_key(okey[:2])} ({other}): two switches cannot "
                                "share a subnet")
        nets.append((net, key))
    for i, s in enumerate(pb.switches):
        for k, server in enumerate(s.dns):
            net = s.network
            try:
                check_host_address(server, net if net is not None and server in net else None)
            except ValueError as e:
                raise _KeyError(("switches", i, "dns", k), f"DNS server: {e}") from None
    for i, vm in enumerate(pb.vms):
        for j, nic in enumerate(vm.nics):
            if nic.gateway is None:
                continue
            key = ("vms", i, "nics", j, "gateway")
            if nic.ip is None:
                raise _KeyError(key, f"NIC {nic.name}'s gateway needs ip (its own address)")
            try:
                check_host_address(nic.gateway, nic.ip.network)
            except ValueError as e:
                raise _KeyError(key, f"gateway: {e}") from None
            if nic.gateway == nic.ip.ip:
                raise _KeyError(key, f"gateway {nic.gateway} is the NIC's own address")
    iot = pb.router.iot_network if pb.router else None
    lab_nets = [n for n, _ in nets] + ([iot.subnet] if iot is not None else [])
    if iot is not None and iot.gateway is not None:
        try:
            check_host_address(iot.gateway, iot.subnet)
        except ValueError as e:
            raise _KeyError(("router", "iot_network", "gateway"), str(e)) from None

    # every host address of the lab, with the key that declares it
    hosts: list[tuple[ipaddress.IPv4Address, Loc, str]] = []
    for i, s in enumerate(pb.switches):
        if s.host_ip is not None:
            hosts.append((s.host_ip.ip, ("switches", i, "host_ip"),
                          f"switch {s.name}'s host vNIC"))
    for i, vm in enumerate(pb.vms):
        for j, nic in enumerate(vm.nics):
            if nic.ip is not None:
                hosts.append((nic.ip.ip, ("vms", i, "nics", j, "ip"),
                              f"VM {vm.name} NIC {nic.name}"))
    if pb.twin is not None:
        for k, d in enumerate(pb.twin.devices):
            hosts.append((d.ip.ip, ("twin", "devices", k, "ip"), f"twin device {d.name}"))
        if pb.twin.scanner is not None:
            hosts.append((pb.twin.scanner.ip.ip, ("twin", "scanner", "ip"),
                          f"twin scanner {pb.twin.scanner.name}"))
    for k, dev in enumerate(pb.devices):
        hosts.append((dev.ip, ("devices", k, "ip"), f"device {dev.name}"))

    seen: dict[ipaddress.IPv4Address, tuple[Loc, str]] = {}
    for ip, key, who in hosts:
        for net in lab_nets:
            if ip in net:
                try:
                    check_host_address(ip, net)
                except ValueError as e:
                    raise _KeyError(key, f"{who}: {e}") from None
        if iot is not None and ip == iot.gateway_ip:
            raise _KeyError(key, f"{who} is on {ip}, the IoT network's gateway "
                            "(router.iot_network.gateway)")
        if ip in seen:
            okey, owho = seen[ip]
            raise _KeyError(key, f"{who} and {owho} ({format_key(okey)}) both use {ip}")
        seen[ip] = (key, who)

    macs: list[tuple[str, Loc, str]] = []
    for i, vm in enumerate(pb.vms):
        for j, nic in enumerate(vm.nics):
            if nic.mac is not None:
                macs.append((nic.mac, ("vms", i, "nics", j, "mac"),
                             f"VM {vm.name} NIC {nic.name}"))
    if pb.twin is not None:
        for k, d in enumerate(pb.twin.devices):
            if d.mac is not None:
                macs.append((d.mac, ("twin", "devices", k, "mac"), f"twin device {d.name}"))
    for k, dev in enumerate(pb.devices):
        if dev.mac is not None:
            macs.append((dev.mac, ("devices", k, "mac"), f"device {dev.name}"))
    seen_mac: dict[str, tuple[Loc, str]] = {}
    for mac, key, who in macs:
        if mac in seen_mac:
            okey, owho = seen_mac[mac]
            raise _KeyError(key, f"{who} and {owho} ({format_key(okey)}) both use MAC {mac}")
        seen_mac[mac] = (key, who)


def format_key(loc: Loc) -> str:
    from labctl.core.yamlfile import format_loc

    return format_loc(loc)


@dataclass(frozen=True)
class LoadedPlaybook:
    path: str
    model: Playbook
    doc: YamlDoc

    @property
    def base_dir(self) -> Path:
        return Path(self.path).resolve().parent


def _precheck(doc: YamlDoc) -> None:
    """Rules checked on the raw data before the model: the IoT network's numbers and on/off
    keys are YAML integers and booleans, and its gateway is a host address of its subnet
    (the router section validates the gateway too, for ``router iot-net`` flags, but its
    error names only the section)."""
    router = doc.data.get("router")
    iot = router.get("iot_network") if isinstance(router, dict) else None
    if not isinstance(iot, dict):
        return
    # the IoT network's numbers and on/off keys are YAML integers and booleans: its model
    # also serves `router iot-net` flags (text), so it accepts text such as "52"; a playbook
    # value "\u0665\u0662" or "5_2" would otherwise become VLAN 52
    for key, kind in (("vlan", int), ("lease_seconds", int), ("dhcp", bool),
                      ("ap_isolation", bool), ("hidden", bool)):
        if key not in iot:
            continue
        v = iot[key]
        ok = isinstance(v, bool) if kind is bool else \
            isinstance(v, int) and not isinstance(v, bool)
        if not ok:
            loc: Loc = ("router", "iot_network", key)
            what = "true or false" if kind is bool else "a YAML integer (no quotes)"
            raise ConfigError(f"must be {what}, got {v!r}", file=doc.path,
                              key=format_key(loc), line=doc.line_of(loc))
    try:
        subnet = parse_network(iot.get("subnet"))
        gateway = parse_address(iot.get("gateway"))
    except ValueError:
        return  # the model reports a malformed subnet or gateway at its own key
    loc = ("router", "iot_network", "gateway")
    try:
        if gateway not in subnet:
            raise ValueError(f"gateway {gateway} is outside subnet {subnet}")
        check_host_address(gateway, subnet)
    except ValueError as e:
        raise ConfigError(f"IoT gateway: {e}", file=doc.path, key=format_key(loc),
                          line=doc.line_of(loc)) from None


def parse_playbook(doc: YamlDoc) -> LoadedPlaybook:
    if not isinstance(doc.data, dict):
        raise ConfigError("a playbook must be a YAML mapping", file=doc.path, line=1)
    _precheck(doc)
    pb = validate(Playbook, doc)
    try:
        _cross_check(pb)
    except _KeyError as e:
        from labctl.core.yamlfile import format_loc

        raise ConfigError(str(e), file=doc.path, key=format_loc(e.loc),
                          line=doc.line_of(e.loc)) from None
    return LoadedPlaybook(doc.path, pb, doc)


def find_playbook(path: str | None) -> str:
    """``-f`` value, else ``$LABCTL_PLAYBOOK``, else ``./labctl.yaml``."""
    if path:
        return path
    env = os.environ.get("LABCTL_PLAYBOOK")
    if env:
        return env
    if Path("labctl.yaml").exists():
        return "labctl.yaml"
    raise UsageError("no playbook given",
                     hint="pass -f FILE, set LABCTL_PLAYBOOK, or create ./labctl.yaml")


def load_playbook(path: str | None = None) -> LoadedPlaybook:
    return parse_playbook(load_yaml(find_playbook(path)))
