"""The router section: the router (one class per kind) and its IoT network.

Why a union on ``kind``: each router vendor has its own connection settings and its own
storage limits. The IoT network (:class:`IotNetwork`) is vendor-neutral and carries every
rule that holds for any router; a kind adds its own rules on top in
:meth:`RouterSection.kind_rules` (ASUS: ``<`` and ``>`` delimit its nvram records). A
second kind is one more ``RouterSection`` subclass plus one member of :data:`Router`.

The IoT network is validated here, once: the playbook loader validates it, and
``labctl router iot-net`` validates the playbook's network merged with its flags through
the same model (:meth:`RouterSection.check_iot_network`).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from typing import Annotated, Any, ClassVar, Literal, TypeAlias
from urllib.parse import urlsplit

from pydantic import Discriminator, Field, StrictInt, Tag, field_validator, model_validator

from labctl.core.playbook.common import (
    Address,
    Bool,
    Model,
    Network,
    SecretRef,
    ShortText,
    secret_env,
)

Band = Literal["2.4", "5", "6", "2.4+5", "5+6", "2.4+5+6", "2.4+6"]
Auth = Literal["wpa2-personal", "wpa-wpa2-personal", "wpa2-wpa3-personal", "wpa3-personal"]
NetworkType = Literal["IoT", "Guest", "Customized", "Kids", "VPN"]

#: the router kind of a playbook (or a ``--url``-only run) that names none
DEFAULT_KIND = "asus"

#: Unicode categories refused in any string that reaches a router: control characters
#: (C0, DEL, C1: newline, NUL, ESC...) and the line and paragraph separators
_UNSAFE_CATEGORIES = ("Cc", "Zl", "Zp")


def check_no_control(label: str, value: str) -> str:
    """Refuse control characters (any C0 or C1, DEL, U+2028/U+2029) in a string that is
    sent to a router: nvram stores them as they are, and they break the records and the
    pages that show them. Raises ValueError naming the first one by code point."""
    for ch in value:
        if unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            raise ValueError(f"{label} must not contain control characters "
                             f"(found U+{ord(ch):04X})")
    return value


def redact_url(url: str) -> str:
    """``url`` with any user information replaced by ``***`` (safe to print)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@", r"\1***@", url)


def check_router_url(url: str, label: str = "url") -> str:
    """A router URL: http(s)://host[:port][/path], port 1-65535, no credentials, no
    query or fragment, no control characters. Raises ValueError; the message never
    repeats a password that was in the URL."""
    shown = redact_url(url)
    check_no_control(label, url)
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{label} {shown!r} must start with https:// (or http://)")
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise ValueError(f"{label} {shown!r} is not a valid URL ({e})") from None
    hostport = parts.netloc.rpartition("@")[2]
    m = re.search(r":(\d+)$", hostport)
    port = int(m.group(1)) if m else None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"{label} {shown!r}: port {port} is outside 1-65535")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as e:
        raise ValueError(f"{label} {shown!r} is not a valid URL ({e})") from None
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError(f"{label} must not carry credentials ({shown!r}): set router.user, "
                         "and the password through LABCTL_ROUTER_PASSWORD or "
                         "router.password")
    if not parts.hostname:
        raise ValueError(f"{label} {shown!r} has no host")
    if parts.query or parts.fragment:
        raise ValueError(f"{label} {shown!r} must not have a query or fragment")
    return url


def _iot_vlan(v: Any) -> Any:
    """An IoT network's VLAN: a VLAN id (1-4094) that is not the default LAN (1)."""
    if isinstance(v, str) and v.isascii() and v.isdigit():
        v = int(v, 10)  # a command-line flag: ASCII digits only (never "٥٢" or "5_2")
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"VLAN id must be a whole number written in ASCII digits, got {v!r}")
    if v == 1:
        raise ValueError("vlan 1 is the router's default LAN; use 2-4094")
    if not 1 <= v <= 4094:
        raise ValueError(f"VLAN id {v} is outside 1-4094 (an IoT network uses 2-4094)")
    return v


