"""The pure Hyper-V diff: playbook + host facts -> a Plan of PowerShell steps.

Nothing here talks to a host. ``plan_up`` returns the steps that bring the host to the
playbook, in dependency order (switch -> host IP/DNS -> NAT -> SPAN -> VHDX -> VM -> NICs ->
start), and records on the plan its *blockers* (``Plan.blockers``): conditions the provider's
pre-flight turns into a PreflightError before anything is changed. ``plan_down`` removes
only what this lab can prove it created, in reverse order (stop VM, remove VM, remove the
VHDX it created, NAT, IP, switches). Ownership is proven per resource kind:

- switch, VM: one line of its Notes is exactly ``managed-by: labctl lab=<lab>``;
- host IP: the address the playbook gives a switch of ours, on that switch's vNIC;
- NetNat (no Notes): the lab's record (:class:`labctl.core.state.CreatedRecord`) names it
  with the same name and prefix;
- NetNat static mapping (``sensor.access.mode: netnat``, the host port published to the
  sensor's management address, port 443): the record names it with the same NAT, protocol,
  external port, internal address and internal port;
- VHDX (a file): the record names its path, or a VM of ours is its only user and it sits
  at the path labctl plans for that VM; a VHDX attached to a VM that is not ours never is.
"""

from __future__ import annotations

import ipaddress
import ntpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from labctl.core.model import Action, Blocker, Change, Ownership, Plan, Step
from labctl.core.playbook import Playbook
from labctl.core.playbook.common import format_vlan_list, parse_vlan_list
from labctl.core.playbook.hyperv import VM, Nic, Switch
from labctl.core.state import Created
from labctl.hyperv.facts import (
    HostFacts,
    NatMappingFacts,
    VmFacts,
    marker,
    notes_with_marker,
    owned_by,
)
from labctl.hyperv.scripts import step

PROVIDER = "hyperv"
GIB = 1024 ** 3
MIB = 1024 ** 2
_SWITCH_TYPE = {"internal": "Internal", "external": "External", "private": "Private"}
DEFAULT_VHD_PATH = r"C:\ProgramData\Microsoft\Windows\Virtual Hard Disks"
_MIRROR = {"none": "None", "source": "Source", "destination": "Destination"}


@dataclass
class Diff:
    """The plan ``plan_up`` computed; its pre-flight blockers live on the plan itself."""

    plan: Plan

    @property
    def blockers(self) -> list[Blocker]:
        return self.plan.blockers


def scope_of(pb: Playbook) -> str:
    """Where a record entry applies: this provider on this host."""
    return f"{PROVIDER}:{(pb.hyperv.host if pb.hyperv else 'localhost').lower()}"


def _prefix(prefix: str) -> str:
    try:
        return str(ipaddress.ip_network(prefix, strict=False))
    except ValueError:
        return prefix


def nat_entry(scope: str, name: str, prefix: str) -> Created:
    """The record entry of NetNat ``name`` on ``prefix`` (names compare case-insensitively,
    as Windows does)."""
    return Created.of(scope, "netnat", {"name": name.lower(), "prefix": _prefix(prefix)})


def mapping_entry(scope: str, nat: str, protocol: str, external_port: int, internal_ip: str,
                  internal_port: int) -> Created:
    """The record entry of a NetNat static mapping (NAT names and protocols compare
    case-insensitively, as Windows does)."""
    return Created.of(scope, "netnat-mapping", {
        "nat": nat.lower(), "protocol": protocol.lower(), "external_port": str(external_port),
        "internal_ip": internal_ip, "internal_port": str(internal_port)})


def mapping_entry_of(scope: str, m: NatMappingFacts) -> Created:
    return mapping_entry(scope, m.nat, m.protocol, m.external_port, m.internal_ip,
                         m.internal_port)


@dataclass(frozen=True)
class WantedMapping:
    """The static mapping ``sensor.access.mode: netnat`` asks for."""

    nat: str
    external_port: int
    internal_ip: str
    internal_port: int = 443
    protocol: str = "TCP"
    external_ip: str = "0.0.0.0"

    def matches(self, m: NatMappingFacts) -> bool:
        return (m.nat.lower() == self.nat.lower() and m.protocol.lower() == self.protocol.lower()
                and m.external_port == self.external_port and m.internal_ip == self.internal_ip
                and m.internal_port == self.internal_port)

    def add_params(self) -> dict[str, Any]:
        return {"NatName": self.nat, "Protocol": self.protocol,
                "ExternalIPAddress": self.external_ip, "ExternalPort": self.external_port,
                "InternalIPAddress": self.internal_ip, "InternalPort": self.internal_port}

    def to_dict(self) -> dict[str, Any]:
        return {"nat": self.nat, "protocol": self.protocol,
                "external": f"{self.external_ip}:{self.external_port}",
                "internal": f"{self.internal_ip}:{self.internal_port}"}


def _remove_mapping_params(m: NatMappingFacts) -> dict[str, Any]:
    return {"NatName": m.nat, "Protocol": m.protocol, "ExternalPort": m.external_port,
            "InternalIPAddress": m.internal_ip, "InternalPort": m.internal_port}


def _mapping_text(m: NatMappingFacts) -> str:
    return (f"{m.protocol} {m.external_ip}:{m.external_port} -> {m.internal_ip}:"
            f"{m.internal_port} on NetNat {m.nat}")


def wanted_mapping(pb: Playbook) -> WantedMapping | None:
    """The mapping the playbook wants, or None when ``sensor.access.mode`` is not netnat.

    The NAT is the one whose prefix holds the sensor's management address (the Core NAT of
    the reference lab). Raises ValueError when no switch's NAT covers it."""
    if pb.sensor is None or pb.sensor.access.mode != "netnat":
        return None
    ip = ipaddress.ip_address(str(pb.sensor.management_ip))
    for sw in pb.switches:
        if sw.nat is not None and ip in ipaddress.ip_network(str(sw.nat.prefix), strict=False):
            return WantedMapping(sw.nat.name, pb.sensor.access.host_port, str(ip))
    raise ValueError(f"no switch's nat covers the sensor's management address {ip}")


