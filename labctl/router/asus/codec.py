"""Codec for ASUSWRT 3006 SDN nvram records (``sdn_rl``, ``vlan_rl``, ``subnet_rl``,
``sdn_access_rl``, ``apg<N>_security``, ``apg<N>_dut_list``, ``apg<N>_bw_limit``).

Why it is positional and lossless: the firmware's C parsers read a fixed prefix of fields
and the 3006 UI appends more (``prio`` on ``sdn_rl``, an IPv6/DoT tail on ``subnet_rl``).
labctl must not drop or reorder what it does not interpret, or a write would silently damage
settings made in the UI. So a table is parsed into rows of raw string fields, named fields
are read/written by position, and :func:`dump` reproduces the input byte for byte
(``dump(parse(s)) == s`` for every string; property-tested).

Format (asus-router-api.md §6): ``<`` starts a record, ``>`` separates fields; empty fields
are allowed; a trailing ``>`` is an empty last field. Text before the first ``<`` (normally
none) is kept as ``prefix``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

# Field names by position. Rows may be shorter (older writers) or longer (newer UI).
SDN_FIELDS: tuple[str, ...] = (
    "idx", "name", "enable", "vlan_idx", "subnet_idx", "apg_idx", "vpnc_idx", "vpns_idx",
    "dnsf_idx", "urlf_idx", "nwf_idx", "cp_idx", "gre_idx", "fw_idx", "killsw", "ahs",
    "wan_idx", "ppprelay", "wan6_idx", "createby", "mtwan_idx", "mswan_idx", "prio",
)
VLAN_FIELDS: tuple[str, ...] = ("vlan_idx", "vid", "port_isolation")
SUBNET_FIELDS: tuple[str, ...] = (
    "subnet_idx", "ifname", "addr", "netmask", "dhcp_enable", "dhcp_min", "dhcp_max",
    "dhcp_lease", "domain_name", "dns", "wins", "dhcp_static", "dhcp_unit",
    # 3006 UI tail [3P]: the C parser reads only the 13 above.
    "ipv6_enable", "autoconf", "addr6", "dhcp6_start", "dhcp6_end", "dns6", "dot_enable",
    "dot_tls",
)
ACCESS_FIELDS: tuple[str, ...] = ("access_sdn_idx", "sdn_idx")
SECURITY_FIELDS: tuple[str, ...] = ("bandmask", "auth", "crypto", "psk", "radius_idx")
DUT_FIELDS: tuple[str, ...] = ("mac", "bandmask", "lanport")

# Per-network Wi-Fi keys apg<N>_<field> (APGx_NVRAM_LIST plus the UI's 11be).
APG_FIELDS: tuple[str, ...] = (
    "enable", "ssid", "hide_ssid", "security", "bw_limit", "timesched", "sched", "ap_isolate",
    "macmode", "maclist", "iot_max_cmpt", "dut_list", "mlo", "expiretime", "11be",
)
SDN_TABLE_KEYS: tuple[str, ...] = (
    "sdn_rl", "vlan_rl", "subnet_rl", "sdn_access_rl", "vlan_trunklist", "radius_list",
)


class RecordError(ValueError):
    """A value cannot be stored in a record (it contains a delimiter)."""


@dataclass
class Row:
    """One record: raw fields by position, with named access by a field list."""

    fields: list[str]
    names: Sequence[str] = ()

    def _pos(self, name: str) -> int:
        try:
            return list(self.names).index(name)
        except ValueError:
            raise KeyError(name) from None

    def get(self, name: str, default: str = "") -> str:
        i = self._pos(name)
        return self.fields[i] if i < len(self.fields) else default

    def __getitem__(self, name: str) -> str:
        return self.get(name)

    def __setitem__(self, name: str, value: str | int) -> None:
        value = str(value)
        if "<" in value or ">" in value:
            raise RecordError(f"{name}: {value!r} contains < or >, which delimit nvram records")
        i = self._pos(name)
        while len(self.fields) <= i:
            self.fields.append("")
        self.fields[i] = value

    def as_dict(self) -> dict[str, str]:
        """Named fields present in the row; unnamed extra fields as ``_extra<N>``."""
        out: dict[str, str] = {}
        for i, v in enumerate(self.fields):
            key = self.names[i] if i < len(self.names) else f"_extra{i}"
            out[key] = v
        return out

    def copy(self) -> Row:
        return Row(list(self.fields), self.names)


@dataclass
class Table:
    """A parsed record list. ``dump()`` is the exact inverse of :func:`parse`."""

    rows: list[Row] = field(default_factory=list)
    prefix: str = ""
    names: Sequence[str] = ()

    def dump(self) -> str:
        return dump(self)

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def find(self, name: str, value: str) -> Row | None:
        for r in self.rows:
            if r.get(name) == value:
                return r
        return None

    def remove_where(self, name: str, value: str) -> int:
        before = len(self.rows)
        self.rows = [r for r in self.rows if r.get(name) != value]
        return before - len(self.rows)

    def append(self, fields: Iterable[str | int]) -> Row:
        vals = [str(v) for v in fields]
        for v in vals:
            if "<" in v or ">" in v:
                raise RecordError(f"{v!r} contains < or >, which delimit nvram records")
        row = Row(vals, self.names)
        self.rows.append(row)
        return row

    def copy(self) -> Table:
        return Table([r.copy() for r in self.rows], self.prefix, self.names)


def parse(text: str, names: Sequence[str] = ()) -> Table:
    """Split ``<a>b<c>d>`` into rows ``[a, b]``, ``[c, d, ""]``, keeping everything."""
    if text == "":
        return Table([], "", names)
    head, *records = text.split("<")
    return Table([Row(r.split(">"), names) for r in records], head, names)


def dump(table: Table) -> str:
    return "".join([table.prefix] + ["<" + ">".join(r.fields) for r in table.rows])


def parse_sdn(text: str) -> Table:
    return parse(text, SDN_FIELDS)


def parse_vlan(text: str) -> Table:
    return parse(text, VLAN_FIELDS)


def parse_subnet(text: str) -> Table:
    return parse(text, SUBNET_FIELDS)


def parse_access(text: str) -> Table:
    return parse(text, ACCESS_FIELDS)


def parse_security(text: str) -> Table:
    return parse(text, SECURITY_FIELDS)


def parse_dut_list(text: str) -> Table:
    return parse(text, DUT_FIELDS)


# --- bands and auth ------------------------------------------------------------------------

# dut_list bandmask bits (sdn.js wifi_band_options_cb)
BAND_BITS: dict[str, int] = {"2.4": 1, "5": 2, "6": 16}
AUTH_TO_ASUS: dict[str, str] = {
    "wpa2-personal": "psk2",
    "wpa-wpa2-personal": "pskpsk2",
    "wpa2-wpa3-personal": "psk2sae",
    "wpa3-personal": "sae",
}
ASUS_TO_AUTH: dict[str, str] = {v: k for k, v in AUTH_TO_ASUS.items()}
# Security groups the 3006 UI writes for every profile (sdn.js wizards): 2.4+5, 2.4+5G-1+5G-2,
# 6G, 6G-1+6G-2. 6 GHz groups always use SAE.
SECURITY_GROUPS: tuple[tuple[str, bool], ...] = (("3", False), ("13", False), ("16", True),
                                                 ("96", True))


def band_mask(band: str) -> int:
    """``"2.4+5"`` -> 3 (dut_list bits)."""
    mask = 0
    for b in band.split("+"):
        mask |= BAND_BITS[b]
    return mask


def mask_band(mask: int) -> str:
    """dut_list bits -> ``"2.4+5"``; 5G-1/5G-2 count as 5, 6G-1/6G-2 as 6."""
    parts = []
    if mask & 1:
        parts.append("2.4")
    if mask & (2 | 4 | 8):
        parts.append("5")
    if mask & (16 | 32 | 64):
        parts.append("6")
    return "+".join(parts)


def build_security(auth: str, psk: str, radius_idx: int | str) -> str:
    """The ``apg<N>_security`` groups for a personal-auth profile."""
    asus = AUTH_TO_ASUS[auth]
    t = Table([], "", SECURITY_FIELDS)
    for mask, six in SECURITY_GROUPS:
        t.append([mask, "sae" if six else asus, "aes", psk, str(radius_idx)])
    return t.dump()


def build_dut_list(band: str, node: str = "*") -> str:
    """``<*>mask>``: the SSID on every AiMesh node, on the chosen bands."""
    t = Table([], "", DUT_FIELDS)
    t.append([node, str(band_mask(band)), ""])
    return t.dump()


def ipv4_netmask(prefixlen: int) -> str:
    import ipaddress

    return str(ipaddress.IPv4Network(f"0.0.0.0/{prefixlen}").netmask)
