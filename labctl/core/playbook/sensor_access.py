"""How labctl reaches the sensor's management address (``sensor.access``).

The sensor's management address (192.168.0.101 on the internal Core switch in the reference
lab) is reachable only from the Hyper-V host. Three ways in:

- ``direct``: labctl runs on the host, or the network routes to the sensor;
- ``ssh-tunnel``: a local port forwarded through the Hyper-V host over SSH (paramiko
  ``direct-tcpip``), with the host's SSH transport settings, open for one command;
- ``netnat``: the Hyper-V provider publishes ``host_port`` on the host with
  ``Add-NetNatStaticMapping`` to the sensor's management address, port 443 (a planned,
  owned resource that ``down`` removes).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from labctl.core.playbook.common import Model


class SensorAccess(Model):
    mode: Literal["direct", "ssh-tunnel", "netnat"] = "direct"
    #: netnat: the host port published to the sensor's management address, port 443
    host_port: int = Field(default=8443, ge=1, le=65535)
    #: ssh-tunnel: the local port (0: any free port)
    local_port: int = Field(default=0, ge=0, le=65535)
