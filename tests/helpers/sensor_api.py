"""Run the embedded sensor's real HTTPS API on 127.0.0.1 for tests (no capture needed)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from labctl.sensor.api import make_server, start_in_thread
from labctl.sensor.config import load_config
from labctl.sensor.engine import Sensor
from labctl.sensor.pcap import CaptureFile
from labctl.sensor.store import SensorStore


class RunningApi:
    def __init__(self, url: str, cert: Path, token: str, sensor: Sensor, store: SensorStore,
                 state: Path) -> None:
        self.url = url
        self.cert = cert
        self.token = token
        self.sensor = sensor
        self.store = store
        self.state = state
        self.server: Any = None

    def session(self) -> requests.Session:
        s = requests.Session()
        s.verify = str(self.cert)  # the sensor's own certificate as trust anchor
        s.trust_env = False  # else REQUESTS_CA_BUNDLE overrides Session.verify
        return s

    def get(self, path: str, token: str | None = "default", **params) -> requests.Response:
        headers = {}
        if token == "default":
            token = self.token
        if token is not None:
            headers["Authorization"] = token
        return self.session().get(self.url + path, params=params, headers=headers, timeout=10)


@contextlib.contextmanager
def running_api(state: Path, pcap: Path | None = None, *, learning: bool | None = None,
                config: Path | None = None, **server_opts: Any) -> Iterator[RunningApi]:
    """``server_opts`` go to :func:`labctl.sensor.api.make_server` (header_timeout,
    max_connections, guard, ...)."""
    store = SensorStore(state)
    sensor = Sensor(load_config(config), learning_mode=learning)
    sensor.restore(*store.load_all(), *store.load_flows())
    if pcap is not None:
        with CaptureFile(pcap) as cap:
            sensor.replay(cap, cap.data)
    token = store.create_token("tests")
    server = make_server(sensor, store, ("127.0.0.1", 0), state, **server_opts)
    start_in_thread(server)
    try:
        port = server.server_address[1]
        api = RunningApi(f"https://127.0.0.1:{port}", state / "tls" / "cert.pem", token,
                         sensor, store, state)
        api.server = server
        yield api
    finally:
        server.shutdown()
        server.server_close()
        server.head_watchdog.stop()
        with sensor.lock:
            rows = sensor.take_dirty()
        store.write_batch(*rows)
        store.close()
