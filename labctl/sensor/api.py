"""The embedded sensor's HTTPS API, following the documented D4IoT sensor API.

Paths, parameters and shapes come from ../shared/reference/defender-for-iot.md §1:

* ``GET /api/v1/alerts`` and ``/api/v2/alerts`` with ``state=handled|unhandled``,
  ``fromTime``, ``toTime`` (epoch ms) and ``type`` (only "unexpected new devices" and
  "disconnections" have a meaning; other values are ignored, as documented). v2 adds
  ``sourceDeviceAddress``, ``destinationDeviceAddress`` and ``remediationSteps``;
* ``GET /api/v1/devices`` (``authorized=true|false``), ``/api/v1/devices/connections`` and
  ``/api/v1/devices/<id>/connections`` (``discoveredBefore``, ``discoveredAfter``,
  ``lastActiveInMinutes``);
* ``GET /api/v1/events`` (``minutesTimeFrame`` up to 4320, ``type``): the latest 100 events,
  newest first. The real sensor caches an identical query for an hour; this one does not;
* ``POST /api/external/authentication/validation`` and ``.../set_password`` (no token);
* ``GET /api/labctl/status`` (a labctl extension, token required): packet, malformed and
  kernel drop counters (``PACKET_STATISTICS``), devices, alerts, learning mode.

Authentication is ``Authorization: <token>`` with no ``Bearer`` prefix; tokens are checked
against the hashes in the store. Bad queries get HTTP 400 with a JSON ``error`` naming the
parameter; a missing or wrong token gets 401. HTTPS only, on labctl's one server base
(:mod:`labctl.transport.httpserver`: the TLS handshake in the worker thread, bounded and
drained request bodies), with the self-signed certificate of :mod:`labctl.transport.certs`.

The D4IoT projection of the engine's records (:func:`alert_to_api`, :func:`device_to_api`,
:func:`event_to_api`, :func:`connections_api`) lives here too: the engine keeps its records,
the API decides how they look on the wire.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from labctl.sensor.engine import PROTO_NAMES, SERVICE_NAMES, Sensor
from labctl.sensor.records import Alert, Device, Event
from labctl.sensor.store import SensorStore, password_problems
from labctl.transport.certs import ensure_self_signed, server_context
from labctl.transport.httpserver import BaseHandler, BodyTooLarge, LabHTTPServer

log = logging.getLogger("labctl.sensor.api")

MAX_BODY = 64 * 1024
DRAIN_LIMIT = 1024 * 1024
#: the certificate's common name, as a fresh sensor's own self-signed certificate names it
CERT_COMMON_NAME = "labctl embedded sensor"
EVENTS_LIMIT = 100
MAX_MINUTES = 4320


class BadQuery(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _one(q: dict[str, list[str]], name: str) -> str | None:
    vals = q.get(name)
    if not vals:
        return None
    if len(vals) > 1:
        raise BadQuery(f"query parameter {name!r} was given {len(vals)} times")
    return vals[0]


def _int_param(q: dict[str, list[str]], name: str, *, lo: int = 0,
               hi: int | None = None) -> int | None:
    raw = _one(q, name)
    if raw is None:
        return None
    try:
        v = int(raw)
    except ValueError:
        raise BadQuery(f"query parameter {name!r} must be an integer "
                       f"(epoch milliseconds for times), got {raw!r}") from None
    if v < lo or (hi is not None and v > hi):
        raise BadQuery(f"query parameter {name!r} must be between {lo} and "
                       f"{hi if hi is not None else 'infinity'}, got {v}")
    return v


def _bool_param(q: dict[str, list[str]], name: str) -> bool | None:
    raw = _one(q, name)
    if raw is None:
        return None
    low = raw.lower()
    if low not in ("true", "false"):
        raise BadQuery(f"query parameter {name!r} must be true or false, got {raw!r}")
    return low == "true"


class SensorApi:
    """Route table and handlers, independent of the HTTP plumbing (easy to test)."""

    def __init__(self, sensor: Sensor, store: SensorStore,
                 status_fn: Callable[[], dict[str, Any]] | None = None) -> None:
        self.sensor = sensor
        self.store = store
        self.status_fn = status_fn

    def status(self) -> tuple[int, Any]:
        """labctl extension (not a D4IoT path): counters incl. kernel drops."""
        with self.sensor.lock:
            doc: dict[str, Any] = self.sensor.summary()
        if self.status_fn is not None:
            doc.update(self.status_fn())
        return 200, doc

    # each returns (status, body)
    def alerts(self, version: int, q: dict[str, list[str]]) -> tuple[int, Any]:
        state = _one(q, "state")
        if state is not None and state not in ("handled", "unhandled"):
            raise BadQuery(f"query parameter 'state' must be handled or unhandled, got {state!r}")
        t_from = _int_param(q, "fromTime")
        t_to = _int_param(q, "toTime")
        if t_from is not None and t_to is not None and t_from > t_to:
            raise BadQuery("fromTime is later than toTime")
        atype = (_one(q, "type") or "").lower()
        with self.sensor.lock:
            items = list(self.sensor.alerts)
        out = []
        for a in items:
            if state == "handled" and not a.handled or state == "unhandled" and a.handled:
                continue
            if t_from is not None and a.time < t_from:
                continue
            if t_to is not None and a.time > t_to:
                continue
            if atype == "unexpected new devices" and a.title != self.sensor.det.new_asset.title:
                continue
            if atype == "disconnections" and a.engine != "Operational":
                continue
            out.append(alert_to_api(a, version))
        return 200, out

    def devices(self, q: dict[str, list[str]]) -> tuple[int, Any]:
        auth = _bool_param(q, "authorized")
        with self.sensor.lock:
            self.sensor.fold(self.sensor.last_ts)
            devs = [device_to_api(d)
                    for d in sorted(self.sensor.devices.values(), key=lambda d: d.id)]
        if auth is not None:
            devs = [d for d in devs if d["authorized"] == auth]
        return 200, devs

    def connections(self, q: dict[str, list[str]], device_id: int | None = None
                    ) -> tuple[int, Any]:
        before = _int_param(q, "discoveredBefore")
        after = _int_param(q, "discoveredAfter")
        active = _int_param(q, "lastActiveInMinutes", lo=1)
        with self.sensor.lock:
            if device_id is not None and device_id not in self.sensor.devices:
                raise BadQuery(f"device {device_id} not found", status=404)
            conns = connections_api(self.sensor)
        now_ms = int(time.time() * 1000)
        out = []
        for c in conns:
            if device_id is not None and device_id not in (c["firstDeviceId"],
                                                           c["secondDeviceId"]):
                continue
            if before is not None and c["discovered"] >= before:
                continue
            if after is not None and c["discovered"] <= after:
                continue
            if active is not None and c["lastSeen"] < now_ms - active * 60_000:
                continue
            out.append(c)
        return 200, out

    def events(self, q: dict[str, list[str]]) -> tuple[int, Any]:
        minutes = _int_param(q, "minutesTimeFrame", lo=1, hi=MAX_MINUTES)
        etype = _one(q, "type")
        cutoff = int(time.time() * 1000) - minutes * 60_000 if minutes else None
        with self.sensor.lock:
            evs = list(self.sensor.events)
        out = []
        for e in reversed(evs):
            if cutoff is not None and e.timestamp < cutoff:
                continue
            if etype and e.type != etype:
                continue
            out.append(event_to_api(e))
            if len(out) >= EVENTS_LIMIT:
                break
        return 200, out

    def validation(self, body: dict[str, Any]) -> tuple[int, Any]:
        user, password = _creds(body, ("username", "password"))
        ok, must_change = self.store.check_password(user, password)
        if not ok:
            return 401, _auth_error("Authentication failed: wrong user name or password.")
        if must_change:
            return 403, _auth_error("The password must be changed before first use; call "
                                    "/api/external/authentication/set_password.")
        return 200, {"msg": "Authentication succeeded."}

    def set_password(self, body: dict[str, Any]) -> tuple[int, Any]:
        user, password, new = _creds(body, ("username", "password", "new_password"))
        ok, _ = self.store.check_password(user, password)
        if not ok:
            return 401, _auth_error("Authentication failed: wrong user name or password.")
        problems = password_problems(new)
        if problems:
            return 400, _auth_error("The new password must contain " + ", ".join(problems) + ".")
        if new == password:
            return 400, _auth_error("The new password must differ from the current one.")
        self.store.set_password(user, new)
        return 200, {"msg": "Password has been replaced."}


def _auth_error(msg: str) -> dict[str, Any]:
    return {"error": {"userDisplayErrorMessage": msg}}


def _creds(body: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for k in keys:
        v = body.get(k)
        if not isinstance(v, str):
            raise BadQuery(f"body field {k!r} is required and must be a string")
        out.append(v)
    return tuple(out)


class _Handler(BaseHandler):
    server_version = "labctl-sensor"
    api: SensorApi  # set on the subclass made by make_server

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        token = (self.headers.get("Authorization") or "").strip()
        if self.api.store.check_token(token):
            return True
        if token.lower().startswith("bearer "):
            msg = "invalid token: send `Authorization: <token>` without the Bearer prefix"
        elif token:
            msg = "invalid token"
        else:
            msg = "missing Authorization header (an access token is required)"
        self._send(401, {"error": msg})
        return False

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        try:
            q = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
        except ValueError:
            self._send(400, {"error": "malformed query string"})
            return
        routes: dict[str, Callable[[], tuple[int, Any]]] = {
            "/api/v1/alerts": lambda: self.api.alerts(1, q),
            "/api/v2/alerts": lambda: self.api.alerts(2, q),
            "/api/v1/devices": lambda: self.api.devices(q),
            "/api/v1/devices/connections": lambda: self.api.connections(q),
            "/api/v1/events": lambda: self.api.events(q),
            "/api/labctl/status": self.api.status,
        }
        handler = routes.get(path)
        if handler is None and path.startswith("/api/v1/devices/") and \
                path.endswith("/connections"):
            mid = path[len("/api/v1/devices/"):-len("/connections")]
            if mid.isdigit():
                handler = lambda: self.api.connections(q, int(mid))  # noqa: E731
        if handler is None:
            self._send(404, {"error": f"no such endpoint: GET {path}"})
            return
        if not self._authorized():
            return
        self._run(handler)

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path.rstrip("/")
        routes = {
            "/api/external/authentication/validation": self.api.validation,
            "/api/external/authentication/set_password": self.api.set_password,
        }
        fn = routes.get(path)
        if fn is None:
            self._send(404, {"error": f"no such endpoint: POST {path}"})
            return
        try:
            raw = self.read_body()
        except BodyTooLarge:
            self._send(400, {"error": f"bad Content-Length (at most {MAX_BODY} bytes)"})
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send(400, _auth_error("The request body is not valid JSON."))
            return
        if not isinstance(body, dict):
            self._send(400, _auth_error("The request body must be a JSON object."))
            return
        self._run(lambda: fn(body))

    def _not_allowed(self) -> None:
        self._send(405, {"error": f"method {self.command} is not supported on "
                                  f"{urlsplit(self.path).path}"})

    # no sensor-side PUT, DELETE or PATCH is documented
    do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815

    def _run(self, fn: Callable[[], tuple[int, Any]]) -> None:
        try:
            status, body = fn()
        except BadQuery as e:
            status, body = e.status, {"error": str(e)}
        except Exception:  # never let one request take the sensor down
            log.exception("API handler failed")
            status, body = 500, {"error": "internal error"}
        self._send(status, body)


def ensure_certificate(state_dir: str | Path, names: list[str]) -> tuple[Path, Path]:
    """The sensor's self-signed certificate and key in ``<state>/tls``, made at first start.

    Files: ``tls/cert.pem`` and ``tls/cert.key``. A state folder written before the shared
    helper has its key in ``tls/key.pem``: that pair is kept (renamed to ``cert.key``), so a
    client that pinned the certificate's fingerprint still trusts the restarted sensor.
    """
    tls = Path(state_dir) / "tls"
    cert, old_key, key = tls / "cert.pem", tls / "key.pem", tls / "cert.key"
    if cert.exists() and old_key.exists() and not key.exists():
        old_key.replace(key)
    return ensure_self_signed(tls, stem="cert", common_name=CERT_COMMON_NAME, names=names)


def make_server(sensor: Sensor, store: SensorStore, listen: tuple[str, int],
                state_dir: str | Path,
                status_fn: Callable[[], dict[str, Any]] | None = None) -> LabHTTPServer:
    """Build (bind) the HTTPS server; start it with :func:`start_in_thread`."""
    cert, key = ensure_certificate(state_dir, [listen[0]])
    api = SensorApi(sensor, store, status_fn)
    handler = type("Handler", (_Handler,), {"api": api})
    return LabHTTPServer(listen, handler, ssl_context=server_context(cert, key),
                         max_body=MAX_BODY, drain_limit=DRAIN_LIMIT)


def start_in_thread(server: LabHTTPServer) -> threading.Thread:
    return server.start(name="sensor-api")


# ---- the D4IoT projection of the engine's records ----------------------------------------

def alert_to_api(a: Alert, version: int = 2) -> dict[str, Any]:
    """The D4IoT alert object; v2 adds the addresses and remediation steps."""
    out: dict[str, Any] = {
        "id": a.id,
        "time": a.time,
        "title": a.title,
        "message": a.message,
        "severity": a.severity,
        "engine": a.engine,
        "sourceDevice": a.source_device,
        "destinationDevice": a.destination_device,
        "additionalInformation": (
            {"description": a.description, "information": list(a.information)}
            if a.description or a.information else None),
    }
    if version >= 2:
        out["sourceDeviceAddress"] = a.source_address
        out["destinationDeviceAddress"] = a.destination_address
        out["remediationSteps"] = list(a.remediation)
    return out


def device_to_api(d: Device) -> dict[str, Any]:
    """The D4IoT /api/v1/devices object, plus the embedded sensor's extras."""
    return {
        "id": d.id,
        "name": d.ip,
        "type": "Unknown",
        "ipAddresses": [d.ip],
        "macAddresses": [d.mac] if d.mac else [],
        "vendor": d.vendor,
        "operatingSystem": None,
        "engineeringStation": False,
        "scanner": d.scanner,
        "authorized": d.authorized,
        "protocols": [{"id": i + 1, "name": n, "ipAddresses": [d.ip]}
                      for i, n in enumerate(sorted(d.protocols))],
        "firmware": [],
        "hasDynamicAddress": False,
        # extras (not in the D4IoT schema; a client ignores unknown keys)
        "firstSeen": int(d.first_seen * 1000),
        "lastSeen": int(d.last_seen * 1000),
        "ports": sorted(d.ports),
        "vlans": sorted(d.vlans),
    }


