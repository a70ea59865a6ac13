"""Router drivers by kind: the playbook's ``router.kind`` -> the driver class.

Why lazy: ``labctl --help`` and every command that never talks to a router must not import
a vendor's HTTP client. Adding a vendor is one folder (``labctl/router/<kind>/``) plus one
line in :data:`DRIVERS`.
"""

from __future__ import annotations

import importlib
from typing import cast

from labctl.core.errors import UsageError
from labctl.router.base import RouterDriver

#: kind -> "module:Class" of its driver
DRIVERS: dict[str, str] = {
    "asus": "labctl.router.asus.driver:AsusDriver",
}


def router_kinds() -> list[str]:
    return sorted(DRIVERS)


def get_router_driver(kind: str) -> type[RouterDriver]:
    """The driver class for ``kind``; UsageError (exit 2) for an unknown kind."""
    spec = DRIVERS.get(kind)
    if spec is None:
        raise UsageError(f"unknown router kind {kind!r}",
                         hint=f"router.kind is one of: {', '.join(router_kinds())}")
    module, _, name = spec.partition(":")
    return cast("type[RouterDriver]", getattr(importlib.import_module(module), name))
