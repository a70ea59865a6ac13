"""Compatibility alias of :mod:`labctl.netns.credentials` (the old name, which collided with
:mod:`labctl.core.secrets`).

Kept only while ``labctl/app/router.py`` and ``labctl/app/sensor.py`` still import the old
name; delete this file once they import ``labctl.netns.credentials``.
"""

from labctl.netns.credentials import (
    FILE,
    ROUTER_PASSWORD_ENV,
    iot_passphrase,
    router_password,
    sensor_admin_password,
    twin_secret,
)

__all__ = ["FILE", "ROUTER_PASSWORD_ENV", "iot_passphrase", "router_password",
           "sensor_admin_password", "twin_secret"]
