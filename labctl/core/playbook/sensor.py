"""The sensor section: which sensor watches the lab and what it must detect."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from labctl.core.playbook.common import Address, Model, Network, SecretRef, VlanId, secret_env


class MonitoredSubnet(Model):
    subnet: Network
    vlan: VlanId | None = None
    name: str = ""


class SensorSection(Model):
    kind: Literal["d4iot", "embedded"] = "d4iot"
    vm: str | None = None  # the VM (or twin namespace) that runs the sensor
    management_ip: Address = Field(default="192.168.0.101")  # type: ignore[assignment]
    url: str | None = None  # default https://<management_ip>
    token: SecretRef = Field(default_factory=lambda: secret_env("LABCTL_SENSOR_TOKEN"))
    admin_user: str = "admin"
    admin_password: SecretRef = Field(
        default_factory=lambda: secret_env("LABCTL_SENSOR_PASSWORD"))
    tls_fingerprint: str | None = Field(default=None, pattern=r"^(sha256:)?[0-9A-Fa-f:]{64,95}$")
    monitored_subnets: list[MonitoredSubnet] = Field(default_factory=list)
    authorized_scanners: list[Address] = Field(default_factory=list)
    learning_mode: bool = True
    wait_seconds: int = Field(default=2400, ge=1, le=86400)
    expectations: str = "nmap-default"
    activation_file: str | None = None

    @property
    def base_url(self) -> str:
        return self.url or f"https://{self.management_ip}"
