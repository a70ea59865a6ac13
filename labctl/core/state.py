"""Where labctl keeps local state: scan history, logs, pinned certificates, twin state."""

from __future__ import annotations

import os
from pathlib import Path


def state_home() -> Path:
    """``LABCTL_STATE_DIR``, else ``$XDG_STATE_HOME/labctl``, else ``~/.local/state/labctl``."""
    override = os.environ.get("LABCTL_STATE_DIR")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "labctl"


def lab_state_dir(lab: str, create: bool = True) -> Path:
    """State directory of one lab (by the playbook's ``lab`` name)."""
    p = state_home() / "labs" / lab
    if create:
        p.mkdir(parents=True, exist_ok=True)
    return p


def pins_file() -> Path:
    """TOFU certificate pins: one JSON object of ``host:port`` -> sha256 fingerprint."""
    return state_home() / "pins.json"
