"""``labctl sensor replay``: the sensor's engines over a pcap/pcapng file, as fast as possible."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from labctl.sensor.api import alert_to_api, connections_api, device_to_api
from labctl.sensor.config import load_config
from labctl.sensor.engine import Sensor
from labctl.sensor.pcap import CaptureFile


def replay(pcap: str | Path, config: str | Path | None = None, *,
           learning_mode: bool | None = None, authorized_scanners: list[str] | None = None
           ) -> dict[str, Any]:
    """Replay ``pcap`` through a fresh in-memory sensor; return the ``--json`` document.

    ``seconds`` is the time spent reading and processing the packets (not loading the config).
    """
    cfg = load_config(config)
    sensor = Sensor(cfg, learning_mode=learning_mode,
                    authorized_scanners=authorized_scanners or [])
    sensor.oui.lookup("00:00:00:00:00:00")  # load the OUI table outside the timed part
    start = time.perf_counter()
    cap = CaptureFile(pcap)
    n = sensor.replay(cap, cap.data)
    seconds = time.perf_counter() - start
    return {
        "alerts": [alert_to_api(a, 2) for a in sensor.alerts],
        "devices": [device_to_api(d)
                    for d in sorted(sensor.devices.values(), key=lambda d: d.id)],
        "connections": connections_api(sensor),
        "flows": len(sensor.flows),
        "packets": n,
        "malformed": sensor.malformed,
        "truncated": cap.truncated,
        "skipped": cap.skipped,
        "withheld_policy_alerts": sensor.withheld,
        "learning_mode": sensor.learning,
        "seconds": round(seconds, 6),
        "packets_per_second": round(n / seconds) if seconds > 0 else None,
    }
