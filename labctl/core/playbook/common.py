"""Shared pydantic types for labctl's data files."""

from __future__ import annotations

import ipaddress
import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    model_validator,
)

from labctl.core.secrets import PromptFn, Secret, resolve_secret


class Model(BaseModel):
    """Base of every data-file model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# Strict scalars. YAML gives labctl ints, floats, bools and strings already typed; pydantic's
# lax mode would turn "52", "5_2", "\u0665\u0662" (Arabic-Indic digits), 52.0 and true
# into 52, so every number and boolean of a data file goes through these instead.


def _whole(v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"must be a whole number {lo}-{hi} written as a YAML integer "
                         f"(no quotes, no underscores), got {v!r}")
    if not lo <= v <= hi:
        raise ValueError(f"{v} is outside {lo}-{hi}")
    return v


def int_in(lo: int, hi: int) -> Callable[[Any], int]:
    """A BeforeValidator for ``Annotated[int, BeforeValidator(int_in(lo, hi))]``: a YAML
    integer (not a string, float or bool) within ``lo``..``hi``."""
    def check(v: Any) -> int:
        return _whole(v, lo, hi)
    return check


def float_in(lo: float, hi: float) -> Callable[[Any], float]:
    """A BeforeValidator for a YAML number (int or float, not a string or bool, finite)
    within ``lo``..``hi``."""
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"must be a number {lo:g}-{hi:g} written as a YAML number, "
                             f"got {v!r}")
        if not lo <= v <= hi:
            raise ValueError(f"{v:g} is outside {lo:g}-{hi:g}")
        return float(v)
    return check


#: a TCP/UDP port
Port = Annotated[int, BeforeValidator(int_in(1, 65535))]
#: seconds a remote operation may take
TimeoutSeconds = Annotated[int, BeforeValidator(int_in(5, 3600))]
#: a boolean written as YAML true/false (never "yes" in quotes, 1 or "on")
Bool = StrictBool

# Text. A string that reaches a device, a command or a Windows cmdlet must not hold control
# characters: C0 (NUL, newline, ESC ...), DEL, C1 (U+0080-U+009F), and the line and
# paragraph separators U+2028/U+2029, which some parsers treat as line ends.
_UNSAFE_CATEGORIES = ("Cc", "Zl", "Zp")


def check_text(v: Any, label: str = "text") -> str:
    """``v`` if it is a string without control characters, else ValueError naming the
    first one by code point (the value itself is not repeated: it may be unprintable)."""
    if not isinstance(v, str):
        raise ValueError(f"{label} must be a string, got {type(v).__name__}")
    for ch in v:
        if unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            raise ValueError(f"{label} must not contain control characters "
                             f"(found U+{ord(ch):04X})")
    return v


def _text(v: Any) -> Any:
    """BeforeValidator form of :func:`check_text` (for ``Annotated[str, ...]``)."""
    return check_text(v, "the value")


#: free text that may reach a device or a command: no control characters, at most 1024
Text = Annotated[str, BeforeValidator(_text), Field(max_length=1024)]
#: short free text (descriptions, notes): no control characters, at most 200
ShortText = Annotated[str, BeforeValidator(_text), Field(max_length=200)]
#: an account name (``LAB\\labadmin``, ``admin``): no control characters, at most 256
UserName = Annotated[str, BeforeValidator(_text), Field(max_length=256)]

_ASCII_V4 = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}")
_ASCII_V4_PREFIX = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}")


def _v4_text(v: Any, what: str, example: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{what} must be a string such as {example}, got {v!r}")
    if not pattern.fullmatch(v):
        raise ValueError(f"{v!r} is not {what} in ASCII dotted decimal (e.g. {example})")
    return v


def _network(v: Any) -> Any:
    if isinstance(v, ipaddress.IPv4Network):
        return v
    if isinstance(v, str) and "/" not in v:
        raise ValueError(f"{v!r} needs a prefix length: a network is written as CIDR, "
                         "e.g. 172.16.1.0/24")
    s = _v4_text(v, "an IPv4 CIDR network", "172.16.1.0/24", _ASCII_V4_PREFIX)
    try:
        return ipaddress.IPv4Network(s, strict=True)
    except ValueError as e:
        raise ValueError(f"{v!r} is not a valid IPv4 CIDR network ({e})") from None


def _interface(v: Any) -> Any:
    if isinstance(v, ipaddress.IPv4Interface):
        return v
    if isinstance(v, str) and "/" not in v:
        raise ValueError(f"{v!r} needs a prefix length, e.g. 192.168.0.1/24")
    s = _v4_text(v, "an IPv4 address/prefix", "192.168.0.1/24", _ASCII_V4_PREFIX)
    try:
        iface = ipaddress.IPv4Interface(s)
    except ValueError as e:
        raise ValueError(f"{v!r} is not a valid IPv4 address/prefix ({e})") from None
    check_host_address(iface.ip, iface.network)
    return iface


def _address(v: Any) -> Any:
    if isinstance(v, ipaddress.IPv4Address):
        return v
    s = _v4_text(v, "an IPv4 address", "172.16.1.1", _ASCII_V4)
    try:
        return ipaddress.IPv4Address(s)
    except ValueError:
        raise ValueError(f"{v!r} is not a valid IPv4 address") from None


def parse_network(v: Any) -> ipaddress.IPv4Network:
    """``v`` as a CIDR network under the playbook's rules (ValueError otherwise)."""
    net: ipaddress.IPv4Network = _network(v)
    return net


