"""MAC prefix -> vendor, for the embedded sensor's device inventory.

The shipped ``sensor/oui.txt`` comes first; nmap's ``nmap-mac-prefixes`` fills in the rest
when nmap is installed. The table loads lazily, on the first lookup, once per process.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path


class OuiTable:
    """MAC prefix -> vendor, from the shipped ``sensor/oui.txt`` (+ nmap's table if present)."""

    NMAP = Path("/usr/share/nmap/nmap-mac-prefixes")

    def __init__(self, paths: Iterable[Path]) -> None:
        self._map: dict[str, str] = {}
        self._paths = list(paths)
        self._loaded = False

    def _load(self) -> None:
        self._loaded = True
        for p in reversed(self._paths):  # earlier paths win
            try:
                text = p.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                prefix, _, vendor = line.partition(" ")
                if len(prefix) == 6:
                    self._map[prefix.upper()] = vendor.strip()

    def lookup(self, mac: str | None) -> str | None:
        if not mac:
            return None
        if not self._loaded:
            self._load()
        return self._map.get(mac.replace(":", "")[:6].upper())


@functools.lru_cache(maxsize=1)
def default_oui() -> OuiTable:
    """The shared table (loaded once per process, on the first lookup)."""
    from labctl.core.assets import asset_path

    return OuiTable([asset_path("sensor", "oui.txt"), OuiTable.NMAP])
