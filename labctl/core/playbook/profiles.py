"""D4IoT OT sensor hardware profiles (sensor/profiles/*.yaml)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from labctl.core.assets import asset_path
from labctl.core.playbook.common import Model
from labctl.core.yamlfile import load_yaml, validate


class HardwareProfile(Model):
    name: str
    cpu: int = Field(ge=1)
    memory_mb: int = Field(ge=1024)
    disk_gb: int = Field(ge=1)
    iops: int | None = None
    max_bandwidth_mbps: int | None = None
    max_assets: int | None = None
    supported: bool = True
    source: str = ""


class ProfileFile(Model):
    profiles: list[HardwareProfile]


@lru_cache(maxsize=1)
def hardware_profiles() -> dict[str, HardwareProfile]:
    out: dict[str, HardwareProfile] = {}
    folder = asset_path("sensor", "profiles")
    for p in sorted(folder.glob("*.yaml")):
        doc = load_yaml(p)
        for prof in validate(ProfileFile, doc).profiles:
            out[prof.name] = prof
    return out
