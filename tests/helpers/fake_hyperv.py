"""A stateful fake Hyper-V host behind the PowerShellRunner interface.

It executes each script by its ``RenderedScript.name`` against in-memory switches, host
vNICs (IPs, DNS), NetNat, VHDX files and VMs (memory, CPU, firmware, DVD, adapters with
mirroring/VMQ/VLAN), following the cmdlets' real behaviour where it matters for labctl
(defender-for-iot.md §3): duplicate VM/switch/adapter names are *allowed* (as on Hyper-V),
static memory and CPU count cannot change on a running VM, New-VHD refuses an existing file,
New-NetNat refuses an overlapping prefix, removing a switch disconnects its VM adapters.

Every call is recorded. A fault can be injected at any write step k (1-based): an error
record (RemoteCommandError), an authentication failure (AuthError) or a timeout
(ConnectTimeout), optionally *after* the step took effect (the host did it, the answer was
lost). Parameters are checked against the script's own ``param(...)`` block.

Each VM's Uptime is stateful, as Get-VM reports it: it counts on ``clock`` (inject a fake
clock in tests) from the VM's start, is 0 while it is off, and restarts at 0 after a stop and
a start (``uptime_seconds`` in the facts, whole seconds like the template's Floor).
"""

from __future__ import annotations

import copy
import ipaddress
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labctl.core.errors import AuthError, ConnectTimeout, RemoteCommandError
from labctl.hyperv.scripts import declared_params
from labctl.transport.powershell import RenderedScript

SENSOR_ISO = r"D:\ISO\defender-for-iot-sensor.iso"


def _owned(notes: str | None, lab: str) -> bool:
    # Test-LabctlOwned of the PowerShell prelude, restated: one line of the Notes, trimmed
    # of spaces, tabs and CR, equals the marker (case-sensitive, -ceq).
    want = "managed-by: labctl lab=" + lab
    return any(line.strip(" \t\r") == want for line in (notes or "").split("\n"))


def _vlan_id_list(text: str) -> list[int]:
    """Set-VMNetworkAdapterVlan -AllowedVlanIdList: a string of ids and ranges separated by
    commas ("1-100,200"), each id 1-4094; the cmdlet stores the ids and
    Get-VMNetworkAdapterVlan returns them as an int array (AllowedVlanIdList, Int32[])."""
    ids: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)
        if not m:
            raise _PsError(f"Cannot validate argument on parameter 'AllowedVlanIdList': "
                           f"'{part}' is not a VLAN id or range.")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if not 1 <= lo <= hi <= 4094:
            raise _PsError(f"The VLAN ID range {part} is not valid: ids are 1 to 4094.")
        ids.update(range(lo, hi + 1))
    return sorted(ids)


class _PsError(Exception):
    pass


@dataclass
class Call:
    name: str
    params: dict[str, Any]
    write: bool


