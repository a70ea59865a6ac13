"""Facts about a Hyper-V host, as read by ``facts/read`` in one round trip.

The model mirrors the JSON the script prints. Parsing is tolerant of what Windows
PowerShell 5.1's ConvertTo-Json does (``null`` for empty values, single items instead of
one-element lists) so a quirk of the host never becomes a crash in the diff.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from labctl.core.errors import RemoteCommandError
from labctl.core.playbook.common import parse_vlan_list

MARKER_PREFIX = "managed-by: labctl lab="


def marker(lab: str) -> str:
    """The ownership line labctl writes into VM and switch Notes."""
    return f"{MARKER_PREFIX}{lab}"


def owned_by(notes: str | None, lab: str) -> bool:
    """True when one line of ``notes`` is exactly this lab's ownership line.

    The line is the marker and nothing else: spaces, tabs and a carriage return around it
    are ignored, any other text on that line (``not managed-by: labctl lab=x``, a marker
    inside a sentence, ``lab=x2``) is not a marker. The same rule as ``Test-LabctlOwned`` in
    the PowerShell prelude and the fake host.
    """
    if not notes:
        return False
    want = marker(lab)
    return any(line.strip(" \t\r") == want for line in notes.split("\n"))


def notes_with_marker(user_notes: str, lab: str) -> str:
    user = user_notes.strip()
    return f"{user}\n{marker(lab)}" if user else marker(lab)


def _listify(v: Any) -> Any:
    if v is None:
        return []
    if isinstance(v, (dict, str)):
        return [v]
    return v


class _F(BaseModel):
    model_config = ConfigDict(extra="ignore")


class NetAdapter(_F):
    name: str
    description: str = ""
    status: str = ""


class Extension(_F):
    name: str
    enabled: bool = False


class SwitchFacts(_F):
    name: str
    id: str = ""
    type: str  # Internal | External | Private
    notes: str | None = ""
    net_adapter: str | None = None
    allow_management_os: bool = False
    extensions: list[Extension] = Field(default_factory=list)
    monitor_mode: int | None = None

    _l = field_validator("extensions", mode="before")(lambda cls, v: _listify(v))

    @property
    def capture_enabled(self) -> bool:
        return any(e.name == "Microsoft NDIS Capture" and e.enabled for e in self.extensions)


class IpFacts(_F):
    address: str
    prefix_length: int
    origin: str = "Manual"

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefix_length}"


class HostVnic(_F):
    name: str
    switch: str
    alias: str
    ips: list[IpFacts] = Field(default_factory=list)
    dns: list[str] = Field(default_factory=list)

    _l = field_validator("ips", "dns", mode="before")(lambda cls, v: _listify(v))


class NatFacts(_F):
    name: str
    prefix: str


class NatMappingFacts(_F):
    """One ``Get-NetNatStaticMapping`` row: a host port forwarded into a NetNat."""

    id: int = 0
    nat: str
    protocol: str = "TCP"
    external_ip: str = "0.0.0.0"
    external_port: int
    internal_ip: str
    internal_port: int


def _vlan_ids(v: Any) -> Any:
    """``AllowedVlanIdList`` as Get-VMNetworkAdapterVlan returns it: an int array. Also
    accepted: what ConvertTo-Json on 5.1 makes of one (a single number, ``null``, or a
    ``{"value": [...], "Count": n}`` wrapper) and the cmdlet's string form (``1-10,52``)."""
    if isinstance(v, dict) and "value" in v:
        v = v["value"]
    if v is None or v == "":
        return []
    if isinstance(v, str):
        return parse_vlan_list(v)
    items = v if isinstance(v, list) else [v]
    for i in items:
        if isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= 4094:
            raise ValueError(f"VLAN ids are integers 1-4094, got {i!r}")
    return items


class VlanFacts(_F):
    mode: str = "Untagged"  # Untagged | Access | Trunk
    access_id: int = 0
    allowed: list[int] = Field(default_factory=list)
    native: int = 0

    _a = field_validator("allowed", mode="before")(lambda cls, v: _vlan_ids(v))


class AdapterFacts(_F):
    name: str
    switch: str | None = None
    port_mirroring: str = "None"
    vmq_weight: int = 100
    mac: str = ""
    static_mac: bool = False
    vlan: VlanFacts = Field(default_factory=VlanFacts)


class VhdFacts(_F):
    path: str
    type: str | None = None
    size_gb: float | None = None


