"""The typed context every use case gets: the playbook, the outside world, the factories.

Why one object: the app layer must not read ``os.environ``, prompt, sleep or build drivers
by itself, so tests (and embedders) inject each of those here instead of patching modules.
Like HTTPie's ``Environment``: defaults are the real process, every field is replaceable.

The factories are typed loosely (``Callable[..., Any]``) on purpose: their real signatures
live with the protocols in the driver layer (``labctl.router.base``, ``labctl.sensor.base``,
``labctl.core.model.Provider``), and core may not import from above itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from labctl.core.playbook import LoadedPlaybook
from labctl.core.secrets import PromptFn

#: ``factory(ctx) -> Provider`` (labctl.core.model.Provider)
ProviderFactory = Callable[["LabContext"], Any]
#: ``factory(target) -> RouterDriver`` (labctl.router.base.RouterDriver)
RouterDriverFactory = Callable[..., Any]
#: ``factory(target) -> SensorDriver`` (labctl.sensor.base.SensorDriver)
SensorDriverFactory = Callable[..., Any]


@dataclass
class LabContext:
    """What a use case may know about the world outside its arguments."""

    loaded: LoadedPlaybook
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    prompt_fn: PromptFn | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    # Replace how drivers are built (tests: a fake Hyper-V host, an emulator's client).
    provider_factory: ProviderFactory | None = None
    router_driver_factory: RouterDriverFactory | None = None
    sensor_driver_factory: SensorDriverFactory | None = None
    # Azure Resource Manager sign-in and TLS trust for sensor.azure (None / True: azure-identity's
    # DefaultAzureCredential and the system CA bundle; tests: a fake credential and CA file).
    arm_credential: Any = None
    arm_verify: Any = True
    # Per-command overrides of the playbook (CLI flags such as --url / --user).
    router_url: str | None = None
    router_user: str | None = None

    @property
    def playbook(self) -> Any:
        """The validated playbook model (``LoadedPlaybook.model``)."""
        return self.loaded.model