@dataclass
class FakeHyperVHost:
    """Implements PowerShellRunner. Build with :meth:`reference` for the reference host."""

    host: str = "hyperv01.lab.example"
    hyperv_module: bool = True
    default_route_alias: str | None = "Ethernet"
    net_adapters: list[dict[str, Any]] = field(default_factory=list)
    switches: list[dict[str, Any]] = field(default_factory=list)
    vnics: list[dict[str, Any]] = field(default_factory=list)
    nats: list[dict[str, Any]] = field(default_factory=list)
    nat_mappings: list[dict[str, Any]] = field(default_factory=list)  # Get-NetNatStaticMapping
    vms: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # lower(path) -> vhd info
    isos: set[str] = field(default_factory=set)
    free_gb: dict[str, float] = field(default_factory=lambda: {"C:": 60.0, "D:": 500.0})
    calls: list[Call] = field(default_factory=list)
    # fault injection
    fail_at: int | None = None  # the k-th write call fails
    fault: str = "error"  # error | auth | timeout
    fault_after_effect: bool = False
    fail_facts: str | None = None  # error | auth | timeout on facts/read
    leak_in_errors: str | None = None  # a value a sloppy remote error message would echo
    closed: bool = False
    _ids: int = 0
    #: what VM uptimes count on (time.monotonic; tests inject their clock)
    clock: Callable[[], float] = time.monotonic

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def reference(cls) -> FakeHyperVHost:
        """The reference lab's host before `labctl up`: two physical NICs (Ethernet carries
        the default route, Ethernet 2 is cabled to the router's IoT port), the built-in
        'Default Switch', an unrelated VM 'kali', the sensor ISO on D:."""
        h = cls()
        h.net_adapters = [
            {"name": "Ethernet", "description": "Intel(R) Ethernet Connection (7) I219-LM",
             "status": "Up"},
            {"name": "Ethernet 2", "description": "Realtek USB GbE Family Controller",
             "status": "Up"},
        ]
        h._new_switch("Default Switch", "Internal", None, False, "")
        h._vnic("Default Switch")["ips"] = [
            {"address": "172.23.112.1", "prefix_length": 20, "origin": "Manual"}]
        h.nats.append({"name": "DefaultSwitchNat", "prefix": "172.23.112.0/20"})
        h.files[r"d:\vms\kali.vhdx"] = {"path": r"D:\VMs\kali.vhdx", "type": "Dynamic",
                                         "size_gb": 80.0}
        kali = h._new_vm("kali", 2, 4096, r"D:\VMs\kali.vhdx", "my pentest box")
        kali["state"] = "Running"
        kali["started_at"] = h.clock()
        kali["adapters"].append(h._adapter("Network Adapter", "Default Switch"))
        h.isos.add(SENSOR_ISO.lower())
        return h

    def _next_id(self) -> str:
        self._ids += 1
        return f"00000000-0000-4000-8000-{self._ids:012d}"

    def _new_switch(self, name: str, typ: str, adapter: str | None, allow_mgmt: bool,
                    notes: str) -> dict[str, Any]:
        sw = {"name": name, "id": self._next_id(), "type": typ, "notes": notes,
              "net_adapter": adapter, "allow_management_os": allow_mgmt if typ == "External"
              else typ == "Internal",
              "extensions": [{"name": "Microsoft Windows Filtering Platform", "enabled": True},
                             {"name": "Microsoft NDIS Capture", "enabled": False}],
              "monitor_mode": None}
        self.switches.append(sw)
        if typ == "Internal" or (typ == "External" and allow_mgmt):
            self.vnics.append({"name": name, "switch": name, "alias": f"vEthernet ({name})",
                               "ips": [{"address": "169.254.10.20", "prefix_length": 16,
                                        "origin": "WellKnown"}], "dns": []})
        return sw

    def _new_vm(self, name: str, gen: int, mem_mb: int, vhd: str | None,
                notes: str) -> dict[str, Any]:
        vm = {"name": name, "id": self._next_id(), "state": "Off", "notes": notes,
              "generation": gen, "cpu": 1, "memory_startup_mb": mem_mb,
              "dynamic_memory": False,
              "secure_boot": True if gen == 2 else None,
              "secure_boot_template": "MicrosoftWindows" if gen == 2 else None,
              "first_boot": ("disk" if vhd else "network") if gen == 2 else None,
              "dvd": [], "dvd_drives": 0, "adapters": [], "vhds": []}
        if vhd:
            info = self.files[vhd.lower()]
            vm["vhds"].append({"path": info["path"], "type": info["type"],
                               "size_gb": info["size_gb"]})
        self.vms.append(vm)
        return vm

    @staticmethod
    def _adapter(name: str, switch: str | None, mac: str = "") -> dict[str, Any]:
        return {"name": name, "switch": switch, "port_mirroring": "None", "vmq_weight": 100,
                "mac": mac or "00155D000000", "static_mac": bool(mac),
                "vlan": {"mode": "Untagged", "access_id": 0, "allowed": [], "native": 0}}

    # -- lookups --------------------------------------------------------------------------------
    def _switch(self, name: str) -> list[dict[str, Any]]:
        return [s for s in self.switches if s["name"].lower() == name.lower()]

    def _vm(self, name: str) -> list[dict[str, Any]]:
        found = [v for v in self.vms if v["name"].lower() == name.lower()]
        if not found:
            raise _PsError(f"Hyper-V was unable to find a virtual machine with name \"{name}\".")
        return found

    def _vnic(self, switch: str) -> dict[str, Any]:
        for v in self.vnics:
            if v["switch"].lower() == switch.lower():
                return v
        raise KeyError(switch)

    def _alias(self, alias: str) -> dict[str, Any]:
        for v in self.vnics:
            if v["alias"].lower() == alias.lower():
                return v
        raise _PsError(f"No MSFT_NetAdapter objects found with property 'InterfaceAlias' equal "
                       f"to '{alias}'.")

    def _adapters(self, vm_name: str, name: str) -> list[dict[str, Any]]:
        out = [a for vm in self._vm(vm_name) for a in vm["adapters"]
               if a["name"].lower() == name.lower()]
        if not out:
            raise _PsError(f"No network adapter is found with the given input ({name}).")
        return out

    @staticmethod
    def _off(vm: dict[str, Any], what: str) -> None:
        if vm["state"] != "Off":
            raise _PsError(f"{what}: the operation cannot be performed while the virtual machine "
                           f"'{vm['name']}' is in its current state ({vm['state']}).")

    # -- PowerShellRunner -------------------------------------------------------------------------
    @property
    def writes(self) -> list[Call]:
        return [c for c in self.calls if c.write]

    def run(self, script: RenderedScript) -> Any:
        params = dict(script.plain_params())
        declared = declared_params(script.name)
        unknown = set(params) - set(declared)
        missing = {k for k, mandatory in declared.items() if mandatory and k not in params}
        if unknown or missing:
            raise AssertionError(f"{script.name}: unknown params {sorted(unknown)}, missing "
                                 f"{sorted(missing)}")
        if "param(" not in script.body:
            raise AssertionError(f"{script.name}: body has no param block")
        write = script.name != "facts/read"
        self.calls.append(Call(script.name, copy.deepcopy(params), write))
        if not write and self.fail_facts:
            self._raise(script.name, self.fail_facts)
        k = len(self.writes)
        failing = write and self.fail_at is not None and k == self.fail_at
        if failing and not self.fault_after_effect:
            self._raise(script.name, self.fault)
        handler = getattr(self, "_do_" + script.name.replace("/", "_").replace("-", "_"))
        try:
            snapshot = copy.deepcopy(self._state()) if write else None
            result = handler(params)
        except _PsError as e:
            # $ErrorActionPreference='Stop': a terminating error record; the script stops there.
            # Cmdlets that ran before the error keep their effect, as on a real host; our
            # handlers validate first, so a failed call leaves the state as it was.
            if snapshot is not None:
                self._restore(snapshot)
            raise RemoteCommandError(script.name, [str(e)]) from None
        if failing:
            self._raise(script.name, self.fault)
        return result

    def _raise(self, name: str, kind: str) -> None:
        leak = f" (password was {self.leak_in_errors})" if self.leak_in_errors else ""
        if kind == "auth":
            raise AuthError(f"{self.host}: the server rejected the credentials{leak}")
        if kind == "timeout":
            raise ConnectTimeout(f"{self.host}: no answer to {name} within 120 s{leak}")
        raise RemoteCommandError(name, [f"injected failure{leak}"])

    def _state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("switches", "vnics", "nats", "nat_mappings", "vms",
                                             "files")}

    def _restore(self, snap: dict[str, Any]) -> None:
        for k, v in snap.items():
            setattr(self, k, v)

    def close(self) -> None:
        self.closed = True

    # -- facts ----------------------------------------------------------------------------------
    def _do_facts_read(self, p: dict[str, Any]) -> dict[str, Any]:
        vhd_path = p["VhdPath"]
        drive = vhd_path[:2].upper()
        hv = self.hyperv_module
        return copy.deepcopy({
            "hyperv_module": hv,
            "default_route_alias": self.default_route_alias,
            "net_adapters": self.net_adapters,
            "switches": self.switches if hv else [],
            "host_vnics": self.vnics if hv else [],
            "nats": self.nats,
            "nat_mappings": self.nat_mappings,
            "vms": [self._vm_facts(vm) for vm in self.vms] if hv else [],
            "disk": {"path": vhd_path, "exists": True, "free_gb": self.free_gb.get(drive)},
            "isos": [{"path": i, "exists": i.lower() in self.isos}
                     for i in p.get("IsoPaths") or []],
            "vhd_files": [{"path": f, "exists": f.lower() in self.files,
                           "type": self.files.get(f.lower(), {}).get("type"),
                           "size_gb": self.files.get(f.lower(), {}).get("size_gb")}
                          for f in p.get("VhdFiles") or []],
        })

    # -- switches -------------------------------------------------------------------------------
    def _do_vmswitch_create(self, p: dict[str, Any]) -> dict[str, Any]:
        typ = p["SwitchType"]
        adapter = p.get("NetAdapterName") or None
        if typ == "External":
            if not adapter:
                raise _PsError("an External switch needs NetAdapterName")
            names = [a["name"].lower() for a in self.net_adapters]
            if adapter.lower() not in names:
                raise _PsError(f"No MSFT_NetAdapter objects found with property 'Name' equal to "
                               f"'{adapter}'.")
            if any((s["net_adapter"] or "").lower() == adapter.lower() for s in self.switches):
                raise _PsError(f"Failed while adding virtual Ethernet switch connections: the "
                               f"adapter '{adapter}' is already bound to a virtual switch.")
        sw = self._new_switch(p["Name"], typ, adapter, bool(p.get("AllowManagementOS")),
                              p["Notes"])
        return {"changed": True, "name": sw["name"], "id": sw["id"], "type": typ}

    def _only_one_owned_switch(self, p: dict[str, Any]) -> dict[str, Any]:
        sw = self._switch(p["Name"])
        if len(sw) != 1:
            raise _PsError(f"expected one switch named {p['Name']}, found {len(sw)}")
        if not _owned(sw[0]["notes"], p["Lab"]):
            raise _PsError(f"switch {p['Name']} is not owned by lab {p['Lab']}")
        return sw[0]

    def _do_vmswitch_update(self, p: dict[str, Any]) -> dict[str, Any]:
        sw = self._only_one_owned_switch(p)
        sw["notes"] = p["Notes"]
        if p.get("SetAllowManagementOS"):
            sw["allow_management_os"] = bool(p["AllowManagementOS"])
            has = any(v["switch"].lower() == sw["name"].lower() for v in self.vnics)
            if sw["allow_management_os"] and not has:
                self.vnics.append({"name": sw["name"], "switch": sw["name"],
                                   "alias": f"vEthernet ({sw['name']})", "ips": [], "dns": []})
            if not sw["allow_management_os"]:
                self.vnics = [v for v in self.vnics if v["switch"].lower() != sw["name"].lower()]
        return {"changed": True, "name": p["Name"]}

    def _do_vmswitch_span(self, p: dict[str, Any]) -> dict[str, Any]:
        found = self._switch(p["Name"])
        if not found:
            raise _PsError("Hyper-V was unable to find a virtual switch with name "
                           f"\"{p['Name']}\".")
        for sw in found:
            if sw["type"] != "External":
                raise _PsError("the -ExternalPort parameter needs an External virtual switch")
        for sw in found:
            for e in sw["extensions"]:
                if e["name"] == "Microsoft NDIS Capture":
                    e["enabled"] = True
            sw["monitor_mode"] = int(p.get("MonitorMode", 2))
        return {"changed": True, "name": p["Name"], "monitor_mode": int(p.get("MonitorMode", 2)),
                "capture_enabled": True}

    def _do_vmswitch_remove(self, p: dict[str, Any]) -> dict[str, Any]:
        removed = 0
        for sw in list(self._switch(p["Name"])):
            if _owned(sw["notes"], p["Lab"]):
                self.switches.remove(sw)
                self.vnics = [v for v in self.vnics if v["switch"].lower() != sw["name"].lower()]
                for vm in self.vms:
                    for a in vm["adapters"]:
                        if (a["switch"] or "").lower() == sw["name"].lower():
                            a["switch"] = None
                removed += 1
        return {"changed": removed > 0, "name": p["Name"], "removed": removed}

    # -- host vNIC ------------------------------------------------------------------------------
    def _do_hostnet_ip_set(self, p: dict[str, Any]) -> dict[str, Any]:
        v = self._alias(p["InterfaceAlias"])
        want = (p["IPAddress"], int(p["PrefixLength"]))
        ipaddress.IPv4Interface(f"{want[0]}/{want[1]}")
        removed = [f"{i['address']}/{i['prefix_length']}" for i in v["ips"]
                   if i["origin"] == "Manual" and (i["address"], i["prefix_length"]) != want]
        v["ips"] = [i for i in v["ips"] if i["origin"] != "Manual" or
                    (i["address"], i["prefix_length"]) == want]
        added = None
        if not any((i["address"], i["prefix_length"]) == want for i in v["ips"]):
            v["ips"].append({"address": want[0], "prefix_length": want[1], "origin": "Manual"})
            added = f"{want[0]}/{want[1]}"
        return {"changed": bool(removed or added), "alias": v["alias"], "removed": removed,
                "added": added}

    def _do_hostnet_ip_remove(self, p: dict[str, Any]) -> dict[str, Any]:
        v = self._alias(p["InterfaceAlias"])
        before = len(v["ips"])
        v["ips"] = [i for i in v["ips"] if i["address"] != p["IPAddress"]]
        return {"changed": len(v["ips"]) != before, "alias": v["alias"]}

    def _do_hostnet_dns_set(self, p: dict[str, Any]) -> dict[str, Any]:
        v = self._alias(p["InterfaceAlias"])
        for a in p["ServerAddresses"]:
            ipaddress.ip_address(a)
        v["dns"] = list(p["ServerAddresses"])
        return {"changed": True, "alias": v["alias"], "dns": v["dns"]}

    # -- NetNat ---------------------------------------------------------------------------------
    def _do_netnat_create(self, p: dict[str, Any]) -> dict[str, Any]:
        new = ipaddress.ip_network(p["Prefix"])
        for n in self.nats:
            if ipaddress.ip_network(n["prefix"], strict=False).overlaps(new):
                raise _PsError("The parameter is incorrect. (an existing NAT overlaps "
                               f"{p['Prefix']})")
        self.nats.append({"name": p["Name"], "prefix": p["Prefix"]})
        return {"changed": True, "name": p["Name"], "prefix": p["Prefix"]}

    def _do_netnat_remove(self, p: dict[str, Any]) -> dict[str, Any]:
        keep = [n for n in self.nats if not (n["name"].lower() == p["Name"].lower() and
                                              n["prefix"] == p["Prefix"])]
        changed = len(keep) != len(self.nats)
        self.nats = keep
        if changed:  # a NAT's static mappings go with it
            self.nat_mappings = [m for m in self.nat_mappings
                                 if m["nat"].lower() != p["Name"].lower()]
        return {"changed": changed, "name": p["Name"]}

    # -- NetNat static mappings (Add-/Get-/Remove-NetNatStaticMapping) ------------------------
    def add_static_mapping(self, nat: str, protocol: str, external_ip: str, external_port: int,
                           internal_ip: str, internal_port: int) -> dict[str, Any]:
        """Add-NetNatStaticMapping as WinNAT behaves: the NAT must exist, the protocol is TCP
        or UDP, and an external port is taken host-wide (WinNAT refuses a second mapping of
        the same protocol and port, whatever the NAT)."""
        if not any(n["name"].lower() == nat.lower() for n in self.nats):
            raise _PsError(f"No MSFT_NetNat objects found with property 'Name' equal to '{nat}'")
        if protocol.upper() not in ("TCP", "UDP"):
            raise _PsError(f"Cannot bind parameter 'Protocol': '{protocol}' is not TCP or UDP")
        if not 1 <= int(external_port) <= 65535 or not 1 <= int(internal_port) <= 65535:
            raise _PsError("The parameter is incorrect. (port out of range)")
        for m in self.nat_mappings:
            if m["protocol"].upper() == protocol.upper() and m["external_port"] == int(
                    external_port):
                raise _PsError("The process cannot access the file because it is being used "
                               "by another process. (the external port is already mapped)")
        self._ids += 1
        m = {"id": self._ids, "nat": next(n["name"] for n in self.nats
                                          if n["name"].lower() == nat.lower()),
             "protocol": protocol.upper(), "external_ip": external_ip,
             "external_port": int(external_port), "internal_ip": internal_ip,
             "internal_port": int(internal_port)}
        self.nat_mappings.append(m)
        return m

    def _do_netnat_static_add(self, p: dict[str, Any]) -> dict[str, Any]:
        m = self.add_static_mapping(p["NatName"], p["Protocol"], p["ExternalIPAddress"],
                                    p["ExternalPort"], p["InternalIPAddress"], p["InternalPort"])
        return {"changed": True, "id": m["id"], "nat": m["nat"],
                "external_port": m["external_port"], "internal_ip": m["internal_ip"],
                "internal_port": m["internal_port"]}

    def _do_netnat_static_remove(self, p: dict[str, Any]) -> dict[str, Any]:
        def ours(m: dict[str, Any]) -> bool:
            return bool(m["nat"].lower() == p["NatName"].lower()
                        and m["protocol"] == p["Protocol"].upper()
                        and m["external_port"] == int(p["ExternalPort"])
                        and m["internal_ip"] == p["InternalIPAddress"]
                        and m["internal_port"] == int(p["InternalPort"]))
        keep = [m for m in self.nat_mappings if not ours(m)]
        removed = len(self.nat_mappings) - len(keep)
        self.nat_mappings = keep
        return {"changed": removed > 0, "removed": removed}

    # -- VHDX -----------------------------------------------------------------------------------
    def _do_vhd_create(self, p: dict[str, Any]) -> dict[str, Any]:
        path = p["Path"]
        if path.lower() in self.files:
            raise _PsError(f"Failed to create the virtual hard disk. The file exists. ({path})")
        gb = int(p["SizeBytes"]) / 1024 ** 3
        drive = path[:2].upper()
        fixed = bool(p.get("Fixed", True))
        if fixed:
            if self.free_gb.get(drive, 0) < gb:
                raise _PsError("There is not enough space on the disk.")
            self.free_gb[drive] -= gb
        self.files[path.lower()] = {"path": path, "type": "Fixed" if fixed else "Dynamic",
                                    "size_gb": round(gb, 2)}
        return {"changed": True, "path": path, "type": "Fixed" if fixed else "Dynamic",
                "size_gb": round(gb, 2)}

    def _do_vhd_remove(self, p: dict[str, Any]) -> dict[str, Any]:
        path = p["Path"]
        for vm in self.vms:
            if any(h["path"].lower() == path.lower() for h in vm["vhds"]):
                raise _PsError(f"The process cannot access the file '{path}' because it is being "
                               "used by another process.")
        info = self.files.pop(path.lower(), None)
        if info and info["type"] == "Fixed":
            self.free_gb[path[:2].upper()] = self.free_gb.get(path[:2].upper(), 0) + \
                info["size_gb"]
        return {"changed": info is not None, "path": path}

    # -- VMs --------------------------------------------------------------------------------------
    def _do_vm_create(self, p: dict[str, Any]) -> dict[str, Any]:
        vhd = p.get("VHDPath") or None
        if vhd and vhd.lower() not in self.files:
            raise _PsError(f"The system cannot find the file specified. ({vhd})")
        vm = self._new_vm(p["Name"], int(p.get("Generation", 2)),
                          int(p["MemoryStartupBytes"]) // 1024 ** 2, vhd, "")
        vm["adapters"].append(self._adapter("Network Adapter", None))  # New-VM adds one ...
        vm["adapters"].clear()  # ... and the script removes it
        vm["notes"] = p["Notes"]
        return {"changed": True, "name": vm["name"], "id": vm["id"]}

    def _do_vm_memory(self, p: dict[str, Any]) -> dict[str, Any]:
        for vm in self._vm(p["Name"]):
            self._off(vm, "Set-VMMemory")
        for vm in self._vm(p["Name"]):
            vm["memory_startup_mb"] = int(p["StartupBytes"]) // 1024 ** 2
            vm["dynamic_memory"] = bool(p.get("DynamicMemoryEnabled", False))
        return {"changed": True, "name": p["Name"]}

    def _do_vm_processor(self, p: dict[str, Any]) -> dict[str, Any]:
        for vm in self._vm(p["Name"]):
            self._off(vm, "Set-VMProcessor")
        for vm in self._vm(p["Name"]):
            vm["cpu"] = int(p["Count"])
        return {"changed": True, "name": p["Name"], "cpu": int(p["Count"])}

    def _do_vm_dvd(self, p: dict[str, Any]) -> dict[str, Any]:
        if p["Path"].lower() not in self.isos:
            raise _PsError(f"Failed to add device 'Virtual CD/DVD Disk': the file "
                           f"'{p['Path']}' was not found.")
        added = False
        for vm in self._vm(p["Name"]):
            if vm["dvd_drives"]:
                vm["dvd"] = [p["Path"]]
            else:
                self._off(vm, "Add-VMDvdDrive")
                vm["dvd_drives"] = 1
                vm["dvd"] = [p["Path"]]
                added = True
        return {"changed": True, "name": p["Name"], "added": added, "path": p["Path"]}

    def _do_vm_firmware(self, p: dict[str, Any]) -> dict[str, Any]:
        for vm in self._vm(p["Name"]):
            self._off(vm, "Set-VMFirmware")
            if vm["generation"] != 2:
                raise _PsError("Set-VMFirmware applies to Generation 2 virtual machines only")
            dev = p["FirstBootDevice"]
            if dev == "dvd" and not vm["dvd_drives"]:
                raise _PsError(f"VM {vm['name']} has no dvd device to boot from")
            if dev == "disk" and not vm["vhds"]:
                raise _PsError(f"VM {vm['name']} has no disk device to boot from")
        for vm in self._vm(p["Name"]):
            vm["first_boot"] = p["FirstBootDevice"]
            vm["secure_boot"] = bool(p.get("EnableSecureBoot", True))
            if vm["secure_boot"] and p.get("SecureBootTemplate"):
                vm["secure_boot_template"] = p["SecureBootTemplate"]
        return {"changed": True, "name": p["Name"]}

    def _do_vm_disk_attach(self, p: dict[str, Any]) -> dict[str, Any]:
        info = self.files.get(p["Path"].lower())
        if info is None:
            raise _PsError(f"The system cannot find the file specified. ({p['Path']})")
        for vm in self._vm(p["Name"]):
            if vm["generation"] == 1:
                self._off(vm, "Add-VMHardDiskDrive")
            vm["vhds"].append({"path": info["path"], "type": info["type"],
                               "size_gb": info["size_gb"]})
        return {"changed": True, "name": p["Name"], "path": p["Path"]}

    def _vm_facts(self, vm: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in vm.items() if k not in ("dvd_drives", "started_at")}
        started = vm.get("started_at")
        up = self.clock() - started if vm["state"] != "Off" and started is not None else 0.0
        out["uptime_seconds"] = int(math.floor(max(0.0, up)))
        return out

    def set_clock(self, clock: Callable[[], float]) -> None:
        """Count uptimes on ``clock`` from now on; running VMs keep their uptime so far."""
        for vm in self.vms:
            if vm["state"] != "Off" and vm.get("started_at") is not None:
                vm["started_at"] = clock() - (self.clock() - vm["started_at"])
        self.clock = clock

    def _do_vm_start(self, p: dict[str, Any]) -> dict[str, Any]:
        for vm in self._vm(p["Name"]):
            if vm["state"] != "Running":
                vm["started_at"] = self.clock()
            vm["state"] = "Running"
        return {"changed": True, "name": p["Name"], "state": "Running"}

    def _do_vm_stop(self, p: dict[str, Any]) -> dict[str, Any]:
        changed = False
        for vm in [v for v in self.vms if v["name"].lower() == p["Name"].lower()]:
            if _owned(vm["notes"], p["Lab"]) and vm["state"] != "Off":
                vm["state"] = "Off"
                vm["started_at"] = None
                changed = True
        return {"changed": changed, "name": p["Name"], "state": "Off"}

    def _do_vm_remove(self, p: dict[str, Any]) -> dict[str, Any]:
        removed = 0
        for vm in [v for v in self.vms if v["name"].lower() == p["Name"].lower()]:
            if _owned(vm["notes"], p["Lab"]):
                self.vms.remove(vm)
                removed += 1
        return {"changed": removed > 0, "name": p["Name"], "removed": removed}

    # -- VM adapters ------------------------------------------------------------------------------
    def _do_vmnic_add(self, p: dict[str, Any]) -> dict[str, Any]:
        if not self._switch(p["SwitchName"]):
            raise _PsError(f"Hyper-V was unable to find a virtual switch with name "
                           f"\"{p['SwitchName']}\".")
        for vm in self._vm(p["VMName"]):
            if vm["generation"] == 1:
                self._off(vm, "Add-VMNetworkAdapter")
        for vm in self._vm(p["VMName"]):
            vm["adapters"].append(self._adapter(p["Name"], p["SwitchName"],
                                                p.get("StaticMacAddress") or ""))
        return {"changed": True, "vm": p["VMName"], "name": p["Name"], "switch": p["SwitchName"]}

    def _do_vmnic_connect(self, p: dict[str, Any]) -> dict[str, Any]:
        if not self._switch(p["SwitchName"]):
            raise _PsError(f"Hyper-V was unable to find a virtual switch with name "
                           f"\"{p['SwitchName']}\".")
        for a in self._adapters(p["VMName"], p["Name"]):
            a["switch"] = p["SwitchName"]
        return {"changed": True}

    def _do_vmnic_set(self, p: dict[str, Any]) -> dict[str, Any]:
        for a in self._adapters(p["VMName"], p["Name"]):
            a["port_mirroring"] = p["PortMirroring"]
            a["vmq_weight"] = int(p["VmqWeight"])
        return {"changed": True}

    def _do_vmnic_vlan(self, p: dict[str, Any]) -> dict[str, Any]:
        for a in self._adapters(p["VMName"], p["Name"]):
            mode = p["Mode"]
            if mode == "Trunk":
                a["vlan"] = {"mode": "Trunk", "access_id": 0,
                             "allowed": _vlan_id_list(p.get("AllowedVlanIdList", "")),
                             "native": int(p.get("NativeVlanId", 0))}
            elif mode == "Access":
                a["vlan"] = {"mode": "Access", "access_id": int(p["AccessVlanId"]),
                             "allowed": [], "native": 0}
            else:
                a["vlan"] = {"mode": "Untagged", "access_id": 0, "allowed": [], "native": 0}
        return {"changed": True}

    # -- inspection helpers for tests ----------------------------------------------------------
    def names(self) -> dict[str, list[str]]:
        return {"switches": sorted(s["name"] for s in self.switches),
                "vms": sorted(v["name"] for v in self.vms),
                "nats": sorted(n["name"] for n in self.nats),
                "files": sorted(self.files)}
