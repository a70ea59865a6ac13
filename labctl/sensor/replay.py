"""``labctl sensor replay``: the sensor's engines over a pcap/pcapng file, as fast as possible."""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

from labctl.sensor import native
from labctl.sensor.api import alert_to_api, connections_api, device_to_api
from labctl.sensor.config import load_config
from labctl.sensor.engine import Sensor
from labctl.sensor.pcap import CaptureFile


class collector_tuned:  # noqa: N801 (used as a context manager)
    """Python's cyclic garbage collector tuned for the engine while it runs.

    Why: the flow store holds a few container objects per flow (up to ``max_flows``), and
    each full collection walks every live container, including the thousands the imported
    modules and the configuration made. Those are frozen (never collected, never walked
    again), and the youngest generation is collected every 50 000 allocations instead of
    700. The settings before are restored on exit."""

    def __enter__(self) -> None:
        self.saved = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(max(self.saved[0], 50_000), self.saved[1], self.saved[2])

    def __exit__(self, *exc: object) -> None:
        gc.set_threshold(*self.saved)
        gc.unfreeze()


def replay(pcap: str | Path, config: str | Path | None = None, *,
           learning_mode: bool | None = None, authorized_scanners: list[str] | None = None
           ) -> dict[str, Any]:
    """Replay ``pcap`` through a fresh in-memory sensor; return the ``--json`` document.

    ``seconds`` is the time spent reading and processing the packets (not loading the config).
    A damaged file is read up to the damage, which ``damage`` names (a sensor keeps what it
    saw), with ``truncated`` 1.
    """
    cfg = load_config(config)
    sensor = Sensor(cfg, learning_mode=learning_mode,
                    authorized_scanners=authorized_scanners or [])
    sensor.oui.lookup("00:00:00:00:00:00")  # load the OUI table outside the timed part
    loop = native.status()  # builds the compiled loop on first use, outside the timed part
    with collector_tuned(), CaptureFile(pcap) as cap:
        start = time.perf_counter()
        n = sensor.replay(cap, cap.data)
        seconds = time.perf_counter() - start
    # (closed: the mapping and a gzip capture's decompressed copy are gone)
    err = cap.damage()
    return {
        "alerts": [alert_to_api(a, 2) for a in sensor.alerts],
        "devices": [device_to_api(d)
                    for d in sorted(sensor.devices.values(), key=lambda d: d.id)],
        "connections": connections_api(sensor),
        "flows": len(sensor.flows),
        "packets": n,
        "malformed": sensor.malformed,
        "truncated": cap.truncated,
        #: where the walk stopped early (a cut or corrupt record, a damaged gzip stream)
        "damage": None if err is None else {"offset": err.offset, "what": err.what,
                                            "compressed": err.compressed},
        "skipped": cap.skipped,
        "withheld_policy_alerts": sensor.withheld,
        "learning_mode": sensor.learning,
        #: the fused pcap loop: "native" (compiled) or "python: why not native"
        "loop": "native" if loop.startswith("native") else f"python: {loop}",
        "seconds": round(seconds, 6),
        "packets_per_second": round(n / seconds) if seconds > 0 else None,
    }