def parse_address(v: Any) -> ipaddress.IPv4Address:
    """``v`` as an ASCII dotted-decimal IPv4 address (ValueError otherwise)."""
    addr: ipaddress.IPv4Address = _address(v)
    return addr


def check_host_address(ip: ipaddress.IPv4Address,
                       net: ipaddress.IPv4Network | None = None) -> None:
    """ValueError unless ``ip`` can be a host's address (in ``net`` if given): not
    0.0.0.0/8, loopback, multicast, reserved or 255.255.255.255, and not the network or
    broadcast address of a network of /30 or larger (a /31 has two host addresses)."""
    if ip.is_unspecified or int(ip) >> 24 == 0:
        raise ValueError(f"{ip} is not a host address (0.0.0.0/8 means 'this network')")
    if ip.is_loopback or ip.is_multicast or ip.is_reserved:
        raise ValueError(f"{ip} is a loopback, multicast or reserved address, not a host "
                         "address")
    if net is not None and net.prefixlen <= 30:
        if ip == net.network_address:
            raise ValueError(f"{ip} is the network address of {net}, not a host address")
        if ip == net.broadcast_address:
            raise ValueError(f"{ip} is the broadcast address of {net}, not a host address")


def _vlan(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"VLAN id must be a whole number 1-4094 written as a YAML integer, "
                         f"got {v!r}")
    if not 1 <= v <= 4094:
        raise ValueError(f"VLAN id {v} is outside 1-4094")
    return v


def _host_address(v: Any) -> Any:
    check_host_address(v)
    return v


Network = Annotated[ipaddress.IPv4Network, BeforeValidator(_network)]
#: an address with its prefix; the address is a host address of that network
Interface = Annotated[ipaddress.IPv4Interface, BeforeValidator(_interface)]
Address = Annotated[ipaddress.IPv4Address, BeforeValidator(_address)]
#: an address a host can hold (see :func:`check_host_address`, without a network)
HostAddress = Annotated[ipaddress.IPv4Address, BeforeValidator(_address),
                        AfterValidator(_host_address)]
VlanId = Annotated[int, BeforeValidator(_vlan)]

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()\-]{0,63}")


def _name(v: Any) -> Any:
    if not isinstance(v, str) or not NAME_RE.fullmatch(v) or v.endswith(" "):
        raise ValueError(
            f"{v!r} is not a valid name (1-64 ASCII letters, digits, space, . _ - ( ), "
            "starting with a letter or digit, not ending with a space)"
        )
    return v


Name = Annotated[str, BeforeValidator(_name)]

ASSET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_asset_name(v: Any, folder: str = "its asset folder") -> str:
    """A name that becomes ``<folder>/<name>.yaml``: ASCII letters, digits, ``-`` and ``_``
    only, so it cannot name a path (no ``/``, ``\\`` or ``..``)."""
    if not isinstance(v, str) or not ASSET_NAME_RE.fullmatch(v):
        raise ValueError(f"{v!r} is not an asset name (1-64 ASCII letters, digits, - and _; "
                         f"it names a file in {folder}, never a path)")
    return v


def _asset_name(v: Any) -> Any:
    return check_asset_name(v)


#: the name of a shipped asset file (a persona): never a path
AssetName = Annotated[str, BeforeValidator(_asset_name)]

MAC_RE = re.compile(r"([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}")


def _mac(v: Any) -> Any:
    if not isinstance(v, str) or not MAC_RE.fullmatch(v):
        raise ValueError(f"{v!r} is not a MAC address (six hex pairs separated by :)")
    if int(v[:2], 16) & 1:
        raise ValueError(f"{v} is a multicast MAC address, not a device's")
    return v.lower()


#: a unicast MAC address, aa:bb:cc:dd:ee:ff (stored lower case)
Mac = Annotated[str, BeforeValidator(_mac)]

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _hostname(v: Any) -> Any:
    if not isinstance(v, str):
        raise ValueError(f"host must be a string, got {v!r}")
    check_text(v, "host")
    if _ASCII_V4.fullmatch(v):
        _address(v)
        return v
    if v.startswith("[") or ":" in v:
        inner = v[1:-1] if v.startswith("[") and v.endswith("]") else v
        if "[" in inner or "]" in inner or "/" in inner:
            raise ValueError(f"{v!r} is not a host name or IP address (a URL or a broken "
                             "IPv6 literal?)")
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ValueError(f"{v!r} is not a valid IPv6 address") from None
        return inner
    labels = v.rstrip(".").split(".")
    if len(v) > 253 or not all(_HOST_LABEL.fullmatch(lb) for lb in labels):
        raise ValueError(f"{v!r} is not a host name (ASCII letters, digits and - in dot-"
                         "separated labels of 1-63, at most 253 characters) or an IP "
                         "address")
    return v