def vhd_entry(scope: str, path: str) -> Created:
    """The record entry of the VHDX at ``path`` (Windows paths compare case-insensitively)."""
    return Created.of(scope, "vhd", {"path": path.lower()})


@dataclass(frozen=True)
class Recorded:
    """What the lab's record says it created on this host: pure data for the diff."""

    scope: str = ""
    entries: frozenset[Created] = field(default_factory=frozenset)

    @classmethod
    def of(cls, scope: str, entries: Iterable[Created]) -> Recorded:
        return cls(scope, frozenset(e for e in entries if e.scope == scope))

    def nat(self, name: str, prefix: str) -> bool:
        return nat_entry(self.scope, name, prefix) in self.entries

    def vhd(self, path: str) -> bool:
        return vhd_entry(self.scope, path) in self.entries

    def mapping(self, m: NatMappingFacts) -> bool:
        return mapping_entry_of(self.scope, m) in self.entries

    @property
    def nats(self) -> list[Created]:
        return sorted((e for e in self.entries if e.kind == "netnat"), key=lambda e: e.keys)

    @property
    def vhd_paths(self) -> list[str]:
        return sorted(e.get("path") for e in self.entries if e.kind == "vhd")


def _stem(path: str) -> str:
    return ntpath.splitext(ntpath.basename(path))[0]


def vhd_path_of(pb: Playbook, vm: VM) -> str:
    base = pb.hyperv.vhd_path if pb.hyperv else DEFAULT_VHD_PATH
    return ntpath.join(base, f"{vm.name}.vhdx")


def facts_params(pb: Playbook, recorded: Recorded | None = None) -> dict[str, Any]:
    """Parameters of ``facts/read`` for this playbook (values, never spliced into text):
    the VHDX files labctl would create, and those its record names (to learn whether they
    still exist)."""
    base = pb.hyperv.vhd_path if pb.hyperv else DEFAULT_VHD_PATH
    files = [vhd_path_of(pb, vm) for vm in pb.vms]
    for p in (recorded.vhd_paths if recorded else []):
        if p not in [f.lower() for f in files]:
            files.append(p)
    return {
        "VhdPath": base,
        "IsoPaths": [vm.iso for vm in pb.vms if vm.iso],
        "VhdFiles": files,
    }


def _norm_notes(s: str | None) -> str:
    return "\n".join(line.rstrip() for line in (s or "").replace("\r\n", "\n").split("\n")).strip()


def _manual_ips(facts: HostFacts, switch: str) -> list[str]:
    vnic = facts.vnic_of(switch)
    if vnic is None:
        return []
    return sorted(ip.cidr for ip in vnic.ips
                  if not ip.address.startswith("169.254.") and ip.origin.lower() != "wellknown")


def _vlan_desired(nic: Nic) -> dict[str, Any] | None:
    if nic.vlan is None:
        return None
    if nic.vlan.mode == "trunk":
        return {"Mode": "Trunk", "AllowedVlanIdList": format_vlan_list(nic.vlan.allowed),
                "NativeVlanId": nic.vlan.native, "AccessVlanId": 0}
    return {"Mode": "Access", "AllowedVlanIdList": "", "NativeVlanId": 0,
            "AccessVlanId": nic.vlan.id}


def _vlan_matches(want: dict[str, Any], have: Any) -> bool:
    if have.mode.lower() != want["Mode"].lower():
        return False
    if want["Mode"] == "Trunk":
        return bool(sorted(set(have.allowed)) == parse_vlan_list(want["AllowedVlanIdList"])
                    and have.native == want["NativeVlanId"])
    return bool(have.access_id == want["AccessVlanId"])


def _vlan_text(have: Any) -> str:
    """The adapter's VLAN setting in a few words; the allowed ids as ranges (``1-4094``),
    never as the int array the host returns."""
    if have.mode.lower() == "trunk":
        allowed = format_vlan_list(list(have.allowed)) or "(none)"
        return f"trunk allowed={allowed} native={have.native}"
    if have.mode.lower() == "access":
        return f"access {have.access_id}"
    return "untagged"


def _want_vlan_text(want: dict[str, Any]) -> str:
    if want["Mode"] == "Trunk":
        return f"trunk allowed={want['AllowedVlanIdList']} native={want['NativeVlanId']}"
    return f"access {want['AccessVlanId']}"