def event_to_api(e: Event) -> dict[str, Any]:
    """The D4IoT /api/v1/events object."""
    return {"timestamp": e.timestamp, "type": e.type, "title": e.title,
            "severity": e.severity, "owner": e.owner, "content": e.content}


def connections_api(sensor: Sensor) -> list[dict[str, Any]]:
    """Connections grouped per device pair, in the D4IoT /devices/connections shape."""
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for c in sensor.connections.values():
        a, b = sorted((c.client, c.server))
        ent = pairs.get((a, b))
        if ent is None:
            da, db = sensor.device_by_ip(a), sensor.device_by_ip(b)
            ent = pairs[(a, b)] = {
                "firstDeviceId": da.id if da else None,
                "secondDeviceId": db.id if db else None,
                "lastSeen": 0, "discovered": None, "ports": set(), "protocols": set(),
                "firstDeviceAddress": a, "secondDeviceAddress": b,
            }
        ent["lastSeen"] = max(ent["lastSeen"], int(c.last_seen * 1000))
        first = int(c.first_seen * 1000)
        ent["discovered"] = first if ent["discovered"] is None else min(ent["discovered"],
                                                                         first)
        ent["ports"] |= c.ports
        ent["protocols"].add(PROTO_NAMES.get(c.proto, str(c.proto)))
        for port in c.ports:
            name = SERVICE_NAMES.get((c.proto, port))
            if name:
                ent["protocols"].add(name)
    out = []
    for ent in pairs.values():
        ent["ports"] = sorted(ent["ports"])
        ent["protocols"] = [{"name": n, "commands": []} for n in sorted(ent["protocols"])]
        out.append(ent)
    out.sort(key=lambda e: (e["discovered"] or 0, e["firstDeviceAddress"]))
    return out
