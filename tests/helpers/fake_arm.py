"""A local HTTPS fake of Azure Resource Manager for Microsoft.IoTSecurity sites and sensors
(api-version 2021-09-01-preview), with the shapes of the REST spec's examples
(``examples/Sites/Put.json``, ``examples/Sensors/Put.json``, ``DownloadActivation.json``).

Stateful: a PUT stores the writable properties and answers 201 (new) or 200 (replaced) with
the resource document; a sensor gets the read-only properties a real one shows
(``sensorStatus``, ``connectivityTime``, ``learningMode``...), which tests can change.
``downloadActivation`` answers ``application/zip``. Faults: ``conflict_on_put`` answers 409
to PUTs of the named paths (as ARM does for a resource that exists and may not be re-put),
``throttle`` answers that many 429s with ``Retry-After``. Every request is recorded.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from labctl.transport.httpserver import BaseHandler, LabHTTPServer

TOKEN = "fake-arm-token"
API_VERSION = "2021-09-01-preview"


def activation_zip(sensor: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{sensor}.conf", f"sensor={sensor}\n".encode())
    return buf.getvalue()


@dataclass
class FakeArm:
    subscription: str
    location: str = "eastus"
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    conflict_on_put: set[str] = field(default_factory=set)
    throttle: int = 0
    retry_after: str = "7"
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def prefix(self) -> str:
        return (f"/subscriptions/{self.subscription}/providers/Microsoft.IoTSecurity/"
                f"locations/{self.location}")

    def methods(self, method: str) -> list[str]:
        return [p for m, p, _ in self.requests if m == method]

    def doc(self, path: str) -> dict[str, Any]:
        parts = path.strip("/").split("/")
        kind = "Microsoft.IoTSecurity/locations/sites" + ("/sensors" if "sensors" in parts
                                                          else "")
        return {"id": path, "name": parts[-1], "type": kind,
                "properties": dict(self.resources[path])}


def serve(arm: FakeArm, ssl_context: Any) -> LabHTTPServer:
    class Handler(BaseHandler):
        def _reply(self, status: int, doc: Any = None, *, raw: bytes | None = None,
                   ctype: str = "application/json",
                   headers: dict[str, str] | None = None) -> None:
            body = raw if raw is not None else json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _err(self, status: int, code: str, message: str, **kw: Any) -> None:
            self._reply(status, {"error": {"code": code, "message": message}}, **kw)

        def _handle(self, method: str) -> None:
            u = urlsplit(self.path)
            raw = self.read_body() if method in ("PUT", "POST") else b""
            body = json.loads(raw) if raw else None
            with arm.lock:
                arm.requests.append((method, u.path, body))
                throttled = arm.throttle > 0
                if throttled:
                    arm.throttle -= 1
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._err(401, "InvalidAuthenticationToken", "The access token is invalid.")
                return
            if parse_qs(u.query).get("api-version") != [API_VERSION]:
                self._err(400, "InvalidApiVersionParameter", "api-version missing or wrong")
                return
            if throttled:
                self._err(429, "TooManyRequests", "Rate limit exceeded.",
                          headers={"Retry-After": arm.retry_after})
                return
            path = u.path
            if not path.startswith(arm.prefix + "/sites/"):
                self._err(404, "PathNotFound", f"no route {path}")
                return
            rest = path[len(arm.prefix):].strip("/").split("/")
            is_site = len(rest) == 2
            is_sensor = len(rest) == 4 and rest[2] == "sensors"
            site_path = arm.prefix + f"/sites/{rest[1]}"
            if method == "POST" and len(rest) == 5 and rest[4] == "downloadActivation":
                sensor_path = path.rsplit("/", 1)[0]
                with arm.lock:
                    exists = sensor_path in arm.resources
                if not exists:
                    self._err(404, "ResourceNotFound", "The sensor was not found.")
                    return
                self._reply(200, raw=activation_zip(rest[3]), ctype="application/zip")
                return
            if not (is_site or is_sensor):
                self._err(404, "PathNotFound", f"no route {path}")
                return
            with arm.lock:
                if method == "GET":
                    if path not in arm.resources:
                        self._err(404, "ResourceNotFound", "The resource was not found.")
                        return
                    self._reply(200, arm.doc(path))
                    return
                if method == "PUT":
                    if path in arm.conflict_on_put and path in arm.resources:
                        self._err(409, "Conflict", "The resource already exists.")
                        return
                    if is_sensor and site_path not in arm.resources:
                        self._err(404, "ParentResourceNotFound", "The site was not found.")
                        return
                    props = dict((body or {}).get("properties") or {})
                    new = path not in arm.resources
                    if is_sensor:
                        ro = {"sensorStatus": "Unavailable", "connectivityTime": None,
                              "learningMode": True, "dynamicLearning": True,
                              "sensorVersion": None, "tiStatus": "Ok", "tiVersion": None}
                        old = arm.resources.get(path, {})
                        props = {**ro, **{k: old[k] for k in ro if k in old}, **props}
                    arm.resources[path] = props
                    self._reply(201 if new else 200, arm.doc(path))
                    return
            self._err(405, "MethodNotAllowed", method)

        def do_GET(self) -> None:  # noqa: N802
            self._handle("GET")

        def do_PUT(self) -> None:  # noqa: N802
            self._handle("PUT")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

    srv = LabHTTPServer(("127.0.0.1", 0), Handler, ssl_context=ssl_context)
    srv.start(name="fake-arm")
    return srv