class _Builder:
    def __init__(self, pb: Playbook, facts: HostFacts, recorded: Recorded) -> None:
        self.pb = pb
        self.facts = facts
        self.recorded = recorded
        self.lab = pb.lab
        self.plan = Plan(PROVIDER, pb.lab)

    def add(self, resource: str, action: Action | str, reason: str = "", before: Any = None,
            after: Any = None, steps: list[Step] | None = None,
            state: Ownership | None = None) -> None:
        self.plan.changes.append(Change(resource, Action(action) if steps else Action.NOOP,
                                        reason, before, after, tuple(steps or ()), state))

    def block(self, message: str, hint: str) -> None:
        self.plan.block(message, hint)

    # -- switches, host vNIC, NAT, SPAN --------------------------------------------------
    def switch(self, sw: Switch) -> bool:
        """Plan one switch; returns True when the switch will exist and be ours."""
        res = f"hyperv.vmswitch:{sw.name}"
        found = self.facts.switches_named(sw.name)
        want_notes = notes_with_marker(sw.notes, self.lab)
        want = {"type": _SWITCH_TYPE[sw.type], "adapter": sw.adapter,
                "allow_management_os": sw.allow_management_os if sw.type == "external" else None,
                "owner": marker(self.lab)}
        if len(found) > 1:
            self.block(f"the host has {len(found)} switches named {sw.name!r}",
                       "rename or remove the extra switches so the name is unique")
            self.add(res, "noop", "several switches share this name (refused)")
            return False
        if not found:
            if sw.type == "external":
                self._check_adapter(sw)
            create: dict[str, Any] = {"Name": sw.name, "SwitchType": _SWITCH_TYPE[sw.type],
                                      "NetAdapterName": sw.adapter or "",
                                      "AllowManagementOS": bool(sw.allow_management_os),
                                      "Notes": want_notes}
            self.add(res, "create", f"switch {sw.name} does not exist", None, want,
                     [step("vmswitch/create", res, "create", create,
                           description=f"New-VMSwitch {_SWITCH_TYPE[sw.type]}")])
            return True
        have = found[0]
        if not owned_by(have.notes, self.lab):
            self.block(f"switch {sw.name!r} already exists and is not managed by lab {self.lab}",
                       f"rename the switch in the playbook, or adopt the existing one by adding "
                       f"the line '{marker(self.lab)}' to its Notes (Set-VMSwitch -Notes)")
            self.add(res, "noop", "exists but is not managed by this lab (left alone)",
                     {"type": have.type, "owner": None}, want, state=Ownership.FOREIGN)
            return False
        if have.type != want["type"]:
            self.block(f"switch {sw.name} is {have.type} on the host but {want['type']} in the "
                       "playbook", "run `labctl down` (or remove the switch) and `labctl up` "
                                   "again; a switch type cannot be changed in place")
        if sw.type == "external" and (have.net_adapter or "").lower() != (sw.adapter or "").lower():
            self.block(f"switch {sw.name} is bound to adapter {have.net_adapter!r}, the playbook "
                       f"says {sw.adapter!r}",
                       "rebinding is not done automatically: run `labctl down` and `labctl up`, "
                       "or fix the playbook")
        before: dict[str, Any] = {}
        after: dict[str, Any] = {}
        params: dict[str, Any] = {"Name": sw.name, "Lab": self.lab, "Notes": want_notes,
                                  "SetAllowManagementOS": False, "AllowManagementOS": False}
        if _norm_notes(have.notes) != _norm_notes(want_notes):
            before["notes"], after["notes"] = _norm_notes(have.notes), want_notes
        if sw.type == "external" and have.allow_management_os != sw.allow_management_os:
            before["allow_management_os"] = have.allow_management_os
            after["allow_management_os"] = sw.allow_management_os
            params["SetAllowManagementOS"] = True
            params["AllowManagementOS"] = sw.allow_management_os
        if before:
            self.add(res, "update", "settings differ", before, after,
                     [step("vmswitch/update", res, "update", params, description="Set-VMSwitch")])
        else:
            self.add(res, "noop", "switch exists with the wanted settings")
        return True

    def _check_adapter(self, sw: Switch) -> None:
        f = self.facts
        if f.assumed:
            return
        names = [a.name for a in f.net_adapters]
        if names and (sw.adapter or "").lower() not in [n.lower() for n in names]:
            self.block(f"physical adapter {sw.adapter!r} for External switch {sw.name} was not "
                       "found on the host", f"use one of: {', '.join(names)} (Get-NetAdapter "
                                                "-Physical)")
        for other in f.switches:
            if other.type == "External" and other.name.lower() != sw.name.lower() and \
                    (other.net_adapter or "").lower() == (sw.adapter or "").lower():
                self.block(f"adapter {sw.adapter!r} is already bound to External switch "
                           f"{other.name!r}; an adapter can carry only one External switch",
                           f"use another adapter for {sw.name}, or remove switch {other.name!r}")
        mgmt = f.default_route_adapter
        if mgmt and (sw.adapter or "").lower() == mgmt.lower():
            self.block(f"adapter {sw.adapter!r} carries the host's default route; binding External "
                       f"switch {sw.name} to it would cut the host (and this session) off",
                       "cable a dedicated NIC to the IoT/SPAN port and name that adapter in "
                       "switches[].adapter")

    def host_net(self, sw: Switch, exists: bool) -> None:
        if sw.host_ip is None or sw.type == "private":
            return
        if sw.type == "external" and not sw.allow_management_os:
            self.block(f"switch {sw.name} has host_ip but allow_management_os is false, so the "
                       "host has no vNIC on it", "set allow_management_os: true or drop host_ip")
            return
        alias = f"vEthernet ({sw.name})"
        res = f"hyperv.hostip:{sw.name}"
        want = str(sw.host_ip)
        have = _manual_ips(self.facts, sw.name) if exists else []
        if have == [want]:
            self.add(res, "noop", f"{alias} has {want}")
        else:
            self.add(res, "update" if have else "create",
                     f"{alias} has {', '.join(have) or 'no address'}",
                     {"ips": have}, {"ips": [want]},
                     [step("hostnet/ip_set", res, "update" if have else "create",
                           {"InterfaceAlias": alias, "IPAddress": str(sw.host_ip.ip),
                            "PrefixLength": sw.host_ip.network.prefixlen},
                           description="New-NetIPAddress")])
        if sw.dns:
            res = f"hyperv.dns:{sw.name}"
            want_dns = [str(d) for d in sw.dns]
            vnic = self.facts.vnic_of(sw.name) if exists else None
            have_dns = list(vnic.dns) if vnic else []
            if have_dns == want_dns:
                self.add(res, "noop", f"{alias} uses {', '.join(want_dns)}")
            else:
                self.add(res, "update" if have_dns else "create", "DNS servers differ",
                         {"dns": have_dns}, {"dns": want_dns},
                         [step("hostnet/dns_set", res, "update",
                               {"InterfaceAlias": alias, "ServerAddresses": want_dns},
                               description="Set-DnsClientServerAddress")])

    def nat(self, sw: Switch) -> None:
        if sw.nat is None:
            return
        res = f"hyperv.netnat:{sw.nat.name}"
        want = str(sw.nat.prefix)
        for other in self.facts.nats:
            if other.name.lower() == sw.nat.name.lower():
                continue
            try:
                overlaps = ipaddress.ip_network(other.prefix, strict=False).overlaps(sw.nat.prefix)
            except ValueError:
                overlaps = False
            if overlaps:
                self.block(f"existing NetNat {other.name!r} ({other.prefix}) overlaps the "
                           f"requested prefix {want}",
                           f"remove it (Remove-NetNat -Name '{other.name}') or pick another "
                           "subnet for the switch")
        have = self.facts.nat(sw.nat.name)
        if have is None:
            self.add(res, "create", f"NetNat {sw.nat.name} does not exist", None, {"prefix": want},
                     [step("netnat/create", res, "create",
                           {"Name": sw.nat.name, "Prefix": want}, description="New-NetNat")])
        elif not self.recorded.nat(have.name, have.prefix):
            if _prefix(have.prefix) == want:
                self.add(res, "noop", f"NetNat {have.name} covers {want} but this lab did not "
                         "create it: used as it is, `labctl down` leaves it",
                         state=Ownership.FOREIGN)
            else:
                self.block(f"NetNat {have.name!r} exists with prefix {have.prefix} and this lab "
                           "did not create it", f"remove it yourself (Remove-NetNat -Name "
                           f"'{have.name}') or give the switch's nat another name")
                self.add(res, "noop", "exists with another prefix and is not this lab's "
                         "(left alone)", state=Ownership.FOREIGN)
        elif _prefix(have.prefix) == want:
            self.add(res, "noop", f"NetNat {sw.nat.name} covers {want}")
        else:
            self.add(res, "replace", "prefix differs", {"prefix": have.prefix}, {"prefix": want}, [
                step("netnat/remove", res, "delete", {"Name": have.name, "Prefix": have.prefix},
                     description="Remove-NetNat (old prefix)"),
                step("netnat/create", res, "create", {"Name": sw.nat.name, "Prefix": want},
                     description="New-NetNat"),
            ])

    def nat_mapping(self) -> None:
        """The sensor's published port (``sensor.access.mode: netnat``). A mapping this lab
        recorded that the playbook no longer wants is removed by ``up`` too: a stale port
        forward to the sensor is an exposure, not a convenience."""
        try:
            want = wanted_mapping(self.pb)
        except ValueError as e:
            self.block(f"sensor.access.mode is netnat but {e}",
                       "give the switch that holds sensor.management_ip a nat: section, or use "
                       "sensor.access.mode ssh-tunnel")
            want = None
        rec = self.recorded
        maps = self.facts.nat_mappings
        if want is None:
            for m in maps:
                if rec.mapping(m):
                    res = f"hyperv.netnat-mapping:{m.external_port}"
                    self.add(res, "delete", f"{_mapping_text(m)} was created by this lab and "
                             "the playbook no longer asks for it", {"mapping": _mapping_text(m)},
                             None, [step("netnat/static-remove", res, "delete",
                                         _remove_mapping_params(m),
                                         description="Remove-NetNatStaticMapping")])
            return
        res = f"hyperv.netnat-mapping:{want.external_port}"
        taken = [m for m in maps if m.protocol.lower() == want.protocol.lower()
                 and m.external_port == want.external_port]
        stale = [m for m in maps if rec.mapping(m) and not want.matches(m)]
        remove = [step("netnat/static-remove", res, "delete", _remove_mapping_params(m),
                       description="Remove-NetNatStaticMapping") for m in stale]
        exact = [m for m in taken if want.matches(m)]
        if exact:
            if remove:
                self.add(res, "update", "other mappings this lab created are no longer wanted",
                         {"mappings": [_mapping_text(m) for m in stale]}, want.to_dict(), remove)
            elif rec.mapping(exact[0]):
                self.add(res, "noop", f"{_mapping_text(exact[0])} is published")
            else:
                self.add(res, "noop", f"{_mapping_text(exact[0])} exists but this lab did not "
                         "create it: used as it is, `labctl down` leaves it",
                         state=Ownership.FOREIGN)
            return
        foreign = [m for m in taken if not rec.mapping(m)]
        if foreign:
            self.block(f"host port {want.protocol} {want.external_port} is already mapped "
                       f"({_mapping_text(foreign[0])}) and this lab did not create that mapping",
                       "pick another sensor.access.host_port, or remove the mapping yourself "
                       f"(Remove-NetNatStaticMapping -NatName '{foreign[0].nat}' "
                       f"-StaticMappingID {foreign[0].id})")
            self.add(res, "noop", "the host port is mapped by someone else (left alone)",
                     {"mapping": _mapping_text(foreign[0])}, want.to_dict(),
                     state=Ownership.FOREIGN)
            return
        add = step("netnat/static-add", res, "create", want.add_params(),
                   description="Add-NetNatStaticMapping")
        if remove:
            self.add(res, "replace", "the published port's target differs",
                     {"mappings": [_mapping_text(m) for m in stale]}, want.to_dict(),
                     [*remove, add])
        else:
            self.add(res, "create", f"host port {want.external_port} is not published",
                     None, want.to_dict(), [add])

    def span(self, sw: Switch, exists: bool) -> None:
        if not sw.span_source:
            return
        res = f"hyperv.span:{sw.name}"
        have = self.facts.switches_named(sw.name)[0] if exists and \
            self.facts.switches_named(sw.name) else None
        cap = bool(have and have.capture_enabled)
        mode = have.monitor_mode if have else None
        if cap and mode == 2:
            self.add(res, "noop", "NDIS capture on, external port MonitorMode=2")
            return
        self.add(res, "update" if have else "create", "switch is not a SPAN source yet",
                 {"ndis_capture": cap, "monitor_mode": mode},
                 {"ndis_capture": True, "monitor_mode": 2},
                 [step("vmswitch/span", res, "update", {"Name": sw.name, "MonitorMode": 2},
                       description="Enable-VMSwitchExtension + MonitorMode=2")])

    # -- VMs -----------------------------------------------------------------------------
    def vm(self, vm: VM) -> None:
        found = self.facts.vms_named(vm.name)
        res = f"hyperv.vm:{vm.name}"
        if len(found) > 1:
            self.block(f"the host has {len(found)} VMs named {vm.name!r}",
                       "rename or remove the extra VMs so the name is unique")
            self.add(res, "noop", "several VMs share this name (refused)")
            return
        self._check_iso(vm)
        if not found:
            self._create_vm(vm)
            return
        have = found[0]
        if not owned_by(have.notes, self.lab):
            self.block(f"VM {vm.name!r} already exists and is not managed by lab {self.lab}",
                       f"rename the VM in the playbook, or adopt it by adding the line "
                       f"'{marker(self.lab)}' to its Notes (Set-VM -Notes)")
            self.add(res, "noop", "exists but is not managed by this lab (left alone)",
                     state=Ownership.FOREIGN)
            return
        self._update_vm(vm, have)

    def _check_iso(self, vm: VM) -> None:
        if vm.iso and not self.facts.assumed and self.facts.iso_exists(vm.iso) is False:
            self.block(f"ISO {vm.iso!r} for VM {vm.name} does not exist on the host",
                       "download the sensor ISO from the Azure portal (Defender for IoT > Sites "
                       "and sensors > Onboard OT sensor) to that path, or fix vms[].iso")

    def _vhd(self, vm: VM, attach: bool) -> list[Step]:
        res = f"hyperv.vhd:{vm.name}"
        path = vhd_path_of(self.pb, vm)
        gb = vm.resolved()["disk_gb"]
        f = self.facts.vhd_file(path)
        steps: list[Step] = []
        users = [v.name for v in self.facts.vms
                 if any(h.path.lower() == path.lower() for h in v.vhds)]
        if f is not None and f.exists and not self.recorded.vhd(path):
            self.block(f"{path} exists and this lab did not create it"
                       + (f" (it is attached to VM {', '.join(users)})" if users else ""),
                       "move the file away or set hyperv.vhd_path to another folder: labctl "
                       "attaches (and `labctl down` deletes) only a VHDX it created")
            self.add(res, "noop", f"{path} exists and is not this lab's (left alone)",
                     state=Ownership.FOREIGN)
        elif f is not None and f.exists and users:
            self.block(f"{path}, created by this lab, is attached to VM {', '.join(users)}",
                       "detach it from that VM (Remove-VMHardDiskDrive) or set "
                       "hyperv.vhd_path to another folder")
            self.add(res, "noop", f"{path} is in use by another VM (left alone)",
                     state=Ownership.FOREIGN)
        elif f is not None and f.exists:
            if f.size_gb is not None and f.size_gb + 0.01 < gb:
                self.block(f"{path} exists but is {f.size_gb} GB, smaller than {gb} GB",
                           "delete or grow it (Resize-VHD), then run `labctl up` again")
            self.add(res, "noop", f"{path} exists (this lab created it in an earlier run; it "
                     "is reused)")
        else:
            if vm.vhd_type == "fixed" and not self.facts.assumed and \
                    self.facts.disk.free_gb is not None and self.facts.disk.free_gb < gb:
                self.block(f"the volume of {path} has {self.facts.disk.free_gb} GB free; the fixed "
                           f"VHDX needs {gb} GB", "free space, or set hyperv.vhd_path to a volume "
                                                  "with room (a fixed VHDX allocates all of it)")
            s = step("vhd/create", res, "create",
                     {"Path": path, "SizeBytes": gb * GIB, "Fixed": vm.vhd_type == "fixed"},
                     description=f"New-VHD {'-Fixed' if vm.vhd_type == 'fixed' else '-Dynamic'} "
                                 f"{gb} GB")
            self.add(res, "create", f"{path} does not exist", None,
                     {"path": path, "size_gb": gb, "type": vm.vhd_type}, [s])
        if attach:
            steps.append(step("vm/disk_attach", f"hyperv.vm:{vm.name}", "update",
                              {"Name": vm.name, "Path": path}, description="Add-VMHardDiskDrive",
                              requires_vm_off=vm.generation == 1))
        return steps

    def _desired_vm(self, vm: VM) -> dict[str, Any]:
        r = vm.resolved()
        d: dict[str, Any] = {"generation": vm.generation, "cpu": r["cpu"],
                             "memory_mb": r["memory_mb"], "dynamic_memory": vm.dynamic_memory,
                             "iso": vm.iso}
        if vm.generation == 2:
            d["first_boot"] = "dvd" if vm.boot_first == "dvd" and vm.iso else "disk"
            d["secure_boot"] = vm.secure_boot != "off"
            d["secure_boot_template"] = vm.secure_boot if vm.secure_boot != "off" else None
        return d

    def _firmware_step(self, vm: VM, want: dict[str, Any]) -> Step:
        return step("vm/firmware", f"hyperv.vm:{vm.name}", "update", {
            "Name": vm.name, "FirstBootDevice": want["first_boot"],
            "EnableSecureBoot": want["secure_boot"],
            "SecureBootTemplate": want["secure_boot_template"] or "",
        }, description="Set-VMFirmware (boot order, Secure Boot)", requires_vm_off=True)

    def _create_vm(self, vm: VM) -> None:
        res = f"hyperv.vm:{vm.name}"
        want = self._desired_vm(vm)
        self._vhd(vm, attach=False)
        r = vm.resolved()
        steps = [
            step("vm/create", res, "create", {
                "Name": vm.name, "Generation": vm.generation,
                "MemoryStartupBytes": r["memory_mb"] * MIB,
                "VHDPath": vhd_path_of(self.pb, vm),
                "VMPath": (self.pb.hyperv.vm_path or "") if self.pb.hyperv else "",
                "Notes": notes_with_marker(vm.notes, self.lab),
            }, description=f"New-VM -Generation {vm.generation}"),
            step("vm/memory", res, "update", {
                "Name": vm.name, "StartupBytes": r["memory_mb"] * MIB,
                "DynamicMemoryEnabled": vm.dynamic_memory,
            }, description="Set-VMMemory", requires_vm_off=True),
            step("vm/processor", res, "update", {"Name": vm.name, "Count": r["cpu"]},
                 description="Set-VMProcessor", requires_vm_off=True),
        ]
        if vm.iso:
            steps.append(step("vm/dvd", res, "update", {"Name": vm.name, "Path": vm.iso},
                              description="Add-VMDvdDrive", requires_vm_off=True))
        if vm.generation == 2:
            steps.append(self._firmware_step(vm, want))
        else:
            self.plan.warnings.append(
                f"VM {vm.name} is Generation 1: boot order and Secure Boot are not managed "
                "(the D4IoT sensor wants Generation 2)")
        self.add(res, "create", f"VM {vm.name} does not exist", None, want, steps)
        for nic in vm.nics:
            self._nic(vm, nic, None, vm_off=True)
        if vm.start:
            self.add(f"hyperv.vmstate:{vm.name}", "start", "start: true", {"state": None},
                     {"state": "Running"},
                     [step("vm/start", f"hyperv.vmstate:{vm.name}", "start", {"Name": vm.name},
                           description="Start-VM")])

    def _update_vm(self, vm: VM, have: VmFacts) -> None:
        res = f"hyperv.vm:{vm.name}"
        want = self._desired_vm(vm)
        if have.generation != vm.generation:
            self.block(f"VM {vm.name} is Generation {have.generation}; the playbook wants "
                       f"{vm.generation}", "a VM's generation cannot change: run `labctl down` "
                                           "and `labctl up` to rebuild it")
        before: dict[str, Any] = {}
        after: dict[str, Any] = {}
        steps: list[Step] = []
        if not have.vhds:
            steps.extend(self._vhd(vm, attach=True))
            before["vhd"], after["vhd"] = None, vhd_path_of(self.pb, vm)
        else:
            size = have.vhds[0].size_gb
            if size is not None and size + 0.01 < want_disk(vm):
                self.block(f"VM {vm.name}'s disk is {size} GB, smaller than {want_disk(vm)} GB "
                           "(its profile)", "grow it with Resize-VHD or rebuild the VM")
        if have.memory_startup_mb != want["memory_mb"] or have.dynamic_memory != vm.dynamic_memory:
            before.update(memory_mb=have.memory_startup_mb, dynamic_memory=have.dynamic_memory)
            after.update(memory_mb=want["memory_mb"], dynamic_memory=vm.dynamic_memory)
            steps.append(step("vm/memory", res, "update", {
                "Name": vm.name, "StartupBytes": want["memory_mb"] * MIB,
                "DynamicMemoryEnabled": vm.dynamic_memory}, description="Set-VMMemory",
                requires_vm_off=True))
        if have.cpu != want["cpu"]:
            before["cpu"], after["cpu"] = have.cpu, want["cpu"]
            steps.append(step("vm/processor", res, "update", {"Name": vm.name,
                                                               "Count": want["cpu"]},
                              description="Set-VMProcessor", requires_vm_off=True))
        if vm.iso and vm.iso.lower() not in [d.lower() for d in have.dvd]:
            before["iso"], after["iso"] = (have.dvd[0] if have.dvd else None), vm.iso
            steps.append(step("vm/dvd", res, "update", {"Name": vm.name, "Path": vm.iso},
                              description="Set-VMDvdDrive" if have.dvd else "Add-VMDvdDrive",
                              requires_vm_off=not have.dvd))
        if vm.generation == 2 and have.generation == 2:
            cur = {"first_boot": have.first_boot, "secure_boot": have.secure_boot,
                   "secure_boot_template": have.secure_boot_template if have.secure_boot else None}
            wanted = {k: want[k] for k in cur}
            if cur != wanted:
                for k in cur:
                    if cur[k] != wanted[k]:
                        before[k], after[k] = cur[k], wanted[k]
                steps.append(self._firmware_step(vm, want))
        if steps:
            self.add(res, "update", "settings differ", before, after, steps)
        else:
            self.add(res, "noop", f"VM {vm.name} has the wanted settings")
        vm_off = not have.running
        desired_names = [n.name.lower() for n in vm.nics]
        for nic in vm.nics:
            self._nic(vm, nic, have, vm_off=vm_off)
        present = [a.name.lower() for a in have.adapters if a.name.lower() in desired_names]
        if present != [n for n in desired_names if n in present]:
            self.plan.warnings.append(
                f"VM {vm.name}: adapters are in the order {present}, the playbook says "
                f"{desired_names}; the sensor takes the FIRST adapter as management. Rebuild the "
                "VM (`labctl down` + `labctl up`) to fix the order")
        extra = [a.name for a in have.adapters if a.name.lower() not in desired_names]
        if extra:
            self.plan.warnings.append(f"VM {vm.name} has adapters not in the playbook: "
                                      f"{', '.join(extra)} (left alone)")
        if vm.start and have.state != "Running":
            self.add(f"hyperv.vmstate:{vm.name}", "start", f"VM is {have.state}",
                     {"state": have.state}, {"state": "Running"},
                     [step("vm/start", f"hyperv.vmstate:{vm.name}", "start", {"Name": vm.name},
                           description="Start-VM")])
        else:
            self.add(f"hyperv.vmstate:{vm.name}", "noop", f"VM is {have.state}")

    def _nic(self, vm: VM, nic: Nic, have_vm: VmFacts | None, vm_off: bool) -> None:
        res = f"hyperv.vmnic:{vm.name}/{nic.name}"
        want_mirror = _MIRROR[nic.port_mirroring]
        want_vmq = 100 if nic.vmq else 0
        want_vlan = _vlan_desired(nic)
        have = have_vm.adapter(nic.name) if have_vm else None
        want = {"switch": nic.switch, "port_mirroring": want_mirror, "vmq": nic.vmq}
        if want_vlan:
            want["vlan"] = _want_vlan_text(want_vlan)
        set_params = {"VMName": vm.name, "Name": nic.name, "PortMirroring": want_mirror,
                      "VmqWeight": want_vmq}
        vlan_params = {"VMName": vm.name, "Name": nic.name, **want_vlan} if want_vlan else None
        if have is None:
            add = {"VMName": vm.name, "Name": nic.name, "SwitchName": nic.switch,
                   "StaticMacAddress": (nic.mac or "").replace(":", "").replace("-", "").upper()}
            steps = [step("vmnic/add", res, "create", add, description="Add-VMNetworkAdapter",
                          requires_vm_off=vm.generation == 1)]
            if want_mirror != "None" or not nic.vmq:
                steps.append(step("vmnic/set", res, "update", set_params,
                                  description="Set-VMNetworkAdapter -PortMirroring -VmqWeight"))
            if vlan_params:
                steps.append(step("vmnic/vlan", res, "update", vlan_params,
                                  description="Set-VMNetworkAdapterVlan"))
            self.add(res, "create", f"adapter {nic.name} does not exist", None, want, steps)
            return
        before: dict[str, Any] = {}
        after: dict[str, Any] = {}
        steps = []
        if (have.switch or "").lower() != nic.switch.lower():
            before["switch"], after["switch"] = have.switch, nic.switch
            steps.append(step("vmnic/connect", res, "update",
                              {"VMName": vm.name, "Name": nic.name, "SwitchName": nic.switch},
                              description="Connect-VMNetworkAdapter"))
        if have.port_mirroring.lower() != want_mirror.lower() or (have.vmq_weight > 0) != nic.vmq:
            before.update(port_mirroring=have.port_mirroring, vmq=have.vmq_weight > 0)
            after.update(port_mirroring=want_mirror, vmq=nic.vmq)
            steps.append(step("vmnic/set", res, "update", set_params,
                              description="Set-VMNetworkAdapter -PortMirroring -VmqWeight"))
        if want_vlan and not _vlan_matches(want_vlan, have.vlan):
            before["vlan"], after["vlan"] = _vlan_text(have.vlan), _want_vlan_text(want_vlan)
            steps.append(step("vmnic/vlan", res, "update", vlan_params or {},
                              description="Set-VMNetworkAdapterVlan"))
        if nic.mac:
            want_mac = nic.mac.replace(":", "").replace("-", "").upper()
            if have.mac.replace(":", "").replace("-", "").upper() != want_mac:
                self.plan.warnings.append(
                    f"VM {vm.name} adapter {nic.name} has MAC {have.mac or '?'}, the playbook "
                    f"says {nic.mac}; labctl sets a MAC only when it adds the adapter (change it "
                    "with the VM off: Set-VMNetworkAdapter -StaticMacAddress)")
        if steps:
            self.add(res, "update", "adapter settings differ", before, after, steps)
        else:
            self.add(res, "noop", f"adapter {nic.name} has the wanted settings")