class IotNetwork(Model):
    """The isolated network for the IoT devices, as any router kind stores it."""

    name: str = Field(min_length=1, max_length=32)
    type: NetworkType = "IoT"
    ssid: str
    passphrase: SecretRef = Field(default_factory=lambda: secret_env("LABCTL_IOT_PASSPHRASE"))
    band: Band = "2.4"
    auth: Auth = "wpa2-personal"
    subnet: Network
    gateway: Address | None = None
    dhcp: Bool = True
    dhcp_range: tuple[Address, Address] | None = None
    lease_seconds: StrictInt = Field(default=86400, ge=120, le=31536000)
    vlan: int
    dns: list[Address] = Field(default_factory=list)
    ap_isolation: Bool = False
    hidden: Bool = False

    @field_validator("vlan", mode="before")
    @classmethod
    def _vlan(cls, v: Any) -> Any:
        return _iot_vlan(v)

    @field_validator("name", "ssid")
    @classmethod
    def _text(cls, v: str, info: Any) -> str:
        return check_no_control(str(info.field_name), v)

    @model_validator(mode="after")
    def _check(self) -> IotNetwork:
        ssid_len = len(self.ssid.encode("utf-8"))
        if not 1 <= ssid_len <= 32:
            raise ValueError(f"ssid must be 1-32 bytes, got {ssid_len}")
        if len(self.dns) > 2:
            raise ValueError(f"at most two DNS servers (got {len(self.dns)})")
        if self.subnet.prefixlen > 30:
            raise ValueError(f"subnet {self.subnet} is too small for a gateway and DHCP "
                             "clients")
        ends = (self.subnet.network_address, self.subnet.broadcast_address)
        if self.gateway is not None:
            if self.gateway not in self.subnet:
                raise ValueError(f"gateway {self.gateway} is outside subnet {self.subnet}")
            if self.gateway in ends:
                raise ValueError(f"gateway {self.gateway} is not a host address of "
                                 f"{self.subnet}")
        if self.dhcp and self.dhcp_range is not None:
            lo, hi = self.dhcp_range
            for a in (lo, hi):
                if a not in self.subnet:
                    raise ValueError(f"dhcp_range address {a} is outside subnet {self.subnet}")
                if a in ends:
                    raise ValueError(f"dhcp_range address {a} is not a host address of "
                                     f"{self.subnet}")
            if int(lo) > int(hi):
                raise ValueError(f"dhcp_range {lo}-{hi} runs backwards")
        if "6" in self.band.split("+") and self.auth != "wpa3-personal":
            raise ValueError("6 GHz needs WPA3 (auth: wpa3-personal)")
        return self

    @property
    def gateway_ip(self) -> ipaddress.IPv4Address:
        return self.gateway or next(self.subnet.hosts())


class RouterSection(Model):
    """What every router kind has: where it is, who logs in, its LAN, the IoT network."""

    kind: str
    url: str = "https://192.168.50.1:8443"
    user: str = "admin"
    password: SecretRef = Field(default_factory=lambda: secret_env("LABCTL_ROUTER_PASSWORD"))
    allow_http: Bool = False
    lan: Network = Field(default="192.168.50.0/24")  # type: ignore[assignment]
    iot_network: IotNetwork | None = None

    @classmethod
    def kind_rules(cls, net: IotNetwork) -> None:
        """This kind's own limits on an IoT network (raise ValueError); none by default."""

    @classmethod
    def check_text(cls, label: str, value: str) -> None:
        """This kind's limits on a free-text value it stores (raise ValueError)."""

    def check_iot_network(self, net: IotNetwork) -> IotNetwork:
        """``net`` (already a valid :class:`IotNetwork`) against this router: its kind's
        rules and its main LAN. Raises ValueError."""
        type(self).kind_rules(net)
        if net.subnet.overlaps(self.lan):
            raise ValueError(f"iot_network.subnet {net.subnet} overlaps the main LAN "
                             f"{self.lan}")
        return net

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_router_url(v)

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        return check_no_control("user", v)

    @model_validator(mode="after")
    def _check(self) -> RouterSection:
        if self.url.startswith("http://") and not self.allow_http:
            raise ValueError("plain HTTP needs allow_http: true (the password would travel in "
                             "clear text)")
        if self.iot_network is not None:
            self.check_iot_network(self.iot_network)
        return self


class AsusRouter(RouterSection):
    """An ASUSWRT 3.0.0.6 router (ZenWiFi Pro ET12 class), configured through its web API."""

    kind: Literal["asus"] = "asus"
    model: ShortText = "ZenWiFi Pro ET12"
    firmware: ShortText = "3.0.0.6"
    login: Literal["auto", "v1", "v2"] = "auto"

    #: ``<`` starts an nvram record and ``>`` separates its fields
    RECORD_DELIMITERS: ClassVar[tuple[str, ...]] = ("<", ">")

    @classmethod
    def check_text(cls, label: str, value: str) -> None:
        if any(c in value for c in cls.RECORD_DELIMITERS):
            raise ValueError(f"{label} must not contain < or > (they delimit ASUS nvram "
                             "records)")

    @classmethod
    def kind_rules(cls, net: IotNetwork) -> None:
        for label, value in (("name", net.name), ("ssid", net.ssid), ("type", net.type)):
            cls.check_text(label, value)


def _kind_of(v: Any) -> str:
    if isinstance(v, dict):
        return str(v.get("kind", DEFAULT_KIND))
    return str(getattr(v, "kind", DEFAULT_KIND))


#: the playbook's ``router``: one member per kind, chosen by ``kind`` (default asus). A
#: second kind joins as ``Annotated[AsusRouter, Tag("asus")] | Annotated[X, Tag("x")]``.
Router: TypeAlias = Annotated[
    Annotated[AsusRouter, Tag("asus")],
    Discriminator(_kind_of),
]

#: kind -> section class (for runs without a playbook, and for the registry's hint)
ROUTER_SECTIONS: dict[str, type[RouterSection]] = {"asus": AsusRouter}
