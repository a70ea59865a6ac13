"""A stateful fake of a Defender for IoT sensor's API over real HTTPS, for verify-alerts.

It serves the documented shapes (alerts v1 and v2, devices, connections; keys in the
documented casing or in lower case), "sees" what the test says the mirror carried
(:meth:`FakeSensor.observe` adds a connection and, after an optional delay, the alerts a
detection rule raises), and injects faults on the next requests: HTTP 5xx, a dropped
connection, a slow answer. v1 alerts carry no addresses (the source IP is in the message).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from labctl.transport.certs import ensure_self_signed, fingerprint, server_context
from labctl.transport.httpserver import BaseHandler, LabHTTPServer

TOKEN = "fake-d4iot-token"


@dataclass
class FakeSensor:
    devices: list[dict[str, Any]] = field(default_factory=list)
    connections: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    pending: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)  # "500", "drop", "slow"
    v2: bool = True
    lower_keys: bool = False
    learning_mode: bool | None = True
    blind: bool = False
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _next_id: int = 1

    def device(self, ip: str, *, scanner: bool = False, authorized: bool = True) -> int:
        with self.lock:
            for d in self.devices:
                if ip in d["ipAddresses"]:
                    d["scanner"] = d["scanner"] or scanner
                    return int(d["id"])
            did = len(self.devices) + 1
            self.devices.append({"id": did, "name": ip, "type": "Unknown",
                                 "ipAddresses": [ip], "macAddresses": [], "vendor": None,
                                 "operatingSystem": None, "engineeringStation": False,
                                 "scanner": scanner, "authorized": authorized,
                                 "protocols": [], "firmware": [],
                                 "hasDynamicAddress": False})
            return did

    def raise_alert(self, title: str, engine: str, src: str, dst: str | None = None, *,
                    severity: str = "Critical", delay: float = 0.0,
                    at: float | None = None) -> None:
        alert = {"title": title, "engine": engine, "severity": severity,
                 "message": f"{title} from {src}" + (f" to {dst}" if dst else ""),
                 "sourceDeviceAddress": src, "destinationDeviceAddress": dst,
                 "time": int((at if at is not None else time.time()) * 1000),
                 "additionalInformation": None}
        with self.lock:
            self.pending.append((time.time() + delay, alert))

    def observe(self, src: str, dst: str, ports: tuple[int, ...]) -> None:
        """The mirror carried ``src -> dst`` on ``ports`` (unless the sensor is blind)."""
        if self.blind:
            return
        a, b = self.device(src), self.device(dst)
        now = int(time.time() * 1000)
        with self.lock:
            for c in self.connections:
                if {c["firstDeviceId"], c["secondDeviceId"]} == {a, b}:
                    c["lastSeen"] = now
                    c["ports"] = sorted(set(c["ports"]) | set(ports))
                    return
            self.connections.append({"firstDeviceId": a, "secondDeviceId": b,
                                     "lastSeen": now, "discovered": now,
                                     "ports": sorted(ports), "protocols": []})

    def _release(self) -> None:
        now = time.time()
        with self.lock:
            due = [a for t, a in self.pending if t <= now]
            self.pending = [(t, a) for t, a in self.pending if t > now]
            for a in due:
                a["id"] = self._next_id
                self._next_id += 1
                self.alerts.append(a)

    def alert_docs(self, version: int, from_ms: int | None) -> list[dict[str, Any]]:
        self._release()
        with self.lock:
            docs = [dict(a) for a in self.alerts if from_ms is None or a["time"] >= from_ms]
        if version == 1:
            for d in docs:
                d.pop("sourceDeviceAddress", None)
                d.pop("destinationDeviceAddress", None)
                d["sourceDevice"] = None
                d["destinationDevice"] = None
        return [self._keys(d) for d in docs]

    def _keys(self, d: dict[str, Any]) -> dict[str, Any]:
        return {k.lower(): v for k, v in d.items()} if self.lower_keys else d


def serve(sensor: FakeSensor, state: Path) -> tuple[LabHTTPServer, str, str]:
    """Start the fake on 127.0.0.1; returns (server, base URL, certificate fingerprint)."""
    cert, key = ensure_self_signed(state, common_name="fake d4iot", names=["127.0.0.1"])

    class Handler(BaseHandler):
        def _reply(self, status: int, doc: Any) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            u = urlsplit(self.path)
            q = parse_qs(u.query)
            with sensor.lock:
                sensor.requests.append(u.path)
                fault = sensor.faults.pop(0) if sensor.faults else None
            if fault == "drop":
                self.close_connection = True
                self.connection.close()
                return
            if fault == "slow":
                time.sleep(1.5)
            if fault == "500":
                self._reply(500, {"error": "internal error"})
                return
            if self.headers.get("Authorization") != TOKEN:
                self._reply(401, {"error": "invalid token"})
                return
            routes: dict[str, Callable[[], Any]] = {
                "/api/v1/alerts": lambda: sensor.alert_docs(1, _ms(q)),
                "/api/v1/devices": lambda: [sensor._keys(d) for d in sensor.devices],
                "/api/v1/devices/connections":
                    lambda: [sensor._keys(c) for c in sensor.connections],
            }
            if sensor.v2:
                routes["/api/v2/alerts"] = lambda: sensor.alert_docs(2, _ms(q))
            if sensor.learning_mode is not None:
                routes["/api/labctl/status"] = lambda: {"learning_mode": sensor.learning_mode}
            fn = routes.get(u.path)
            if fn is None:
                self._reply(404, {"error": f"no such endpoint: GET {u.path}"})
                return
            self._reply(200, fn())

    srv = LabHTTPServer(("127.0.0.1", 0), Handler, ssl_context=server_context(cert, key))
    srv.start(name="fake-d4iot")
    return srv, f"https://127.0.0.1:{srv.server_address[1]}", fingerprint(cert)


def _ms(q: dict[str, list[str]]) -> int | None:
    v = q.get("fromTime")
    return int(v[0]) if v else None
