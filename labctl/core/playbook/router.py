"""The router section: the ASUS router and its IoT network (applied by `labctl router`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from labctl.core.playbook.common import Address, Model, Network, SecretRef, VlanId, secret_env

Band = Literal["2.4", "5", "6", "2.4+5", "5+6", "2.4+5+6", "2.4+6"]
Auth = Literal["wpa2-personal", "wpa-wpa2-personal", "wpa2-wpa3-personal", "wpa3-personal"]


class IotNetwork(Model):
    name: str = Field(min_length=1, max_length=32)
    type: Literal["IoT", "Guest", "Customized", "Kids", "VPN"] = "IoT"
    ssid: str
    passphrase: SecretRef = Field(default_factory=lambda: secret_env("LABCTL_IOT_PASSPHRASE"))
    band: Band = "2.4"
    auth: Auth = "wpa2-personal"
    subnet: Network
    gateway: Address | None = None
    dhcp: bool = True
    dhcp_range: tuple[Address, Address] | None = None
    lease_seconds: int = Field(default=86400, ge=120)
    vlan: VlanId
    dns: list[Address] = Field(default_factory=list)
    ap_isolation: bool = False
    hidden: bool = False

    @model_validator(mode="after")
    def _check(self) -> "IotNetwork":
        ssid_len = len(self.ssid.encode("utf-8"))
        if not 1 <= ssid_len <= 32:
            raise ValueError(f"ssid must be 1-32 bytes, got {ssid_len}")
        for field, value in (("name", self.name), ("ssid", self.ssid)):
            if "<" in value or ">" in value:
                raise ValueError(f"{field} must not contain < or > (they delimit ASUS nvram records)")
        if self.vlan < 2:
            raise ValueError("vlan 1 is the router's default LAN; use 2-4094")
        if len(self.dns) > 2:
            raise ValueError("at most two DNS servers")
        if self.gateway is not None and self.gateway not in self.subnet:
            raise ValueError(f"gateway {self.gateway} is outside subnet {self.subnet}")
        if self.dhcp_range is not None:
            lo, hi = self.dhcp_range
            for a in (lo, hi):
                if a not in self.subnet:
                    raise ValueError(f"dhcp_range address {a} is outside subnet {self.subnet}")
            if int(lo) > int(hi):
                raise ValueError("dhcp_range runs backwards")
        if "6" in self.band.split("+") and self.auth != "wpa3-personal":
            raise ValueError("6 GHz needs auth: wpa3-personal")
        return self

    @property
    def gateway_ip(self) -> Address:
        return self.gateway or next(self.subnet.hosts())


class Router(Model):
    kind: Literal["asus"] = "asus"
    model: str = "ZenWiFi Pro ET12"
    firmware: str = "3.0.0.6"
    url: str = "https://192.168.50.1:8443"
    user: str = "admin"
    password: SecretRef = Field(default_factory=lambda: secret_env("LABCTL_ROUTER_PASSWORD"))
    allow_http: bool = False
    login: Literal["auto", "v1", "v2"] = "auto"
    lan: Network = Field(default="192.168.50.0/24")  # type: ignore[assignment]
    iot_network: IotNetwork | None = None

    @model_validator(mode="after")
    def _check(self) -> "Router":
        if self.url.startswith("http://") and not self.allow_http:
            raise ValueError("plain HTTP needs allow_http: true (the password would travel in "
                             "clear text)")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url {self.url!r} must start with https:// (or http://)")
        if self.iot_network is not None and self.iot_network.subnet.overlaps(self.lan):
            raise ValueError(f"iot_network.subnet {self.iot_network.subnet} overlaps the main LAN "
                             f"{self.lan}")
        return self