def want_disk(vm: VM) -> int:
    return int(vm.resolved()["disk_gb"])


def plan_up(pb: Playbook, facts: HostFacts, recorded: Recorded | None = None) -> Diff:
    """Desired (playbook) + facts + the lab's record -> the plan that converges the host,
    and its blockers."""
    b = _Builder(pb, facts, recorded or Recorded.of(scope_of(pb), ()))
    if not facts.hyperv_module:
        b.block("the Hyper-V PowerShell module is not installed on the host",
                "Windows Server: Install-WindowsFeature -Name Hyper-V -IncludeManagementTools "
                "-Restart; Windows client: Enable-WindowsOptionalFeature -Online -FeatureName "
                "Microsoft-Hyper-V-All")
    exists: dict[str, bool] = {}
    for sw in pb.switches:
        exists[sw.name] = b.switch(sw)
    for sw in pb.switches:
        b.host_net(sw, bool(facts.switches_named(sw.name)) and exists[sw.name])
        b.nat(sw)
    b.nat_mapping()
    for sw in pb.switches:
        if exists[sw.name]:
            b.span(sw, bool(facts.switches_named(sw.name)))
    for vm in pb.vms:
        b.vm(vm)
    # Resources this lab created that the playbook no longer lists: `up` leaves them alone,
    # `down` would remove them. Say so rather than surprise anyone later.
    names = {v.name.lower() for v in pb.vms} | {s.name.lower() for s in pb.switches}
    for kind, items in (("VM", facts.vms), ("switch", facts.switches)):
        for it in items:
            if owned_by(it.notes, pb.lab) and it.name.lower() not in names:
                b.plan.warnings.append(
                    f"{kind} {it.name} carries this lab's marker but is not in the playbook: "
                    "`labctl up` leaves it alone, `labctl down` removes it")
    # A running VM cannot take changes that need it off: refuse, and say which ones.
    for vm in pb.vms:
        for have in facts.vms_named(vm.name):
            if have.running:
                off = [s for s in b.plan.steps if s.requires_vm_off and
                       (s.resource == f"hyperv.vm:{vm.name}" or
                        s.resource.startswith(f"hyperv.vmnic:{vm.name}/"))]
                if off:
                    b.block(f"VM {vm.name} is {have.state} and these changes need it off: "
                            f"{', '.join(sorted({s.description or s.name for s in off}))}",
                            f"stop it first (Stop-VM -Name '{vm.name}'), then run `labctl up`; "
                            "labctl never stops a VM on its own during `up`")
    return Diff(b.plan)


