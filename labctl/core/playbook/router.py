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
from typing import Annotated, Any, ClassVar, Literal, TypeAlias

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from labctl.core.playbook.common import Address, Model, Network, SecretRef, secret_env

Band = Literal["2.4", "5", "6", "2.4+5", "5+6", "2.4+5+6", "2.4+6"]
Auth = Literal["wpa2-personal", "wpa-wpa2-personal", "wpa2-wpa3-personal", "wpa3-personal"]
NetworkType = Literal["IoT", "Guest", "Customized", "Kids", "VPN"]

#: the router kind of a playbook (or a ``--url``-only run) that names none
DEFAULT_KIND = "asus"


def _iot_vlan(v: Any) -> Any:
    """An IoT network's VLAN: a VLAN id (1-4094) that is not the default LAN (1)."""
    if isinstance(v, bool) or not isinstance(v, int):
        try:
            v = int(str(v), 10)
        except ValueError:
            raise ValueError(f"VLAN id must be a whole number, got {v!r}") from None
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
    dhcp: bool = True
    dhcp_range: tuple[Address, Address] | None = None
    lease_seconds: int = Field(default=86400, ge=120)
    vlan: int
    dns: list[Address] = Field(default_factory=list)
    ap_isolation: bool = False
    hidden: bool = False

    @field_validator("vlan", mode="before")
    @classmethod
    def _vlan(cls, v: Any) -> Any:
        return _iot_vlan(v)

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
    allow_http: bool = False
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

    @model_validator(mode="after")
    def _check(self) -> RouterSection:
        if self.url.startswith("http://") and not self.allow_http:
            raise ValueError("plain HTTP needs allow_http: true (the password would travel in "
                             "clear text)")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url {self.url!r} must start with https:// (or http://)")
        if self.iot_network is not None:
            self.check_iot_network(self.iot_network)
        return self


class AsusRouter(RouterSection):
    """An ASUSWRT 3.0.0.6 router (ZenWiFi Pro ET12 class), configured through its web API."""

    kind: Literal["asus"] = "asus"
    model: str = "ZenWiFi Pro ET12"
    firmware: str = "3.0.0.6"
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
