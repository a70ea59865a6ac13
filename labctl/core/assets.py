"""Find labctl's declarative assets (templates, profiles, playbooks).

Lookup order:
1. ``LABCTL_ASSETS`` (a directory holding ``hyperv/``, ``sensor/`` ...);
2. ``labctl/_assets`` inside an installed wheel;
3. the checkout root (the directory above the ``labctl`` package).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from labctl.core.errors import LabctlError

ROOTS = ("hyperv", "router", "sensor", "scans", "playbooks")


@cache
def assets_root() -> Path:
    override = os.environ.get("LABCTL_ASSETS")
    if override:
        p = Path(override)
        if not p.is_dir():
            raise LabctlError(f"LABCTL_ASSETS={override} is not a directory")
        return p
    pkg = Path(__file__).resolve().parent.parent
    bundled = pkg / "_assets"
    if bundled.is_dir():
        return bundled
    checkout = pkg.parent
    if (checkout / "hyperv").is_dir() and (checkout / "sensor").is_dir():
        return checkout
    raise LabctlError(
        "labctl's asset folders (hyperv/, sensor/, ...) were not found",
        hint="set LABCTL_ASSETS to the folder holding them, or reinstall labctl",
    )


def asset_path(*parts: str) -> Path:
    """Path of an asset, e.g. ``asset_path("sensor", "engines.yaml")``."""
    if not parts or parts[0] not in ROOTS:
        raise ValueError(f"asset path must start with one of {ROOTS}: {parts!r}")
    return assets_root().joinpath(*parts)


def read_text(*parts: str) -> str:
    p = asset_path(*parts)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabctlError(f"asset not found: {'/'.join(parts)} "
                          f"(looked in {assets_root()})") from None
