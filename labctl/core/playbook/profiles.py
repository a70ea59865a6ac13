"""D4IoT OT sensor appliance sizes (``sensor/appliance-sizes.yaml``).

Microsoft calls them hardware profiles (C5600 ... L100) and a playbook VM names one as
``vms[].profile``; the file is called "appliance sizes" because "profiles" in labctl means
scan profiles.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from labctl.core.assets import asset_path
from labctl.core.playbook.common import Model
from labctl.core.yamlfile import load_yaml, validate

SIZES_FILE = "appliance-sizes.yaml"


class HardwareProfile(Model):
    """One appliance size: the least CPU, memory and disk a sensor VM of that size needs."""

    name: str
    cpu: int = Field(ge=1)
    memory_mb: int = Field(ge=1024)
    disk_gb: int = Field(ge=1)
    iops: int | None = None
    max_bandwidth_mbps: int | None = None
    max_assets: int | None = None
    supported: bool = True
    source: str = ""


class ApplianceSizesFile(Model):
    sizes: list[HardwareProfile]


@lru_cache(maxsize=1)
def hardware_profiles() -> dict[str, HardwareProfile]:
    """Appliance sizes by name, from the shipped ``sensor/appliance-sizes.yaml``."""
    doc = load_yaml(asset_path("sensor", SIZES_FILE))
    return {size.name: size for size in validate(ApplianceSizesFile, doc).sizes}
