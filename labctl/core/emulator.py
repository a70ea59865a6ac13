"""How a driver names the emulator process the netns twin runs for it.

Why here: the twin (``labctl.netns``) starts one emulator per device kind (the ASUS httpd
emulator for an ASUS router, the embedded sensor for a D4IoT sensor). The twin knows where
the process must listen and where its state lives; the driver knows which command serves
that kind. Both meet on these two plain-data types, so adding a kind never edits the twin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class EmulatorRequest:
    """What the twin decided for the emulator: address, port, TLS, state, extras."""

    listen_ip: str
    port: int
    https: bool
    state_path: Path
    #: interface bindings the emulator needs, e.g. ``{"52": "iot0"}`` (VLAN -> interface)
    interfaces: Mapping[str, str] = field(default_factory=dict)
    #: name of the environment variable holding the emulator's admin password, if any
    password_env: str | None = None
    #: the interface a passive emulator (a sensor) captures on, if any
    capture_interface: str | None = None
    #: a configuration file the twin wrote for the emulator from the playbook (for the
    #: embedded sensor: engines.yaml with the playbook's sensor.engines, learning_mode and
    #: authorized_scanners applied), if any
    config_file: Path | None = None


@dataclass(frozen=True)
class EmulatorProcess:
    """The labctl sub-command (arguments after ``python -m labctl``) that runs it."""

    args: tuple[str, ...]
    ready: tuple[str, int]