def plan_down(pb: Playbook, facts: HostFacts, recorded: Recorded | None = None) -> Plan:
    """Remove only what this lab can prove it created, in reverse order of creation."""
    lab = pb.lab
    rec = recorded or Recorded.of(scope_of(pb), ())
    plan = Plan(PROVIDER, lab)

    def add(res: str, action: Action | str, reason: str, steps: list[Step],
            state: Ownership | None = None) -> None:
        plan.changes.append(Change(res, Action(action) if steps else Action.NOOP, reason, None,
                                   None, tuple(steps), state))

    order = {vm.name.lower(): i for i, vm in enumerate(pb.vms)}
    planned = {vm.name.lower(): vhd_path_of(pb, vm).lower() for vm in pb.vms}
    vms = sorted(facts.vms, key=lambda v: -order.get(v.name.lower(), -1))
    removed_vms = [v for v in vms if owned_by(v.notes, lab)]

    def users(path: str) -> list[VmFacts]:
        return [v for v in facts.vms if any(h.path.lower() == path.lower() for h in v.vhds)]

    def free_after_down(path: str) -> bool:
        """No VM that `down` keeps uses the file (identity, not name: two VMs may share one)."""
        return all(any(u is r for r in removed_vms) for u in users(path))

    disks: list[tuple[str, str, str]] = []  # (resource, path, reason) to delete after the VMs
    seen: set[str] = set()
    for v in vms:
        res = f"hyperv.vm:{v.name}"
        if not owned_by(v.notes, lab):
            if v.name.lower() in order:
                add(res, "noop", "not created by this lab (no ownership marker): left alone", [],
                    Ownership.FOREIGN)
            continue
        steps: list[Step] = []
        if v.running:
            steps.append(step("vm/stop", res, "stop", {"Name": v.name, "Lab": lab},
                              description="Stop-VM"))
        steps.append(step("vm/remove", res, "delete", {"Name": v.name, "Lab": lab},
                          description="Remove-VM"))
        add(res, "delete", f"VM {v.name} carries {marker(lab)}", steps)
        for h in v.vhds:
            key = h.path.lower()
            if key in seen:
                continue
            seen.add(key)
            dres = f"hyperv.vhd:{_stem(h.path)}"
            ours = rec.vhd(h.path) or planned.get(v.name.lower()) == key
            if not ours:
                add(dres, "noop", f"{h.path} is attached to VM {v.name} but this lab did not "
                    "create it: left alone", [], Ownership.FOREIGN)
            elif not free_after_down(h.path):
                others = ", ".join(u.name for u in users(h.path) if u is not v)
                add(dres, "noop", f"{h.path} is also attached to VM {others}, which is not "
                    "this lab's: left alone", [], Ownership.FOREIGN)
            else:
                disks.append((dres, h.path, f"VM {v.name}'s disk, created by this lab"))
    # VHDX files not attached to a VM of ours: the record's (an interrupted `up`, or a VM that
    # went away) and the planned paths, which are deleted only when the record names them.
    candidates = list(rec.vhd_paths) + [p for p in planned.values() if p not in rec.vhd_paths]
    for path in candidates:
        if path in seen:
            continue
        seen.add(path)
        f = facts.vhd_file(path)
        if f is None or not f.exists:
            continue
        shown = f.path
        dres = f"hyperv.vhd:{_stem(shown)}"
        if not rec.vhd(path):
            add(dres, "noop", f"{shown} was not created by this lab: left alone", [],
                Ownership.FOREIGN)
        elif not free_after_down(path):
            names = ", ".join(u.name for u in users(path))
            add(dres, "noop", f"{shown}, created by this lab, is attached to VM {names}, which "
                "is not this lab's: left alone", [], Ownership.FOREIGN)
        else:
            disks.append((dres, shown, "VHDX this lab created (recorded), attached to no VM"))
    for dres, path, reason in disks:
        add(dres, "delete", reason, [step("vhd/remove", dres, "delete", {"Path": path},
                                          description="delete the VHDX labctl created")])
    want_map: WantedMapping | None
    try:
        want_map = wanted_mapping(pb)
    except ValueError:
        want_map = None
    for m in facts.nat_mappings:  # before the NATs: a mapping lives inside one
        res = f"hyperv.netnat-mapping:{m.external_port}"
        if rec.mapping(m):
            add(res, "delete", f"{_mapping_text(m)} was created by this lab",
                [step("netnat/static-remove", res, "delete", _remove_mapping_params(m),
                      description="Remove-NetNatStaticMapping")])
        elif want_map is not None and m.external_port == want_map.external_port:
            add(res, "noop", f"{_mapping_text(m)} was not created by this lab (not in its "
                "record): left alone", [], Ownership.FOREIGN)
    nat_seen: set[Created] = set()
    for sw in reversed(pb.switches):
        if sw.nat is None:
            continue
        have = facts.nat(sw.nat.name)
        res = f"hyperv.netnat:{sw.nat.name}"
        if have is None:
            continue
        nat_seen.add(nat_entry(rec.scope, have.name, have.prefix))
        if rec.nat(have.name, have.prefix):
            add(res, "delete", f"NetNat {have.name} ({have.prefix}) was created by this lab",
                [step("netnat/remove", res, "delete", {"Name": have.name, "Prefix": have.prefix},
                      description="Remove-NetNat")])
        else:
            add(res, "noop", f"NetNat {have.name} ({have.prefix}) was not created by this lab "
                "(not in its record): left alone", [], Ownership.FOREIGN)
    for entry in rec.nats:  # created by this lab, no longer in the playbook
        for n in facts.nats:
            e = nat_entry(rec.scope, n.name, n.prefix)
            if e == entry and e not in nat_seen:
                nat_seen.add(e)
                res = f"hyperv.netnat:{n.name}"
                add(res, "delete", f"NetNat {n.name} ({n.prefix}) was created by this lab "
                    "(no longer in the playbook)",
                    [step("netnat/remove", res, "delete", {"Name": n.name, "Prefix": n.prefix},
                          description="Remove-NetNat")])
    owned_switches = [s for s in facts.switches if owned_by(s.notes, lab)]
    for sw in reversed(pb.switches):
        if sw.host_ip is None or not any(s.name.lower() == sw.name.lower()
                                         for s in owned_switches):
            continue
        if str(sw.host_ip) in _manual_ips(facts, sw.name):
            res = f"hyperv.hostip:{sw.name}"
            add(res, "delete", f"vEthernet ({sw.name}) has {sw.host_ip}",
                [step("hostnet/ip_remove", res, "delete",
                      {"InterfaceAlias": f"vEthernet ({sw.name})",
                       "IPAddress": str(sw.host_ip.ip)}, description="Remove-NetIPAddress")])
    sorder = {s.name.lower(): i for i, s in enumerate(pb.switches)}
    for s in sorted(facts.switches, key=lambda s: -sorder.get(s.name.lower(), -1)):
        res = f"hyperv.vmswitch:{s.name}"
        if owned_by(s.notes, lab):
            add(res, "delete", f"switch {s.name} carries {marker(lab)}",
                [step("vmswitch/remove", res, "delete", {"Name": s.name, "Lab": lab},
                      description="Remove-VMSwitch")])
        elif s.name.lower() in sorder:
            add(res, "noop", "not created by this lab (no ownership marker): left alone", [],
                Ownership.FOREIGN)
    if not facts.hyperv_module and plan.steps:
        plan.block("the Hyper-V PowerShell module is not installed on the host",
                   "install the Hyper-V management tools")
    return plan
