"""D4IoT OT sensor appliance sizes (``sensor/appliance-sizes.yaml``).

Microsoft calls them hardware profiles (C5600 ... L100) and a playbook VM names one as
``vms[].profile``; the file is called "appliance sizes" because "profiles" in labctl means
scan profiles.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import BeforeValidator

from labctl.core.assets import asset_path
from labctl.core.playbook.common import Bool, Model, ShortText, Text, int_in
from labctl.core.yamlfile import load_yaml, validate

SIZES_FILE = "appliance-sizes.yaml"


class HardwareProfile(Model):
    """One appliance size: the least CPU, memory and disk a sensor VM of that size needs."""

    name: ShortText
    cpu: Annotated[int, BeforeValidator(int_in(1, 240))]
    memory_mb: Annotated[int, BeforeValidator(int_in(1024, 12 * 1024 * 1024))]
    disk_gb: Annotated[int, BeforeValidator(int_in(1, 64 * 1024))]
    iops: Annotated[int, BeforeValidator(int_in(1, 10_000_000))] | None = None
    max_bandwidth_mbps: Annotated[int, BeforeValidator(int_in(1, 1_000_000))] | None = None
    max_assets: Annotated[int, BeforeValidator(int_in(1, 10_000_000))] | None = None
    supported: Bool = True
    source: Text = ""


class ApplianceSizesFile(Model):
    sizes: list[HardwareProfile]


@lru_cache(maxsize=1)
def hardware_profiles() -> dict[str, HardwareProfile]:
    """Appliance sizes by name, from the shipped ``sensor/appliance-sizes.yaml``."""
    doc = load_yaml(asset_path("sensor", SIZES_FILE))
    return {size.name: size for size in validate(ApplianceSizesFile, doc).sizes}