#: a DNS host name, an IPv4 address or an IPv6 address (ASCII only)
Hostname = Annotated[str, BeforeValidator(_hostname)]

_WIN_BAD = set('<>"|?*')


def _winpath(v: Any) -> Any:
    if not isinstance(v, str):
        raise ValueError(f"a Windows path must be a string, got {v!r}")
    check_text(v, "a Windows path")
    if not (re.fullmatch(r"[A-Za-z]:\\.*", v) or re.fullmatch(r"\\\\[^\\]+\\[^\\]+.*", v)):
        raise ValueError(f"{v!r} is not an absolute Windows path (C:\\... or "
                         "\\\\server\\share\\...)")
    bad = sorted({c for c in v[2:] if c in _WIN_BAD or c == ":"})
    if bad:
        raise ValueError(f"{v!r}: Windows paths cannot contain {' '.join(bad)}")
    if len(v) > 260:
        raise ValueError(f"Windows path is {len(v)} characters, more than 260 (MAX_PATH)")
    return v


#: an absolute Windows path on the Hyper-V host: X:\... or \\server\share\..., at most
#: 260 characters, none of < > " | ? * (or : after the drive), no control characters
WinPath = Annotated[str, BeforeValidator(_winpath)]


_VLAN_PART = re.compile(r"([0-9]{1,4})(?:-([0-9]{1,4}))?")


def parse_vlan_list(spec: Any) -> list[int]:
    """Parse ``[52, "100-110"]`` or ``"1-4094"`` or ``"52,60"`` into sorted unique ids.

    Items are YAML integers or strings of ASCII decimal ids and ``lo-hi`` ranges; anything
    else (a float, a bool, ``"5_2"``, non-ASCII digits) is a ValueError."""
    items: list[Any]
    if isinstance(spec, (list, tuple)):
        items = list(spec)
    elif isinstance(spec, str):
        items = spec.split(",")
    elif isinstance(spec, int) and not isinstance(spec, bool):
        items = [spec]
    else:
        raise ValueError(f"a VLAN list is a list or a string such as \"1-10,52\", got {spec!r}")
    if len(items) > 4094:
        raise ValueError(f"a VLAN list has at most 4094 items, got {len(items)}")
    out: set[int] = set()
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            out.add(_vlan(item))
            continue
        if not isinstance(item, str):
            raise ValueError(f"VLAN list item {item!r} is neither an id nor a range string")
        s = item.strip(" ")
        if not s:
            continue
        m = _VLAN_PART.fullmatch(s)
        if m is None:
            raise ValueError(f"VLAN list item {item!r} is not an id or lo-hi range of ASCII "
                             "digits")
        a = _vlan(int(m.group(1)))
        b = _vlan(int(m.group(2))) if m.group(2) is not None else a
        if a > b:
            raise ValueError(f"VLAN range {s!r} runs backwards")
        out.update(range(a, b + 1))
    if not out:
        raise ValueError("VLAN list is empty")
    return sorted(out)


def format_vlan_list(ids: list[int]) -> str:
    """Compress ids into Hyper-V's AllowedVlanIdList form: ``1-10,52``."""
    ids = sorted(set(ids))
    parts: list[str] = []
    start = prev = None
    for i in ids:
        if start is None:
            start = prev = i
        elif i == prev + 1:  # type: ignore[operator]
            prev = i
        else:
            parts.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = i
    if start is not None:
        parts.append(f"{start}-{prev}" if start != prev else str(start))
    return ",".join(parts)


class SecretRef(Model):
    """Where a secret comes from. Secrets are never written inline in a playbook."""

    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    prompt: StrictBool = False

    @model_validator(mode="before")
    @classmethod
    def _no_inline(cls, v: Any) -> Any:
        if isinstance(v, (str, int, float)) and not isinstance(v, bool):
            raise ValueError(
                "secrets are referenced, never written inline: use {env: VARIABLE} or "
                "{prompt: true}"
            )
        return v

    @model_validator(mode="after")
    def _some_source(self) -> SecretRef:
        if not self.env and not self.prompt:
            raise ValueError("a secret needs env: VARIABLE, prompt: true, or both")
        return self

    def resolve(self, label: str, prompt_fn: PromptFn | None = None,
                environ: Mapping[str, str] | None = None) -> Secret:
        return resolve_secret(self.env, prompt=self.prompt, label=label, prompt_fn=prompt_fn,
                              environ=environ)


def secret_env(name: str, prompt: bool = True) -> SecretRef:
    return SecretRef(env=name, prompt=prompt)
