"""Interface addresses inside the current network namespace, for device emulators.

Why here: a device emulator (the ASUS router emulator) must not shell out. When its state
says an IoT network's gateway moved, it calls the callback the netns layer gave it, and
this module is that callback: ``ip addr del`` the old address, ``ip addr replace`` the new.
"""

from __future__ import annotations

import logging
import subprocess

log = logging.getLogger("labctl.netns.ifaddr")


def _ip(argv: list[str], *, check: bool) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        msg = f"{' '.join(argv)}: {r.stderr.strip()}"
        (log.error if check else log.debug)("%s", msg)


def move_address(ifname: str, old: str | None, new: str | None) -> None:
    """Replace ``old`` (``ip/prefix`` or None) by ``new`` on ``ifname``."""
    if old:
        _ip(["ip", "addr", "del", old, "dev", ifname], check=False)
    if new:
        _ip(["ip", "addr", "replace", new, "dev", ifname], check=True)
