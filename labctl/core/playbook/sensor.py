"""The sensor section: which sensor watches the lab and what it must detect."""

from __future__ import annotations

import functools
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StrictInt

from labctl.core.playbook.common import (
    Address,
    Bool,
    Model,
    Network,
    SecretRef,
    ShortText,
    Text,
    UserName,
    VlanId,
    secret_env,
)
from labctl.core.playbook.sensor_access import SensorAccess


class MonitoredSubnet(Model):
    subnet: Network
    vlan: VlanId | None = None
    name: ShortText = ""


@functools.lru_cache(maxsize=1)
def detection_keys() -> tuple[str, ...]:
    """The detection keys of the shipped ``sensor/engines.yaml`` (``port_scan``, ...)."""
    from labctl.core.assets import asset_path
    from labctl.core.yamlfile import load_yaml

    doc = load_yaml(asset_path("sensor", "engines.yaml"))
    data = doc.data if isinstance(doc.data, dict) else {}
    dets = data.get("detections")
    return tuple(sorted(dets)) if isinstance(dets, dict) else ()


def _detection_key(v: str) -> str:
    known = detection_keys()
    if v not in known:
        raise ValueError(f"unknown detection {v!r}; sensor/engines.yaml has: "
                         + ", ".join(known))
    return v


DetectionKey = Annotated[str, AfterValidator(_detection_key)]


class EngineOverride(Model):
    """One detection's override of ``sensor/engines.yaml``; every field is optional.

    For the twin's embedded sensor labctl applies it (the sensor starts with it). A
    Defender for IoT sensor has no documented API to set these, so there they declare what
    the user set on the sensor's Support page, and verify-alerts takes them as the truth.
    """

    enabled: bool | None = Field(default=None, strict=True)
    threshold: int | None = Field(default=None, ge=1, le=1_000_000, strict=True)
    window_seconds: float | None = Field(default=None, gt=0, le=86400, strict=True)


_ARM_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class SensorAzure(Model):
    """Defender for IoT's Azure side: labctl creates the site and the OT sensor over ARM
    (Microsoft.IoTSecurity, api-version 2021-09-01-preview, subscription-scoped, so no
    resource group) and downloads the activation file into the lab's state folder."""

    subscription: str = Field(pattern=r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
    location: str = Field(default="eastus", pattern=r"^[a-z][a-z0-9]{1,39}$")
    site: str = Field(pattern=_ARM_NAME)
    #: the site's displayName (default: the site name)
    site_display_name: str | None = Field(default=None, max_length=128,
                                          pattern=r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$")
    sensor_name: str = Field(pattern=_ARM_NAME)
    zone: str = Field(default="Default", max_length=128,
                      pattern=r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]+$")
    ti_automatic_updates: bool = Field(default=True, strict=True)
    #: ARM's endpoint (another cloud's, e.g. https://management.usgovcloudapi.net)
    endpoint: str = Field(default="https://management.azure.com",
                          pattern=r"^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")


class SensorPhaseTimeouts(Model):
    """Seconds each phase of `labctl up`'s sensor stage may take (defender-for-iot.md §4.1:
    the installer auto-selects after 30 s, the install takes 20 to 30 minutes)."""

    vm_running: int = Field(default=300, ge=1, le=86400, strict=True)
    installer: int = Field(default=120, ge=1, le=86400, strict=True)
    installing: int = Field(default=2400, ge=1, le=86400, strict=True)
    web_ui: int = Field(default=600, ge=1, le=86400, strict=True)
    signed_in: int = Field(default=300, ge=1, le=86400, strict=True)


class SensorSection(Model):
    kind: Literal["d4iot", "embedded"] = "d4iot"
    vm: ShortText | None = None  # the VM (or twin namespace) that runs the sensor
    management_ip: Address = Field(default="192.168.0.101")  # type: ignore[assignment]
    url: Text | None = None  # default https://<management_ip>
    token: SecretRef = Field(default_factory=lambda: secret_env("LABCTL_SENSOR_TOKEN"))
    admin_user: UserName = "admin"
    admin_password: SecretRef = Field(
        default_factory=lambda: secret_env("LABCTL_SENSOR_PASSWORD"))
    tls_fingerprint: str | None = Field(default=None, pattern=r"^(sha256:)?[0-9A-Fa-f:]{64,95}$")
    monitored_subnets: list[MonitoredSubnet] = Field(default_factory=list)
    authorized_scanners: list[Address] = Field(default_factory=list)
    learning_mode: Bool = True
    #: per-detection overrides of sensor/engines.yaml (keys are its detection keys)
    engines: dict[DetectionKey, EngineOverride] = Field(default_factory=dict)
    wait_seconds: StrictInt = Field(default=2400, ge=1, le=86400)
    expectations: Text = "nmap-default"
    activation_file: Text | None = None
    #: deadlines of the sensor stage's phases (VM running, installer, installing, web UI
    #: answering, signed in)
    phase_timeouts: SensorPhaseTimeouts = Field(default_factory=SensorPhaseTimeouts)
    #: optional: create the site and sensor in Azure and download the activation file
    azure: SensorAzure | None = None
    #: how long `labctl sensor activate` waits for the sensor to report activation
    activation_wait_seconds: int = Field(default=1800, ge=1, le=86400, strict=True)
    #: how labctl reaches the management address (direct, ssh-tunnel through the Hyper-V
    #: host, or a NetNat static mapping on the host)
    access: SensorAccess = Field(default_factory=SensorAccess)

    @property
    def base_url(self) -> str:
        return self.url or f"https://{self.management_ip}"