class VmFacts(_F):
    name: str
    id: str = ""
    state: str = "Off"
    #: Get-VM's Uptime in whole seconds (0 when off; it restarts at 0 on every start);
    #: None when the facts did not report it
    uptime_seconds: int | None = None
    notes: str | None = ""
    generation: int = 2
    cpu: int = 1
    memory_startup_mb: int = 1024
    dynamic_memory: bool = False
    secure_boot: bool | None = None
    secure_boot_template: str | None = None
    first_boot: str | None = None
    dvd: list[str] = Field(default_factory=list)
    adapters: list[AdapterFacts] = Field(default_factory=list)
    vhds: list[VhdFacts] = Field(default_factory=list)

    _l = field_validator("dvd", "adapters", "vhds", mode="before")(lambda cls, v: _listify(v))

    @property
    def running(self) -> bool:
        return self.state != "Off"

    def adapter(self, name: str) -> AdapterFacts | None:
        for a in self.adapters:
            if a.name.lower() == name.lower():
                return a
        return None


class DiskFacts(_F):
    path: str = ""
    exists: bool = False
    free_gb: float | None = None


class PathFacts(_F):
    path: str
    exists: bool = False


class VhdFileFacts(_F):
    path: str
    exists: bool = False
    type: str | None = None
    size_gb: float | None = None


class HostFacts(_F):
    """Everything the diff and the pre-flight guards need about one host."""

    hyperv_module: bool = True
    default_route_alias: str | None = None
    net_adapters: list[NetAdapter] = Field(default_factory=list)
    switches: list[SwitchFacts] = Field(default_factory=list)
    host_vnics: list[HostVnic] = Field(default_factory=list)
    nats: list[NatFacts] = Field(default_factory=list)
    nat_mappings: list[NatMappingFacts] = Field(default_factory=list)
    vms: list[VmFacts] = Field(default_factory=list)
    disk: DiskFacts = Field(default_factory=DiskFacts)
    isos: list[PathFacts] = Field(default_factory=list)
    vhd_files: list[VhdFileFacts] = Field(default_factory=list)
    #: True for ``--assume-empty`` facts: nothing was read, existence checks are unknown.
    assumed: bool = False

    _l = field_validator("net_adapters", "switches", "host_vnics", "nats", "nat_mappings", "vms",
                         "isos",
                         "vhd_files", mode="before")(lambda cls, v: _listify(v))

    def switches_named(self, name: str) -> list[SwitchFacts]:
        return [s for s in self.switches if s.name.lower() == name.lower()]

    def vms_named(self, name: str) -> list[VmFacts]:
        return [v for v in self.vms if v.name.lower() == name.lower()]

    def vnic_of(self, switch: str) -> HostVnic | None:
        for v in self.host_vnics:
            if v.switch.lower() == switch.lower():
                return v
        return None

    def nat(self, name: str) -> NatFacts | None:
        for n in self.nats:
            if n.name.lower() == name.lower():
                return n
        return None

    def iso_exists(self, path: str) -> bool | None:
        for i in self.isos:
            if i.path.lower() == path.lower():
                return i.exists
        return None

    def vhd_file(self, path: str) -> VhdFileFacts | None:
        for f in self.vhd_files:
            if f.path.lower() == path.lower():
                return f
        return None

    @property
    def default_route_adapter(self) -> str | None:
        """The physical adapter carrying the host's default route.

        When the route leaves through ``vEthernet (X)`` of an External switch shared with the
        host, the physical adapter is the one that switch is bound to.
        """
        alias = self.default_route_alias
        if not alias:
            return None
        for v in self.host_vnics:
            if v.alias.lower() == alias.lower():
                for s in self.switches_named(v.switch):
                    if s.type == "External" and s.net_adapter:
                        return s.net_adapter
        return alias


def parse_facts(data: Any, script: str = "facts/read") -> HostFacts:
    """Turn the script's JSON into :class:`HostFacts`; a wrong shape is a remote error."""
    if not isinstance(data, dict):
        raise RemoteCommandError(script, [f"expected one JSON object, got {type(data).__name__}"],
                                 hint="the host's facts script printed something unexpected; "
                                      "run with -vv to see the script name and retry")
    try:
        return HostFacts.model_validate(data)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RemoteCommandError(script, [f"unexpected facts shape at {where}: {first['msg']}"]) \
            from None


def empty_facts() -> HostFacts:
    """An empty Hyper-V host, for ``plan --assume-empty`` (nothing is contacted)."""
    return HostFacts(hyperv_module=True, assumed=True)
