"""Sensor drivers by kind: the playbook's ``sensor.kind`` -> the driver class.

Both kinds speak the D4IoT sensor API, so one driver serves them: ``d4iot`` is a real
Defender for IoT OT sensor, ``embedded`` the twin's ``labctl sensor serve``. Why lazy: commands
that never talk to a sensor must not import its HTTP client. Adding a sensor is one module
(or folder) under ``labctl/sensor/`` plus one line in :data:`DRIVERS`.
"""

from __future__ import annotations

import importlib
from typing import cast

from labctl.core.errors import UsageError
from labctl.sensor.base import SensorDriver

#: kind -> "module:Class" of its driver
DRIVERS: dict[str, str] = {
    "d4iot": "labctl.sensor.client:D4IoTDriver",
    "embedded": "labctl.sensor.client:D4IoTDriver",
}


def sensor_kinds() -> list[str]:
    return sorted(DRIVERS)


def get_sensor_driver(kind: str) -> type[SensorDriver]:
    """The driver class for ``kind``; UsageError (exit 2) for an unknown kind."""
    spec = DRIVERS.get(kind)
    if spec is None:
        raise UsageError(f"unknown sensor kind {kind!r}",
                         hint=f"sensor.kind is one of: {', '.join(sensor_kinds())}")
    module, _, name = spec.partition(":")
    return cast("type[SensorDriver]", getattr(importlib.import_module(module), name))
